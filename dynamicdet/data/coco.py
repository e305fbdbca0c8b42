"""COCO-format datasets -> the YOLO folder layout that ultralytics' dataloader reads.

The project keeps COCO json as the ground truth (pycocotools evaluates against it) and
gives ultralytics the layout it expects::

    <dataset>/images/<split>/<file_name>      the images (or symlinks to them)
    <dataset>/labels/<split>/<stem>.txt       one "cls cx cy w h" line per box, normalised
    <dataset>/dataset.yaml                    ultralytics data yaml (path, train, val, names, nc)

ultralytics finds a label by replacing the last ``/images/`` of the image path with
``/labels/`` (``ultralytics.data.utils.img2label_paths``), so images must sit under an
``images`` folder: when the COCO images live elsewhere we symlink them file by file
(a symlinked *folder* would not work: ``check_det_dataset`` resolves the split folder,
and the resolved path has no ``/images/`` in it).

The reader is strict, because a dataset problem found later (a crash in the middle of
training, or a silently wrong AP) costs far more than one found here. Every bad input
raises :class:`DatasetError` naming the file and the offending id; every annotation
that is not written as a label is counted in a :class:`SplitReport`, and the unusual
ones (clipped, outside the image, duplicate) also raise a :class:`DatasetWarning`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from ultralytics.data.converter import merge_multi_segment
from ultralytics.data.utils import IMG_FORMATS, check_det_dataset, img2label_paths

from dynamicdet import paths
from dynamicdet.data.synthetic import stale_fields
from dynamicdet.files import write_json, write_text

LOGGER = logging.getLogger(__name__)

SPLITS = ("train", "val")
STAMP_VERSION = 1  # bump when the label format or the stamp's payload changes
CLIP_TOL = 1e-3  # px; boxes overshooting the image by less than this are float noise, clipped without counting
MIN_IMAGE_SIDE = 10  # px; ultralytics' check_image rejects smaller images as corrupt
_EXIF_ORIENTATION = 274  # EXIF tag; 1 = as stored, 2-8 = flipped and/or rotated


class DatasetError(ValueError):
    """A dataset file is missing or malformed. The message names the file and the offending id."""


class DatasetWarning(UserWarning):
    """Something was changed or left out while reading a dataset (clipped, outside, duplicate boxes)."""


@dataclass
class SplitReport:
    """What happened to every image and annotation of one split. Nothing is dropped silently."""

    images: int = 0  # image records in the json (all kept: an image without boxes is a background image)
    images_empty: int = 0  # of which have no box left (empty label file)
    images_exif_rotated: int = 0  # with an EXIF orientation that ultralytics applies to the pixels but not to the boxes
    annotations: int = 0  # annotation records in the json
    kept: int = 0  # written as labels
    clipped: int = 0  # of the kept: partly outside the image, clipped to it
    skipped_crowd: int = 0  # iscrowd=1 regions (COCOeval ignores them; ultralytics' convert_coco skips them too)
    skipped_outside: int = 0  # no area left after clipping to the image
    skipped_duplicate: int = 0  # same class and same label line as another box of the image (ultralytics drops them)

    @property
    def skipped(self) -> int:
        """Annotations not written as labels."""
        return self.skipped_crowd + self.skipped_outside + self.skipped_duplicate

    def __str__(self) -> str:
        return (
            f"{self.images} images ({self.images_empty} without boxes), {self.annotations} annotations: "
            f"{self.kept} kept ({self.clipped} clipped to the image), {self.skipped} skipped "
            f"({self.skipped_crowd} crowd, {self.skipped_outside} outside the image, "
            f"{self.skipped_duplicate} duplicate)"
        )


@dataclass
class CocoSplit:
    """A validated COCO split.

    ``annotations`` holds only the boxes to be written as labels, with ``bbox`` already
    clipped to the image (COCO ``[x, y, w, h]`` in pixels) and ``cls`` the contiguous
    class index. Images appear in json order, each with ``id``, ``file_name``, ``width``
    and ``height`` (taken from the file when the json omits them).
    """

    json_path: Path
    images_dir: Path
    images: list[dict[str, Any]]
    annotations: dict[int, list[dict[str, Any]]]  # image id -> kept annotations
    categories: list[dict[str, Any]]  # sorted by id
    report: SplitReport = field(default_factory=SplitReport)

    @property
    def class_to_cat(self) -> list[int]:
        """Class index (0..K-1) -> COCO category id."""
        return [int(c["id"]) for c in self.categories]

    @property
    def names(self) -> list[str]:
        """Class names in class-index order."""
        return [str(c.get("name", c["id"])) for c in self.categories]

    @property
    def file_to_image_id(self) -> dict[str, int]:
        """Image file name (without folders) -> COCO image id."""
        return {Path(im["file_name"]).name: int(im["id"]) for im in self.images}


@dataclass
class DatasetInfo:
    """Everything the rest of the project needs to know about a prepared dataset."""

    root: Path  # dataset folder (images/, labels/, dataset.yaml)
    yaml_path: Path  # ultralytics data yaml
    data: dict[str, Any]  # ultralytics' check_det_dataset(yaml_path) output
    names: list[str]  # class names, class-index order
    class_to_cat: list[int]  # class index -> COCO category id
    gt_json: dict[str, Path]  # split -> COCO ground-truth json (for pycocotools)
    file_to_image_id: dict[str, dict[str, int]]  # split -> {image file name: COCO image id}
    reports: dict[str, SplitReport]  # split -> what was kept, clipped, skipped


# ----------------------------------------------------------------------------- reading
def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _read_json(json_path: Path) -> dict[str, Any]:
    if not json_path.is_file():
        raise DatasetError(f"{json_path}: annotation file not found")
    try:
        with open(json_path, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{json_path}: invalid json: {e}") from None
    if not isinstance(d, dict):
        raise DatasetError(f"{json_path}: invalid COCO json: top level is a {type(d).__name__}, expected an object")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(d.get(k), list)]
    if missing:
        raise DatasetError(f"{json_path}: invalid COCO json: missing or non-list key(s) {missing}")
    return d


def _check_categories(raw: list[Any], json_path: Path) -> list[dict[str, Any]]:
    seen: set[int] = set()
    for c in raw:
        if not isinstance(c, dict) or not _is_int(c.get("id")):
            raise DatasetError(f"{json_path}: category without an integer 'id': {c!r}")
        if c["id"] in seen:
            raise DatasetError(f"{json_path}: duplicate category id {c['id']}")
        seen.add(c["id"])
    if not raw:
        raise DatasetError(f"{json_path}: no categories")
    return sorted(raw, key=lambda c: c["id"])


def _pil_open(path: Path):
    """PIL's own ``Image.open``. ultralytics replaces it with one that retries a file PIL cannot identify
    through the pi-heif plugin (an extra requirement it tries to install), which turns "not an image" into
    "No module named 'pi_heif'"; a dataset check must report the file's real problem."""
    from ultralytics.utils import patches  # deferred: heavy (torch); only image checks need it

    return getattr(patches, "_image_open", Image.open)(path)


def _image_size(path: Path, json_path: Path, image_id: int) -> tuple[tuple[int, int], bool]:
    """((width, height) as stored, has an EXIF rotation) of an image file, after a PIL integrity check."""
    if not path.is_file():
        raise DatasetError(f"{json_path}: image id {image_id}: file not found: {path}")
    try:
        with _pil_open(path) as im:
            size, fmt = im.size, (im.format or "").lower()
            im.verify()  # must come right after open (PNG)
        with _pil_open(path) as im:  # verify() leaves the image unusable: reopen for the EXIF
            orientation = im.getexif().get(_EXIF_ORIENTATION)
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        raise DatasetError(f"{json_path}: image id {image_id}: unreadable or corrupt image {path}: {e}") from None
    if fmt not in IMG_FORMATS | {"jpeg"}:
        raise DatasetError(f"{json_path}: image id {image_id}: format {fmt!r} of {path} is not read by ultralytics")
    if min(size) < MIN_IMAGE_SIDE:
        raise DatasetError(
            f"{json_path}: image id {image_id}: {path} is {size[0]}x{size[1]} px; "
            f"ultralytics rejects images under {MIN_IMAGE_SIDE} px"
        )
    # ultralytics reads images with cv2, which applies an EXIF rotation, while COCO boxes refer to
    # the stored pixels: such images are counted and warned about (see SplitReport.images_exif_rotated).
    return size, orientation not in (None, 1)


def _check_image_record(im: Any, json_path: Path, images_dir: Path, check_images: bool) -> dict[str, Any]:
    if not isinstance(im, dict) or not _is_int(im.get("id")):
        raise DatasetError(f"{json_path}: image record without an integer 'id': {str(im)[:200]}")
    image_id = im["id"]
    file_name = im.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        raise DatasetError(f"{json_path}: image id {image_id}: missing 'file_name'")
    rel = Path(file_name)
    if rel.is_absolute() or ".." in rel.parts:
        raise DatasetError(
            f"{json_path}: image id {image_id}: file_name {file_name!r} must be relative to the images dir"
        )
    if rel.suffix[1:].lower() not in IMG_FORMATS:
        raise DatasetError(f"{json_path}: image id {image_id}: {file_name!r} has no image suffix ultralytics reads")
    w, h = im.get("width"), im.get("height")
    for key, v in (("width", w), ("height", h)):
        if v is not None and not (_is_int(v) and v > 0):
            raise DatasetError(f"{json_path}: image id {image_id}: {key} must be a positive integer, got {v!r}")
    rotated = False
    if check_images:
        (fw, fh), rotated = _image_size(images_dir / rel, json_path, image_id)
        if (w is not None and w != fw) or (h is not None and h != fh):
            raise DatasetError(
                f"{json_path}: image id {image_id}: json says {w}x{h} px but {images_dir / rel} is {fw}x{fh} px"
            )
        w, h = fw, fh
    elif w is None or h is None:
        raise DatasetError(f"{json_path}: image id {image_id}: width/height missing (pass check_images=True)")
    return {"id": image_id, "file_name": file_name, "width": w, "height": h, "exif_rotated": rotated}


def yolo_line(cls: int, bbox: list[float], width: int, height: int) -> str:
    """One YOLO label line ``cls cx cy w h`` (normalised, 6 decimals) from a COCO ``[x, y, w, h]`` pixel box.

    6 decimals keep the round-trip error under ``5e-7 * image side`` pixels.
    """
    x, y, bw, bh = bbox
    return f"{cls} {(x + bw / 2) / width:.6f} {(y + bh / 2) / height:.6f} {bw / width:.6f} {bh / height:.6f}"


def segment_line(cls: int, bbox: list[float], segmentation: Any, width: int, height: int) -> str:
    """One YOLO segment label line ``cls x1 y1 x2 y2 ...`` (normalised) for Mask R-CNN targets.

    A polygon in several parts is joined into one outline (ultralytics' ``merge_multi_segment``);
    an annotation without a polygon (missing, or RLE) gets its box as a rectangle.
    """
    parts = []
    if isinstance(segmentation, list):
        parts = [np.asarray(q, dtype=np.float64).reshape(-1, 2) for q in segmentation if len(q) >= 6]
    if not parts:
        x, y, bw, bh = bbox
        poly = np.array([[x, y], [x + bw, y], [x + bw, y + bh], [x, y + bh]])
    elif len(parts) == 1:
        poly = parts[0]
    else:
        poly = np.concatenate(merge_multi_segment([q.reshape(-1).tolist() for q in parts]), axis=0)
    poly = np.clip(poly / np.array([width, height]), 0.0, 1.0)
    return f"{cls} " + " ".join(f"{v:.6f}" for v in poly.reshape(-1))


def load_coco(json_path: Path, images_dir: Path, check_images: bool = True) -> CocoSplit:
    """Read and validate a COCO detection json.

    Args:
        json_path: COCO instances json (``images``, ``annotations``, ``categories``).
        images_dir: folder that ``file_name`` is relative to.
        check_images: open every image with PIL (exists, readable, ``verify()``, size matches
            the json). With False no image file is touched and the json's width/height are trusted.

    Returns:
        The validated split; its ``report`` counts kept, clipped and skipped annotations.

    Raises:
        DatasetError: missing or invalid json, duplicate image/category/annotation ids, an
            annotation with an unknown image or category id, a missing or corrupt image, an
            image size that disagrees with the json, or a box with non-positive width/height.
    """
    json_path, images_dir = Path(json_path), Path(images_dir)
    d = _read_json(json_path)
    categories = _check_categories(d["categories"], json_path)
    cat_to_cls = {c["id"]: i for i, c in enumerate(categories)}

    images: list[dict[str, Any]] = []
    by_id: dict[int, dict[str, Any]] = {}
    by_name: dict[str, int] = {}
    for raw in d["images"]:
        im = _check_image_record(raw, json_path, images_dir, check_images)
        if im["id"] in by_id:
            raise DatasetError(f"{json_path}: duplicate image id {im['id']}")
        name = Path(im["file_name"]).name
        if name in by_name:
            raise DatasetError(
                f"{json_path}: image ids {by_name[name]} and {im['id']} share the file name {name!r} "
                "(images are matched to predictions by file name)"
            )
        by_id[im["id"]], by_name[name] = im, im["id"]
        images.append(im)

    report = SplitReport(images=len(images), annotations=len(d["annotations"]))
    kept: dict[int, list[dict[str, Any]]] = defaultdict(list)
    lines_seen: dict[int, set[str]] = defaultdict(set)
    ann_ids: set[int] = set()
    for ann in d["annotations"]:
        if not isinstance(ann, dict):
            raise DatasetError(f"{json_path}: annotation is not an object: {str(ann)[:200]}")
        ann_id = ann.get("id")
        # pycocotools stores the matched gt id in a float array and treats 0 as "unmatched":
        # a gt with id 0 would count its true positive as a false positive.
        if not _is_int(ann_id) or ann_id < 1:
            raise DatasetError(f"{json_path}: annotation id {ann_id!r}: ids must be positive integers (pycocotools)")
        if ann_id in ann_ids:
            raise DatasetError(f"{json_path}: duplicate annotation id {ann_id}")
        ann_ids.add(ann_id)
        image_id, cat_id = ann.get("image_id"), ann.get("category_id")
        if image_id not in by_id:
            raise DatasetError(f"{json_path}: annotation id {ann_id} refers to unknown image id {image_id!r}")
        if cat_id not in cat_to_cls:
            raise DatasetError(f"{json_path}: annotation id {ann_id} has unknown category id {cat_id!r}")
        bbox = ann.get("bbox")
        if (
            not isinstance(bbox, list | tuple)
            or len(bbox) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
        ):
            raise DatasetError(f"{json_path}: annotation id {ann_id}: bbox must be 4 finite numbers, got {bbox!r}")
        x, y, bw, bh = (float(v) for v in bbox)
        if bw <= 0 or bh <= 0:
            raise DatasetError(f"{json_path}: annotation id {ann_id}: non-positive box size w={bw} h={bh}")
        if ann.get("iscrowd", 0):
            report.skipped_crowd += 1
            continue

        im = by_id[image_id]
        W, H = im["width"], im["height"]
        x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + bw, W), min(y + bh, H)
        if x2 <= x1 or y2 <= y1:
            report.skipped_outside += 1
            continue
        overshoot = max(-x, -y, x + bw - W, y + bh - H)
        cls = cat_to_cls[cat_id]
        clipped = [x1, y1, x2 - x1, y2 - y1]
        line = yolo_line(cls, clipped, W, H)
        if line in lines_seen[image_id]:
            report.skipped_duplicate += 1
            continue
        lines_seen[image_id].add(line)
        report.clipped += overshoot > CLIP_TOL
        report.kept += 1
        kept[image_id].append(
            {"id": ann_id, "category_id": cat_id, "cls": cls, "bbox": clipped, "segmentation": ann.get("segmentation")}
        )

    report.images_empty = sum(1 for im in images if not kept.get(im["id"]))
    report.images_exif_rotated = sum(1 for im in images if im.pop("exif_rotated"))
    where = f"{json_path}"
    if report.clipped:
        warnings.warn(
            f"{where}: {report.clipped} box(es) partly outside the image clipped to it", DatasetWarning, stacklevel=2
        )
    if report.skipped_outside:
        warnings.warn(
            f"{where}: {report.skipped_outside} box(es) entirely outside the image skipped",
            DatasetWarning,
            stacklevel=2,
        )
    if report.images_exif_rotated:
        warnings.warn(
            f"{where}: {report.images_exif_rotated} image(s) carry an EXIF rotation: ultralytics rotates their "
            "pixels but not their boxes (strip the EXIF orientation to fix)",
            DatasetWarning,
            stacklevel=2,
        )
    if report.skipped_duplicate:
        warnings.warn(f"{where}: {report.skipped_duplicate} duplicate box(es) skipped", DatasetWarning, stacklevel=2)
    LOGGER.info("%s: %s", json_path, report)
    return CocoSplit(json_path, images_dir, images, dict(kept), categories, report)


# ----------------------------------------------------------------------------- writing
def _link(src: Path, dst: Path) -> None:
    """Make ``dst`` point at ``src``: symlink, else hard link, else copy (filesystems without symlinks)."""
    try:
        os.symlink(src, dst)
    except OSError:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def _image_files(folder: Path) -> set[Path]:
    """Image files ultralytics would list under ``folder`` (recursive, by suffix), as paths relative to it."""
    if not folder.is_dir():
        return set()
    return {
        p.relative_to(folder)
        for p in folder.rglob("*.*")
        if p.suffix[1:].lower() in IMG_FORMATS and (p.is_file() or p.is_symlink())
    }


def prepare_yolo_split(split: CocoSplit, out_dir: Path, split_name: str, segments: bool = False) -> dict[str, Any]:
    """Write ``out_dir/labels/<split_name>/*.txt`` and make the images visible under ``out_dir/images/<split_name>``.

    Images already in ``out_dir/images/<split_name>`` stay where they are; otherwise each
    image is symlinked there (stale symlinks are removed). Images without boxes get an
    empty label file (ultralytics reads them as background). Label files of images no
    longer in the split and ultralytics' ``labels/<split_name>.cache`` are deleted.

    Args:
        split: output of :func:`load_coco`.
        out_dir: dataset folder.
        split_name: ``"train"`` or ``"val"``.
        segments: write polygon lines (:func:`segment_line`, for Mask R-CNN) instead of boxes.

    Returns:
        ``{"images_dir", "labels_dir", "images", "labels", "file_to_image_id"}``: the two
        folders, the number of images and of label lines written, file name -> image id.

    Raises:
        DatasetError: the images folder holds image files that are not in the json
            (ultralytics would load them and they have no ground truth).
    """
    out_dir = Path(out_dir)
    img_dir, lbl_dir = out_dir / "images" / split_name, out_dir / "labels" / split_name
    expected = {Path(im["file_name"]) for im in split.images}
    in_place = img_dir.resolve() == Path(split.images_dir).resolve()
    if img_dir.is_symlink():
        # check_det_dataset resolves the split folder; the resolved path has no /images/ to map to /labels/.
        raise DatasetError(f"{img_dir} is a symlink to a folder; ultralytics would not find the labels. Remove it")

    if not in_place:
        img_dir.mkdir(parents=True, exist_ok=True)
        for rel in _image_files(img_dir) - expected:  # links left by an earlier version of the split
            if (img_dir / rel).is_symlink():
                (img_dir / rel).unlink()
        src_root = Path(split.images_dir).resolve()
        for rel in sorted(expected):
            src, dst = src_root / rel, img_dir / rel
            if dst.is_symlink():
                if Path(os.readlink(dst)) == src:
                    continue
                dst.unlink()
            elif dst.exists():
                if not src.exists() or not os.path.samefile(src, dst):
                    raise DatasetError(f"{dst}: a different file is in the way of the link to {src}; remove it")
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            _link(src, dst)
    extra = sorted(_image_files(img_dir) - expected)
    if extra:
        raise DatasetError(
            f"{img_dir}: {len(extra)} image file(s) not in {split.json_path} (ultralytics would load them without "
            f"ground truth), e.g. {[str(p) for p in extra[:5]]}"
        )

    # Labels: one file per image, path as ultralytics derives it from the image path.
    lbl_dir.mkdir(parents=True, exist_ok=True)
    image_paths = [str(img_dir / im["file_name"]) for im in split.images]
    label_paths = [Path(p) for p in img2label_paths(image_paths)]
    n_lines = 0
    for im, lbl in zip(split.images, label_paths, strict=True):
        anns = split.annotations.get(im["id"], [])
        if segments:
            lines = [segment_line(a["cls"], a["bbox"], a["segmentation"], im["width"], im["height"]) for a in anns]
        else:
            lines = [yolo_line(a["cls"], a["bbox"], im["width"], im["height"]) for a in anns]
        n_lines += len(lines)
        lbl.parent.mkdir(parents=True, exist_ok=True)
        text = "\n".join(lines) + ("\n" if lines else "")
        if not lbl.is_file() or lbl.read_text() != text:
            lbl.write_text(text)
    keep = {p.resolve() for p in label_paths}
    for stale in lbl_dir.rglob("*.txt"):
        if stale.resolve() not in keep:
            stale.unlink()
    (out_dir / "labels" / f"{split_name}.cache").unlink(missing_ok=True)  # ultralytics' label cache

    return {
        "images_dir": img_dir,
        "labels_dir": lbl_dir,
        "images": len(split.images),
        "labels": n_lines,
        "file_to_image_id": split.file_to_image_id,
    }


# ----------------------------------------------------------------------------- datasets
def _stamp_key(json_path: Path, images_dir: Path) -> dict[str, Any]:
    js, ims = json_path.stat(), images_dir.stat()
    return {
        "version": STAMP_VERSION,
        "json": str(json_path.resolve()),
        "json_mtime_ns": js.st_mtime_ns,
        "json_size": js.st_size,
        "images_dir": str(images_dir.resolve()),
        "images_dir_mtime_ns": ims.st_mtime_ns,
    }


def _split_sources(cfg) -> tuple[Path, dict[str, tuple[Path, Path]]]:
    """Dataset folder and, per split, (json, images dir) of the config's dataset."""
    out_dir = paths.dataset_dir(cfg.dataset_name)
    if cfg.data.source == "synthetic":
        src = {s: (out_dir / "annotations" / f"instances_{s}.json", out_dir / "images" / s) for s in SPLITS}
        for s, (js, ims) in src.items():
            if not js.is_file() or not ims.is_dir():
                raise DatasetError(
                    f"{js}: synthetic dataset {cfg.dataset_name!r} ({s}) not found under {out_dir}; "
                    "generate it first (dynamicdet.data.synthetic.generate_from_config or `dynamicdet data`)"
                )
            # the folder is named by the config's dataset name only: another config of that name (other
            # img_size, n_train, ...) may have regenerated it; reading it would score the wrong images
            stale = stale_fields(cfg, _read_json(js))
            if stale:
                said = ", ".join(f"{k} {disk} (config: {want})" for k, (disk, want) in stale.items())
                raise DatasetError(
                    f"{js}: synthetic dataset {cfg.dataset_name!r} on disk was generated with {said}; "
                    f"regenerate it for this config (`dynamicdet data --config {cfg.name}`)"
                )
        return out_dir, src
    if cfg.data.source != "coco":
        raise DatasetError(f"{cfg.source or '<config>'}: unknown data.source {cfg.data.source!r}")
    if not cfg.data.root:
        raise DatasetError(f"{cfg.source or '<config>'}: data.root is empty; set it to your COCO-format folder")
    root = Path(cfg.data.root).expanduser()
    if not root.is_absolute():
        root = paths.data_dir() / root
    src = {}
    for s, images, js in (
        ("train", cfg.data.train_images, cfg.data.train_json),
        ("val", cfg.data.val_images, cfg.data.val_json),
    ):
        candidates = [root / images, root / "images" / images]
        found = next((c for c in candidates if c.is_dir()), None)
        if found is None:
            raise DatasetError(f"{root}: {s} images folder not found, looked in {[str(c) for c in candidates]}")
        src[s] = (root / js, found)
    return out_dir, src


def prepare_dataset(cfg, force: bool = False, check_images: bool = True, segments: bool | None = None) -> DatasetInfo:
    """Validate a config's dataset, write its YOLO labels and ``dataset.yaml``, and describe it.

    ``synthetic``: the dataset already sits at ``paths.dataset_dir(cfg.dataset_name)`` with
    ``images/{train,val}`` and ``annotations/instances_{train,val}.json``; labels are written
    next to the images. ``coco``: images from ``<root>/<train_images>`` (or
    ``<root>/images/<train_images>``), json ``<root>/<train_json>`` (a relative ``root`` is
    taken under ``paths.data_dir()``); the YOLO layout (symlinked images, labels, yaml) is
    written to ``paths.dataset_dir(cfg.dataset_name)``. The ground-truth jsons are used as
    they are for evaluation.

    Re-running is cheap: a split whose json (path, size, mtime), images folder (path,
    mtime) and number of label files are unchanged since the last run is not re-read; its
    stamp (``labels/<split>.dynamicdet.json``) holds the mapping and report. Pass
    ``force=True`` after editing image files in place.

    Mask R-CNN configs (``model.kind: mask_rcnn``) need instance polygons: their YOLO
    layout (image links, polygon labels, yaml) goes to ``<dataset>/segments/``, next to
    the box layout, and the ultralytics data dict is marked so that
    :func:`~dynamicdet.data.loaders.build_dataset` returns per-instance masks.

    Args:
        cfg: a :class:`dynamicdet.config.Config`.
        force: re-read and re-write every split even when its stamp matches.
        check_images: open every image with PIL (see :func:`load_coco`).
        segments: polygon layout; ``None`` = as the config's model kind needs.

    Raises:
        DatasetError: missing folders, any :func:`load_coco` error, or splits with different categories.
    """
    out_dir, sources = _split_sources(cfg)
    if segments is None:
        segments = cfg.model.kind == "mask_rcnn"
    if segments:
        out_dir = out_dir / "segments"
    gt_json, f2id, reports, cats = {}, {}, {}, {}
    for s, (js, ims) in sources.items():
        if not js.is_file():
            raise DatasetError(f"{js}: annotation file not found")
        stamp_path = out_dir / "labels" / f"{s}.dynamicdet.json"
        key = _stamp_key(js, ims)
        payload = None
        labels_dir = out_dir / "labels" / s
        if not force and stamp_path.is_file() and labels_dir.is_dir():
            try:
                stamp = json.loads(stamp_path.read_text())
                payload = stamp["payload"] if stamp.get("key") == key else None
            except (json.JSONDecodeError, KeyError):
                payload = None
            if payload is not None and sum(1 for _ in labels_dir.rglob("*.txt")) != len(payload["file_to_image_id"]):
                payload = None  # label files were removed or added since: rewrite them
        if payload is None:
            split = load_coco(js, ims, check_images=check_images)
            out_dir.mkdir(parents=True, exist_ok=True)
            out = prepare_yolo_split(split, out_dir, s, segments=segments)
            payload = {
                "categories": [{"id": c, "name": n} for c, n in zip(split.class_to_cat, split.names, strict=True)],
                "file_to_image_id": out["file_to_image_id"],
                "report": asdict(split.report),
            }
            write_json({"key": key, "payload": payload}, stamp_path)  # written last: marks the split done
        gt_json[s] = js
        f2id[s] = {k: int(v) for k, v in payload["file_to_image_id"].items()}
        reports[s] = SplitReport(**payload["report"])
        cats[s] = [(c["id"], c["name"]) for c in payload["categories"]]
    if cats["train"] != cats["val"]:
        raise DatasetError(
            f"{gt_json['val']}: categories {cats['val']} differ from {gt_json['train']}: {cats['train']}"
        )

    class_to_cat = [c for c, _ in cats["train"]]
    names = [n for _, n in cats["train"]]
    yaml_path = out_dir / "dataset.yaml"
    text = yaml.safe_dump(
        {
            "path": str(out_dir.resolve()),
            "train": "images/train",
            "val": "images/val",
            "nc": len(names),
            "names": dict(enumerate(names)),
        },
        sort_keys=False,
    )
    if not yaml_path.is_file() or yaml_path.read_text() != text:
        write_text(text, yaml_path)
    # Local yaml + autodownload=False: check_det_dataset only reads and resolves paths (no network).
    data = check_det_dataset(str(yaml_path), autodownload=False)
    data["dd_segments"] = segments  # build_dataset: polygon labels -> per-instance masks
    return DatasetInfo(
        root=out_dir,
        yaml_path=yaml_path,
        data=data,
        names=names,
        class_to_cat=class_to_cat,
        gt_json=gt_json,
        file_to_image_id=f2id,
        reports=reports,
    )


__all__ = [
    "CocoSplit",
    "DatasetError",
    "DatasetInfo",
    "DatasetWarning",
    "SplitReport",
    "load_coco",
    "prepare_dataset",
    "prepare_yolo_split",
    "segment_line",
    "yolo_line",
]
