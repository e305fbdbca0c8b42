"""What the two detectors of a dynamic model share: the composite links and the adaptive router.

Both model kinds (:mod:`~dynamicdet.modeling.yolo`, :mod:`~dynamicdet.modeling.two_stage`) build
them on backbone 1's multi-scale features F1 = {f1_1, ..., f1_L}, each (B, C_l, H_l, W_l):

- :class:`CompositeLinks` feed F1 into backbone 2 (CBNet's composite connections);
- :class:`AdaptiveRouter` scores each image's difficulty phi from F1.

Sign convention: ``phi`` is the **difficulty** (high = hard = send to detector 2), as in the
paper. The authors' code outputs ``1 - phi``; we never do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CompositeLinks(nn.Module):
    """Composite backbone links (the authors' CBLinear + CBFuse).

    For each B1 level i a 1x1 conv (bias, no BN, no activation) projects f1_i to the
    channel widths of the B2 levels it feeds: B2 level j receives B1 levels i >= j (the
    same level and every deeper one). Each projection is resized with nearest-neighbour
    interpolation to B2 level j's size and all are summed:

        link_j = sum_{i >= j} resize(W_i^{(j)} f1_i + b_i^{(j)}, size(f2_j))

    and ``link_j`` is added to B2's feature right after its stride-2 downsampling conv j.
    """

    def __init__(self, src_channels: list[int], dst_channels: list[int]):
        super().__init__()
        if len(src_channels) != len(dst_channels):
            raise ValueError("need one destination level per source level")
        self.splits = [list(dst_channels[: i + 1]) for i in range(len(src_channels))]
        self.proj = nn.ModuleList(
            nn.Conv2d(c, sum(s), kernel_size=1, bias=True) for c, s in zip(src_channels, self.splits, strict=True)
        )

    def forward(self, feats1: list[torch.Tensor]) -> list[torch.Tensor]:
        """Args: feats1: B1 levels, (B, C1_i, H_i, W_i). Returns: one (B, C2_j, H_j, W_j) tensor per B2 level."""
        parts = [conv(f).split(s, dim=1) for conv, f, s in zip(self.proj, feats1, self.splits, strict=True)]
        out = []
        for j, f in enumerate(feats1):  # B2 level j has B1 level j's resolution
            size = f.shape[-2:]
            out.append(sum(F.interpolate(parts[i][j], size=size, mode="nearest") for i in range(j, len(feats1))))
        return out


class AdaptiveRouter(nn.Module):
    """The adaptive router: a difficulty score per image from B1's multi-scale features.

    Sign convention: the output ``phi`` in (0, 1) is the image's **difficulty**; high
    phi = hard image = route to detector 2 (the paper's convention; the authors' code
    returns ``1 - phi``).
    """

    def __init__(self, in_channels: int, reduction: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(in_channels, in_channels // reduction)
        self.fc2 = nn.Linear(in_channels // reduction, 1)

    @staticmethod
    def pool(feats1: list[torch.Tensor]) -> torch.Tensor:
        """F~ = Concat(GAP(f_1), ..., GAP(f_L)): (B, C_i, H_i, W_i) per level -> (B, sum C_i)."""
        return torch.cat([f.mean(dim=(2, 3)) for f in feats1], dim=1)

    def logit(self, pooled: torch.Tensor) -> torch.Tensor:
        """z = W2 relu(W1 F~ + b1) + b2, the pre-sigmoid difficulty: (B, C) -> (B,)."""
        return self.fc2(F.relu(self.fc1(pooled))).squeeze(1)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """The router on pooled features (also what step 2 trains on the cache): (B, C) -> (B,)."""
        # phi = sigmoid(W2 relu(W1 F~ + b1) + b2)
        return torch.sigmoid(self.logit(pooled))

    def forward(self, feats1: list[torch.Tensor]) -> torch.Tensor:
        """Args: feats1: B1 levels, (B, C_i, H_i, W_i). Returns: phi, (B,)."""
        return self.head(self.pool(feats1))
