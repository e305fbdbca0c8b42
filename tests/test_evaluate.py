"""COCO evaluation: known AP values on constructed cases, and per-image AP = single-image COCOeval."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dynamicdet.evaluation.coco_eval import (
    METRIC_KEYS,
    coco_evaluate,
    detections_to_coco,
    masks_to_coco,
    per_image_ap,
    results_table,
)

# COCO's 101 recall thresholds 0, 0.01, ..., 1. With recall 0.5 reached at precision p and no
# more recall after it, the interpolated precision is p at the 51 thresholds 0..0.50 and 0 at
# the 50 thresholds above: AP = 51 * p / 101.
HALF_RECALL_AP = 51 / 101


def write_gt(tmp_path, images, annotations, categories=None, name="gt.json"):
    """Ground-truth json; ``images`` is {id: (width, height)}, annotations get ids 1..n."""
    anns = []
    for i, a in enumerate(annotations, start=1):
        a = {"id": i, "iscrowd": 0, **a}
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
        anns.append(a)
    d = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": w, "height": h} for i, (w, h) in images.items()],
        "annotations": anns,
        "categories": categories or [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    path = tmp_path / name
    path.write_text(json.dumps(d))
    return path


def gt_as_results(gt_path, score=1.0):
    d = json.loads(gt_path.read_text())
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": score}
        for a in d["annotations"]
    ]


@pytest.fixture
def sized_gt(tmp_path):
    """One small (20x20 = 400 px^2 < 32^2), medium (50x50) and large (150x150) box, so APs/m/l are defined."""
    return write_gt(
        tmp_path,
        {1: (640, 480), 2: (320, 240)},
        [
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]},
            {"image_id": 1, "category_id": 2, "bbox": [100, 100, 50, 50]},
            {"image_id": 2, "category_id": 1, "bbox": [60, 40, 150, 150]},
        ],
    )


# ----------------------------------------------------------------------------- bbox
def test_ground_truth_as_detections_gives_ap_1(sized_gt):
    m = coco_evaluate(sized_gt, gt_as_results(sized_gt))
    assert list(m) == list(METRIC_KEYS)
    assert m == pytest.approx(dict.fromkeys(METRIC_KEYS, 1.0))


def test_hand_computed_ap_with_a_false_positive_ranked_first(tmp_path):
    """Two gt boxes; detections: a false positive (score 0.9), then a perfect match (0.8).

    Ranked by score: FP, TP -> cumulative TP [0, 1], FP [1, 1] -> recall [0, 0.5],
    precision [0, 0.5]; the envelope (max precision at recall >= r) is [0.5, 0.5]. The
    101-point interpolation reads 0.5 at recall thresholds 0..0.50 (51 points) and 0 above
    (recall never exceeds 0.5): AP50 = 51 * 0.5 / 101 = 0.2525. The match is exact, so every
    IoU threshold gives the same value and AP = AP75 = AP50.
    """
    gt = write_gt(
        tmp_path,
        {1: (200, 200)},
        [
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]},
            {"image_id": 1, "category_id": 1, "bbox": [100, 100, 40, 40]},
        ],
    )
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [150, 10, 40, 40], "score": 0.9},  # no gt there
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.8},
    ]
    m = coco_evaluate(gt, results)
    expected = HALF_RECALL_AP * 0.5
    assert m["AP50"] == pytest.approx(expected, abs=1e-9)
    assert m["AP75"] == pytest.approx(expected, abs=1e-9)
    assert m["AP"] == pytest.approx(expected, abs=1e-9)
    assert m["APm"] == pytest.approx(expected, abs=1e-9)  # 40x40 = 1600 px^2: medium
    assert m["APs"] == -1 and m["APl"] == -1  # no small or large gt: undefined


def test_empty_detections_give_zeros(sized_gt):
    assert coco_evaluate(sized_gt, []) == dict.fromkeys(METRIC_KEYS, 0.0)


def test_empty_detections_keep_undefined_ranges_at_minus_one(tmp_path):
    gt = write_gt(tmp_path, {1: (100, 100)}, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40]}])
    m = coco_evaluate(gt, [])
    assert (m["AP"], m["APm"], m["APs"], m["APl"]) == (0.0, 0.0, -1.0, -1.0)


def test_image_ids_restrict_the_evaluation(sized_gt):
    results = gt_as_results(sized_gt)
    results = [r for r in results if r["image_id"] == 1]  # image 2's box is missed
    assert coco_evaluate(sized_gt, results)["AP"] < 1.0
    assert coco_evaluate(sized_gt, results, image_ids=[1])["AP"] == pytest.approx(1.0)


def test_results_are_not_modified_and_coco_object_accepted(sized_gt):
    results = gt_as_results(sized_gt)
    before = copy.deepcopy(results)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(sized_gt))
    assert coco_evaluate(gt, results)["AP"] == pytest.approx(1.0)
    assert results == before  # loadRes would have added area/id/segmentation keys


def test_quiet_unless_verbose(sized_gt, capsys):
    coco_evaluate(sized_gt, gt_as_results(sized_gt))
    assert capsys.readouterr().out == ""
    coco_evaluate(sized_gt, gt_as_results(sized_gt), verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_unknown_result_image_rejected(sized_gt):
    with pytest.raises(ValueError, match=r"image ids not in the ground truth: \[99\]"):
        coco_evaluate(sized_gt, [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1.0}])


def test_detections_to_coco_converts_boxes_and_classes():
    dets = {
        5: torch.tensor([[10.0, 20.0, 30.5, 60.25, 0.9, 1.0], [0.0, 0.0, 1.0, 2.0, 0.123456789, 0.0]]),
        6: np.zeros((0, 6)),
    }
    out = detections_to_coco(dets, class_to_cat=[3, 7])
    assert out == [
        {"image_id": 5, "category_id": 7, "bbox": [10.0, 20.0, 20.5, 40.25], "score": pytest.approx(0.9)},
        {"image_id": 5, "category_id": 3, "bbox": [0.0, 0.0, 1.0, 2.0], "score": 0.12346},
    ]
    with pytest.raises(ValueError, match=r"class index 2 outside 0\.\.1"):
        detections_to_coco({1: np.array([[0, 0, 1, 1, 0.5, 2]])}, [3, 7])
    with pytest.raises(ValueError, match=r"must be \(n, 6\)"):
        detections_to_coco({1: np.zeros((2, 5))}, [3, 7])


def test_detections_round_trip_through_evaluation(sized_gt):
    d = json.loads(sized_gt.read_text())
    dets = {}
    for a in d["annotations"]:
        x, y, w, h = a["bbox"]
        row = [x, y, x + w, y + h, 0.99, a["category_id"] - 1]  # categories 1, 2 -> classes 0, 1
        dets.setdefault(a["image_id"], []).append(row)
    results = detections_to_coco({k: np.array(v) for k, v in dets.items()}, class_to_cat=[1, 2])
    assert coco_evaluate(sized_gt, results)["AP"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- segm
def _rect_mask(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def mask_annotations(masks) -> list[dict]:
    """Binary (H, W) masks of image 1 -> COCO ground-truth annotations (RLE, area, box), category 1."""
    anns = []
    for m in masks:
        rle = mask_utils.encode(np.asfortranarray(m))
        anns.append(
            {
                "image_id": 1,
                "category_id": 1,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                "area": float(mask_utils.area(rle)),
                "bbox": mask_utils.toBbox(rle).tolist(),
            }
        )
    return anns


@pytest.fixture
def mask_gt(tmp_path):
    """Two instances in one 60x80 image: a rectangle and an L shape, as RLE ground truth."""
    h, w = 60, 80
    masks = [_rect_mask(h, w, 5, 5, 30, 25), _rect_mask(h, w, 40, 20, 70, 55)]
    masks[1][20:40, 40:60] = 0  # an L shape (650 px in a 30x35 box): box and mask differ
    return write_gt(tmp_path, {1: (w, h)}, mask_annotations(masks), name="masks.json"), np.stack(masks)


def test_segm_perfect_masks_give_ap_1(mask_gt):
    gt, masks = mask_gt
    results = masks_to_coco(masks, scores=[0.9, 0.8], classes=[0, 0], image_id=1, class_to_cat=[1])
    json.dumps(results)  # RLE counts are str: results can be dumped as COCO json
    m = coco_evaluate(gt, results, iou_type="segm")
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)


def test_segm_one_missed_instance(mask_gt):
    """Only the first instance is detected (perfect mask): recall 0.5 at precision 1.

    Interpolated precision is 1 at the 51 recall thresholds 0..0.50 and 0 above:
    AP = 51 / 101 = 0.505 at every IoU threshold.
    """
    gt, masks = mask_gt
    results = masks_to_coco(
        masks[:1], scores=torch.tensor([0.7]), classes=torch.tensor([0]), image_id=1, class_to_cat=[1]
    )
    m = coco_evaluate(gt, results, iou_type="segm")
    assert m["AP"] == pytest.approx(HALF_RECALL_AP, abs=1e-9)
    assert m["AP50"] == pytest.approx(HALF_RECALL_AP, abs=1e-9)


def test_segm_uses_mask_iou_not_box_iou(mask_gt):
    """A mask filling the L shape's box has box IoU 1 but mask IoU 650/1050 = 0.62.

    It matches at IoU 0.50-0.60 only. At 0.75 it is a false positive ranked after the true
    positive: recall [0.5, 0.5], precision [1, 0.5] -> AP75 = 51 / 101.
    """
    gt, masks = mask_gt
    filled = masks.copy()
    filled[1][20:40, 40:60] = 1
    results = masks_to_coco(filled, scores=[0.9, 0.8], classes=[0, 0], image_id=1, class_to_cat=[1])
    m = coco_evaluate(gt, results, iou_type="segm")
    assert m["AP50"] == pytest.approx(1.0)
    assert m["AP75"] == pytest.approx(HALF_RECALL_AP, abs=1e-9)  # the L shape is missed at IoU 0.75


# ----------------------------------------------------------------------------- per image
def single_image_ap(gt_path, results, image_id, iou_type="bbox"):
    """Reference: a COCOeval run restricted to one image, stats[0] (-1 -> NaN)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        mine = [dict(r) for r in results]
        dt = gt.loadRes(mine) if mine else None
        if dt is None:
            return 0.0 if gt.getAnnIds(imgIds=[image_id], iscrowd=False) else math.nan
        ev = COCOeval(gt, dt, iou_type)
        ev.params.imgIds = [image_id]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return math.nan if ev.stats[0] == -1 else float(ev.stats[0])


def test_per_image_ap_simple_cases(tmp_path):
    gt = write_gt(
        tmp_path,
        {1: (100, 100), 2: (100, 100), 3: (100, 100), 4: (100, 100)},
        [
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30]},
            {"image_id": 2, "category_id": 1, "bbox": [10, 10, 30, 30]},
            {"image_id": 2, "category_id": 2, "bbox": [50, 50, 30, 30]},
        ],
    )
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9},  # category 2 missed
        {"image_id": 4, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9},  # no gt in image 4
    ]
    ap = per_image_ap(gt, results)
    assert set(ap) == {1, 2, 3, 4}
    assert ap[1] == pytest.approx(1.0)
    assert ap[2] == pytest.approx(0.5)  # mean over its two categories: 1 and 0
    assert math.isnan(ap[3]) and math.isnan(ap[4])  # no gt: AP undefined
    for i in ap:
        assert ap[i] == pytest.approx(single_image_ap(gt, results, i), nan_ok=True)
    assert per_image_ap(gt, [])[2] == 0.0


def _random_case(tmp_path, n_images, seed=0):
    """Random gt (some crowd) and noisy, partly wrong detections over 3 categories."""
    rng = np.random.default_rng(seed)
    images = {i: (320, 240) for i in range(1, n_images + 1)}
    anns, results = [], []
    for i in images:
        for _ in range(rng.integers(0, 6)):
            w, h = rng.uniform(8, 120, 2)
            x, y = rng.uniform(0, 320 - w), rng.uniform(0, 240 - h)
            cat = int(rng.integers(1, 4))
            anns.append({"image_id": i, "category_id": cat, "bbox": [x, y, w, h], "iscrowd": int(rng.random() < 0.1)})
            if rng.random() < 0.8:  # detected, with jitter and sometimes the wrong class
                jit = rng.normal(0, 0.08, 4) * [w, h, w, h]
                c = cat if rng.random() < 0.85 else int(rng.integers(1, 4))
                box = [x + jit[0], y + jit[1], max(w + jit[2], 2), max(h + jit[3], 2)]
                results.append({"image_id": i, "category_id": c, "bbox": box, "score": float(rng.random())})
        for _ in range(rng.integers(0, 4)):  # false positives
            w, h = rng.uniform(8, 80, 2)
            box = [rng.uniform(0, 240), rng.uniform(0, 160), w, h]
            results.append(
                {"image_id": i, "category_id": int(rng.integers(1, 4)), "bbox": box, "score": float(rng.random())}
            )
    cats = [{"id": c, "name": str(c)} for c in (1, 2, 3)]
    return write_gt(tmp_path, images, anns, cats, name=f"random{seed}.json"), results


@pytest.mark.parametrize("seed", [0, 1])
def test_per_image_ap_matches_single_image_cocoeval(tmp_path, seed):
    gt, results = _random_case(tmp_path, n_images=25, seed=seed)
    ap = per_image_ap(gt, results)
    expected = {i: single_image_ap(gt, results, i) for i in ap}
    assert any(math.isnan(v) for v in expected.values())  # the case covers images without gt
    assert any(0 < v < 1 for v in expected.values() if not math.isnan(v))
    for i in ap:
        assert ap[i] == pytest.approx(expected[i], abs=1e-12, nan_ok=True), f"image {i}"


def test_per_image_ap_segm(mask_gt):
    gt, masks = mask_gt
    results = masks_to_coco(masks[:1], scores=[0.7], classes=[0], image_id=1, class_to_cat=[1])
    assert per_image_ap(gt, results, iou_type="segm") == {1: pytest.approx(HALF_RECALL_AP)}


def test_per_image_ap_scores_every_image_of_a_val_sized_case(tmp_path):
    gt, results = _random_case(tmp_path, n_images=300, seed=2)
    ap = per_image_ap(gt, results)
    assert sorted(ap) == list(range(1, 301))
    assert all(math.isnan(v) or 0 <= v <= 1 for v in ap.values())


def test_results_table():
    df = results_table(
        {"easy": dict.fromkeys(METRIC_KEYS, 0.5), "hard": {**dict.fromkeys(METRIC_KEYS, 0.25), "APs": -1.0}}
    )
    assert list(df.columns) == list(METRIC_KEYS)
    assert df.loc["easy", "AP"] == 50.0 and df.loc["hard", "AP50"] == 25.0 and df.loc["hard", "APs"] == -1.0
    assert results_table(dict.fromkeys(METRIC_KEYS, 0.1234), percent=False, decimals=2).iloc[0]["AP"] == 0.12


def test_routed_evaluator_equals_full_evaluation_of_composed_detections(tmp_path):
    """Splicing per-image COCOeval results equals evaluating the composed detections from scratch."""
    import json

    from dynamicdet.evaluation.coco_eval import RoutedEvaluator, coco_evaluate, detections_to_coco
    from dynamicdet.modeling import routing

    rng = np.random.default_rng(0)
    images, anns, aid = [], [], 1
    for i in range(1, 31):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 200, "height": 200})
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(5, 50, 2)
            anns.append(
                {
                    "id": aid,
                    "image_id": i,
                    "category_id": int(rng.choice([1, 4])),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
            aid += 1
    gt = tmp_path / "gt.json"
    gt.write_text(
        json.dumps(
            {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 4, "name": "b"}]}
        )
    )

    def noisy(scale):
        dets = {}
        for i in range(1, 31):
            rows = [
                [
                    a["bbox"][0] + rng.normal(0, scale),
                    a["bbox"][1] + rng.normal(0, scale),
                    a["bbox"][0] + a["bbox"][2] + rng.normal(0, scale),
                    a["bbox"][1] + a["bbox"][3],
                    rng.uniform(0.1, 1),
                    0 if a["category_id"] == 1 else 1,
                ]
                for a in anns
                if a["image_id"] == i
            ]
            rows += [[*rng.uniform(0, 100, 2), *rng.uniform(100, 200, 2), rng.uniform(0, 0.5), rng.integers(0, 2)]]
            dets[i] = np.array(rows, dtype=float)
        return dets

    d1, d2 = noisy(8.0), noisy(1.0)
    ev = RoutedEvaluator(str(gt), detections_to_coco(d1, [1, 4]), detections_to_coco(d2, [1, 4]))
    for seed in range(3):
        mask = routing.random_route(30, 0.4, seed)
        hard = dict(zip(range(1, 31), mask, strict=True))
        routed = {i: (d2[i] if hard[i] else d1[i]) for i in d1}
        full = coco_evaluate(str(gt), detections_to_coco(routed, [1, 4]))
        assert ev.evaluate(hard) == pytest.approx(full, abs=1e-12)
