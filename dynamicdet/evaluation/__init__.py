"""Measuring: the COCO metric, running a model over a dataset, cost (FLOPs) and speed, the claims
scorecard, and the results files (tables, figures, provenance, docs tables)."""
