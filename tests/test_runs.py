"""Cached stages are keyed by exactly the config fields they read."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import pytest
from conftest import other_value

from dynamicdet.config import Config, EvalConfig, TrainConfig, load_config
from dynamicdet.engine import runs
from dynamicdet.experiments import static_models

# every YOLO-pipeline stage, by name; the static row is the frontier's model of the config's first static scale
# (a step-1 run of its own config), the reference row ultralytics' yolov8n
STAGES = {
    "step 1": runs.STEP1,
    "router cache": runs.VIEW_CACHE,
    "val cache": runs.VAL_CACHE,
    "step 2": runs.STEP2,
    "calibration": runs.CALIBRATION,
    "val detections": runs.VAL_DETS,
    "trade-off": runs.TRADEOFF,
    "static models": runs.STATIC_MODELS,
    "static row": runs.STATIC_ROW,
    "reference row": runs.REFERENCE_ROW,
    "latency table": runs.LATENCY,
}
INSIDE_STEP2 = {"step 2", "calibration", "val detections", "trade-off", "latency table"}
ULTRALYTICS = {"static models", "reference row"}


def _paths(cfg) -> dict:
    out = {name: s.path(cfg, model="yolov8n") for name, s in STAGES.items()}
    out["static row"] = runs.STATIC_ROW.path(static_models.static_config(cfg, cfg.eval.static_scales[0]))
    return out


# eval field -> new value, and the stages that must move (be recomputed); every other stage stays
EVAL_CHANGES = [
    ("conf", 0.01, {"val detections", "trade-off", "static row", "reference row"}),
    ("iou", 0.6, {"val detections", "trade-off", "static row", "reference row"}),
    ("max_det", 57, {"val detections", "trade-off", "static row", "reference row"}),
    ("batch", 2, {"val cache", "static row", "reference row"} | INSIDE_STEP2),
    ("fractions", [0.0, 0.5, 1.0], {"trade-off", "latency table"}),
    ("sweep", 7, {"trade-off"}),
    ("random_seeds", 3, {"trade-off"}),
    ("calibration_images", 5, {"calibration", "trade-off"}),
    ("stream_images", 30, {"latency table"}),
    ("latency_repeats", 8, {"latency table"}),
    ("latency_tolerance", 0.05, {"latency table"}),
    ("static_scales", ["ns", "m"], {"latency table", "static row"}),  # the row of another scale
    ("static_epochs", 3, {"static models", "static row", "reference row", "latency table"}),
    ("latency_warmup", 2, set()),  # two-stage table only
    ("timing_images", 5, set()),  # two-stage table only
    ("static_backbones", ["resnet18"], set()),  # two-stage table only
    ("disturbance_passes", 1, set()),  # notebook 05's disturbed stream: timed live, nothing cached
    ("target_rounds", 1, set()),  # notebook 05's target-latency check: timed live, nothing cached
    ("onnx_latency", False, set()),  # whether the onnxruntime stage runs at all; no key reads it
]


def test_every_eval_field_is_covered():

    assert {c[0] for c in EVAL_CHANGES} == set(EvalConfig.__dataclass_fields__)


@pytest.mark.parametrize(("field", "value", "moved"), EVAL_CHANGES, ids=[c[0] for c in EVAL_CHANGES])
def test_an_eval_change_moves_the_stages_that_read_it_and_only_those(field, value, moved):
    base = load_config("smoke")
    changed = load_config("smoke", overrides={"eval": {field: value}})
    before, after = _paths(base), _paths(changed)
    assert {name for name in STAGES if before[name] != after[name]} == moved
    # the two-stage table reads the whole eval section
    ts, ts_changed = (
        load_config("smoke_faster_rcnn"),
        load_config("smoke_faster_rcnn", overrides={"eval": {field: value}}),
    )
    assert runs.TWO_STAGE_TABLE.path(ts) != runs.TWO_STAGE_TABLE.path(ts_changed)


@pytest.mark.parametrize(
    ("section", "field", "value", "moved"),
    [
        ("router", "lr", 0.5, INSIDE_STEP2),  # router training only: the cached views stay
        ("router", "target", "gain", INSIDE_STEP2),  # what the router ranks: same views, same cache
        ("router", "views", 3, {"router cache"} | INSIDE_STEP2),
        # new detectors: everything; smoke's static models train for eval.static_epochs (ultralytics' key reads both)
        ("train", "epochs", 5, set(STAGES) - {"static row"}),
        ("train", "clip", "none", set(STAGES) - ULTRALYTICS),  # ultralytics' trainer ignores it; our loop reads it
    ],
)
def test_training_changes_move_what_depends_on_them(section, field, value, moved):
    base = load_config("smoke")
    changed = load_config("smoke", overrides={section: {field: value}})
    before, after = _paths(base), _paths(changed)
    assert {name for name in STAGES if before[name] != after[name]} == moved


def test_a_stage_is_done_when_its_file_or_marker_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNAMICDET_HOME", str(tmp_path))
    cfg = load_config("smoke")
    assert not runs.STEP1.done(cfg) and not runs.TRADEOFF.done(cfg)
    runs.STEP1.path(cfg).mkdir(parents=True)
    assert not runs.STEP1.done(cfg)  # a folder without its marker is an unfinished run
    (runs.STEP1.path(cfg) / "step1.pt").write_bytes(b"")
    assert runs.STEP1.done(cfg)
    runs.TRADEOFF.path(cfg).parent.mkdir(parents=True)
    runs.TRADEOFF.path(cfg).write_bytes(b"")
    assert runs.TRADEOFF.done(cfg) and runs.TRADEOFF.path(cfg).parent == runs.router_dir(cfg)
    assert runs.router_dir(cfg).parent == runs.run_dir(cfg)


def _changed(cfg: Config, section: str, name: str) -> Config:
    sub = getattr(cfg, section)
    return dataclasses.replace(cfg, **{section: dataclasses.replace(sub, **{name: other_value(getattr(sub, name))})})


ALL_STAGES = {name: s for name, s in vars(runs).items() if isinstance(s, runs.Stage)}
SECTIONS = ("data", "model", "train", "router", "eval")
FIELDS = [(s, f.name) for s in SECTIONS for f in dataclasses.fields(getattr(Config(), s))]


def _reads_field(stage: runs.Stage, section: str, name: str) -> bool:
    """Whether the stage or one of the stages holding it reads the field (alone or with its section)."""
    while stage is not None:
        if section in stage.reads or f"{section}.{name}" in stage.reads:
            return True
        stage = stage.parent
    return False


@pytest.mark.parametrize("kind", ["yolo", "faster_rcnn"])
@pytest.mark.parametrize(("section", "name"), FIELDS, ids=[f"{s}.{n}" for s, n in FIELDS])
def test_a_stage_moves_exactly_when_a_field_it_reads_changes(section, name, kind):
    # whatever the model kind and whatever the field's value (its default included): the stages that read the
    # field move, with the stages inside them, and no other stage does
    base = dataclasses.replace(Config(), model=dataclasses.replace(Config().model, kind=kind))
    changed = _changed(base, section, name)
    moved = {n for n, s in ALL_STAGES.items() if s.path(base, model="m") != s.path(changed, model="m")}
    assert moved == {n for n, s in ALL_STAGES.items() if _reads_field(s, section, name)}


def _trainer_call(cfg: Config, monkeypatch) -> dict:
    """The keyword arguments ultralytics' trainer receives for a static model of ``cfg`` (nothing is trained)."""
    calls = []

    class RecordingYOLO:
        def __init__(self, *args, **kwargs):
            pass

        def train(self, **kwargs):
            calls.append(kwargs)

    monkeypatch.setattr(static_models, "YOLO", RecordingYOLO)
    monkeypatch.setattr(static_models, "prepare_dataset", lambda cfg: types.SimpleNamespace(yaml_path="data.yaml"))
    # a fixed folder: the real one carries the key, which would make every keyed field reach the trainer
    static_models.train_ultralytics(cfg, "n", static_models.static_epochs(cfg), Path("static"), "n")
    (kwargs,) = calls
    return kwargs


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(TrainConfig)])
def test_the_static_models_key_reads_exactly_the_train_fields_their_trainer_receives(name, monkeypatch):
    # eval.static_epochs 0: the static models train for train.epochs (otherwise train.epochs is keyed but unused)
    base = load_config("smoke", {"eval": {"static_epochs": 0}})
    changed = _changed(base, "train", name)
    trainer_moved = _trainer_call(base, monkeypatch) != _trainer_call(changed, monkeypatch)
    assert trainer_moved == (runs.STATIC_MODELS.key(base) != runs.STATIC_MODELS.key(changed))
