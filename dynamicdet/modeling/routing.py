"""Variable-speed inference: thresholds from a target latency or hard fraction, and routers to compare.

The paper's rule (section 3.4): with lat_easy, lat_hard the latencies of the two
routes and lat_t the target,

    k = (lat_t - lat_easy) / (lat_hard - lat_easy)

is the fraction of images that should take the hard route, and the threshold tau is
chosen on the validation difficulty scores so that a fraction k of them lies at or
above it (phi >= tau -> detector 2). The authors printed percentiles and let the user
pick; here it is a function.
"""

from __future__ import annotations

import math
import warnings

import numpy as np


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


def compose(dets1: dict[int, np.ndarray], dets2: dict[int, np.ndarray], hard: dict[int, bool]) -> dict:
    """Per-image detections of a routing decision: detector 2's where ``hard``, detector 1's elsewhere."""
    return {i: (dets2[i] if hard[i] else dets1[i]) for i in dets1}


def capture_ratio(ap_dyn: float, ap1: float, ap2: float) -> float:
    """c(k) = (AP_dyn(k) - AP_1) / (AP_2 - AP_1): the share of detector 2's AP gain kept."""
    return float("nan") if ap2 == ap1 else (ap_dyn - ap1) / (ap2 - ap1)
