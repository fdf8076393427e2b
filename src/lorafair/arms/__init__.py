"""Arms: their names and order, and arms as models (PEFT wrapping, saving, the ArmBank that
swaps arms in for evaluation)."""
