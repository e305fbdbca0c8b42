"""Datasets: the embedded synthetic COCO-format generator and the dataloaders."""
