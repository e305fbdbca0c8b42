"""Training and the cached stages: the model factory, checkpoints, run folders, steps 1 and 2, validation."""
