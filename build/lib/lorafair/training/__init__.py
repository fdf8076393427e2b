"""The one training loop for every arm: encoding and packing, the loop itself, checkpoints
and resume, and the learning-rate search."""
