"""The validator: COCO AP of a model's routes on the val split (pycocotools).

:func:`evaluate_fn` is the one evaluation path of the project: step-1 validation, the
trade-off table, the static baselines and the two-stage table all call it.
"""

from __future__ import annotations

import torch
from torch import nn

from dynamicdet.config import Config
from dynamicdet.data.loaders import build_dataset, make_loader
from dynamicdet.engine.build import has_masks, is_dynamic
from dynamicdet.evaluation.coco_eval import coco_evaluate, detections_to_coco, segms_to_coco
from dynamicdet.evaluation.predict import predict


def val_loader(cfg: Config, info, batch: int | None = None):
    """The val split, letterboxed, not augmented, in file order (``eval.batch`` unless given)."""
    ds = build_dataset(info.data, "val", cfg.data.img_size, augment=False)
    return make_loader(ds, cfg.eval.batch if batch is None else batch, False, 0)


@torch.no_grad()
def evaluate_fn(fn, cfg: Config, info, device, loader, desc: str, progress: bool = True) -> tuple[dict, dict]:
    """COCO AP of ``fn`` on val, and the route each image took (see :func:`~dynamicdet.evaluation.predict.predict`).

    Box metrics (AP, AP50, ...); Mask R-CNN configs add mask metrics as ``mask_AP``...
    """
    e = cfg.eval
    rles = {} if has_masks(cfg) else None
    dets, hard = predict(
        fn, loader, info.file_to_image_id["val"], device, e.conf, e.iou, e.max_det, desc, progress, masks_out=rles
    )
    gt = info.gt_json["val"]
    out = coco_evaluate(gt, detections_to_coco(dets, info.class_to_cat))
    if rles is not None:
        m = coco_evaluate(gt, segms_to_coco(dets, rles, info.class_to_cat), iou_type="segm")
        out.update({f"mask_{k}": v for k, v in m.items()})
    return out, hard


@torch.no_grad()
def evaluate_routes(model: nn.Module, cfg: Config, info, device, progress: bool = True) -> dict:
    """COCO AP of detector 1 (easy route) and, for a dynamic model, detector 2 (hard route) on val.

    Keys ``det1_AP``, ``det1_AP50``... (``det1_mask_AP``... for Mask R-CNN).
    """
    model.eval()
    loader = val_loader(cfg, info)
    out = {}
    routes = [("det1", model.first)] + ([("det2", model.second)] if is_dynamic(model) else [])
    for tag, fn in routes:
        m, _ = evaluate_fn(fn, cfg, info, device, loader, f"val {tag}", progress)
        out.update({f"{tag}_{k}": v for k, v in m.items()})
    return out
