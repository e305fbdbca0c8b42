"""Running a model over a dataset: NMS, boxes back to original pixels, keyed by COCO image id."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.ops import scale_boxes

import dynamicdet  # noqa: F401  (offline configuration before ultralytics is imported)

from .data.loaders import to_device


def image_ids_of(batch: dict, file_to_id: dict[str, int]) -> list[int]:
    """COCO image ids of a batch's images (by file name)."""
    return [file_to_id[Path(f).name] for f in batch["im_file"]]


@torch.no_grad()
def predict(
    fn: Callable[[torch.Tensor], object],
    loader,
    file_to_id: dict[str, int],
    device: torch.device | str = "cpu",
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
    desc: str = "predict",
    progress: bool = True,
) -> tuple[dict[int, np.ndarray], dict[int, bool]]:
    """Detections of ``fn`` on every image of ``loader``.

    Args:
        fn: images (B, 3, H, W) in [0, 1] -> raw predictions (B, 4 + nc, A), or a
            :class:`~dynamicdet.model.RouteOutput` (its route per image is recorded).
        loader: val-mode dataloader (letterboxed images, ``im_file``, ``ori_shape``, ``ratio_pad``).
        file_to_id: image file name -> COCO image id.

    Returns:
        ``(dets, hard)``: dets maps image id -> (n, 6) [x1, y1, x2, y2, score, class] in
        original image pixels; hard maps image id -> route taken (False when ``fn`` is static).
    """
    dets: dict[int, np.ndarray] = {}
    hard: dict[int, bool] = {}
    device = torch.device(device)
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        batch = to_device(batch, device)
        img = batch["img"]
        out = fn(img)
        route = getattr(out, "hard", None)
        preds = getattr(out, "preds", out)
        nms = non_max_suppression(preds, conf_thres=conf, iou_thres=iou, max_det=max_det)
        ids = image_ids_of(batch, file_to_id)
        for i, (image_id, d) in enumerate(zip(ids, nms, strict=True)):
            d = d.clone()
            d[:, :4] = scale_boxes(img.shape[2:], d[:, :4], batch["ori_shape"][i], ratio_pad=batch["ratio_pad"][i])
            dets[image_id] = d.cpu().numpy()
            hard[image_id] = bool(route[i]) if route is not None else False
    return dets, hard
