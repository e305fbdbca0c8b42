"""COCO evaluation with pycocotools (the paper's metric), plus per-image AP.

Detections come in as ``{image id: (n, 6) [x1, y1, x2, y2, score, class index]}`` in
original-image pixels (what :func:`dynamicdet.evaluation.predict.predict` returns); they are turned
into COCO result dicts and scored by ``COCOeval``. Four pycocotools behaviours are
handled here so callers do not trip on them:

- ``COCO.loadRes`` fails on an empty result list: we build an empty result set ourselves,
  so no detections give AP 0 (and -1 where the ground truth has nothing to find).
- ``COCO.loadRes`` adds keys to the result dicts it is given: we hand it copies.
- for ``segm``, a result that also carries ``bbox`` gets the *box* area, which moves it
  between the small/medium/large ranges: we drop ``bbox`` (as detectron2 does).
- ``COCOeval.accumulate(p)`` indexes its per-image results by positions in ``p`` rather
  than in the evaluated parameters, so a subset of images gives the wrong numbers: per-image
  AP is computed here from ``evalImgs`` directly (see :func:`per_image_ap`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]


# ----------------------------------------------------------------------------- results
def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def detections_to_coco(dets: Mapping[int, np.ndarray | torch.Tensor], class_to_cat: Sequence[int]) -> list[dict]:
    """Detections -> COCO result dicts.

    Args:
        dets: COCO image id -> (n, 6) ``[x1, y1, x2, y2, score, class index]`` in original
            image pixels (n may be 0).
        class_to_cat: class index -> COCO category id.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]`` with boxes
        rounded to 1/1000 px and scores to 5 decimals (as ultralytics writes them).

    Raises:
        ValueError: an array that is not (n, 6), or a class index outside ``class_to_cat``.
    """
    out: list[dict] = []
    for image_id, d in dets.items():
        a = _to_numpy(d)
        if a.size == 0:
            continue
        if a.ndim != 2 or a.shape[1] != 6:
            raise ValueError(f"image {image_id}: detections must be (n, 6), got {a.shape}")
        cls = a[:, 5].astype(np.int64)
        if cls.min() < 0 or cls.max() >= len(class_to_cat):
            raise ValueError(f"image {image_id}: class index {cls.max()} outside 0..{len(class_to_cat) - 1}")
        xywh = a[:, :4].copy()
        xywh[:, 2:] -= xywh[:, :2]
        for box, score, c in zip(xywh.tolist(), a[:, 4].tolist(), cls.tolist(), strict=True):
            out.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(class_to_cat[c]),
                    "bbox": [round(v, 3) for v in box],
                    "score": round(score, 5),
                }
            )
    return out


def masks_to_coco(
    masks: np.ndarray | torch.Tensor,
    scores: np.ndarray | torch.Tensor | Sequence[float],
    classes: np.ndarray | torch.Tensor | Sequence[int],
    image_id: int,
    class_to_cat: Sequence[int],
) -> list[dict]:
    """Binary instance masks of one image -> COCO ``segm`` result dicts (compressed RLE).

    Args:
        masks: (n, H, W) binary masks at the original image size.
        scores: (n,) confidences.
        classes: (n,) class indices.
        image_id: COCO image id.
        class_to_cat: class index -> COCO category id.

    Returns:
        ``[{"image_id", "category_id", "segmentation": {"size", "counts": str}, "score"}, ...]``
        (``counts`` decoded to ``str`` so the dicts are JSON-serialisable).
    """
    m = _to_numpy(masks)
    if m.ndim != 3:
        raise ValueError(f"image {image_id}: masks must be (n, H, W), got {m.shape}")
    rles = mask_utils.encode(np.asfortranarray((m > 0.5).transpose(1, 2, 0).astype(np.uint8))) if len(m) else []
    return rles_to_coco(rles, scores, classes, image_id, class_to_cat)  # checks the lengths


def rles_to_coco(
    rles: Sequence[dict],
    scores: np.ndarray | torch.Tensor | Sequence[float],
    classes: np.ndarray | torch.Tensor | Sequence[int],
    image_id: int,
    class_to_cat: Sequence[int],
) -> list[dict]:
    """Compressed RLEs (``pycocotools.mask.encode``) of one image -> COCO ``segm`` result dicts."""
    scores, classes = _to_numpy(scores).reshape(-1), _to_numpy(classes).reshape(-1).astype(np.int64)
    if not len(rles) == len(scores) == len(classes):
        raise ValueError(f"image {image_id}: {len(rles)} masks, {len(scores)} scores, {len(classes)} classes")
    out = []
    for rle, score, c in zip(rles, scores.tolist(), classes.tolist(), strict=True):
        counts = rle["counts"]
        out.append(
            {
                "image_id": int(image_id),
                "category_id": int(class_to_cat[c]),
                "segmentation": {
                    "size": [int(v) for v in rle["size"]],
                    "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
                },
                "score": round(score, 5),
            }
        )
    return out


def segms_to_coco(dets: Mapping[int, np.ndarray], rles: Mapping[int, Sequence[dict]], class_to_cat) -> list[dict]:
    """Every image's masks (from ``predict(..., masks_out=)``) as COCO ``segm`` results, scored as its boxes."""
    out = []
    for image_id, d in dets.items():
        d = _to_numpy(d)
        out += rles_to_coco(rles.get(image_id, []), d[:, 4], d[:, 5], image_id, class_to_cat)
    return out


# ----------------------------------------------------------------------------- ground truth
@functools.lru_cache(maxsize=4)
def _load_gt_cached(path: str, mtime_ns: int, size: int) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def _load_gt(gt: str | Path | COCO) -> COCO:
    """A ground-truth ``COCO`` (files are cached by path, mtime and size), checked for pycocotools' pitfalls."""
    if isinstance(gt, COCO):
        coco = gt
    else:
        p = Path(gt).resolve()
        if not p.is_file():
            raise FileNotFoundError(f"ground-truth json not found: {p}")
        st = p.stat()
        coco = _load_gt_cached(str(p), st.st_mtime_ns, st.st_size)
    if 0 in coco.anns:
        # COCOeval stores matched gt ids in a float array where 0 means "unmatched".
        raise ValueError("ground truth has an annotation with id 0: pycocotools would count its match as a miss")
    for ann in coco.anns.values():  # COCOeval reads both keys; fill them when a json omits them
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    return coco


def _load_results(coco_gt: COCO, results: list[dict], iou_type: str) -> COCO:
    """``coco_gt.loadRes(results)`` that accepts an empty list and leaves ``results`` untouched."""
    unknown = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"results refer to image ids not in the ground truth: {sorted(unknown)[:10]}")
    if not results:
        res = COCO()
        res.dataset = {
            "images": list(coco_gt.dataset["images"]),
            "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
            "annotations": [],
        }
        with contextlib.redirect_stdout(io.StringIO()):
            res.createIndex()
        return res
    anns = [dict(r) for r in results]
    if iou_type == "segm":
        for a in anns:  # let loadRes use the mask area, not the box area (see module docstring)
            a.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_gt.loadRes(anns)


def _cocoeval(gt: str | Path | COCO, results: list[dict], iou_type: str, image_ids: Sequence[int] | None) -> COCOeval:
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    coco_gt = _load_gt(gt)
    coco_dt = _load_results(coco_gt, results, iou_type)
    ev = COCOeval(coco_gt, coco_dt, iouType=iou_type)
    if image_ids is not None:
        ev.params.imgIds = sorted(int(i) for i in image_ids)
    return ev


# ----------------------------------------------------------------------------- metrics
def coco_evaluate(
    gt: str | Path | COCO,
    results: list[dict],
    iou_type: str = "bbox",
    image_ids: Sequence[int] | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """COCO AP of a result list.

    Args:
        gt: ground-truth json path or a loaded ``COCO``.
        results: COCO result dicts (:func:`detections_to_coco`, :func:`masks_to_coco`); may be empty.
        iou_type: ``"bbox"`` or ``"segm"``.
        image_ids: evaluate on these images only (default: every ground-truth image).
        verbose: let pycocotools print its progress and summary table.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` in [0, 1] (COCOeval ``stats[0:6]``),
        -1 where undefined (no ground truth of that size). No detections give 0 where defined.
    """
    ev = _cocoeval(gt, results, iou_type, image_ids)
    out = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with out:
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(METRIC_KEYS, ev.stats[:6], strict=True)}


def _image_category_precision(e: dict[str, Any], rec_thrs: np.ndarray) -> np.ndarray | None:
    """Interpolated precision (T, R) of one ``evalImgs`` entry, exactly as ``COCOeval.accumulate`` computes it.

    Returns None when the entry has no non-ignored ground truth (precision undefined).
    """
    gt_ignore = np.asarray(e["gtIgnore"], dtype=bool)
    n_pos = int(np.count_nonzero(~gt_ignore))
    if n_pos == 0:
        return None
    # evaluateImg already sorted the detections by score and kept maxDets[-1] of them.
    dt_matched = np.asarray(e["dtMatches"]) != 0  # matched gt id, 0 = unmatched
    dt_ignore = np.asarray(e["dtIgnore"], dtype=bool)
    tps = np.cumsum(dt_matched & ~dt_ignore, axis=1, dtype=np.float64)
    fps = np.cumsum(~dt_matched & ~dt_ignore, axis=1, dtype=np.float64)
    precision = np.zeros((tps.shape[0], len(rec_thrs)))
    for t, (tp, fp) in enumerate(zip(tps, fps, strict=True)):
        if tp.size == 0:
            continue  # no detections: precision 0 at every recall
        rc = tp / n_pos
        pr = tp / (fp + tp + np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope (non-increasing in recall)
        # 101-point interpolation: precision at the first point reaching each recall threshold, 0 past the end.
        idx = np.searchsorted(rc, rec_thrs, side="left")
        valid = idx < len(pr)
        precision[t, valid] = pr[idx[valid]]
    return precision


def per_image_ap(
    gt: str | Path | COCO,
    results: list[dict],
    iou_type: str = "bbox",
    image_ids: Sequence[int] | None = None,
) -> dict[int, float]:
    """COCO AP@[.5:.95] of every image on its own.

    Equal to running ``COCOeval`` with ``params.imgIds = [image]`` and reading ``stats[0]``:
    the mean, over IoU thresholds 0.50:0.95, the 101 recall points and the categories with
    ground truth in that image, of the interpolated precision (all areas, 100 detections).
    One ``COCOeval.evaluate`` run (restricted to area "all" and 100 detections) provides
    every (image, category) match; the precision is then aggregated per image, so 300
    images cost about one ordinary evaluation.

    Args:
        gt: ground-truth json path or a loaded ``COCO``.
        results: COCO result dicts; may be empty.
        iou_type: ``"bbox"`` or ``"segm"``.
        image_ids: images to score (default: every ground-truth image).

    Returns:
        image id -> AP in [0, 1]; NaN for an image without (non-crowd) ground truth, where
        COCO AP is undefined (the single-image COCOeval gives -1) whatever was detected.
    """
    ev = _cocoeval(gt, results, iou_type, image_ids)
    p = ev.params
    p.areaRng, p.areaRngLbl, p.maxDets = [[0, 1e10]], ["all"], [100]  # the AP@[.5:.95] setting only
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
    per_image: dict[int, list[np.ndarray]] = defaultdict(list)
    for e in ev.evalImgs:
        if e is None:
            continue
        precision = _image_category_precision(e, p.recThrs)
        if precision is not None:
            per_image[e["image_id"]].append(precision)
    return {int(i): float(np.mean(per_image[i])) if per_image.get(i) else math.nan for i in ev.params.imgIds}


def results_table(metrics: Mapping[str, Any], percent: bool = True, decimals: int = 1) -> pd.DataFrame:
    """Metrics -> a small table.

    Args:
        metrics: one :func:`coco_evaluate` dict, or ``{row name: metrics dict}``.
        percent: show AP x 100 (as papers do); -1 (undefined) stays -1.
        decimals: rounding.

    Returns:
        One row per model, columns ``AP, AP50, AP75, APs, APm, APl`` (others kept after them).
    """
    rows = dict(metrics) if all(isinstance(v, Mapping) for v in metrics.values()) else {"": dict(metrics)}
    df = pd.DataFrame.from_dict(rows, orient="index")
    cols = [c for c in METRIC_KEYS if c in df.columns] + [c for c in df.columns if c not in METRIC_KEYS]
    df = df[cols]
    if percent:
        ap = [c for c in METRIC_KEYS if c in df.columns]
        df[ap] = df[ap].where(df[ap] < 0, df[ap] * 100)
    return df.round(decimals)


__all__ = [
    "METRIC_KEYS",
    "coco_evaluate",
    "detections_to_coco",
    "masks_to_coco",
    "per_image_ap",
    "results_table",
]


class RoutedEvaluator:
    """COCO AP of any per-image choice between two detectors' outputs, without re-matching.

    ``COCOeval.evaluate`` matches detections to ground truth image by image (its
    ``evalImgs``); ``accumulate`` then pools the matches. A routing decision only picks,
    per image, which detector's matches to pool, so we run ``evaluate`` once per detector
    and, for each decision, splice the per-image entries and run ``accumulate`` +
    ``summarize`` only. The result equals :func:`coco_evaluate` on the composed
    detections exactly (tested), at a fraction of the cost: this is what makes the
    random / oracle / confidence baselines of a dense sweep cheap.

    Args:
        gt: ground-truth json path or ``COCO``.
        results1, results2: COCO result lists of detector 1 and detector 2 on the same images.
    """

    def __init__(self, gt: str | Path | COCO, results1: list[dict], results2: list[dict], iou_type: str = "bbox"):
        self._evals = []
        for results in (results1, results2):
            ev = _cocoeval(gt, results, iou_type, None)
            with contextlib.redirect_stdout(io.StringIO()):
                ev.evaluate()
            self._evals.append(ev)
        self.image_ids = list(self._evals[0].params.imgIds)

    def evaluate(self, hard: Mapping[int, bool]) -> dict[str, float]:
        """Metrics of the routing ``hard`` (image id -> True for detector 2)."""
        ev1, ev2 = self._evals
        n_img = len(self.image_ids)
        use2 = np.array([bool(hard[i]) for i in self.image_ids])
        # evalImgs is laid out [category][area range][image]: the image index is position % n_img
        pos = np.arange(len(ev1.evalImgs)) % n_img
        ev = copy.copy(ev1)
        ev.evalImgs = [e2 if use2[p] else e1 for e1, e2, p in zip(ev1.evalImgs, ev2.evalImgs, pos, strict=True)]
        with contextlib.redirect_stdout(io.StringIO()):
            ev.accumulate()
            ev.summarize()
        return {k: float(v) for k, v in zip(METRIC_KEYS, ev.stats[:6], strict=True)}
