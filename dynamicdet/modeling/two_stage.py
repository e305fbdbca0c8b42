"""Dy-Faster R-CNN and Dy-Mask R-CNN: the dynamic architecture on torchvision's two-stage detectors.

::

    image ──► T1 ──┬──► FPN1 ──► RPN1 ──► RoI heads 1 ──► detections   (easy route)
                   │ F1 = {C2, C3, C4, C5}
                   ├──► router ──► phi (difficulty)
                   └──► links ─┐
    image ──► T2 (+ links) ────┴──► FPN2 ──► RPN2 ──► RoI heads 2 ──► detections   (hard route)

Each detector is a torchvision ``FasterRCNN`` / ``MaskRCNN`` (no pretrained weights) whose
trunk is a torchvision ResNet or Swin cut into four stages (:mod:`dynamicdet.modeling.trunks`).
Trunk 2 reads the image and, through the same :class:`~dynamicdet.modeling.router.CompositeLinks`
as the YOLO model, receives trunk 1's stage outputs right after each of its downsampling layers
(ResNet: the stem and the first, strided block of stages 2-4; Swin: the patch embedding and each
patch merging). The same :class:`~dynamicdet.modeling.router.AdaptiveRouter` scores difficulty
from trunk 1's stage outputs. Sign convention as everywhere: phi high = hard = detector 2.
Batched dynamic inference is :func:`dynamicdet.modeling.routing.route` on the three stages of
:class:`~dynamicdet.modeling.routing.RoutedDetector`, as for the YOLO model.

Images arrive letterboxed to a square side divisible by 32 (ultralytics' pipeline), so
torchvision's ``GeneralizedRCNNTransform`` (resize + pad) is bypassed: we normalise and
call the RPN and RoI heads directly, which also lets the heads run on a subset of a batch.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import paste_masks_in_image

from dynamicdet.data.loaders import targets_from_batch
from dynamicdet.modeling import routing
from dynamicdet.modeling.router import AdaptiveRouter, CompositeLinks
from dynamicdet.modeling.trunks import FPNTrunk, HeadSizes, Trunk, norm_layer

KINDS = ("faster_rcnn", "mask_rcnn")
DEFAULT_SIZES = HeadSizes()  # frozen: one shared default
# ImageNet statistics (torchvision's default normalisation for its detectors)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

Detections = (
    list  # per image: {"boxes": (n, 4) xyxy px, "scores": (n,), "labels": (n,) 1-based[, "masks": (n, 1, H, W)]}
)
Targets = list  # per image: {"boxes": (m, 4) xyxy px, "labels": (m,) 1-based[, "masks": (m, H, W) uint8]}


class TwoStageDetector(nn.Module):
    """One torchvision ``FasterRCNN`` / ``MaskRCNN`` on a :class:`~dynamicdet.modeling.trunks.Trunk`, run
    without its transform.

    Args:
        kind: ``"faster_rcnn"`` or ``"mask_rcnn"``.
        backbone: one of :data:`~dynamicdet.modeling.trunks.TRUNKS`.
        nc: number of object classes (torchvision adds the background class 0).
        sizes: head sizes.

    ``model(x, targets)`` in train mode returns torchvision's loss dict (batch means);
    in eval mode ``model(x)`` returns detections. ``x``: (B, 3, H, W) in [0, 1].
    """

    def __init__(self, kind: str, backbone: str, nc: int, sizes: HeadSizes = DEFAULT_SIZES):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown two-stage kind {kind!r}; supported: {KINDS}")
        self.kind, self.nc = kind, nc
        body = FPNTrunk(Trunk(backbone, sizes.norm), sizes.fpn_channels, sizes.norm)
        c = sizes.fpn_channels
        anchors = AnchorGenerator(
            sizes=tuple((sizes.anchor_base * 2**i,) for i in range(5)), aspect_ratios=((0.5, 1.0, 2.0),) * 5
        )
        common = dict(
            num_classes=None,
            rpn_anchor_generator=anchors,
            rpn_batch_size_per_image=sizes.rpn_batch,
            box_head=TwoMLPHead(c * 7 * 7, sizes.head_channels),
            box_predictor=FastRCNNPredictor(sizes.head_channels, nc + 1),
            box_batch_size_per_image=sizes.roi_batch,
            box_score_thresh=0.001,  # keep low-confidence boxes for AP (torchvision: 0.05)
            box_detections_per_img=sizes.detections,
        )
        if kind == "mask_rcnn":
            h = sizes.head_channels
            tv = MaskRCNN(
                body,
                mask_head=MaskRCNNHeads(c, (h, h, h, h), 1, norm_layer=norm_layer(sizes.norm)),
                mask_predictor=MaskRCNNPredictor(h, h, nc + 1),
                **common,
            )
        else:
            tv = FasterRCNN(body, **common)
        self.backbone, self.rpn, self.roi_heads = tv.backbone, tv.rpn, tv.roi_heads
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    @property
    def trunk(self) -> Trunk:
        return self.backbone.trunk

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def heads(self, x: torch.Tensor, feats: OrderedDict, targets: Targets | None = None):
        """RPN + RoI heads on FPN levels of the images ``x`` (B, 3, H, W).

        Returns:
            ``(detections, losses)``: losses are filled when the heads are in train mode
            (then ``targets`` is required); masks are pasted into the image.
        """
        size = tuple(x.shape[-2:])
        images = ImageList(x, [size] * len(x))
        proposals, rpn_losses = self.rpn(images, feats, targets)
        dets, roi_losses = self.roi_heads(feats, proposals, images.image_sizes, targets)
        if not self.roi_heads.training:
            for d in dets:
                if "masks" in d:
                    d["masks"] = paste_masks_in_image(d["masks"], d["boxes"], size)
        return dets, {**rpn_losses, **roi_losses}

    def forward(self, x: torch.Tensor, targets: Targets | None = None):
        """Train mode: torchvision's loss dict; eval mode: detections."""
        dets, losses = self.heads(x, self.backbone(self.normalize(x)), targets)
        return losses if self.training else dets

    def first(self, x: torch.Tensor) -> Detections:
        """Detections (the only route of a static model)."""
        return self.heads(x, self.backbone(self.normalize(x)))[0]

    def per_image_losses(self, x: torch.Tensor, feats: OrderedDict, targets: Targets) -> torch.Tensor:
        """Per-image sum of the RPN and RoI losses, (B,), without rewriting torchvision's samplers.

        The heads run once per image (RPN for every image first, then the RoI heads, the
        order in which the batched call draws its random samples). torchvision averages
        each loss over the sampled anchors/proposals of the whole batch, so the mean of
        these per-image losses equals the batch loss whenever every image fills its
        sample quota (``rpn_batch`` anchors, ``roi_batch`` proposals).
        """
        size = tuple(x.shape[-2:])
        with _loss_mode(self):
            props, per = [], [dict() for _ in range(len(x))]
            for i in range(len(x)):
                f = OrderedDict((k, v[i : i + 1]) for k, v in feats.items())
                p, losses = self.rpn(ImageList(x[i : i + 1], [size]), f, [targets[i]])
                props.append(p)
                per[i].update(losses)
            for i in range(len(x)):
                f = OrderedDict((k, v[i : i + 1]) for k, v in feats.items())
                _, losses = self.roi_heads(f, props[i], [size], [targets[i]])
                per[i].update(losses)
        # L_i = L_objectness + L_rpn_box + L_cls + L_box (+ L_mask), image i alone
        return torch.stack([sum(d.values()) for d in per])

    def fuse(self) -> TwoStageDetector:
        """Nothing to fold (kept for the same inference API as the YOLO model)."""
        return self

    def config(self) -> dict:
        return {"kind": self.kind, "backbone": self.trunk.name, "nc": self.nc, "dual": False}

    # ---------------------------------------------------------------- training interface
    @property
    def with_masks(self) -> bool:
        return self.kind == "mask_rcnn"

    def objective(self, batch: dict, forward=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Step-1 loss of a batch: the sum of torchvision's losses, named ``L1_<loss>`` (one detector)."""
        losses = (forward or self)(batch["img"], targets_from_batch(batch, self.with_masks))
        losses = {f"L1_{k}": v for k, v in losses.items()}
        return sum(losses.values()), {k: v.detach() for k, v in losses.items()}

    def detector_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"det1": list(self.parameters())}


class _loss_mode:
    """Put a detector's RPN and RoI heads in train mode (losses, sampling) and restore them.

    They hold no BatchNorm or dropout, so this changes only what they compute, not how.
    """

    def __init__(self, det: TwoStageDetector):
        self.mods = (det.rpn, det.roi_heads)

    def __enter__(self):
        self.was = [m.training for m in self.mods]
        for m in self.mods:
            m.train()

    def __exit__(self, *exc):
        for m, t in zip(self.mods, self.was, strict=True):
            m.train(t)


class DynamicTwoStage(nn.Module):
    """Two torchvision two-stage detectors with composite links and an adaptive router.

    Same forward modes as :class:`~dynamicdet.modeling.yolo.DynamicDetector`: ``model(x, targets)``
    (train: ``{"L1_<loss>", "L2_<loss>"}``), :meth:`score`, :meth:`score_logit`,
    :meth:`first`, :meth:`second`, :meth:`route` (batched; detections in input order), and the
    three stages of a route, :meth:`first_stage`, :meth:`easy_stage`, :meth:`hard_stage`.
    """

    easy_reads_images = True  # the RPN and RoI heads read the images' size (see RoutedDetector)

    def __init__(self, kind: str, backbone: str, nc: int, sizes: HeadSizes = DEFAULT_SIZES):
        super().__init__()
        self.kind, self.nc, self.ch = kind, nc, 3
        self.det1 = TwoStageDetector(kind, backbone, nc, sizes)
        self.det2 = TwoStageDetector(kind, backbone, nc, sizes)
        self.links = CompositeLinks(self.det1.trunk.tap_channels, self.det2.trunk.inject_channels)
        self.router = AdaptiveRouter(sum(self.det1.trunk.tap_channels))
        self.detach_links = False  # training only: see forward()

    def config(self) -> dict:
        return {"kind": self.kind, "backbone": self.det1.trunk.name, "nc": self.nc, "dual": True}

    @property
    def with_masks(self) -> bool:
        return self.kind == "mask_rcnn"

    # ---------------------------------------------------------------- building blocks
    def taps1(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Trunk 1's stage outputs F1 on images in [0, 1]."""
        return self.det1.trunk(self.det1.normalize(x))

    def pyramid2(self, x: torch.Tensor, taps1: list[torch.Tensor]) -> OrderedDict:
        """Trunk 2 (+ links from trunk 1) and FPN 2."""
        return self.det2.backbone.pyramid(self.det2.trunk(self.det2.normalize(x), inject=self.links(taps1)))

    def router_input(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk-1 features: (B, 3, H, W) -> (B, sum C_j)."""
        return AdaptiveRouter.pool(self.taps1(x))

    # ---------------------------------------------------------------- forward modes
    def forward(self, x: torch.Tensor, targets: Targets) -> dict[str, torch.Tensor]:
        """Step 1: both detectors' torchvision losses, prefixed ``L1_`` / ``L2_``.

        With ``detach_links`` set, the links read detached trunk-1 features (detector 2's
        loss does not reach trunk 1; a step-1 ablation).
        """
        t1 = self.taps1(x)
        _, l1 = self.det1.heads(x, self.det1.backbone.pyramid(t1), targets)
        _, l2 = self.det2.heads(x, self.pyramid2(x, [t.detach() for t in t1] if self.detach_links else t1), targets)
        return {**{f"L1_{k}": v for k, v in l1.items()}, **{f"L2_{k}": v for k, v in l2.items()}}

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """phi = sigmoid(router logit): (B, 3, H, W) -> (B,)."""
        return self.router(self.taps1(x))

    def score_logit(self, x: torch.Tensor) -> torch.Tensor:
        return self.router.logit(self.router_input(x))

    def first(self, x: torch.Tensor) -> Detections:
        """Easy route for all images: trunk 1 + FPN 1 + heads 1."""
        return self.easy_stage(x, self.taps1(x))

    def second(self, x: torch.Tensor) -> Detections:
        """Hard route for all images: trunk 1 -> links -> trunk 2 + FPN 2 + heads 2."""
        return self.hard_stage(x, self.taps1(x))

    def route(self, x: torch.Tensor, threshold: float) -> routing.RouteOutput:
        """Batched dynamic inference, :func:`dynamicdet.modeling.routing.route` (threshold on the logit);
        ``preds`` is the list of per-image detection dicts in input order."""
        return routing.route(self, x, threshold)

    # ---------------------------------------------------------------- the three stages of a route
    def first_stage(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Trunk 1 + router: (B, 3, H, W) -> (logit z (B,), taps F1 = trunk 1's four stage outputs
        (B, C_j, H / 2^(j+2), W / 2^(j+2)))."""
        t1 = self.taps1(x)
        return self.router.logit(AdaptiveRouter.pool(t1)), t1

    def easy_stage(self, x: torch.Tensor, taps: list[torch.Tensor]) -> Detections:
        """FPN 1 + RPN 1 + RoI heads 1 on trunk 1's taps of the images x (B, 3, H, W) (their size is read)."""
        return self.det1.heads(x, self.det1.backbone.pyramid(taps))[0]

    def hard_stage(self, x: torch.Tensor, taps: list[torch.Tensor]) -> Detections:
        """Links + trunk 2 + FPN 2 + RPN 2 + RoI heads 2 (no heads 1): images (B, 3, H, W) and their taps."""
        return self.det2.heads(x, self.pyramid2(x, taps))[0]

    # ---------------------------------------------------------------- training interface
    def objective(self, batch: dict, forward=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Step-1 loss of a batch: ``L = L1 + L2``, every RPN and RoI loss term of both detectors.

        Args:
            batch: ultralytics batch (see :func:`targets_from_batch`).
            forward: the callable that runs the model (a DDP wrapper under torchrun); default self.
        """
        losses = (forward or self)(batch["img"], targets_from_batch(batch, self.with_masks))
        # L = L1 + L2 = sum of every RPN and RoI loss term of both detectors (batch means)
        return sum(losses.values()), {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def router_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step-2 inputs of a batch: pooled trunk-1 features (B, C) and detached per-image L1, L2 (B,)."""
        return self.router_inputs(batch["img"], targets_from_batch(batch, self.with_masks))

    @torch.no_grad()
    def router_inputs(self, x: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`router_batch` on images (B, 3, H, W) and torchvision targets."""
        t1 = self.taps1(x)
        l1 = self.det1.per_image_losses(x, self.det1.backbone.pyramid(t1), targets)
        l2 = self.det2.per_image_losses(x, self.pyramid2(x, t1), targets)
        return AdaptiveRouter.pool(t1), l1, l2

    def detector_groups(self) -> dict[str, list[nn.Parameter]]:
        """Step-1 parameters by detector: detector 1, and detector 2 with the links that feed it."""
        return {"det1": list(self.det1.parameters()), "det2": [*self.det2.parameters(), *self.links.parameters()]}

    def fuse(self) -> DynamicTwoStage:
        return self


def build_two_stage(kind: str, backbone: str, nc: int, dual: bool = True, sizes: HeadSizes = DEFAULT_SIZES):
    """A :class:`DynamicTwoStage` (``dual``) or a static :class:`TwoStageDetector`."""
    return DynamicTwoStage(kind, backbone, nc, sizes) if dual else TwoStageDetector(kind, backbone, nc, sizes)
