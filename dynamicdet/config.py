"""Typed configuration: a shipped config (``dynamicdet/configs/<name>.yaml``) or a YAML path -> :class:`Config`.

One small dataclass per stage, a comment per field (nanoGPT style). Unknown keys and
wrong types are rejected with a message naming the file and the key, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from dynamicdet import paths
from dynamicdet.data.synthetic import DEFAULT_CLASSES
from dynamicdet.modeling.losses import ROUTER_LOSSES
from dynamicdet.modeling.trunks import NORMS, TRUNKS
from dynamicdet.modeling.two_stage import KINDS as TWO_STAGE_KINDS
from dynamicdet.modeling.yolo import FAMILIES, SCALES


class ConfigError(ValueError):
    """A configuration file is missing, malformed, or has unknown/mistyped keys."""


@dataclass
class DataConfig:
    source: str = "synthetic"  # "synthetic" (generated here) or "coco" (a COCO-format folder you supply)
    name: str = ""  # dataset folder under data/; empty = the config's name
    root: str = ""  # coco only: folder holding images/{train,val} dirs and annotations/ (real COCO 2017 layout)
    train_images: str = "train2017"  # coco only: image folder name (under root/ or root/images/)
    val_images: str = "val2017"  # coco only
    train_json: str = "annotations/instances_train2017.json"  # coco only: relative to root
    val_json: str = "annotations/instances_val2017.json"  # coco only
    img_size: int = 192  # generated image side (px) and network input size
    n_train: int = 1500  # synthetic: number of training images
    n_val: int = 300  # synthetic: number of validation images
    seed: int = 0  # synthetic: generator seed (same seed -> byte-identical dataset)
    classes: list[str] = field(default_factory=lambda: list(DEFAULT_CLASSES))  # synthetic: object classes
    min_objects: int = 1  # synthetic: objects on the easiest image
    max_objects: int = 40  # synthetic: objects on the hardest image
    workers: int = 2  # synthetic: generator processes


@dataclass
class ModelConfig:
    kind: str = "yolo"  # yolo (two ultralytics detectors) | faster_rcnn | mask_rcnn (two torchvision detectors)
    family: str = "yolov8"  # yolo: ultralytics family, a key of modeling.yolo.FAMILIES (yolov8 | yolo11)
    scale: str = "n"  # yolo: a scale of modeling.yolo.SCALES (ultralytics n, s, m, l, x and ns between n and s)
    backbone: str = "resnet18"  # two-stage: one of modeling.trunks.TRUNKS (resnet18 ... resnet101, swin_t, swin_s)
    dual: bool = True  # False = one plain detector: a static baseline trained by our own step-1 loop
    fpn_channels: int = 64  # two-stage: FPN width (torchvision: 256)
    head_channels: int = 256  # two-stage: box-head MLP and mask-head conv width (torchvision: 1024 / 256)
    anchor_base: int = 8  # two-stage: anchor side at stride 4, doubling per level (torchvision: 32)
    rpn_batch: int = 256  # two-stage: anchors sampled per image for the RPN loss
    roi_batch: int = 128  # two-stage: proposals sampled per image for the RoI loss (torchvision: 512)
    norm: str = "bn"  # two-stage: bn (BatchNorm trunk) | gn (GroupNorm in trunk, FPN and mask head; from scratch)


@dataclass
class TrainConfig:
    """Step 1: both detectors jointly, min L1 + L2 (authors' schedule as defaults)."""

    epochs: int = 15  # training epochs
    batch: int = 16  # images per step
    nbs: int = 64  # nominal batch size: gradients accumulate over nbs / batch steps (ultralytics, authors: 64)
    optimizer: str = "SGD"  # SGD (nesterov) | AdamW
    lr0: float = 0.01  # initial learning rate
    lrf: float = 0.1  # final lr = lr0 * lrf (cosine)
    momentum: float = 0.937  # SGD momentum / Adam beta1
    weight_decay: float = 5e-4  # applied to conv weights only (not BN, not biases)
    warmup_epochs: float = 1.0  # linear warm-up (authors: 3 of 300)
    warmup_bias_lr: float = 0.1  # bias lr at the start of warm-up
    ema: bool = True  # keep an exponential moving average of the weights
    mosaic: float = 1.0  # mosaic probability
    mixup: float = 0.0  # mixup probability
    close_mosaic: int = 3  # turn mosaic off for the last N epochs
    workers: int = 2  # dataloader workers (CPU runs use the main process when 0)
    seed: int = 0  # training seed
    val_every: int = 1  # validate both detectors every N epochs (and at the end); 0: never (a table evaluates later)
    # gradient-norm clip at 10: per_detector (each detector on its own, the links with detector 2) |
    # joint (one norm over the pair) | none (the authors); the step-1 ablation chose it (results/ablation)
    clip: str = "per_detector"
    detach_links: bool = False  # True: detector 2's loss does not reach backbone 1 through the composite links


# Named router settings a config may give instead of (or under) its router section: ``router: paper`` or
# ``router: {preset: paper, epochs: 50}`` (the preset's values, then the section's own keys over them).
ROUTER_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # the paper's router: target L1 - L2 with the adaptive offset, on 2 views augmented as the authors' step 2
    # (hsv 0.015/0.7/0.4, translate 0.2, scale 0.9, fliplr 0.5; no mosaic or mixup)
    "paper": {
        "loss": "adaptive_offset",
        "target": "gain",
        "views": 2,
        "hsv_h": 0.015,
        "hsv_s": 0.7,
        "hsv_v": 0.4,
        "translate": 0.2,
        "scale": 0.9,
        "fliplr": 0.5,
    },
}


def _expand_router(value: Any, source: str) -> Any:
    """A router section with its preset expanded (a name, or a mapping with a ``preset`` key)."""
    if isinstance(value, str):
        value = {"preset": value}
    if not isinstance(value, dict) or "preset" not in value:
        return value
    rest = {k: v for k, v in value.items() if k != "preset"}
    if value["preset"] not in ROUTER_PRESETS:
        raise ConfigError(f"{source}: router preset {value['preset']!r} is not one of {sorted(ROUTER_PRESETS)}")
    return {**ROUTER_PRESETS[value["preset"]], **rest}


@dataclass
class RouterConfig:
    """Step 2: freeze both detectors, train the router only."""

    # Defaults: the paper's loss on what notebook 04 found the router can rank (results/standard/router_variants.csv):
    # detector 1's loss (target l1) on one un-augmented view. The paper's router is target gain on 2 augmented
    # views: the preset ``router: paper`` (ROUTER_PRESETS below).
    loss: str = "adaptive_offset"  # naive | naive_lambda | adaptive_offset (paper) | soft_target | rank
    lam: float = 0.0  # naive_lambda: weight of the lambda * phi penalty
    delta: str = "median"  # adaptive_offset: "median" (whole train set, paper) | "running" (authors' code)
    target: str = "l1"  # what the router ranks: gain = L1 - L2 (paper) | l1 = detector 1's own loss (L2 := 0)
    views: int = 1  # views of the training set stored in the cache (authors: 2 augmented epochs)
    epochs: int = 100  # router epochs over the cache
    batch: int = 64  # images per router step (authors: 64 accumulated)
    lr: float = 1e-3  # AdamW learning rate (constant)
    weight_decay: float = 0.0  # AdamW weight decay
    cached: bool = True  # train on the per-image cache (fast) or run the detectors every step (direct)
    hsv_h: float = 0.0  # augmentation of the cache views (no mosaic/mixup, as the authors); all 0: no augmentation
    hsv_s: float = 0.0
    hsv_v: float = 0.0
    translate: float = 0.0
    scale: float = 0.0
    fliplr: float = 0.0
    lambdas: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.2, 0.5])  # 04_router_losses sweep
    # more variants beyond the paper (04_router_losses compares them)
    target_views: str = "each"  # each: every view's own target | mean: the image's mean over its views
    normalize: bool = False  # standardise the pooled features on the cache (folded into fc1 afterwards)
    holdout: float = 0.0  # fraction of training images held out; > 0: keep the epoch that ranks them best


@dataclass
class EvalConfig:
    fractions: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.5, 0.9, 1.0])  # table rows (/0 ... /100)
    sweep: int = 11  # points of the dense hard-fraction sweep for curves
    batch: int = 8  # batched latency / evaluation batch size
    conf: float = 0.001  # NMS confidence threshold for AP
    iou: float = 0.7  # NMS IoU threshold
    max_det: int = 300  # detections kept per image (two-stage: torchvision box_detections_per_img)
    latency_repeats: int = 20  # timed repeats per latency figure
    latency_warmup: int = 5  # untimed warm-up runs
    # > 0: time each latency figure until its 95% interval relative to the models timed in the same rounds is
    # within +-this fraction (0: fixed repeats); the absolute interval is reported beside it
    latency_tolerance: float = 0.0
    random_seeds: int = 5  # seeds of the random-routing baseline
    static_scales: list[str] = field(default_factory=lambda: ["n", "s"])  # static ultralytics baselines
    static_epochs: int = 0  # epochs for static baselines; 0 = same as train.epochs
    static_backbones: list[str] = field(default_factory=lambda: ["resnet18", "resnet34"])  # two-stage statics
    timing_images: int = 20  # 08_two_stage: val images timed (batch 1) and FLOP-counted per row
    # images of a calibration split (synthetic data: drawn from the generator like val, data.seed + 1) on which
    # every router threshold tau is set; AP and the achieved hard fraction are then measured on val, which tau
    # never saw (the paper: tau on val, applied to test-dev). 0: tau from the val images themselves (own data)
    calibration_images: int = 0
    stream_images: int = 60  # val images timed as a stream: route() latencies of the table and target check
    disturbance_passes: int = 3  # 05_variable_speed: passes over the val images per phase of the disturbed stream
    target_rounds: int = 3  # 05_variable_speed: calibrate-then-route rounds of the target-latency check (median)
    onnx_latency: bool = True  # 05/06: also time every model on onnxruntime at batch 1 (the fourth frontier cost)


@dataclass
class Config:
    name: str = "quick"  # config name (= file stem); names the dataset and results folders
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:0"
    source: str = ""  # file the config was read from (filled by load_config)

    @property
    def dataset_name(self) -> str:
        return self.data.name or self.name

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d

    def section_hash(self, *keys: str) -> str:
        """Short hash of some sections or fields, used to key cached stages (same inputs -> same key).

        Args:
            keys: section names (``"data"``) or single fields (``"eval.batch"``).

        A section counts with all its fields as they are: adding a field to a section changes
        the key of every stage that reads the whole section, so those stages are recomputed.
        """
        d = self.to_dict()
        picked = {}
        for key in keys:
            section, _, name = key.partition(".")
            picked[key] = d[section][name] if name else d[section]
        blob = json.dumps(picked, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


# Allowed values. The model's lists are read from where the model is defined; the others are
# defined here (the code that reads them, in engine/ and data/, switches on these values).
_CHOICES = {
    ("data", "source"): {"synthetic", "coco"},
    ("model", "kind"): {"yolo", *TWO_STAGE_KINDS},
    ("model", "norm"): set(NORMS),
    ("model", "backbone"): set(TRUNKS),
    ("model", "family"): set(FAMILIES),
    ("model", "scale"): set(SCALES),
    ("train", "optimizer"): {"SGD", "AdamW"},
    ("train", "clip"): {"joint", "per_detector", "none"},
    ("router", "loss"): set(ROUTER_LOSSES),
    ("router", "target"): {"gain", "l1"},
    ("router", "target_views"): {"each", "mean"},
    ("router", "delta"): {"median", "running"},
}

_RANGES = {
    ("router", "holdout"): (0.0, 0.5),
    ("train", "val_every"): (0, float("inf")),
    ("eval", "disturbance_passes"): (1, float("inf")),
    ("eval", "target_rounds"): (1, float("inf")),
    ("eval", "calibration_images"): (0, float("inf")),
    ("eval", "latency_tolerance"): (0.0, 0.5),
}


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} ({value!r})")
        (inner,) = typing.get_args(tp)
        return [_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for t in typing.get_args(tp):
            try:
                return _check_type(value, t, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {tp.__name__}, got bool ({value!r})")
    if not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} ({value!r})")
    return value


def _build(cls: type, raw: dict[str, Any], where: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: section '{where}' must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - ({"source"} if cls is Config else set())
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown} in section '{where or 'top level'}'. Valid keys: {sorted(names)}"
        )
    kwargs = {}
    for key, value in raw.items():
        tp = hints[key]
        path = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, path, source)
            continue
        try:
            value = _check_type(value, tp, path)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        allowed = _CHOICES.get((where, key))
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{source}: {path} = {value!r} is not one of {sorted(allowed)}")
        if (where, key) in _RANGES:
            lo, hi = _RANGES[(where, key)]
            if not lo <= value <= hi:
                raise ConfigError(f"{source}: {path} = {value!r} is outside [{lo}, {hi}]")
        kwargs[key] = value
    return cls(**kwargs)


def shipped_config_names() -> list[str]:
    """Names of the configs shipped with the package (``dynamicdet/configs/*.yaml``)."""
    return sorted(f.name[: -len(".yaml")] for f in paths.shipped_configs().iterdir() if f.name.endswith(".yaml"))


def config_path(name_or_path: str | Path) -> Path | Traversable:
    """Resolve a config name (``quick``: a shipped config, package data) or a YAML path to a file.

    A ``.yaml``/``.yml`` suffix or a folder in the string makes it a path (relative to the
    current folder); anything else is the name of a shipped config.
    """
    if _is_path(name_or_path):
        return Path(name_or_path)
    return paths.shipped_configs() / f"{name_or_path}.yaml"


def _is_path(name_or_path: str | Path) -> bool:
    p = Path(name_or_path)
    return p.suffix in (".yaml", ".yml") or len(p.parts) > 1


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Load and validate a config.

    Args:
        name_or_path: a shipped config's name (``"smoke"``, see :func:`shipped_config_names`) or the
            path of a YAML file (a config of your own).
        overrides: nested dict merged over the file, e.g. ``{"train": {"epochs": 1}}``.

    Raises:
        ConfigError: missing file, invalid YAML, unknown key, wrong type or value.
    """
    path = config_path(name_or_path)
    if not path.is_file():
        shipped = shipped_config_names()
        if _is_path(name_or_path):
            raise ConfigError(f"config file not found: {path} (or give a shipped config's name: {shipped})")
        raise ConfigError(
            f"config file not found: {name_or_path!r} is not a shipped config (shipped configs: {shipped}); "
            "give the path of a YAML file for a config of your own"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: unreadable: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    name = path.name.rsplit(".", 1)[0]
    raw.setdefault("name", name)
    if "router" in raw:
        raw["router"] = _expand_router(raw["router"], str(path))
    for section, values in (overrides or {}).items():
        if section == "router":
            values = _expand_router(values, "overrides")
        if isinstance(values, dict):
            raw.setdefault(section, {})
            raw[section] = {**raw[section], **values}
        else:
            raw[section] = values
    cfg = _build(Config, raw, "", str(path))
    cfg.source = str(path)
    return cfg


def config_from_dict(d: dict[str, Any], source: str = "<dict>") -> Config:
    """Rebuild a :class:`Config` from :meth:`Config.to_dict` output (e.g. a checkpoint)."""
    return _build(Config, dict(d), "", source)
