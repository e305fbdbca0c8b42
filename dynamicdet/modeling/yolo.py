"""The dynamic architecture: two cascaded YOLO detectors, composite links and a router.

::

    image ──► B1 ──┬──────────────► H1 ──► detections   (easy route: B1 + router + H1)
                   │ F1 = {P3, P4, P5}
                   ├──► router ──► phi (difficulty)
                   └──► links ─┐
    image ──► B2 (+ links) ────┴──► H2 ──► detections   (hard route: B1 + router + B2 + H2)

Detector 1 = backbone B1 + neck/head H1 and detector 2 = backbone B2 + neck/head H2
are two ultralytics ``DetectionModel`` s of the same family and scale (identical
structure, separate weights). B2 reads the image itself and, as in CBNet and the
authors' code, also receives B1's multi-scale features through composite links
(:class:`~dynamicdet.modeling.router.CompositeLinks`; the router is
:class:`~dynamicdet.modeling.router.AdaptiveRouter`). Batched dynamic inference is
:func:`dynamicdet.modeling.routing.route` on the three stages of
:class:`~dynamicdet.modeling.routing.RoutedDetector`.

Sign convention: ``phi`` is the **difficulty** (high = hard = send to detector 2), as in
the paper. The authors' code outputs ``1 - phi``; we never do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from ultralytics.nn.tasks import DetectionModel, yaml_model_load

from dynamicdet.modeling import routing
from dynamicdet.modeling.losses import DetectionLoss
from dynamicdet.modeling.router import AdaptiveRouter, CompositeLinks


@dataclass(frozen=True)
class FamilySpec:
    """Where to cut an ultralytics YOLO family into backbone and neck/head.

    Attributes:
        taps: layer indices of the backbone outputs P3, P4, P5 (fed to the neck, the
            router and the composite links).
        downsample: layer indices of the stride-2 convs that open the P3, P4, P5 stages;
            B2 receives the links' output right after each of them.
        n_backbone: number of backbone layers (layers ``[0, n_backbone)``).
    """

    taps: tuple[int, ...]
    downsample: tuple[int, ...]
    n_backbone: int


# The only place that knows ultralytics' layer numbering (see docs/design.md section 3).
FAMILIES: dict[str, FamilySpec] = {
    "yolov8": FamilySpec(taps=(4, 6, 9), downsample=(3, 5, 7), n_backbone=10),
    "yolo11": FamilySpec(taps=(4, 6, 10), downsample=(3, 5, 7), n_backbone=11),
}
# ultralytics' scales, plus "ns": YOLOv8 at depth 0.33 (as n and s) and width 0.3125 (n: 0.25, s: 0.5), the static
# model at the dynamic model's cost: 1.09 GFLOPs at 192 px, 5% above Dy /100 (B1 + router + links + B2 + H2 of two
# yolov8n, 1.03); n 0.73, s 2.56 (results/standard/architecture_cost.md, static_models.md)
EXTRA_SCALES = {"ns": (0.33, 0.3125, 1024)}  # scale -> (depth, width, max channels), ultralytics' scales format
SCALES = ("n", "ns", "s", "m", "l", "x")

Features = list  # per-layer outputs of a backbone: list[Tensor | None], indexed by layer number


def build_detector(family: str, scale: str, nc: int, ch: int = 3) -> DetectionModel:
    """A plain ultralytics detector built from its YAML, no weights (nothing is downloaded)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; supported: {sorted(FAMILIES)}")
    if scale not in SCALES:
        raise ValueError(f"unknown model scale {scale!r}; supported: {SCALES}")
    if scale in EXTRA_SCALES:
        # ultralytics' model-scale mechanism: the family's YAML with one more entry in its ``scales``
        spec = dict(yaml_model_load(f"{family}.yaml"))  # a copy: the scales entry is ours
        spec["scales"] = {**spec["scales"], scale: list(EXTRA_SCALES[scale])}
        spec["scale"] = scale
        return DetectionModel(spec, ch=ch, nc=nc, verbose=False)
    return DetectionModel(f"{family}{scale}.yaml", ch=ch, nc=nc, verbose=False)


def run_layers(det: DetectionModel, x, start: int, stop: int, y: Features, inject: dict | None = None):
    """Run layers ``[start, stop)`` of an ultralytics model, as ``BaseModel._predict_once`` does.

    Args:
        det: the ultralytics model.
        x: input of layer ``start`` (ignored by layers that read earlier outputs).
        start, stop: layer range.
        y: outputs of layers ``[0, start)``; extended in place.
        inject: optional ``{layer index: tensor}`` added to that layer's output (the
            composite links' entry points).

    Returns:
        The output of layer ``stop - 1``.
    """
    for m in det.model[start:stop]:
        if m.f != -1:  # input from earlier layers
            x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
        x = m(x)
        if inject is not None and m.i in inject:
            x = x + inject[m.i]
        y.append(x if m.i in det.save else None)
    return x


class DynamicDetector(nn.Module):
    """Two cascaded ultralytics detectors with composite links and an adaptive router.

    Args:
        family: ultralytics family, ``"yolov8"`` or ``"yolo11"``.
        scale: ``"n"``, ``"s"``, ``"m"`` (``"l"``, ``"x"`` also build).
        nc: number of classes.
        ch: input channels.

    Forward modes:
        - ``model(images)`` (train mode): ``{"out1", "out2", "phi"}`` with both heads' raw
          training outputs (ultralytics dicts: ``boxes``, ``scores``, ``feats``).
        - :meth:`score`: phi only (B1 + router).
        - :meth:`first` / :meth:`second`: one route for all images.
        - :meth:`route`: batched dynamic inference (:func:`~dynamicdet.modeling.routing.route` on
          the three stages :meth:`first_stage`, :meth:`easy_stage`, :meth:`hard_stage`).
    """

    easy_reads_images = False  # H1 reads only B1's taps (see RoutedDetector)

    def __init__(self, family: str = "yolov8", scale: str = "n", nc: int = 80, ch: int = 3):
        super().__init__()
        self.family, self.scale, self.nc, self.ch = family, scale, nc, ch
        self.det1 = build_detector(family, scale, nc, ch)
        self.det2 = build_detector(family, scale, nc, ch)
        self.spec = FAMILIES[family]
        self.stride = self.det1.stride
        # Channel widths of every backbone layer, read off a dry run (backbones are sequential).
        widths = {}
        with torch.no_grad():
            x = torch.zeros(1, ch, 64, 64)
            for m in self.det1.model[: self.spec.n_backbone]:
                x = m(x)
                widths[m.i] = x.shape[1]
        self.tap_channels = [widths[i] for i in self.spec.taps]
        # the stages hand H1 only the taps: they must be every backbone output the neck reads
        read = sorted(i for i in self.det1.save if i < self.spec.n_backbone)
        if read != sorted(self.spec.taps) or self.spec.taps[-1] != self.spec.n_backbone - 1:
            raise ValueError(f"{family}{scale}: the neck reads backbone layers {read}, the taps are {self.spec.taps}")
        self.link_channels = [widths[i] for i in self.spec.downsample]
        self.links = CompositeLinks(self.tap_channels, self.link_channels)
        self.router = AdaptiveRouter(sum(self.tap_channels))
        self.detach_links = False  # training only: see forward()
        self._criteria: tuple | None = None

    # ---------------------------------------------------------------- building blocks
    def config(self) -> dict:
        """What a checkpoint must match to load into this model."""
        return {"family": self.family, "scale": self.scale, "nc": self.nc, "ch": self.ch}

    def backbone1(self, x: torch.Tensor) -> Features:
        """B1: (B, 3, H, W) -> per-layer outputs (the P3/P4/P5 taps among them)."""
        y: Features = []
        run_layers(self.det1, x, 0, self.spec.n_backbone, y)
        return y

    def taps(self, y: Features) -> list[torch.Tensor]:
        """B1's multi-scale features F1 = [P3, P4, P5] from its per-layer outputs."""
        return [y[i] for i in self.spec.taps]

    def backbone2(self, x: torch.Tensor, feats1: list[torch.Tensor]) -> Features:
        """B2 reading the image and receiving B1's features through the composite links."""
        links = self.links(feats1)
        inject = dict(zip(self.spec.downsample, links, strict=True))
        y: Features = []
        run_layers(self.det2, x, 0, self.spec.n_backbone, y, inject=inject)
        return y

    def head1(self, y1: Features):
        """H1 (neck + Detect of detector 1) on B1's outputs."""
        return run_layers(self.det1, y1[-1], self.spec.n_backbone, len(self.det1.model), list(y1))

    def head2(self, y2: Features):
        """H2 (neck + Detect of detector 2) on B2's outputs."""
        return run_layers(self.det2, y2[-1], self.spec.n_backbone, len(self.det2.model), list(y2))

    def tap_layers(self, taps: list[torch.Tensor]) -> Features:
        """B1's per-layer outputs as H1 reads them, from the taps alone (the neck reads no other layer)."""
        y1: Features = [None] * self.spec.n_backbone
        for i, f in zip(self.spec.taps, taps, strict=True):
            y1[i] = f
        return y1

    @staticmethod
    def _inference(out) -> torch.Tensor:
        """Detect's eval output is ``(y, raw)``; keep y: (B, 4 + nc, A)."""
        return out[0] if isinstance(out, tuple) else out

    # ---------------------------------------------------------------- the three stages of a route
    def first_stage(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """B1 + router: (B, 3, H, W) -> (logit z (B,), taps F1 = [P3, P4, P5], each (B, C_l, H_l, W_l))."""
        f1 = self.taps(self.backbone1(x))
        return self.router.logit(AdaptiveRouter.pool(f1)), f1

    def easy_stage(self, x: torch.Tensor | None, taps: list[torch.Tensor]) -> torch.Tensor:
        """H1 on B1's taps (the images are not read): -> (B, 4 + nc, A) raw detections (eval mode)."""
        return self._inference(self.head1(self.tap_layers(taps)))

    def hard_stage(self, x: torch.Tensor, taps: list[torch.Tensor]) -> torch.Tensor:
        """Links + B2 + H2 (no H1): images (B, 3, H, W) and their taps -> (B, 4 + nc, A) raw detections."""
        return self._inference(self.head2(self.backbone2(x, taps)))

    # ---------------------------------------------------------------- forward modes
    def forward(self, x: torch.Tensor) -> dict:
        """Step-1 forward: both detectors on every image.

        Args:
            x: (B, 3, H, W) images in [0, 1].

        Returns:
            ``{"out1": raw head output of detector 1, "out2": of detector 2, "phi": (B,)}``.
            phi is computed on detached features: no step-1 gradient reaches the router.
            With ``detach_links`` set, the links read detached B1 features too: detector
            2's loss then does not reach backbone 1 (a step-1 ablation; not the authors').
        """
        y1 = self.backbone1(x)
        f1 = self.taps(y1)
        phi = self.router([f.detach() for f in f1])
        out1 = self.head1(y1)
        out2 = self.head2(self.backbone2(x, [f.detach() for f in f1] if self.detach_links else f1))
        return {"out1": out1, "out2": out2, "phi": phi}

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """phi (difficulty) only: B1 + router. (B, 3, H, W) -> (B,)."""
        return self.router(self.taps(self.backbone1(x)))

    def score_logit(self, x: torch.Tensor) -> torch.Tensor:
        """The router's logit z (phi = sigmoid(z)), the scale thresholds live on: (B, 3, H, W) -> (B,)."""
        return self.router.logit(AdaptiveRouter.pool(self.taps(self.backbone1(x))))

    def router_input(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled B1 features, the router's input: (B, 3, H, W) -> (B, sum C_i)."""
        return AdaptiveRouter.pool(self.taps(self.backbone1(x)))

    def first(self, x: torch.Tensor) -> torch.Tensor:
        """Easy route for all images (no router): (B, 3, H, W) -> (B, 4 + nc, A) in eval mode."""
        return self._inference(self.head1(self.backbone1(x)))

    def second(self, x: torch.Tensor) -> torch.Tensor:
        """Hard route for all images (no router, no H1): (B, 3, H, W) -> (B, 4 + nc, A)."""
        y1 = self.backbone1(x)
        return self._inference(self.head2(self.backbone2(x, self.taps(y1))))

    def route(self, x: torch.Tensor, threshold: float) -> routing.RouteOutput:
        """Batched dynamic inference, :func:`dynamicdet.modeling.routing.route` (threshold on the logit)."""
        return routing.route(self, x, threshold)

    # ---------------------------------------------------------------- training interface
    def criteria(self) -> tuple[DetectionLoss, DetectionLoss]:
        """ultralytics' loss of each detector (built once, on the model's device)."""
        device = next(self.parameters()).device
        if self._criteria is None or self._criteria[0].device != device:
            self._criteria = (DetectionLoss(self.det1), DetectionLoss(self.det2))
        return self._criteria

    def objective(self, batch: dict, forward=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Step-1 loss of a batch: ``(L1 + L2, {"L1_box", "L1_cls", ..., "L2_dfl"})``.

        Args:
            batch: ultralytics batch (``img`` (B, 3, H, W) in [0, 1], ``bboxes``, ``cls``, ``batch_idx``).
            forward: the callable that runs the model (a DDP wrapper under torchrun); default self.
        """
        out = (forward or self)(batch["img"])
        crit1, crit2 = self.criteria()
        l1, items1 = crit1(out["out1"], batch)
        l2, items2 = crit2(out["out2"], batch)
        names = ("box", "cls", "dfl")
        # ultralytics' loss items: {"box_loss", "cls_loss", "dfl_loss"}, batch means
        items = {f"L1_{n}": v for n, v in zip(names, items1.values(), strict=True)}
        items.update({f"L2_{n}": v for n, v in zip(names, items2.values(), strict=True)})
        # L = L1 + L2   (ultralytics' batch losses, each already multiplied by the batch size)
        return l1.sum() + l2.sum(), items

    @torch.no_grad()
    def router_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step-2 inputs of a batch: pooled B1 features (B, C) and detached per-image L1, L2 (B,)."""
        img = batch["img"]
        crit1, crit2 = self.criteria()
        y1 = self.backbone1(img)
        f1 = self.taps(y1)
        raw1 = self.head1(y1)[1]  # eval mode: (inference, raw) -> raw training dict
        raw2 = self.head2(self.backbone2(img, f1))[1]
        return AdaptiveRouter.pool(f1), crit1.per_image(raw1, batch)["total"], crit2.per_image(raw2, batch)["total"]

    def detector_groups(self) -> dict[str, list[nn.Parameter]]:
        """Step-1 parameters by detector: detector 1, and detector 2 with the links that feed it."""
        return {"det1": list(self.det1.parameters()), "det2": [*self.det2.parameters(), *self.links.parameters()]}

    # ---------------------------------------------------------------- utilities
    def fuse(self) -> DynamicDetector:
        """Fold BN into convs in both detectors (ultralytics' fuse), for inference."""
        self.det1.fuse(verbose=False)
        self.det2.fuse(verbose=False)
        return self


class StaticDetector(nn.Module):
    """One plain ultralytics detector trained by our step-1 loop (``model.dual: false``).

    The static baseline that separates "our training loop" from "joint training": the
    same data, schedule and loop as the dynamic model, one detector. Same interface as
    :class:`DynamicDetector` where it applies (:meth:`first`, :meth:`objective`,
    :meth:`detector_groups`); it has no router and no second route.
    """

    def __init__(self, family: str = "yolov8", scale: str = "n", nc: int = 80, ch: int = 3):
        super().__init__()
        self.family, self.scale, self.nc, self.ch = family, scale, nc, ch
        self.det1 = build_detector(family, scale, nc, ch)
        self.stride = self.det1.stride
        self._criteria: DetectionLoss | None = None

    def config(self) -> dict:
        return {"family": self.family, "scale": self.scale, "nc": self.nc, "ch": self.ch, "dual": False}

    def forward(self, x: torch.Tensor):
        """Train mode: the head's raw training output; eval mode: (B, 4 + nc, A) detections."""
        return self.det1(x)

    def first(self, x: torch.Tensor) -> torch.Tensor:
        """Detections: (B, 3, H, W) -> (B, 4 + nc, A) in eval mode."""
        return DynamicDetector._inference(self.det1(x))

    def objective(self, batch: dict, forward=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Step-1 loss of a batch: ``(L1, {"L1_box", "L1_cls", "L1_dfl"})`` (ultralytics' loss)."""
        out = (forward or self)(batch["img"])
        device = next(self.parameters()).device
        if self._criteria is None or self._criteria.device != device:
            self._criteria = DetectionLoss(self.det1)
        l1, items = self._criteria(out, batch)
        return l1.sum(), {f"L1_{n}": v for n, v in zip(("box", "cls", "dfl"), items.values(), strict=True)}

    def detector_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"det1": list(self.det1.parameters())}

    def fuse(self) -> StaticDetector:
        self.det1.fuse(verbose=False)
        return self
