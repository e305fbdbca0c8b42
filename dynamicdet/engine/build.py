"""The model factory: the one place that turns ``model.kind`` into a model class.

Every model built here has the same training interface, so the training and
evaluation code never asks which kind it holds:

- ``objective(batch, forward=None) -> (loss, {item: value})``: the step-1 loss;
- ``detector_groups() -> {"det1": [...], "det2": [...]}``: parameters by detector
  (gradient clipping per detector, gradient-norm logging);
- ``first(x)`` (and for dynamic models ``second(x)``, ``route(x, tau)``): detections;
- dynamic models only: ``router``, ``router_batch(batch) -> (pooled, L1, L2)`` for step 2, and
  the three stages every route runs (:class:`dynamicdet.modeling.routing.RoutedDetector`).

Which class each ``model.kind`` builds (``dual: true`` dynamic / ``dual: false`` static):

- ``yolo``: :class:`~dynamicdet.modeling.yolo.DynamicDetector` / :class:`~dynamicdet.modeling.yolo.StaticDetector`;
- ``faster_rcnn``: :class:`~dynamicdet.modeling.two_stage.DynamicTwoStage` /
  :class:`~dynamicdet.modeling.two_stage.TwoStageDetector`;
- ``mask_rcnn``: the same classes, with masks.
"""

from __future__ import annotations

import torch
from torch import nn

from dynamicdet.config import Config
from dynamicdet.data.coco import prepare_dataset
from dynamicdet.engine.checkpoint import load_into
from dynamicdet.engine.runs import STEP1, STEP2
from dynamicdet.modeling.losses import attach_hyp
from dynamicdet.modeling.trunks import HeadSizes
from dynamicdet.modeling.two_stage import build_two_stage
from dynamicdet.modeling.yolo import DynamicDetector, StaticDetector


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda if available else cpu; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def has_masks(cfg: Config) -> bool:
    """Whether the config's model predicts instance masks (evaluated as ``mask_AP``...)."""
    return cfg.model.kind == "mask_rcnn"


def is_dynamic(model: nn.Module) -> bool:
    """Whether a built model has a router (two routes) or is a static single detector."""
    return hasattr(model, "router")


def build_model(cfg: Config, nc: int) -> nn.Module:
    """The config's model, untrained (see the module docstring for the classes).

    ``train.detach_links`` is set on dynamic models (it changes step-1 training only).
    """
    m = cfg.model
    if m.kind == "yolo":
        if not m.dual:
            model = StaticDetector(m.family, m.scale, nc=nc)
            attach_hyp(model.det1)
            return model
        model = DynamicDetector(m.family, m.scale, nc=nc)
        attach_hyp(model.det1)
        attach_hyp(model.det2)
    else:
        sizes = HeadSizes(
            m.fpn_channels, m.head_channels, m.anchor_base, m.rpn_batch, m.roi_batch, cfg.eval.max_det, m.norm
        )
        model = build_two_stage(m.kind, m.backbone, nc, dual=m.dual, sizes=sizes)
    if is_dynamic(model):
        model.detach_links = cfg.train.detach_links
    return model


def load_model(cfg: Config, step: int = 2, device: str | torch.device = "cpu") -> nn.Module:
    """The trained model of a config after step 1 or 2, in eval mode (raises if that stage has not run)."""
    info = prepare_dataset(cfg)
    model = build_model(cfg, nc=len(info.names))
    path = STEP1.path(cfg) / "step1.pt" if step == 1 else STEP2.path(cfg) / "step2.pt"
    load_into(model, path)
    return model.to(device).eval()
