"""A trained config and its val detections: what every evaluation stage starts from.

:func:`trained` runs (or reuses) steps 1 and 2 and loads the model; :func:`route_detections`
caches both routes' val detections (:data:`~dynamicdet.engine.runs.VAL_DETS`), from which
:func:`routed_evaluator` scores any per-image routing in one ``accumulate()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd
import torch

from dynamicdet.config import Config
from dynamicdet.data.coco import prepare_dataset
from dynamicdet.engine.build import load_model, resolve_device
from dynamicdet.engine.runs import STEP2, VAL_DETS
from dynamicdet.engine.step2 import train_step2
from dynamicdet.engine.validate import val_loader
from dynamicdet.evaluation.coco_eval import RoutedEvaluator, coco_evaluate, detections_to_coco
from dynamicdet.evaluation.predict import predict
from dynamicdet.evaluation.speed import prepare_for_timing
from dynamicdet.files import save_torch


@dataclass
class Trained:
    """Everything the evaluation stages need about a trained config."""

    cfg: Config
    info: object
    model: torch.nn.Module
    device: torch.device
    val_scores: pd.DataFrame  # image_id, phi, logit, L1, L2 on val

    @property
    def folder(self) -> Path:
        """The step-2 folder, which holds the evaluation stages."""
        return STEP2.path(self.cfg)

    @cached_property
    def timing_model(self) -> torch.nn.Module:
        """A fused copy of the model for latency figures (prepared once; see ``speed.prepare_for_timing``)."""
        return prepare_for_timing(self.model, self.device)


def trained(cfg: Config, progress: bool = True) -> Trained:
    """Train (or reuse) steps 1 and 2 of a config and load the result."""
    train_step2(cfg, progress=progress)
    device = resolve_device(cfg.device)
    info = prepare_dataset(cfg)
    model = load_model(cfg, step=2, device=device)
    scores = pd.read_csv(STEP2.path(cfg) / "val_scores.csv")
    return Trained(cfg, info, model, device, scores)


def predict_val(t: Trained, fn, desc: str, progress: bool) -> tuple[dict, dict]:
    """Val detections of ``fn`` (and the route each image took), with the config's NMS settings."""
    e = t.cfg.eval
    loader = val_loader(t.cfg, t.info)
    return predict(fn, loader, t.info.file_to_image_id["val"], t.device, e.conf, e.iou, e.max_det, desc, progress)


def evaluate_dets(t: Trained, dets: dict) -> dict:
    """COCO AP, AP50, AP75, APs, APm, APl of val detections."""
    return coco_evaluate(t.info.gt_json["val"], detections_to_coco(dets, t.info.class_to_cat))


def route_detections(t: Trained, progress: bool = True) -> tuple[dict, dict]:
    """Val detections of detector 1 and detector 2 for every image (cached)."""
    path = VAL_DETS.path(t.cfg)
    if path.exists():
        d = torch.load(path, weights_only=False)
        return d["det1"], d["det2"]
    dets1, _ = predict_val(t, t.model.first, "val det1", progress)
    dets2, _ = predict_val(t, t.model.second, "val det2", progress)
    save_torch({"det1": dets1, "det2": dets2}, path)
    return dets1, dets2


def routed_evaluator(t: Trained, dets1: dict | None = None, dets2: dict | None = None) -> RoutedEvaluator:
    """COCO AP of any per-image choice between the two detectors' val detections.

    ``evaluator.evaluate({image_id: hard})`` costs one ``accumulate()``; equal to
    evaluating the composed detections (see :class:`~dynamicdet.evaluation.coco_eval.RoutedEvaluator`).
    """
    if dets1 is None or dets2 is None:
        dets1, dets2 = route_detections(t, progress=False)
    c2c = t.info.class_to_cat
    return RoutedEvaluator(t.info.gt_json["val"], detections_to_coco(dets1, c2c), detections_to_coco(dets2, c2c))
