"""Dataloaders on ultralytics' YOLO dataset and augmentation pipeline.

We use ultralytics' ``build_yolo_dataset`` (mosaic, random perspective, HSV, flip,
letterbox, label handling) and its ``collate_fn``, inside a plain torch ``DataLoader``
whose shuffling and augmentation randomness are seeded per epoch, so that an epoch's
batches depend only on (seed, epoch): an interrupted run resumes bit-for-bit.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler
from ultralytics.cfg import get_cfg
from ultralytics.data.build import build_yolo_dataset


def hyp_namespace(img_size: int, **aug: Any):
    """ultralytics' hyperparameter namespace (augmentation settings) with our overrides."""
    overrides = {"imgsz": img_size, "task": "detect", "mode": "train", "cache": False, "rect": False, **aug}
    return get_cfg(overrides=overrides)


def build_dataset(data: dict, split: str, img_size: int, augment: bool, batch: int = 16, **aug: Any):
    """An ultralytics ``YOLODataset`` for ``split`` ("train" or "val").

    Args:
        data: ultralytics data dict (``check_det_dataset`` output, see ``coco.prepare_dataset``).
        split: key of ``data`` holding the image folder.
        img_size: network input side.
        augment: ultralytics train-mode augmentation (mosaic etc., set through ``aug``)
            or val-mode letterbox only.
        aug: ultralytics hyperparameters (``mosaic``, ``mixup``, ``hsv_h``, ``translate``...).

    With a polygon layout (``data["dd_segments"]``, see ``coco.prepare_dataset``) batches
    also hold ``masks``: (N, H, W) per instance, aligned with ``batch_idx``.
    """
    if data.get("dd_segments"):  # Mask R-CNN: one full-resolution binary mask per instance
        aug = {"task": "segment", "mask_ratio": 1, "overlap_mask": False, **aug}
    hyp = hyp_namespace(img_size, **aug)
    mode = "train" if augment else "val"
    dataset = build_yolo_dataset(hyp, data[split], batch, data, mode=mode, rect=False, stride=32)
    dataset.dd_hyp = hyp  # kept for close_mosaic(), which rebuilds the transforms from it
    return dataset


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def make_loader(
    dataset,
    batch: int,
    shuffle: bool,
    seed: int,
    workers: int = 0,
    distributed: bool = False,
) -> DataLoader:
    """A DataLoader whose order and augmentation depend only on ``seed``.

    Call it once per epoch with ``seed = base_seed + epoch``. With ``workers == 0`` the
    augmentation draws from the global RNGs, which are reseeded here; with workers each
    worker is seeded from the loader's generator.
    """
    g = torch.Generator()
    g.manual_seed(seed)
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    elif shuffle:
        sampler = RandomSampler(dataset, generator=g)
    else:
        sampler = SequentialSampler(dataset)
    seed_everything(seed)
    return DataLoader(
        dataset,
        batch_size=min(batch, len(dataset)),
        sampler=sampler,
        num_workers=workers,
        collate_fn=dataset.collate_fn,
        worker_init_fn=_seed_worker,
        generator=g,
        drop_last=False,
    )


def to_device(batch: dict, device: torch.device) -> dict:
    """Move tensors to ``device`` and scale images from uint8 to [0, 1] floats (ultralytics' preprocess)."""
    out = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    out["img"] = out["img"].float() / 255
    return out


def targets_from_batch(batch: dict, with_masks: bool = False) -> list[dict]:
    """ultralytics batch -> torchvision targets (boxes in letterboxed pixels, labels 1-based).

    Returns:
        Per image ``{"boxes": (m, 4) xyxy px, "labels": (m,) 1-based[, "masks": (m, H, W) uint8]}``.

    Args:
        batch: ``img`` (B, 3, H, W), ``bboxes`` (N, 4) normalised xywh, ``cls`` (N, 1),
            ``batch_idx`` (N,), and for masks ``masks`` (N, H, W) (one per instance).
    """
    img = batch["img"]
    b, _, h, w = img.shape
    scale = torch.tensor([w, h, w, h], device=img.device, dtype=torch.float32)
    xywh = batch["bboxes"].float() * scale
    xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], dim=1)
    xyxy[:, 2:] = torch.maximum(xyxy[:, 2:], xyxy[:, :2] + 1)  # torchvision needs positive sides
    idx = batch["batch_idx"].long()
    labels = batch["cls"].view(-1).long() + 1
    out = []
    for i in range(b):
        sel = idx == i
        t = {"boxes": xyxy[sel], "labels": labels[sel]}
        if with_masks:
            masks = batch["masks"]
            t["masks"] = masks[sel].to(torch.uint8) if len(masks) == len(idx) else masks.new_zeros((0, h, w))
        out.append(t)
    return out
