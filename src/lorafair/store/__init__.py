"""Storage: the run directory and its atomic writes and hashes, the run lock, export of result
files without weights, and every cache key (keys)."""
