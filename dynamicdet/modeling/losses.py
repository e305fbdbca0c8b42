"""Losses: per-image detection loss (on ultralytics' v8DetectionLoss) and the router losses.

Step 1 minimises L1 + L2, the two detectors' ordinary ultralytics batch losses.
Step 2 needs one loss *per image* for each detector (L1_i, L2_i) and trains the router
with one of three losses of phi_i (the paper's section 3.3):

- naive (1):          (1 - phi) L1 + phi L2
- naive (2):          (1 - phi) L1 + phi L2 + lambda phi
- adaptive offset:    (1 - phi)(L1 - Delta/2) + phi (L2 + Delta/2),
                      Delta = median over the training images of (L1 - L2)

and two ranking-style objectives beyond the paper (notebook 04 compares them):

- soft target:        BCE(phi, sigmoid((L1 - L2 - Delta) / s)), s = std of L1 - L2 over the
                      training images: a target monotone in the gain, 0.5 at the median
- rank:               RankNet over the batch's pairs, log(1 + exp(-(z_i - z_j))) for every
                      pair with L1_i - L2_i > L1_j - L2_j (z = the router's logit)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from ultralytics.cfg import get_cfg
from ultralytics.utils.loss import v8DetectionLoss
from ultralytics.utils.metrics import bbox_iou
from ultralytics.utils.tal import bbox2dist, make_anchors


def attach_hyp(det, **overrides) -> None:
    """Give an ultralytics model the ``args`` namespace its loss reads (box/cls/dfl gains)."""
    det.args = get_cfg(overrides=overrides or None)


class DetectionLoss(v8DetectionLoss):
    """ultralytics' YOLOv8 loss, plus a per-image variant for step 2.

    ``self(preds, batch)`` is ultralytics' batch loss unchanged: ``(loss_vector * B, items)``.
    :meth:`per_image` returns one loss per image using the same task-aligned assigner and
    the same terms, but divides by a per-image normaliser so that an image's loss in a
    batch equals its loss computed alone.

    Batch format (ultralytics): ``batch_idx`` (N,) float, sorted by image; ``cls`` (N, 1);
    ``bboxes`` (N, 4) normalised xywh.
    """

    def __init__(self, det, tal_topk: int = 10):
        if not hasattr(det, "args"):
            attach_hyp(det)
        super().__init__(det, tal_topk=tal_topk)
        if not self.use_dfl:
            raise ValueError("per-image loss supports DFL heads (YOLOv8 / YOLO11) only")

    def per_image(self, preds: dict, batch: dict) -> dict[str, torch.Tensor]:
        """Per-image detection loss.

        Args:
            preds: raw training output of a Detect head: ``boxes`` (B, 4*reg_max, A),
                ``scores`` (B, nc, A) logits, ``feats`` (list of level maps).
            batch: targets as described in the class docstring.

        Returns:
            ``{"box", "cls", "dfl", "total"}``, each (B,), gains applied; ``total`` is
            their sum. An image without objects gets only the (finite) cls term.
        """
        pred_distri = preds["boxes"].permute(0, 2, 1).contiguous()  # (B, A, 4*reg_max)
        pred_scores = preds["scores"].permute(0, 2, 1).contiguous()  # (B, A, nc)
        anchor_points, stride_tensor = make_anchors(preds["feats"], self.stride, 0.5)
        dtype = pred_scores.dtype
        bsz = pred_scores.shape[0]
        imgsz = torch.tensor(preds["feats"][0].shape[2:], device=self.device, dtype=dtype) * self.stride[0]

        targets = torch.cat((batch["batch_idx"].view(-1, 1), batch["cls"].view(-1, 1), batch["bboxes"]), 1)
        targets = self.preprocess(targets.to(self.device), bsz, scale_tensor=imgsz[[1, 0, 1, 0]])
        gt_labels, gt_bboxes = targets.split((1, 4), 2)  # cls, xyxy pixels
        mask_gt = gt_bboxes.sum(2, keepdim=True).gt_(0.0)
        pred_bboxes = self.bbox_decode(anchor_points, pred_distri)  # xyxy grid units, (B, A, 4)

        _, target_bboxes, target_scores, fg_mask, _ = self.assigner(
            pred_scores.detach().sigmoid(),
            (pred_bboxes.detach() * stride_tensor).type(gt_bboxes.dtype),
            anchor_points * stride_tensor,
            gt_labels,
            gt_bboxes,
            mask_gt,
        )
        # Per-image normaliser: the image's own sum of target scores (ultralytics: the batch's).
        norm = target_scores.sum((1, 2)).clamp(min=1)  # (B,)

        # cls_i = sum_{anchors, classes} BCE(s, t) / norm_i
        cls = self.bce(pred_scores, target_scores.to(dtype)).sum((1, 2)) / norm

        # box_i = sum_{fg anchors} w (1 - CIoU) / norm_i ;  dfl_i = sum_{fg anchors} w DFL / norm_i
        b, a = fg_mask.nonzero(as_tuple=True)
        weight = target_scores[b, a].sum(-1)  # (F,)
        tgt = (target_bboxes / stride_tensor)[b, a]  # (F, 4) grid units
        iou = bbox_iou(pred_bboxes[b, a], tgt, xywh=False, CIoU=True).squeeze(-1)
        box = pred_scores.new_zeros(bsz).index_add(0, b, (1.0 - iou) * weight) / norm
        target_ltrb = bbox2dist(anchor_points[a], tgt, self.reg_max - 1)
        dfl_f = self.bbox_loss.dfl_loss(pred_distri[b, a].view(-1, self.reg_max), target_ltrb).squeeze(-1)
        dfl = pred_scores.new_zeros(bsz).index_add(0, b, dfl_f * weight) / norm

        box, cls, dfl = box * self.hyp.box, cls * self.hyp.cls, dfl * self.hyp.dfl
        return {"box": box, "cls": cls, "dfl": dfl, "total": box + cls + dfl}


# ------------------------------------------------------------------------ router losses
ROUTER_LOSSES = ("naive", "naive_lambda", "adaptive_offset", "soft_target", "rank")


def router_loss(
    phi: torch.Tensor,
    l1: torch.Tensor,
    l2: torch.Tensor,
    kind: str = "adaptive_offset",
    lam: float = 0.0,
    delta: float | torch.Tensor = 0.0,
    logit: torch.Tensor | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """Step-2 loss of the router, averaged over the images (``rank``: over the pairs) of the batch.

    Args:
        phi: (B,) difficulty scores (the only input with a gradient).
        l1, l2: (B,) per-image losses of detector 1 and 2 (detached here).
        kind: one of :data:`ROUTER_LOSSES`.
        lam: lambda of ``naive_lambda``.
        delta: Delta of ``adaptive_offset`` and ``soft_target``, the median of L1 - L2 over training images.
        logit: (B,) the router's pre-sigmoid scores, phi = sigmoid(logit); needed by ``soft_target``
            and ``rank`` (numerically safe where phi saturates).
        scale: s of ``soft_target``, the spread of L1 - L2 over the training images.

    Returns:
        Scalar loss.
    """
    l1, l2 = l1.detach(), l2.detach()
    if kind == "naive":
        # L = (1 - phi) L1 + phi L2            dL/dphi = L2 - L1
        loss = (1 - phi) * l1 + phi * l2
    elif kind == "naive_lambda":
        # L = (1 - phi) L1 + phi L2 + lambda phi      dL/dphi = L2 - L1 + lambda
        loss = (1 - phi) * l1 + phi * l2 + lam * phi
    elif kind == "adaptive_offset":
        # L = (1 - phi)(L1 - Delta/2) + phi (L2 + Delta/2)      dL/dphi = L2 - L1 + Delta
        loss = (1 - phi) * (l1 - delta / 2) + phi * (l2 + delta / 2)
    elif kind in ("soft_target", "rank"):
        if logit is None:
            raise ValueError(f"router loss {kind!r} needs the router's logits (logit=...)")
        d = l1 - l2
        if kind == "soft_target":
            # t = sigmoid((L1 - L2 - Delta) / s);   L = -t log(phi) - (1 - t) log(1 - phi)
            loss = F.binary_cross_entropy_with_logits(logit, torch.sigmoid((d - delta) / scale), reduction="none")
        else:
            # L = mean over pairs (i, j) with d_i > d_j of log(1 + exp(-(z_i - z_j)))
            wins = d[:, None] > d[None, :]
            if not bool(wins.any()):  # every gain tied: nothing to rank (keeps the graph for backward)
                return logit.sum() * 0.0
            return F.softplus(-(logit[:, None] - logit[None, :])[wins]).mean()
    else:
        raise ValueError(f"unknown router loss {kind!r}; choose one of {ROUTER_LOSSES}")
    return loss.mean()


class RunningMedian:
    """The authors' Delta: the median of all (L1 - L2) values seen so far."""

    def __init__(self):
        self.values: list[float] = []

    def update(self, diff: torch.Tensor) -> float:
        """Add a batch of differences (B,) and return the median of everything seen."""
        self.values.extend(diff.detach().flatten().tolist())
        return float(np.median(self.values))
