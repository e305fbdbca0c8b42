"""Checkpoints: written atomically, read with clear errors.

A checkpoint is a dict ``{"format", "model_config", "model", ...}`` saved atomically
(:func:`dynamicdet.files.save_torch`): an interrupted write never leaves a half-written
file under the real name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dynamicdet.files import save_torch

FORMAT = "dynamicdet-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, foreign, or does not fit the model."""


def save_checkpoint(path: str | Path, model, **extra: Any) -> Path:
    """Save a model's weights with its config (and any extra state: optimiser, epoch...)."""
    obj = {"format": FORMAT, "model_config": model.config(), "model": model.state_dict(), **extra}
    return save_torch(obj, path)


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict, raising :class:`CheckpointError` naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, pickle garbage, ...
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: not a DynamicDet checkpoint (expected format {FORMAT!r}, found {found!r})")
    return obj


def load_into(model, path: str | Path, strict: bool = True) -> dict:
    """Load a checkpoint into ``model`` after checking that it was saved from the same config.

    Returns:
        The checkpoint dict (for optimiser/epoch state).

    Raises:
        CheckpointError: the file is unreadable, foreign, or saved from another config
            (the message lists each mismatched field, checkpoint vs model).
    """
    ckpt = read_checkpoint(path)
    want, got = model.config(), ckpt.get("model_config", {})
    diff = [f"{k}: checkpoint has {got.get(k)!r}, model has {v!r}" for k, v in want.items() if got.get(k) != v]
    if diff:
        raise CheckpointError(f"{path}: checkpoint does not match the model config ({'; '.join(diff)})")
    try:
        model.load_state_dict(ckpt["model"], strict=strict)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model: {e}") from None
    return ckpt
