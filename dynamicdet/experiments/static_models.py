"""Static baselines: the static frontier (our step-1 loop) and ultralytics' trainer as a reference (notebooks 05, 06).

The frontier's static models (:func:`static_baselines`, one per ``eval.static_scales``) are
trained by the same loop and recipe as the joint model (:func:`~dynamicdet.engine.step1.train_step1`
with ``model.dual: false``: optimiser, schedule, warm-up, clip, EMA, augmentation, epochs), so a
gap between dynamic and static models is not a gap between trainers. The scale ``ns`` (between n
and s, :data:`~dynamicdet.modeling.yolo.EXTRA_SCALES`) is the static model at the dynamic model's cost.
:func:`ultralytics_reference` trains the same architectures with ultralytics' DetectionTrainer
(what ``yolo train`` gives a user), for the trainer comparison of ``experiments.seeds``. All are
evaluated by the same validator (AP) and FLOP counter, and timed with the dynamic model by
:func:`~dynamicdet.experiments.variable_speed.latency_table`.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pandas as pd
import torch
from ultralytics import YOLO

from dynamicdet.config import Config
from dynamicdet.data.coco import prepare_dataset
from dynamicdet.engine.build import build_model, resolve_device
from dynamicdet.engine.checkpoint import load_into
from dynamicdet.engine.runs import REFERENCE_ROW, STATIC_MODELS, STATIC_ROW, STATIC_TRAINER_FIELDS, STEP1
from dynamicdet.engine.step1 import train_step1
from dynamicdet.engine.validate import evaluate_fn, val_loader
from dynamicdet.evaluation.cost import gflops
from dynamicdet.files import write_json
from dynamicdet.offline import same_threads


def train_ultralytics(cfg: Config, scale: str, epochs: int, folder: Path, name: str, close_mosaic: int | None = None):
    """Train ``<family><scale>`` from scratch with ultralytics' DetectionTrainer on the config's data.

    The one ultralytics training call of the project (static baselines, the step-1
    throughput benchmark): step 1's optimiser, schedule and augmentation settings, no
    validation, fp32, the project's CPU thread count. Writes ``folder/name/weights/last.pt``;
    an interrupted run (a ``last.pt`` not :func:`finished`) is resumed from its last epoch.
    """
    t = cfg.train
    info = prepare_dataset(cfg)
    last = folder / name / "weights" / "last.pt"
    if last.exists() and not finished(last):
        # an interrupted run: ultralytics resumes it from its last epoch with the arguments saved in it
        with same_threads():
            YOLO(str(last), task="detect").train(resume=str(last), data=str(info.yaml_path), workers=t.workers)
        return last
    # step 1's settings, the ones the static models' cache key reads (runs.STATIC_TRAINER_FIELDS)
    settings = {f: getattr(t, f) for f in STATIC_TRAINER_FIELDS}
    if close_mosaic is not None:
        settings["close_mosaic"] = close_mosaic
    with same_threads():
        YOLO(f"{cfg.model.family}{scale}.yaml", task="detect").train(
            data=str(info.yaml_path),
            epochs=epochs,
            imgsz=cfg.data.img_size,
            device=str(resolve_device(cfg.device)),
            **settings,
            cos_lr=True,
            deterministic=False,
            amp=False,
            project=str(folder),
            name=name,
            exist_ok=True,
            plots=False,
            verbose=False,
            pretrained=False,
            val=False,
        )
    return folder / name / "weights" / "last.pt"


def finished(weights: Path) -> bool:
    """Whether ultralytics finished the training that writes ``weights`` (``last.pt``).

    ultralytics saves ``last.pt`` after every epoch and, when the last epoch is done, strips
    its optimizer and sets its ``epoch`` to -1: a ``last.pt`` with another epoch is an
    interrupted run.
    """
    try:
        ckpt = torch.load(weights, map_location="cpu", weights_only=False)
    except Exception as e:
        raise RuntimeError(f"{weights}: not a readable ultralytics checkpoint ({e}); delete it to train again") from e
    if not isinstance(ckpt, dict) or "epoch" not in ckpt:
        raise RuntimeError(f"{weights}: not an ultralytics training checkpoint (no 'epoch'); delete it to train again")
    return ckpt["epoch"] == -1


def static_epochs(cfg: Config) -> int:
    return cfg.eval.static_epochs or cfg.train.epochs


def static_config(cfg: Config, scale: str | None = None, backbone: str | None = None) -> Config:
    """The config of one static model trained by our step-1 loop: ``cfg`` with one detector.

    ``model.dual: false`` and the given YOLO ``scale`` (or two-stage ``backbone``); same data and
    recipe (with one detector, ``train.clip`` joint and per_detector are the same computation),
    ``eval.static_epochs`` epochs when set (mosaic closes within them).
    """
    s = copy.deepcopy(cfg)
    s.model.dual = False
    if scale is not None:
        s.model.scale = scale
    if backbone is not None:
        s.model.backbone = backbone
    s.train.epochs = static_epochs(cfg)
    s.train.close_mosaic = min(s.train.close_mosaic, s.train.epochs)
    return s


def _evaluate(cfg: Config, det: torch.nn.Module, model_name: str, progress: bool) -> dict:
    """AP (the project's validator) and GFLOPs of one static ultralytics ``det``."""
    info = prepare_dataset(cfg)
    device = resolve_device(cfg.device)
    desc = f"val {model_name}"
    m, _ = evaluate_fn(lambda x, det=det: det(x)[0], cfg, info, device, val_loader(cfg, info), desc, progress)
    x = torch.zeros(1, 3, cfg.data.img_size, cfg.data.img_size)
    fused = det.fuse(verbose=False) if hasattr(det, "fuse") else det
    return {**m, "GFLOPs": gflops(lambda fused=fused, x=x: fused(x))}


def static_baselines(cfg: Config, progress: bool = True) -> pd.DataFrame:
    """The static frontier: one row per scale of ``eval.static_scales``, trained by our step-1 loop (cached).

    Each model is the step-1 run of :func:`static_config` (resumable); its row (AP, GFLOPs, epochs,
    wall time) is a :data:`~dynamicdet.engine.runs.STATIC_ROW` json in that run folder.
    """
    rows = []
    for scale in cfg.eval.static_scales:
        s = static_config(cfg, scale)
        out = STATIC_ROW.path(s)
        if out.exists():
            rows.append(json.loads(out.read_text()))
            continue
        t0 = time.time()
        train_step1(s, resume=True, progress=progress)
        wall = time.time() - t0
        model_name = f"{cfg.model.family}{scale}"
        row = {
            "model": f"{model_name} (static)",
            **_evaluate(s, load_static(cfg, scale), model_name, progress),
            "epochs": s.train.epochs,
            "trainer": "ours",
            "train_wall_s": round(wall, 1),
            "run": STEP1.path(s).name,
        }
        write_json(row, out, indent=2)
        rows.append(row)
    return pd.DataFrame(rows)


def load_static(cfg: Config, scale: str) -> torch.nn.Module:
    """The static ultralytics model of ``scale`` trained by :func:`static_baselines` (CPU, eval).

    Returns the plain ultralytics ``DetectionModel`` (``det(x)[0]`` are its predictions).
    """
    s = static_config(cfg, scale)
    path = STEP1.path(s) / "step1.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: static {cfg.model.family}{scale} not trained yet (run static_baselines)")
    info = prepare_dataset(s)
    model = build_model(s, nc=len(info.names))
    load_into(model, path)
    return model.det1.float().eval()


def ultralytics_reference(cfg: Config, scales: list[str] | None = None, progress: bool = True) -> pd.DataFrame:
    """The same static architectures trained by ultralytics' DetectionTrainer (the reference rows, cached).

    One row per scale (default ``eval.static_scales``), model ``<family><scale> (static, ultralytics'
    trainer)``; the models train in :data:`~dynamicdet.engine.runs.STATIC_MODELS`, each row is a
    :data:`~dynamicdet.engine.runs.REFERENCE_ROW` json.
    """
    epochs = static_epochs(cfg)
    rows = []
    for scale in scales or cfg.eval.static_scales:
        model_name = f"{cfg.model.family}{scale}"
        name = {"model": f"{model_name} (static, ultralytics' trainer)", "trainer": "ultralytics"}
        out = REFERENCE_ROW.path(cfg, model=model_name)
        if out.exists():
            rows.append({**json.loads(out.read_text()), **name})
            continue
        t0 = time.time()
        weights = STATIC_MODELS.path(cfg) / scale / "weights" / "last.pt"
        resumed = weights.exists() and not finished(weights)  # then train_wall_s counts this session only
        if resumed or not weights.exists():
            train_ultralytics(cfg, scale, epochs, STATIC_MODELS.path(cfg), scale)
        wall = time.time() - t0
        row = {  # the cached json keeps the name it has always had; the returned row says which trainer
            "model": f"{model_name} (static)",
            **_evaluate(cfg, load_reference(cfg, scale), model_name, progress),
            "epochs": epochs,
            "train_wall_s": round(wall, 1),
            "resumed": resumed,
        }
        write_json(row, out, indent=2)
        rows.append({**row, **name})
    return pd.DataFrame(rows)


def load_reference(cfg: Config, scale: str) -> torch.nn.Module:
    """The static model of ``scale`` trained by ultralytics' trainer (:func:`ultralytics_reference`; CPU, eval)."""
    path = STATIC_MODELS.path(cfg) / scale / "weights" / "last.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: {cfg.model.family}{scale} not trained yet (run ultralytics_reference)")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return (ckpt.get("ema") or ckpt["model"]).float().eval()
