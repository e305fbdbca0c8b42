"""Tests of the embedded synthetic COCO dataset (dynamicdet.data.synthetic)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from dynamicdet.config import DEFAULT_CLASSES, Config, DataConfig
from dynamicdet.data import synthetic

# pycocotools 2.0.11 + numpy 2: annToMask warns about __array__(copy=...); harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SMALL = dict(n_train=12, n_val=6, img_size=96, seed=3, classes=list(DEFAULT_CLASSES), min_objects=1, max_objects=40)


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root``, by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic_small")
    stats = synthetic.generate(out, **SMALL, workers=2, progress=False)
    return out, stats


@pytest.fixture(scope="module")
def difficulty_table(tmp_path_factory):
    """Per-image attributes of 60 images spanning the difficulty range."""
    out = tmp_path_factory.mktemp("synthetic_60")
    synthetic.generate(
        out,
        n_train=60,
        n_val=0,
        img_size=128,
        seed=0,
        classes=list(DEFAULT_CLASSES),
        max_objects=40,
        workers=2,
        progress=False,
    )
    return synthetic.image_table(out, "train")


# --- determinism ------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(small_dataset, tmp_path):
    out, _ = small_dataset
    synthetic.generate(tmp_path, **SMALL, workers=2, progress=False)
    files = _files(out)
    assert len(files) == SMALL["n_train"] + SMALL["n_val"] + 2
    assert files == _files(tmp_path)


def test_worker_count_does_not_change_output(small_dataset, tmp_path):
    out, _ = small_dataset
    synthetic.generate(tmp_path, **SMALL, workers=1, progress=False)
    assert _files(out) == _files(tmp_path)


def test_other_seed_differs(small_dataset, tmp_path):
    out, _ = small_dataset
    synthetic.generate(tmp_path, **{**SMALL, "seed": SMALL["seed"] + 1}, workers=2, progress=False)
    a, b = _files(out), _files(tmp_path)
    assert a.keys() == b.keys()
    assert a["annotations/instances_train.json"] != b["annotations/instances_train.json"]
    assert all(a[k] != b[k] for k in a if k.endswith(".jpg"))


def test_difficulty_schedule_is_stratified():
    d = synthetic.difficulty_schedule(50, seed=0, split="val")
    assert np.array_equal(np.sort(np.floor(d * 50)), np.arange(50))  # one image per strip of width 1/50
    assert not np.all(np.diff(d) > 0)  # shuffled, not sorted


# --- COCO validity ----------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_json_is_valid(small_dataset, split):
    out, _ = small_dataset
    coco = COCO(str(out / "annotations" / f"instances_{split}.json"))
    cats = coco.loadCats(coco.getCatIds())
    assert len(cats) >= 6
    assert [c["name"] for c in cats] == list(DEFAULT_CLASSES)
    assert all(c["supercategory"] == "shape" for c in cats)
    assert len(coco.getImgIds()) == SMALL[f"n_{split}"]
    ann_ids = coco.getAnnIds()
    assert len(set(ann_ids)) == len(ann_ids) > 0

    for img in coco.loadImgs(coco.getImgIds()):
        W, H = img["width"], img["height"]
        with Image.open(out / "images" / split / img["file_name"]) as pil:
            assert pil.size == (W, H) and pil.mode == "RGB"
            assert len(pil.getexif()) == 0
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert img["n_objects"] == len(anns)
        for a in anns:
            x, y, w, h = a["bbox"]
            assert x >= 0 and y >= 0 and w > 0 and h > 0
            assert x + w <= W and y + h <= H
            poly = np.asarray(a["segmentation"][0]).reshape(-1, 2)
            np.testing.assert_allclose(poly.min(0), [x, y], atol=1)
            np.testing.assert_allclose(poly.max(0), [x + w, y + h], atol=1)
            assert a["iscrowd"] == 0 and 0 < a["area"] <= w * h + 1e-6
            assert a["visible"] >= 0.3
            assert coco.annToMask(a).sum() > 0


def test_stats_and_summary_agree(small_dataset):
    out, stats = small_dataset
    table = synthetic.summarize(out)
    for split in ("train", "val"):
        s = stats[split]
        assert s["n_images"] == SMALL[f"n_{split}"]
        assert sum(s["per_class"].values()) == s["n_annotations"]
        assert s["objects_min"] <= s["objects_mean"] <= s["objects_max"]
        assert s["images_per_s"] > 0 and s["reused"] is False
        assert table.loc[split, "n_annotations"] == s["n_annotations"]
        assert table.loc[split, "n_circle"] == s["per_class"]["circle"]


def test_unknown_class_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="hexagon"):
        synthetic.generate(tmp_path, **{**SMALL, "classes": ["circle", "hexagon"]}, progress=False)


# --- difficulty -------------------------------------------------------------------------


def test_attributes_follow_the_latent_difficulty(difficulty_table):
    corr = difficulty_table.corr(method="spearman", numeric_only=True)["difficulty"]
    assert corr["n_objects"] > 0.8
    assert corr["clutter"] > 0.5
    assert corr["mean_rel_area"] < -0.5
    assert corr["occlusion"] > 0.5
    assert corr["noise"] > 0.3


def test_easy_and_hard_ends(difficulty_table):
    by_d = difficulty_table.sort_values("difficulty")
    easiest, hardest = by_d.head(3), by_d.tail(3)
    assert easiest["n_objects"].between(1, 3).all()
    assert (easiest["occlusion"] == 0).all()
    assert (hardest["n_objects"] >= 30).all()
    assert (hardest["n_distractors"] > 0).all()


# --- reuse by generate_from_config ----------------------------------------------------------


def test_generate_from_config_reuses_then_regenerates(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNAMICDET_DATA", str(tmp_path))
    cfg = Config(name="tiny", data=DataConfig(img_size=64, n_train=5, n_val=3, workers=1))
    out = tmp_path / "tiny"

    first = synthetic.generate_from_config(cfg, progress=False)
    assert first["train"]["reused"] is False
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert len(mtimes) == 5 + 3 + 2

    second = synthetic.generate_from_config(cfg, progress=False)
    assert second["train"]["reused"] is True
    assert second["val"]["n_annotations"] == first["val"]["n_annotations"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes

    old_json = (out / "annotations" / "instances_train.json").read_bytes()
    cfg.data.seed = 1
    cfg.data.n_train = 4
    third = synthetic.generate_from_config(cfg, progress=False)
    assert third["train"]["reused"] is False
    info = json.loads((out / "annotations" / "instances_train.json").read_text())["info"]
    assert info["generator"]["params"]["seed"] == 1
    assert (out / "annotations" / "instances_train.json").read_bytes() != old_json
    assert len(list((out / "images" / "train").glob("*.jpg"))) == 4  # stale images removed
