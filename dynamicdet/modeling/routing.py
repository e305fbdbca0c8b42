"""Dynamic inference: the route split, written once, and the rules that choose its threshold.

**The route split.** Every dynamic model (YOLO :class:`~dynamicdet.modeling.yolo.DynamicDetector`,
two-stage :class:`~dynamicdet.modeling.two_stage.DynamicTwoStage`, and the ONNX runner
:class:`~dynamicdet.deploy.export.OnnxDynamicDetector`) is seen as the three stages of
:class:`RoutedDetector`; :func:`route` runs them on a batch, and the stream scheduler
(:mod:`dynamicdet.deploy.stream`) runs the same stages on queued sub-batches::

    x ──► first_stage (B1 + router) ──┬── z <  tau ──► easy_stage (H1)              ──► preds
          logit z (B,), taps F1       └── z >= tau ──► hard_stage (links + B2 + H2) ──► preds

**The threshold rules.** The paper's rule (section 3.4): with lat_easy, lat_hard the latencies
of the two routes and lat_t the target,

    k = (lat_t - lat_easy) / (lat_hard - lat_easy)

is the fraction of images that should take the hard route, and the threshold tau is
chosen on the validation difficulty scores so that a fraction k of them lies at or
above it (phi >= tau -> detector 2). The authors printed percentiles and let the user
pick; here it is a function.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

Preds = torch.Tensor | list
"""A route's detections of a batch of B images: a tensor batched on dim 0 (YOLO: (B, 4 + nc, A)
raw detections before NMS), or a list of B per-image items (torchvision: ``{"boxes": (n, 4) xyxy,
"scores": (n,), "labels": (n,)[, "masks": (n, 1, H, W)]}``)."""


@runtime_checkable
class RoutedDetector(Protocol):
    """A dynamic detector as the three stages that :func:`route` runs.

    Shapes: ``x`` (B, 3, H, W) images in [0, 1]; ``taps`` = F1, backbone 1's multi-scale features,
    a list of L tensors (B, C_l, H_l, W_l) (what the router pools, what the links read, and all
    that head 1 reads of backbone 1); ``logit`` (B,) the router's pre-sigmoid difficulty z,
    phi = sigmoid(z); preds: :data:`Preds`. A stage given a sub-batch (rows of ``x`` and of every
    tap) returns that sub-batch's predictions, in its order.

    Attributes:
        easy_reads_images: whether :meth:`easy_stage` reads the images (torchvision's heads read
            their size) or only the taps (then :func:`route` and the stream scheduler pass None
            and keep no images for the easy route).
    """

    easy_reads_images: bool

    def first_stage(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """B1 + router on every image: x (B, 3, H, W) -> (logit z (B,), taps F1)."""
        ...

    def easy_stage(self, x: torch.Tensor | None, taps: list[torch.Tensor]) -> Preds:
        """The easy route's rest, H1: (x or None, taps of B images) -> preds of the B images."""
        ...

    def hard_stage(self, x: torch.Tensor, taps: list[torch.Tensor]) -> Preds:
        """The hard route's rest, links + B2 + H2 (H1 is skipped): (x, taps of B images) -> preds."""
        ...


@dataclass
class RouteOutput:
    """Result of :func:`route`.

    Attributes:
        preds: :data:`Preds` of the B images in input order, each from the route it took.
        hard: (B,) bool, True where the image took the hard route (detector 2).
        phi: (B,) difficulty scores, sigmoid(logit).
        logit: (B,) the router's pre-sigmoid scores, on which the threshold is applied.
    """

    preds: Preds
    hard: torch.Tensor
    phi: torch.Tensor
    logit: torch.Tensor


def route(model: RoutedDetector, x: torch.Tensor, threshold: float) -> RouteOutput:
    """Batched dynamic inference: the route split, for every model kind.

    B1 and the router run on the whole batch; H1 runs on the easy subset only
    (z < threshold), links + B2 + H2 on the hard subset only (z >= threshold), with those
    images' B1 features feeding the links. Outputs are merged back in input order. A route
    that no image takes costs nothing, and a batch that takes one route is not copied.

    The threshold applies to the router's logit z, phi = sigmoid(z): the same order as phi,
    without float saturation (a trained router pushes many phi to exactly 1.0 in float32,
    and ties cannot be split by a threshold on phi). Use ``math.log(tau / (1 - tau))`` to
    threshold at a phi value tau.

    Args:
        model: any :class:`RoutedDetector`, in eval mode.
        x: (B, 3, H, W) images in [0, 1].
        threshold: on the logit; images with z >= threshold take the hard route
            (``-inf``: all hard, ``+inf``: all easy).
    """
    z, taps = model.first_stage(x)
    hard = z >= threshold
    n_hard = int(hard.sum())
    if n_hard == 0:  # every image easy: no subset, no copy
        preds = model.easy_stage(x, taps)
    elif n_hard == len(hard):  # every image hard: H1 never runs
        preds = model.hard_stage(x, taps)
    else:
        easy_idx, hard_idx = (~hard).nonzero().squeeze(1), hard.nonzero().squeeze(1)
        p_easy = model.easy_stage(x[easy_idx] if model.easy_reads_images else None, [t[easy_idx] for t in taps])
        p_hard = model.hard_stage(x[hard_idx], [t[hard_idx] for t in taps])
        preds = _merge(len(hard), (easy_idx, p_easy), (hard_idx, p_hard))
    return RouteOutput(preds=preds, hard=hard, phi=torch.sigmoid(z), logit=z)


def _merge(n: int, *parts: tuple[torch.Tensor, Preds]) -> Preds:
    """The predictions of sub-batches ``(rows, preds)`` placed at their rows of a batch of ``n``."""
    first = parts[0][1]
    if isinstance(first, torch.Tensor):
        out = first.new_empty((n, *first.shape[1:]))
        for rows, preds in parts:
            out[rows] = preds
        return out
    out = [None] * n
    for rows, preds in parts:
        for i, p in zip(rows.tolist(), preds, strict=True):
            out[i] = p
    return out


class TargetOutOfRange(ValueError):
    """A target latency / fraction outside what the model can reach."""


def fraction_for_latency(target: float, lat_easy: float, lat_hard: float, clip: bool = False) -> float:
    """Hard fraction k that meets a target latency (linear in k, as the routes' mix).

    Raises:
        TargetOutOfRange: target outside [lat_easy, lat_hard] (unless ``clip``, which
            clips to the range with a warning).
    """
    if not lat_hard > lat_easy:
        raise ValueError(f"lat_hard ({lat_hard:.3f}) must exceed lat_easy ({lat_easy:.3f})")
    if not lat_easy <= target <= lat_hard:
        msg = (
            f"target latency {target:.3f} ms is outside the reachable range "
            f"[{lat_easy:.3f}, {lat_hard:.3f}] ms (easy route .. hard route)"
        )
        if not clip:
            raise TargetOutOfRange(msg)
        warnings.warn(msg + "; clipped", stacklevel=2)
        target = min(max(target, lat_easy), lat_hard)
    # k = (lat_t - lat_easy) / (lat_hard - lat_easy)
    return (target - lat_easy) / (lat_hard - lat_easy)


def threshold_for_fraction(scores: np.ndarray, k: float) -> float:
    """tau such that a fraction k of ``scores`` satisfies ``score >= tau``.

    With N scores, round(k N) images go to the hard route; tau is placed midway between
    the n-th and (n+1)-th largest score, so the rule is robust to tiny numeric changes.
    Ties at the cut cannot be split by a threshold: the tied images all go the same way
    (to the side that keeps the fraction closest to k). k = 0 gives +inf (all easy),
    k = 1 gives -inf (all hard).
    """
    if not 0.0 <= k <= 1.0:
        raise TargetOutOfRange(f"hard fraction k = {k} is outside [0, 1]")
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]  # descending
    n_total = len(s)
    if n_total == 0:
        raise ValueError("no scores to choose a threshold from")
    n = int(round(k * n_total))
    if n == 0:
        return math.inf
    if n == n_total:
        return -math.inf
    hi, lo = s[n - 1], s[n]
    if hi > lo:
        return float((hi + lo) / 2)
    # tie across the cut: either include the whole tied block or exclude it
    above = int((s > hi).sum())  # strictly above the tie
    upto = int((s >= hi).sum())  # including the tie
    if abs(upto - n) <= abs(n - above) or above == 0:
        return float(hi)  # include the tie
    return float((s[above - 1] + hi) / 2)  # exclude the tie


def threshold_for_latency(scores, target: float, lat_easy: float, lat_hard: float, clip: bool = False) -> float:
    """tau for a target latency: k from :func:`fraction_for_latency`, then :func:`threshold_for_fraction`."""
    return threshold_for_fraction(scores, fraction_for_latency(target, lat_easy, lat_hard, clip))


def top_fraction(priority: np.ndarray, k: float) -> np.ndarray:
    """Boolean mask of the round(k N) entries with the largest priority (stable order on ties)."""
    priority = np.asarray(priority, dtype=np.float64)
    n = int(round(k * len(priority)))
    mask = np.zeros(len(priority), dtype=bool)
    if n:
        order = np.argsort(-priority, kind="stable")
        mask[order[:n]] = True
    return mask


def random_route(n_images: int, k: float, seed: int) -> np.ndarray:
    """Random routing: round(k N) images chosen uniformly to take the hard route."""
    rng = np.random.default_rng(seed)
    return top_fraction(rng.random(n_images), k)


def confidence_escalation_score(dets1: dict[int, np.ndarray], image_ids: list[int], top: int = 10) -> np.ndarray:
    """Uncertainty of detector 1's output, the practitioners' rule without a router.

    Rule: run detector 1; take the ``top`` highest detection confidences of the image
    (missing ones count as 0); the image's uncertainty is 1 - their mean. The least
    certain images are escalated to detector 2. Its hard route runs H1 *and* B2 + H2,
    so it costs more than the learned router's hard route.
    """
    out = np.empty(len(image_ids))
    for i, image_id in enumerate(image_ids):
        conf = np.sort(dets1[image_id][:, 4])[::-1][:top] if len(dets1[image_id]) else np.zeros(0)
        out[i] = 1.0 - np.pad(conf, (0, top - len(conf))).mean()
    return out


def capture_ratio(ap_dyn: float, ap1: float, ap2: float) -> float:
    """c(k) = (AP_dyn(k) - AP_1) / (AP_2 - AP_1): the share of detector 2's AP gain kept."""
    return float("nan") if ap2 == ap1 else (ap_dyn - ap1) / (ap2 - ap1)
