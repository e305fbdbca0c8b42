"""The two-stage detectors' trunks: torchvision classification backbones cut into four stages, and their FPN.

A :class:`Trunk` is a torchvision ResNet or Swin cut into four stages with injection points
(where trunk 2 receives the composite links); :class:`FPNTrunk` puts torchvision's feature
pyramid on top, the ``backbone`` torchvision's ``FasterRCNN`` / ``MaskRCNN`` are built around;
:class:`HeadSizes` sizes the heads for a CPU.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import partial

import torch
import torchvision
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

TRUNKS = ("resnet18", "resnet34", "resnet50", "resnet101", "swin_t", "swin_s")
NORMS = ("bn", "gn")
GN_GROUPS = 32  # GroupNorm groups (Wu & He 2018); every ResNet and FPN width here is a multiple of 32


class Trunk(nn.Module):
    """A torchvision classification backbone cut into four stages with injection points.

    Stage j = ``entry[j]`` (the layer that changes resolution) then ``rest[j]``.
    ResNet: entry = stem (conv, BN, ReLU, max-pool) | first block of layer2/3/4 (stride 2);
    rest = layer1 | the remaining blocks. Swin: entry = patch embedding | patch merging;
    rest = the stage's transformer blocks (channels-last inside, NCHW outside).

    Args:
        name: one of :data:`TRUNKS`.
        norm: ResNet normalisation, ``"bn"`` (BatchNorm, trainable: torchvision's detectors
            freeze it, which only makes sense with pretrained weights; none are downloaded
            here) or ``"gn"`` (GroupNorm: batch-independent, the from-scratch recipe of
            He et al. 2019). Swin keeps its LayerNorm.
    """

    def __init__(self, name: str, norm: str = "bn"):
        super().__init__()
        if name not in TRUNKS:
            raise ValueError(f"unknown two-stage backbone {name!r}; supported: {TRUNKS}")
        self.name = name
        self.channels_last = name.startswith("swin")
        if self.channels_last:
            f = getattr(torchvision.models, name)(weights=None).features
            self.entry = nn.ModuleList([f[0], f[2], f[4], f[6]])
            self.rest = nn.ModuleList([f[1], f[3], f[5], f[7]])
        else:
            m = getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer(norm) or nn.BatchNorm2d)
            self.entry = nn.ModuleList(
                [nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool), m.layer2[0], m.layer3[0], m.layer4[0]]
            )
            self.rest = nn.ModuleList([m.layer1, m.layer2[1:], m.layer3[1:], m.layer4[1:]])
        # widths at the injection points and at the stage outputs, read off a dry run
        widths_in, widths_out = [], []
        with torch.no_grad():
            x = torch.zeros(1, 3, 64, 64)
            for entry, rest in zip(self.entry, self.rest, strict=True):
                x = entry(x)
                widths_in.append(x.shape[-1] if self.channels_last else x.shape[1])
                x = rest(x)
                widths_out.append(x.shape[-1] if self.channels_last else x.shape[1])
        self.inject_channels, self.tap_channels = widths_in, widths_out

    def forward(self, x: torch.Tensor, inject: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """(B, 3, H, W) -> four stage outputs (B, C_j, H / 2^(j+2), W / 2^(j+2)).

        ``inject[j]`` (B, C_in_j, ., .) is added right after ``entry[j]`` (the composite links).
        """
        feats = []
        for j, (entry, rest) in enumerate(zip(self.entry, self.rest, strict=True)):
            x = entry(x)
            if inject is not None:
                x = x + (inject[j].permute(0, 2, 3, 1) if self.channels_last else inject[j])
            x = rest(x)
            feats.append(x.permute(0, 3, 1, 2) if self.channels_last else x)
        return feats


def norm_layer(norm: str):
    """``"bn"`` -> None (the layer's own default), ``"gn"`` -> a GroupNorm factory ``(channels) -> module``."""
    if norm not in NORMS:
        raise ValueError(f"unknown two-stage norm {norm!r}; supported: {NORMS}")
    return partial(nn.GroupNorm, GN_GROUPS) if norm == "gn" else None


class FPNTrunk(nn.Module):
    """Trunk + FPN, the ``backbone`` torchvision's detector classes are built around."""

    def __init__(self, trunk: Trunk, out_channels: int, norm: str = "bn"):
        super().__init__()
        self.trunk = trunk
        # bn: torchvision's plain FPN (no normalisation); gn: GroupNorm after each FPN conv
        self.fpn = FeaturePyramidNetwork(
            trunk.tap_channels, out_channels, extra_blocks=LastLevelMaxPool(), norm_layer=norm_layer(norm)
        )
        self.out_channels = out_channels

    def pyramid(self, taps: list[torch.Tensor]) -> OrderedDict:
        """Stage outputs -> FPN levels {"0".."3", "pool"}, each (B, out_channels, ., .)."""
        return self.fpn(OrderedDict((str(i), t) for i, t in enumerate(taps)))

    def forward(self, x: torch.Tensor) -> OrderedDict:
        return self.pyramid(self.trunk(x))


@dataclass(frozen=True)
class HeadSizes:
    """CPU-sized heads (torchvision's defaults in brackets)."""

    fpn_channels: int = 64  # FPN width (256)
    head_channels: int = 256  # box-head MLP width (1024) and mask-head conv width (256)
    anchor_base: int = 8  # anchor side on the stride-4 level, doubling per level (32)
    rpn_batch: int = 256  # anchors sampled per image for the RPN loss (256)
    roi_batch: int = 128  # proposals sampled per image for the RoI loss (512)
    detections: int = 100  # detections kept per image (100); Mask R-CNN runs its mask head on each
    norm: str = "bn"  # bn: BatchNorm trunk, plain FPN and heads | gn: GroupNorm in trunk, FPN and mask head
