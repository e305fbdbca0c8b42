"""Running a model over a dataset: NMS, boxes back to original pixels, keyed by COCO image id."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm
from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.ops import scale_boxes, scale_masks

from dynamicdet.data.loaders import to_device


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
    masks_out: dict | None = None,
) -> tuple[dict[int, np.ndarray], dict[int, bool]]:
    """Detections of ``fn`` on every image of ``loader``.

    Args:
        fn: images (B, 3, H, W) in [0, 1] -> raw YOLO predictions (B, 4 + nc, A) (NMS is
            applied here), or torchvision detections (a list of per-image dicts, already
            final), or a :class:`~dynamicdet.modeling.routing.RouteOutput` holding either (its route
            per image is recorded).
        loader: val-mode dataloader (letterboxed images, ``im_file``, ``ori_shape``, ``ratio_pad``).
        file_to_id: image file name -> COCO image id.
        masks_out: if given and the detections carry ``masks``, filled with image id ->
            compressed RLEs of the binary masks at the original image size (one per
            detection row, same order; see :func:`dynamicdet.evaluation.coco_eval.rles_to_coco`).

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
        if isinstance(preds, list):  # torchvision: final detections, labels 1-based
            rows = [_torchvision_rows(d, conf, max_det) for d in preds]
        else:
            rows = [(d, None) for d in non_max_suppression(preds, conf_thres=conf, iou_thres=iou, max_det=max_det)]
        ids = image_ids_of(batch, file_to_id)
        for i, (image_id, (d, masks)) in enumerate(zip(ids, rows, strict=True)):
            d = d.clone()
            shape0, ratio_pad = batch["ori_shape"][i], batch["ratio_pad"][i]
            d[:, :4] = scale_boxes(img.shape[2:], d[:, :4], shape0, ratio_pad=ratio_pad)
            dets[image_id] = d.cpu().numpy()
            hard[image_id] = bool(route[i]) if route is not None else False
            if masks_out is not None and masks is not None:
                m = scale_masks(masks.permute(1, 0, 2, 3).float(), shape0, ratio_pad=ratio_pad)[0] > 0.5
                m = np.asfortranarray(m.permute(1, 2, 0).cpu().numpy().astype(np.uint8))
                masks_out[image_id] = mask_utils.encode(m) if m.shape[2] else []
    return dets, hard


def _torchvision_rows(d: dict, conf: float, max_det: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One torchvision detection dict -> ((n, 6) [x1, y1, x2, y2, score, class], masks (n, 1, H, W) or None)."""
    keep = (d["scores"] >= conf).nonzero().squeeze(1)[:max_det]
    rows = torch.cat([d["boxes"][keep], d["scores"][keep, None], (d["labels"][keep, None] - 1).float()], dim=1)
    return rows, (d["masks"][keep] if "masks" in d else None)
