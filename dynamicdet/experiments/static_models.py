"""Static baselines: plain ultralytics models trained by ultralytics' own trainer (notebooks 05, 06).

Same data, same epochs (``eval.static_epochs`` or ``train.epochs``) and the same
optimiser settings as step 1; evaluated by the same validator (AP) and FLOP counter;
timed with the dynamic model by :func:`~dynamicdet.experiments.variable_speed.latency_table`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import torch
from ultralytics import YOLO

from dynamicdet.config import Config
from dynamicdet.data.coco import prepare_dataset
from dynamicdet.engine.build import resolve_device
from dynamicdet.engine.runs import STATIC_MODELS, STATIC_ROW, STATIC_TRAINER_FIELDS
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


def static_baselines(cfg: Config, progress: bool = True) -> pd.DataFrame:
    """One row per scale of ``eval.static_scales``: AP, GFLOPs, epochs, training wall time (cached).

    The models train in :data:`~dynamicdet.engine.runs.STATIC_MODELS`; each row is a
    :data:`~dynamicdet.engine.runs.STATIC_ROW` json.
    """
    info = prepare_dataset(cfg)
    device = resolve_device(cfg.device)
    epochs = static_epochs(cfg)
    rows = []
    for scale in cfg.eval.static_scales:
        model_name = f"{cfg.model.family}{scale}"
        out = STATIC_ROW.path(cfg, model=model_name)
        if out.exists():
            rows.append(json.loads(out.read_text()))
            continue
        t0 = time.time()
        weights = STATIC_MODELS.path(cfg) / scale / "weights" / "last.pt"
        resumed = weights.exists() and not finished(weights)  # then train_wall_s counts this session only
        if resumed or not weights.exists():
            train_ultralytics(cfg, scale, epochs, STATIC_MODELS.path(cfg), scale)
        wall = time.time() - t0
        det = load_static(cfg, scale)
        desc = f"val {model_name}"
        m, _ = evaluate_fn(lambda x, det=det: det(x)[0], cfg, info, device, val_loader(cfg, info), desc, progress)
        x = torch.zeros(1, 3, cfg.data.img_size, cfg.data.img_size)
        fused = det.fuse(verbose=False) if hasattr(det, "fuse") else det
        row = {
            "model": f"{model_name} (static)",
            **m,
            "GFLOPs": gflops(lambda fused=fused, x=x: fused(x)),
            "epochs": epochs,
            "train_wall_s": round(wall, 1),
            "resumed": resumed,
        }
        write_json(row, out, indent=2)
        rows.append(row)
    return pd.DataFrame(rows)


def load_static(cfg: Config, scale: str) -> torch.nn.Module:
    """The static ultralytics model of ``scale`` trained by :func:`static_baselines` (CPU, eval)."""
    path = STATIC_MODELS.path(cfg) / scale / "weights" / "last.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: static {cfg.model.family}{scale} not trained yet (run static_baselines)")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return (ckpt.get("ema") or ckpt["model"]).float().eval()
