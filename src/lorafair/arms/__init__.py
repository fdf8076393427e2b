"""Arms: their names and order, their kinds and the LoRA variants as records (kinds), and arms as
models (PEFT wrapping, saving, the ArmBank that swaps arms in for evaluation)."""
