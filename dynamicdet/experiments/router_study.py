"""Why does a router rank well or badly? Diagnosis and variants of step 2 (notebook 04).

The router is trained on a cache of per-image losses of the two frozen detectors
(:mod:`dynamicdet.engine.step2`). Its worth at inference is its **ranking** of val images: the
images above the threshold take detector 2, so what counts is the capture ratio
c(k) = (AP(k) - AP_1) / (AP_2 - AP_1) at each hard fraction k. This module measures

- :func:`loss_difference_stats`: the distribution of the router's target on the training
  views and on val (a shift between them moves the offset's balance point);
- :func:`view_agreement`: how well one view of an image predicts another's target
  (an upper bound on what any router can learn from one view);
- :func:`holdout_fit`: the router's ranking on the images it trained on, on held-out
  training images and on val (under- or over-fitting);
- :func:`variant_table`: c(k) on val of every router variant (loss, target, views,
  normalisation, hold-out), on the same two detectors, next to random routing and the
  oracles; and :func:`signal_table`, the same for fixed per-image signals (the generator's
  difficulty, detector 1's loss, ...), which says what a router *could* rank by.

Variants are configs (``router.*`` fields), trained by :func:`~dynamicdet.engine.step2.fit_router`
on their own cached views (:data:`~dynamicdet.engine.runs.VIEW_CACHE`), so each row is one
config change and reruns cost seconds.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import torch

from dynamicdet.config import ROUTER_PRESETS, Config
from dynamicdet.engine.step2 import fit_router, step_caches, train_step2
from dynamicdet.evaluation.coco_eval import detections_to_coco, per_image_ap
from dynamicdet.experiments.trained import Trained, evaluate_dets, route_detections, routed_evaluator
from dynamicdet.metrics import spearman
from dynamicdet.modeling import routing

# the router the paper and the authors' code train: L1 - L2 on two augmented views of the training set
PAPER_ROUTER = ROUTER_PRESETS["paper"]  # the paper's router (config preset ``router: paper``)
# one un-augmented view: the training images as val images are seen
CLEAN_VIEWS = {"views": 1, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "translate": 0.0, "scale": 0.0, "fliplr": 0.0}


def router_variant(cfg: Config, **router: object) -> Config:
    """A copy of ``cfg`` with some ``router.*`` fields changed (unknown field: clear error)."""
    out = copy.deepcopy(cfg)
    for k, v in router.items():
        if not hasattr(out.router, k):
            raise ValueError(f"router_variant: router.{k} is not a router field")
        setattr(out.router, k, v)
    return out


def _order(val: dict, ids: list) -> np.ndarray:
    """Positions of ``ids`` in the val cache (every id must be there)."""
    order = pd.Index(val["image_id"].numpy()).get_indexer(ids)
    if (order < 0).any():
        raise ValueError(f"{int((order < 0).sum())} val image(s) missing from the val cache")
    return order


def variant_caches(cfg: Config, progress: bool = False) -> tuple[dict, dict]:
    """The training-view cache and val cache of a router variant (built once, then read from disk)."""
    train_step2(cfg, progress=progress)
    return step_caches(cfg)


def _target(cache: dict, target: str) -> np.ndarray:
    """What the router ranks: L1 - L2 (``gain``) or L1 (``l1``), one value per cache entry."""
    return (cache["l1"] - (0 if target == "l1" else cache["l2"])).numpy()


def loss_difference_stats(cache: dict, val: dict, target: str = "gain") -> pd.DataFrame:
    """The router's target on the training views and on val.

    Returns:
        One row per split: ``n``, ``mean``, ``median``, ``std``, ``skew``, ``mean - median``,
        and ``share above the training median`` (0.5 on the training views by definition;
        on val, the share of images the adaptive offset would send to detector 2 if the
        router were perfect).
    """
    med = float(np.median(_target(cache, target)))
    rows = []
    for split, c in (("training views", cache), ("val", val)):
        x = _target(c, target)
        rows.append(
            {
                "split": split,
                "n": len(x),
                "mean": float(x.mean()),
                "median": float(np.median(x)),
                "std": float(x.std()),
                "skew": float(pd.Series(x).skew()),
                "mean - median": float(x.mean() - np.median(x)),
                "share above the training median": float((x > med).mean()),
                "mean L1": float(c["l1"].mean()),
                "mean L2": float(c["l2"].mean()),
            }
        )
    return pd.DataFrame(rows)


def view_agreement(cache: dict) -> dict[str, float]:
    """How much of the target is the image and how much the view (needs >= 2 views).

    Returns:
        ``spearman L1 - L2`` and ``spearman L1`` between views 0 and 1 of the same images,
        and ``within-image share of var(L1 - L2)`` (1: all noise between views, 0: none);
        NaN with one view.
    """
    df = pd.DataFrame({"id": cache["image_id"].numpy(), "view": cache["view"].numpy()})
    df["gain"], df["l1"] = _target(cache, "gain"), _target(cache, "l1")
    if df["view"].nunique() < 2:
        return {"spearman L1 - L2": np.nan, "spearman L1": np.nan, "within-image share of var(L1 - L2)": np.nan}
    g, l1 = (df.pivot_table(index="id", columns="view", values=v) for v in ("gain", "l1"))
    return {
        "spearman L1 - L2": spearman(g[0], g[1]),
        "spearman L1": spearman(l1[0], l1[1]),
        # E_i[var_v(x_iv)] / var(x)
        "within-image share of var(L1 - L2)": float(g.var(axis=1, ddof=0).mean() / df["gain"].var(ddof=0)),
    }


def holdout_fit(cache: dict, val: dict, cfg: Config, holdout: float = 0.2) -> dict[str, float]:
    """The router trained on (1 - holdout) of the training images, its ranking everywhere.

    Returns:
        Spearman of the router's logit with its target on the images it trained on, on the
        held-out training images and on val; the epoch kept (best on the held-out images).
    """
    fit = fit_router(cache, router_variant(cfg, holdout=holdout))
    held = torch.from_numpy(np.isin(cache["image_id"].numpy(), fit.holdout_ids))
    y = _target(cache, cfg.router.target)
    with torch.no_grad():
        z, zv = fit.router.logit(cache["pooled"]).numpy(), fit.router.logit(val["pooled"]).numpy()
    h = held.numpy()
    return {
        "spearman (trained-on images)": spearman(z[~h], y[~h]),
        "spearman (held-out training images)": spearman(z[h], y[h]),
        "spearman (val)": spearman(zv, _target(val, cfg.router.target)),
        "best epoch": fit.best_epoch,
        "epochs": cfg.router.epochs,
    }


class Capture:
    """c(k) of any per-image priority on val, for one trained model's two detectors."""

    def __init__(self, t: Trained, progress: bool = False):
        d1, d2 = route_detections(t, progress)
        self.ap1, self.ap2 = evaluate_dets(t, d1)["AP"], evaluate_dets(t, d2)["AP"]
        self.routed = routed_evaluator(t, d1, d2)
        self.ids = list(t.val_scores["image_id"])
        self.fractions = [k for k in t.cfg.eval.fractions if 0 < k < 1]
        pa1 = per_image_ap(t.info.gt_json["val"], detections_to_coco(d1, t.info.class_to_cat))
        pa2 = per_image_ap(t.info.gt_json["val"], detections_to_coco(d2, t.info.class_to_cat))
        # per-image AP gain of detector 2 (the oracle's priority)
        self.ap_gain = np.array(
            [np.nan_to_num(pa2.get(i, np.nan)) - np.nan_to_num(pa1.get(i, np.nan)) for i in self.ids]
        )

    def of(self, priority: np.ndarray) -> dict[str, float]:
        """``{"c(k)": ...}`` when the top-k fraction of ``priority`` (in ``self.ids`` order) takes detector 2."""
        out = {}
        for k in self.fractions:
            ap = self.routed.evaluate(dict(zip(self.ids, routing.top_fraction(priority, k), strict=True)))["AP"]
            # c(k) = (AP(k) - AP_1) / (AP_2 - AP_1)
            out[f"c({k:g})"] = routing.capture_ratio(ap, self.ap1, self.ap2)
        return out

    def random(self, seeds: int) -> dict[str, float]:
        """c(k) of random routing, mean over ``seeds`` draws."""
        runs = [self.of(np.random.default_rng(s).random(len(self.ids))) for s in range(seeds)]
        return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}


def variant_table(t: Trained, variants: dict[str, dict], cap: Capture | None = None) -> pd.DataFrame:
    """Every router variant trained on the same frozen detectors, ranked on val.

    Args:
        t: the trained model (its detectors, val detections and val cache).
        variants: row name -> ``router.*`` overrides of ``t.cfg`` (each trains on its own cache).

    Returns:
        One row per variant: the overrides, Spearman of the val logit with val L1 - L2 and
        with val L1, the share of val images and of training views with phi > 0.5 (the
        balance the loss reaches), and c(k) at every ``eval.fractions`` inside (0, 1).
    """
    cap = cap or Capture(t)
    _, val = step_caches(t.cfg)
    order = _order(val, cap.ids)
    rows = []
    for name, over in variants.items():
        vcfg = router_variant(t.cfg, **over)
        cache, _ = variant_caches(vcfg)
        fit = fit_router(cache, vcfg)
        with torch.no_grad():
            z = fit.router.logit(val["pooled"]).numpy()[order]
            zt = fit.router.logit(cache["pooled"]).numpy()
        rows.append(
            {
                "router": name,
                "overrides": json.dumps(over, sort_keys=True),
                "spearman val L1 - L2": spearman(z, _target(val, "gain")[order]),
                "spearman val L1": spearman(z, _target(val, "l1")[order]),
                "val phi > 0.5": float((z > 0).mean()),
                "train phi > 0.5": float((zt > 0).mean()),
                **cap.of(z),
            }
        )
    return pd.DataFrame(rows)


def signal_table(t: Trained, cap: Capture | None = None) -> pd.DataFrame:
    """c(k) on val when images are ranked by fixed per-image signals instead of a router.

    Rows: the router of ``t``; the oracles (val L1 - L2 and per-image AP gain, not available
    at inference); detector 1's val loss L1 (also an oracle, but one a router can learn:
    see :func:`variant_table`); the generator's attributes (difficulty, objects, occlusion,
    clutter; synthetic data only); random routing. Columns: Spearman with the per-image AP
    gain, and c(k).
    """
    cap = cap or Capture(t)
    _, val = step_caches(t.cfg)
    order = _order(val, cap.ids)
    scores = t.val_scores.set_index("image_id").loc[cap.ids]
    sig = {
        "learned router (this run)": scores["logit"].to_numpy(),
        "oracle: val L1 - L2": _target(val, "gain")[order],
        "oracle: per-image AP gain": cap.ap_gain,
        "oracle: val L1 (detector 1's loss)": _target(val, "l1")[order],
    }
    images = {im["id"]: im for im in json.loads(t.info.gt_json["val"].read_text())["images"]}
    for key in ("difficulty", "n_objects", "occlusion", "clutter"):
        if all(key in images[i] for i in cap.ids):
            sig[f"generator: {key}"] = np.array([images[i][key] for i in cap.ids], dtype=float)
    rows = [{"ranked by": k, "spearman with AP gain": spearman(v, cap.ap_gain), **cap.of(v)} for k, v in sig.items()]
    rows.append({"ranked by": "random", "spearman with AP gain": 0.0, **cap.random(t.cfg.eval.random_seeds)})
    return pd.DataFrame(rows)
