"""Studies of this project's own recipes (not the paper's experiments): recipe and two-stage tuning,
reproducibility, the main job's wall time, step-1 speed. They import the library; the library never
imports them. Run them from the repository root, e.g. ``python -m studies.recipe_tuning``."""
