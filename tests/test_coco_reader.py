"""COCO reader: every bad input gives its own DatasetError, and COCO -> YOLO is lossless.

Tiny datasets are built in ``tmp_path`` with PIL images and hand-written json.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynamicdet.config import Config, DataConfig
from dynamicdet.data import coco
from dynamicdet.data.coco import DatasetError, DatasetWarning, load_coco, prepare_dataset, prepare_yolo_split

# Non-contiguous category ids: class index i <-> category CATS[i]["id"].
CATS = [{"id": 7, "name": "star"}, {"id": 1, "name": "circle"}, {"id": 3, "name": "square"}]  # unsorted on purpose
SIZES = {1: (64, 48), 2: (40, 80), 3: (50, 50)}  # image id -> (width, height)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to resolve a host name or open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _image(path: Path, w: int, h: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _write(path: Path, d: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d))
    return path


def _annotations() -> list[dict]:
    return [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4.25, 6.5, 20.0, 10.75], "iscrowd": 0, "area": 215.0},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [30.0, 20.0, 33.5, 27.0], "iscrowd": 0, "area": 904.5},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0.0, 0.0, 40.0, 80.0], "iscrowd": 0, "area": 3200.0},
        {"id": 4, "image_id": 2, "category_id": 7, "bbox": [10.1, 33.3, 5.7, 9.9], "iscrowd": 0, "area": 56.43},
        # image 3 has no boxes: a background image
    ]


def make_split(root: Path, split: str = "val", annotations: list[dict] | None = None, **changes) -> tuple[Path, Path]:
    """Images under ``root/images/<split>`` and ``root/annotations/instances_<split>.json``."""
    images_dir = root / "images" / split
    images = [{"id": i, "file_name": f"img{i}.png", "width": w, "height": h} for i, (w, h) in SIZES.items()]
    for im in images:
        _image(images_dir / im["file_name"], im["width"], im["height"], seed=im["id"])
    d = {"images": images, "annotations": _annotations() if annotations is None else annotations, "categories": CATS}
    d.update(changes)
    return _write(root / "annotations" / f"instances_{split}.json", d), images_dir


def read_labels_as_coco(label_file: Path, w: int, h: int) -> list[tuple[int, list[float]]]:
    """YOLO label file -> [(class index, [x, y, w, h] pixels)]."""
    out = []
    for line in label_file.read_text().splitlines():
        c, cx, cy, bw, bh = line.split()
        cx, cy, bw, bh = float(cx) * w, float(cy) * h, float(bw) * w, float(bh) * h
        out.append((int(c), [cx - bw / 2, cy - bh / 2, bw, bh]))
    return out


def _config(name: str, **data) -> Config:
    return Config(name=name, data=DataConfig(img_size=64, **data))


# ----------------------------------------------------------------------------- bad input
# One row per way of breaking a dataset. A row's first column builds the broken dataset
# under ``root`` (the test's tmp_path, also DYNAMICDET_DATA) and returns the call that must
# fail; setup itself runs outside ``pytest.raises``. The message must name the file (or
# folder) at fault and the problem.
BreakDataset = Callable[[Path], Callable[[], object]]


def _json_file(text: str) -> BreakDataset:
    """``root/bad.json`` holding ``text``, loaded with ``root`` as the images folder."""

    def build(root: Path) -> Callable[[], object]:
        bad = root / "bad.json"
        bad.write_text(text)
        return partial(load_coco, bad, root)

    return build


def _broken_split(
    ann: tuple[int, dict] | None = None,
    image: tuple[int, dict] | None = None,
    on_disk: Callable[[Path], object] | None = None,
) -> BreakDataset:
    """A ``make_split`` val split with annotation ``ann[0]`` and/or image record ``image[0]``
    updated with the given fields, then ``on_disk(images_dir)`` applied; the failing call is
    ``load_coco``."""

    def build(root: Path) -> Callable[[], object]:
        anns = _annotations()
        if ann is not None:
            anns[ann[0]].update(ann[1])
        js, images = make_split(root, annotations=anns)
        if image is not None:
            d = json.loads(js.read_text())
            d["images"][image[0]].update(image[1])
            _write(js, d)
        if on_disk is not None:
            on_disk(images)
        return partial(load_coco, js, images)

    return build


def _garbage_jpg(images: Path) -> None:
    (images / "garbage.jpg").write_bytes(b"\x00 this is not a jpeg " * 50)


def _stray_image_in_folder(root: Path) -> Callable[[], object]:
    """An image file the json does not list: load_coco accepts it, prepare_yolo_split must not."""
    js, images = make_split(root)
    _image(images / "stray.png", 20, 20)
    split = load_coco(js, images)
    return partial(prepare_yolo_split, split, root, "val")


def _split_categories_differ(root: Path) -> Callable[[], object]:
    """A synthetic dataset whose val split has one category more than its train split."""
    make_split(root / "mixed", "train")
    make_split(root / "mixed", "val", categories=[*CATS, {"id": 9, "name": "ring"}])
    return partial(prepare_dataset, _config("mixed"))


BAD_INPUT = [
    # load_coco: the json itself
    pytest.param(
        lambda root: partial(load_coco, root / "nope.json", root),
        DatasetError,
        r"nope\.json: annotation file not found",
        id="json-missing",
    ),
    pytest.param(_json_file("{not json"), DatasetError, r"bad\.json: invalid json", id="json-invalid"),
    pytest.param(
        _json_file(json.dumps({"images": [], "annotations": []})),
        DatasetError,
        r"bad\.json: invalid COCO json: .*'categories'",
        id="json-without-categories",
    ),
    # load_coco: records that contradict each other
    pytest.param(
        _broken_split(ann=(2, {"category_id": 2})),  # 2 is not among 1, 3, 7
        DatasetError,
        r"instances_val\.json: annotation id 3 has unknown category id 2",
        id="unknown-category-id",
    ),
    pytest.param(
        _broken_split(image=(2, {"id": 2})),
        DatasetError,
        r"instances_val\.json: duplicate image id 2",
        id="duplicate-image-id",
    ),
    pytest.param(
        _broken_split(ann=(0, {"image_id": 42})),
        DatasetError,
        r"instances_val\.json: annotation id 1 refers to unknown image id 42",
        id="unknown-image-id",
    ),
    pytest.param(
        _broken_split(ann=(0, {"id": 0})),
        DatasetError,
        r"instances_val\.json: annotation id 0: ids must be positive",
        id="annotation-id-zero",
    ),
    pytest.param(
        _broken_split(ann=(3, {"bbox": [10.1, 33.3, 0.0, 5.0]})),
        DatasetError,
        r"instances_val\.json: annotation id 4: non-positive box size",
        id="box-width-zero",
    ),
    pytest.param(
        _broken_split(ann=(3, {"bbox": [10.1, 33.3, 5.0, -1.0]})),
        DatasetError,
        r"instances_val\.json: annotation id 4: non-positive box size",
        id="box-height-negative",
    ),
    # load_coco: the image files
    pytest.param(
        _broken_split(on_disk=lambda images: (images / "img2.png").unlink()),
        DatasetError,
        r"instances_val\.json: image id 2: file not found: .*img2\.png",
        id="image-file-missing",
    ),
    pytest.param(
        _broken_split(image=(0, {"file_name": "garbage.jpg"}), on_disk=_garbage_jpg),
        DatasetError,
        r"instances_val\.json: image id 1: unreadable or corrupt image .*garbage\.jpg: cannot identify image file",
        id="image-unreadable",
    ),
    pytest.param(
        _broken_split(image=(1, {"width": 41})),
        DatasetError,
        r"instances_val\.json: image id 2: json says 41x80 px but .*img2\.png is 40x80 px",
        id="image-size-mismatch",
    ),
    # prepare_yolo_split
    pytest.param(
        _stray_image_in_folder,
        DatasetError,
        r"val: 1 image file\(s\) not in .*instances_val\.json.*stray\.png",
        id="extra-image-in-folder",
    ),
    # prepare_dataset
    pytest.param(
        lambda root: partial(prepare_dataset, _config("absent")),
        DatasetError,
        r"instances_train\.json: synthetic dataset 'absent'",
        id="synthetic-dataset-absent",
    ),
    pytest.param(
        lambda root: partial(prepare_dataset, _config("c", source="coco")),
        DatasetError,
        r"<config>: data\.root is empty",
        id="coco-root-empty",
    ),
    pytest.param(
        lambda root: partial(prepare_dataset, _config("c", source="coco", root=str(root / "nowhere"))),
        DatasetError,
        r"nowhere: train images folder not found",
        id="coco-images-folder-missing",
    ),
    pytest.param(
        _split_categories_differ,
        DatasetError,
        r"instances_val\.json: categories .* differ from",
        id="split-categories-differ",
    ),
]


@pytest.mark.parametrize(("break_dataset", "error", "message"), BAD_INPUT)
def test_bad_input_raises_a_clear_error(tmp_path, monkeypatch, break_dataset, error, message):
    monkeypatch.setenv("DYNAMICDET_DATA", str(tmp_path))  # where prepare_dataset looks for datasets
    failing_call = break_dataset(tmp_path)
    with pytest.raises(error, match=message):
        failing_call()


# ----------------------------------------------------------------------------- counted, not dropped
def test_clipping_is_counted_and_warned(tmp_path):
    anns = _annotations()
    anns[0]["bbox"] = [-4.0, 40.0, 20.0, 20.0]  # image 1 is 64x48: sticks out left and bottom
    js, images = make_split(tmp_path, annotations=anns)
    with pytest.warns(DatasetWarning, match=r"1 box\(es\) partly outside the image clipped"):
        split = load_coco(js, images)
    assert split.report.clipped == 1
    assert split.report.kept == 4
    clipped = next(a for a in split.annotations[1] if a["id"] == 1)
    assert clipped["bbox"] == pytest.approx([0.0, 40.0, 16.0, 8.0])


def test_box_outside_and_duplicates_are_counted(tmp_path):
    anns = _annotations()
    anns.append({"id": 5, "image_id": 3, "category_id": 1, "bbox": [60.0, 10.0, 5.0, 5.0]})  # image 3 is 50 wide
    anns.append({**anns[1], "id": 6})  # same class and box as annotation 2
    js, images = make_split(tmp_path, annotations=anns)
    with pytest.warns(DatasetWarning) as record:
        split = load_coco(js, images)
    messages = " ".join(str(w.message) for w in record)
    assert "1 box(es) entirely outside" in messages and "1 duplicate box(es)" in messages
    r = split.report
    assert (r.annotations, r.kept, r.skipped_outside, r.skipped_duplicate) == (6, 4, 1, 1)


def test_crowd_skipped_and_counted(tmp_path):
    anns = _annotations()
    anns[1]["iscrowd"] = 1
    js, images = make_split(tmp_path, annotations=anns)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # crowd regions are expected: no warning
        split = load_coco(js, images)
    r = split.report
    assert (r.images, r.annotations, r.kept, r.skipped_crowd, r.skipped) == (3, 4, 3, 1, 1)
    assert [a["id"] for a in split.annotations[1]] == [1]
    assert "1 crowd" in str(r)


# ----------------------------------------------------------------------------- round trip
def test_round_trip_coco_to_yolo_and_back(tmp_path):
    js, images = make_split(tmp_path / "src")
    split = load_coco(js, images)
    assert split.class_to_cat == [1, 3, 7]
    assert split.names == ["circle", "square", "star"]
    out = tmp_path / "yolo"
    info = prepare_yolo_split(split, out, "val")
    assert info["images"] == 3 and info["labels"] == 4
    assert info["file_to_image_id"] == {"img1.png": 1, "img2.png": 2, "img3.png": 3}

    for image_id, (w, h) in SIZES.items():
        img = out / "images" / "val" / f"img{image_id}.png"
        assert img.is_symlink() and img.resolve() == (images / img.name).resolve()
        back = read_labels_as_coco(out / "labels" / "val" / f"img{image_id}.txt", w, h)
        original = [a for a in _annotations() if a["image_id"] == image_id]
        assert len(back) == len(original)  # image 3: empty label file (background)
        for (cls, box), ann in zip(back, original, strict=True):
            assert split.class_to_cat[cls] == ann["category_id"]
            assert box == pytest.approx(ann["bbox"], abs=1e-3)


def test_in_place_images_are_left_alone_and_cache_deleted(tmp_path):
    js, images = make_split(tmp_path)
    cache = tmp_path / "labels" / "val.cache"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"stale")
    stale_label = tmp_path / "labels" / "val" / "gone.txt"
    stale_label.parent.mkdir()
    stale_label.write_text("0 0.5 0.5 0.1 0.1\n")
    prepare_yolo_split(load_coco(js, images), tmp_path, "val")
    assert not any(p.is_symlink() for p in images.iterdir())
    assert sorted(p.name for p in images.iterdir()) == ["img1.png", "img2.png", "img3.png"]
    assert not cache.exists() and not stale_label.exists()
    assert (tmp_path / "labels" / "val" / "img3.txt").read_text() == ""


# ----------------------------------------------------------------------------- whole datasets
def test_prepare_synthetic_layout_loads_in_ultralytics(tmp_path, monkeypatch):
    # imported here, after dynamicdet (which configures ultralytics for offline use)
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset

    monkeypatch.setenv("DYNAMICDET_DATA", str(tmp_path))
    root = tmp_path / "tiny"
    make_split(root, "train")
    make_split(root, "val")
    info = prepare_dataset(_config("tiny"))

    assert info.root == root and info.names == ["circle", "square", "star"] and info.class_to_cat == [1, 3, 7]
    assert info.gt_json["val"] == root / "annotations" / "instances_val.json"
    assert info.file_to_image_id["train"] == {"img1.png": 1, "img2.png": 2, "img3.png": 3}
    assert info.data["nc"] == 3 and info.data["names"] == {0: "circle", 1: "square", 2: "star"}
    assert Path(info.data["val"]) == (root / "images" / "val").resolve()
    assert info.reports["val"].kept == 4

    hyp = get_cfg()
    hyp.imgsz = 64
    dataset = build_yolo_dataset(hyp, info.data["val"], 2, info.data, mode="val", rect=False, stride=32)
    n_expected = {1: 2, 2: 2, 3: 0}
    assert len(dataset.labels) == 3
    for lb in dataset.labels:
        image_id = info.file_to_image_id["val"][Path(lb["im_file"]).name]
        assert len(lb["cls"]) == n_expected[image_id]
    item = dataset[0]
    assert item["img"].shape[-2:] == (64, 64)


def test_prepare_coco_source_symlinks_and_reuses_stamp(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNAMICDET_DATA", str(tmp_path / "data"))
    src = tmp_path / "coco"
    for split, folder in (("train", "train2017"), ("val", "val2017")):
        js, images = make_split(src, split)
        js.rename(src / "annotations" / f"instances_{folder}.json")
        images.rename(src / folder)  # real COCO layout: <root>/val2017/*.jpg, no images/ level
    cfg = _config("mycoco", source="coco", root=str(src))
    info = prepare_dataset(cfg)
    out = tmp_path / "data" / "mycoco"
    assert info.root == out
    assert (out / "images" / "train" / "img1.png").is_symlink()
    assert (out / "labels" / "val" / "img2.txt").is_file()
    assert info.gt_json["val"] == src / "annotations" / "instances_val2017.json"

    # Unchanged inputs: the stamp answers, nothing is re-read.
    def fail(*args, **kwargs):
        raise AssertionError("load_coco called on an unchanged dataset")

    monkeypatch.setattr(coco, "load_coco", fail)
    again = prepare_dataset(cfg)
    assert again.file_to_image_id == info.file_to_image_id and again.reports == info.reports
    # A changed json is re-read.
    js = src / "annotations" / "instances_val2017.json"
    js.write_text(js.read_text() + "\n")
    with pytest.raises(AssertionError, match="load_coco called"):
        prepare_dataset(cfg)


def test_labels_are_valid_for_ultralytics(tmp_path):
    """Every written value is inside the range ultralytics' verify_image_label accepts."""
    anns = _annotations()
    anns[0]["bbox"] = [-3.0, -2.0, 70.0, 60.0]  # covers image 1 (64x48) entirely after clipping
    js, images = make_split(tmp_path, annotations=anns)
    with pytest.warns(DatasetWarning):
        split = load_coco(js, images)
    prepare_yolo_split(split, tmp_path, "val")
    values = np.loadtxt(tmp_path / "labels" / "val" / "img1.txt", ndmin=2)
    assert values[:, 1:].min() >= 0 and values[:, 1:].max() <= 1
    np.testing.assert_allclose(values[values[:, 0] == 0][0, 1:], [0.5, 0.5, 1.0, 1.0])
    assert os.path.getsize(tmp_path / "labels" / "val" / "img3.txt") == 0


def test_exif_rotated_images_are_counted_and_warned(tmp_path):
    js, images = make_split(tmp_path)
    d = json.loads(js.read_text())
    d["images"][2]["file_name"] = "rotated.jpg"
    _write(js, d)
    exif = Image.Exif()
    exif[274] = 6  # "rotate 90 CW to display": cv2 (hence ultralytics) applies it, COCO boxes do not
    Image.new("RGB", SIZES[3]).save(images / "rotated.jpg", exif=exif)
    with pytest.warns(DatasetWarning, match=r"1 image\(s\) carry an EXIF rotation"):
        split = load_coco(js, images)
    assert split.report.images_exif_rotated == 1


# ----------------------------------------------------------------------------- polygon labels (Mask R-CNN)
def test_segment_line_polygon_multipart_and_fallback():
    poly = [[10, 10, 30, 10, 30, 20, 10, 20]]
    assert (
        coco.segment_line(2, [10, 10, 20, 10], poly, 40, 20)
        == "2 0.250000 0.500000 0.750000 0.500000 0.750000 1.000000 0.250000 1.000000"
    )
    # no polygon (missing, or RLE): the box as a rectangle
    rect = coco.segment_line(0, [4, 2, 8, 6], None, 16, 16)
    assert rect == coco.segment_line(0, [4, 2, 8, 6], {"counts": "x", "size": [16, 16]}, 16, 16)
    assert rect == "0 0.250000 0.125000 0.750000 0.125000 0.750000 0.500000 0.250000 0.500000"
    # two parts are joined into one outline that visits every vertex of both
    two = coco.segment_line(1, [0, 0, 40, 10], [[0, 0, 10, 0, 10, 10], [30, 0, 40, 0, 40, 10]], 40, 10)
    xy = np.array(two.split()[1:], dtype=float).reshape(-1, 2) * [40, 10]
    for v in [(0, 0), (10, 0), (10, 10), (30, 0), (40, 0), (40, 10)]:
        assert (np.abs(xy - v).sum(1) < 1e-4).any(), v


def test_polygon_layout_gives_instance_masks(smoke_cfg):
    """A mask_rcnn config gets <dataset>/segments/ with polygon labels, and batches carry one mask per box."""
    import copy

    import torch

    from dynamicdet.data.loaders import build_dataset, make_loader

    cfg = copy.deepcopy(smoke_cfg)
    cfg.model.kind = "mask_rcnn"
    info = prepare_dataset(cfg)
    assert info.root.name == "segments" and info.data["dd_segments"] is True
    label = next((info.root / "labels" / "val").glob("*.txt")).read_text().splitlines()
    assert all(len(line.split()) >= 7 for line in label)  # class + at least 3 points
    batch = next(iter(make_loader(build_dataset(info.data, "val", cfg.data.img_size, augment=False), 4, False, 0)))
    n = len(batch["cls"])
    assert batch["masks"].shape == (n, cfg.data.img_size, cfg.data.img_size)
    # each mask lies inside its box (letterboxed pixels), give or take the rasterisation
    size = cfg.data.img_size
    for m, box in zip(batch["masks"], batch["bboxes"], strict=True):
        ys, xs = torch.nonzero(m, as_tuple=True)
        if len(xs):
            cx, cy, w, h = (box * size).tolist()
            assert xs.min() >= cx - w / 2 - 2 and xs.max() <= cx + w / 2 + 2
            assert ys.min() >= cy - h / 2 - 2 and ys.max() <= cy + h / 2 + 2
    assert prepare_dataset(smoke_cfg).root.name != "segments"  # the box layout is untouched


def test_synthetic_dataset_of_other_parameters_is_refused(tmp_path, monkeypatch):
    """A folder regenerated by a config of the same name but another size must not be read as this one's."""
    from dynamicdet.config import load_config
    from dynamicdet.data.synthetic import generate_from_config

    monkeypatch.setenv("DYNAMICDET_DATA", str(tmp_path))
    cfg = load_config("smoke")
    cfg.data.n_train, cfg.data.n_val = 4, 2
    generate_from_config(cfg, progress=False)
    assert prepare_dataset(cfg).reports["val"].images == 2  # made by this config: accepted
    other = copy.deepcopy(cfg)
    other.data.img_size = cfg.data.img_size + 32
    with pytest.raises(
        DatasetError, match=rf"instances_train\.json: .* img_size {cfg.data.img_size} \(config: {other.data.img_size}\)"
    ):
        prepare_dataset(other)
