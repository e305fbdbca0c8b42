"""Cached stages are keyed by exactly the config fields they read."""

from __future__ import annotations

import pytest

from dynamicdet.config import EvalConfig, load_config
from dynamicdet.engine import runs

# every YOLO-pipeline stage, by name; STATIC_ROW for the config's first static scale
STAGES = {
    "step 1": runs.STEP1,
    "router cache": runs.VIEW_CACHE,
    "val cache": runs.VAL_CACHE,
    "step 2": runs.STEP2,
    "val detections": runs.VAL_DETS,
    "trade-off": runs.TRADEOFF,
    "static models": runs.STATIC_MODELS,
    "static row": runs.STATIC_ROW,
    "latency table": runs.LATENCY,
}
INSIDE_STEP2 = {"step 2", "val detections", "trade-off", "latency table"}


def _paths(cfg) -> dict:
    return {name: s.path(cfg, model="yolov8n") for name, s in STAGES.items()}


# eval field -> new value, and the stages that must move (be recomputed); every other stage stays
EVAL_CHANGES = [
    ("conf", 0.01, {"val detections", "trade-off", "static row"}),
    ("iou", 0.6, {"val detections", "trade-off", "static row"}),
    ("max_det", 57, {"val detections", "trade-off", "static row"}),
    ("batch", 2, {"val cache", "static row"} | INSIDE_STEP2),
    ("fractions", [0.0, 0.5, 1.0], {"trade-off", "latency table"}),
    ("sweep", 7, {"trade-off"}),
    ("random_seeds", 3, {"trade-off"}),
    ("stream_images", 30, {"latency table"}),
    ("latency_repeats", 8, {"latency table"}),
    ("static_scales", ["n", "m"], {"latency table"}),
    ("static_epochs", 3, {"static models", "static row", "latency table"}),
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
        ("train", "epochs", 5, set(STAGES)),  # new detectors: everything, static models included
        ("train", "clip", "none", set(STAGES) - {"static models", "static row"}),  # ultralytics' trainer ignores it
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
