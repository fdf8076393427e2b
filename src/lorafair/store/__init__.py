"""Storage: the run directory and its atomic writes and hashes, the run lock, and export of
result files without weights."""
