"""Run folders and cached stages: where each artefact lives and what it depends on.

Every cached artefact of the pipeline is a :class:`Stage`: a file or folder whose name
carries a hash of exactly the config fields it reads, inside the folder of the stage it
builds on. Editing a field therefore moves the stages that read it (and the stages
inside them) to new names, so they are recomputed, and leaves every other stage where it
was. A stage is done when its file (or its folder's marker file) exists; every file is
written atomically (:mod:`dynamicdet.files`), so "exists" means "complete".

Layout under ``paths.runs_dir()``::

    <name>-<key>/                      STEP1: data, model, train
        config.yaml  step1_last.pt  step1.pt  step1_metrics.csv  step1_grad_norms.csv
        router_cache-<key>.pt          VIEW_CACHE: the router fields that shape the views
        val_cache-<key>.pt             VAL_CACHE: eval.batch
        router-<key>/                  STEP2: router, eval.batch
            step2.pt  router_metrics.csv  train_losses.csv  val_scores.csv
            val_dets-<key>.pt          VAL_DETS: NMS settings, eval.batch
            calibration_scores-<key>.csv  CALIBRATION: the router's logits on the calibration split
            tradeoff-<key>.pt          TRADEOFF: + fractions, sweep, random seeds, calibration images
            latency_table_segments-<key>.csv  LATENCY: the timed models, timing settings (+ _checks.csv)
            latency_onnx-<key>.csv     ONNX_LATENCY: the same on onnxruntime, batch 1 (+ _checks.csv)
            two_stage_table-<key>.csv  TWO_STAGE_TABLE (two-stage configs): eval; + .json: who made it
    <name>-<key>/ of a static config   STEP1 with model.dual false (experiments.static_models.static_config)
        static_row-<key>.json          STATIC_ROW: the frontier's static model; NMS settings, eval.batch
    <name>-static-<key>/               STATIC_MODELS: data, model.family, the train fields ultralytics reads,
                                       eval.static_epochs
        <scale>/weights/last.pt        (ultralytics' trainer: the reference rows)
        yolov8<scale>-<key>.json       REFERENCE_ROW: NMS settings, eval.batch
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from dynamicdet import paths
from dynamicdet.config import Config
from dynamicdet.files import write_text


@dataclass(frozen=True)
class Stage:
    """One cached artefact of the pipeline.

    Attributes:
        name: what it is (logs, provenance).
        reads: config sections (``"train"``) or fields (``"eval.batch"``) its content depends on.
        pattern: its file or folder name; ``{key}`` = hash of ``reads``, ``{name}`` = config
            name, other fields from the keyword arguments of :meth:`path`.
        parent: the stage whose folder holds it (None: the runs folder).
        marker: for a folder stage, the file whose presence means the stage is done.
    """

    name: str
    reads: tuple[str, ...]
    pattern: str
    parent: Stage | None = None
    marker: str = ""

    def key(self, cfg: Config) -> str:
        return cfg.section_hash(*self.reads)

    def path(self, cfg: Config, **fields: str) -> Path:
        """The artefact's path for ``cfg`` (a folder for folder stages)."""
        base = self.parent.path(cfg) if self.parent is not None else paths.runs_dir()
        return base / self.pattern.format(key=self.key(cfg), name=cfg.name, **fields)

    def done(self, cfg: Config, **fields: str) -> bool:
        """Whether the artefact exists for ``cfg`` (then loading it is all a caller needs to do)."""
        p = self.path(cfg, **fields)
        return (p / self.marker).exists() if self.marker else p.exists()


# NMS and batching of every val prediction (the batch size changes conv round-off, hence detections in the last bits)
DETECTION_READS = ("eval.conf", "eval.iou", "eval.max_det", "eval.batch")
# the router fields that shape the cached training views (loss, lr, epochs... only shape router training)
VIEW_READS = tuple(f"router.{f}" for f in ("views", "batch", "hsv_h", "hsv_s", "hsv_v", "translate", "scale", "fliplr"))

STEP1 = Stage("step 1", ("data", "model", "train"), "{name}-{key}", marker="step1.pt")
VIEW_CACHE = Stage("router cache (training views)", VIEW_READS, "router_cache-{key}.pt", STEP1)
VAL_CACHE = Stage("val cache", ("eval.batch",), "val_cache-{key}.pt", STEP1)
STEP2 = Stage("step 2", ("router", "eval.batch"), "router-{key}", STEP1, marker="step2.pt")
VAL_DETS = Stage("val detections", DETECTION_READS, "val_dets-{key}.pt", STEP2)
# the router's logits on the calibration split (experiments.tradeoffs.calibration_logits), where thresholds are set
CALIBRATION = Stage(
    "calibration scores", ("data", "eval.calibration_images", "eval.batch"), "calibration_scores-{key}.csv", STEP2
)
TRADEOFF = Stage(
    "trade-off",
    (*DETECTION_READS, "eval.fractions", "eval.sweep", "eval.random_seeds", "eval.calibration_images"),
    "tradeoff-{key}.pt",
    STEP2,
)
# The step-1 settings ultralytics' trainer receives for the static baselines, under their own names: the
# trainer call (experiments.static_models.train_ultralytics) passes exactly these, so a field added here reaches
# both the trainer and the key. The epochs are eval.static_epochs, or train.epochs when it is 0.
STATIC_TRAINER_FIELDS = (
    "batch",
    "workers",
    "optimizer",
    "lr0",
    "lrf",
    "momentum",
    "weight_decay",
    "nbs",
    "warmup_epochs",
    "close_mosaic",
    "mosaic",
    "mixup",
    "seed",
)
STATIC_MODELS = Stage(
    "static models",
    ("data", "model.family", "train.epochs", "eval.static_epochs", *(f"train.{f}" for f in STATIC_TRAINER_FIELDS)),
    "{name}-static-{key}",
)
REFERENCE_ROW = Stage("ultralytics reference row", DETECTION_READS, "{model}-{key}.json", STATIC_MODELS)
# a static model of the frontier is the step-1 run of its own config (experiments.static_models.static_config)
STATIC_ROW = Stage("static model row", DETECTION_READS, "static_row-{key}.json", STEP1)
# what every latency figure depends on: the timed rows, their batch and stream, and how long they are timed
TIMING_READS = (
    "eval.fractions",
    "eval.batch",
    "eval.stream_images",
    "eval.latency_repeats",
    "eval.latency_tolerance",
    "eval.static_scales",
)
LATENCY = Stage(
    "latency table",
    (*TIMING_READS, "eval.static_epochs"),
    "latency_table_segments-{key}.csv",  # interleaved every few images, checked
    STEP2,
)
# onnxruntime at batch 1 (experiments.tradeoffs): the same stream and rows as the latency table
ONNX_LATENCY = Stage("onnxruntime latency", TIMING_READS, "latency_onnx-{key}.csv", STEP2)
TWO_STAGE_TABLE = Stage("two-stage table", ("eval",), "two_stage_table-{key}.csv", STEP2)


def run_dir(cfg: Config) -> Path:
    """The step-1 run folder of a config."""
    return STEP1.path(cfg)


def router_dir(cfg: Config) -> Path:
    """The step-2 folder (inside the run folder) of a config."""
    return STEP2.path(cfg)


def write_config(cfg: Config, folder: Path) -> None:
    """Record the config a folder was made with (``config.yaml``)."""
    write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), folder / "config.yaml")
