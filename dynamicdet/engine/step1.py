"""Step 1: train both detectors jointly, min L1 + L2 (any model of :mod:`dynamicdet.engine.build`).

ultralytics' data pipeline and augmentation, and ultralytics' DetectionTrainer recipe
item by item: SGD nesterov in three parameter groups, gradients accumulated up to the
nominal batch size with weight decay scaled to it, linear warm-up, cosine decay to
``lr0 * lrf``, EMA, mosaic closed for the last epochs, gradient-norm clipping at 10
(``train.clip`` chooses over what: see :func:`clip_gradients`). Runs under ``torchrun``
with DDP when a process group is initialised (rank 0 logs and saves).

Writes into the run folder (:data:`~dynamicdet.engine.runs.STEP1`): ``config.yaml``,
``step1_last.pt`` (every epoch, atomically; ``resume`` continues from it),
``step1_metrics.csv`` (per epoch: losses, gradient norms, val AP), ``step1_grad_norms.csv``
(per optimizer step), ``step1_setup.json`` (threads, workers, processes: :func:`compute_setup`;
a resume with another setup is recorded and warned about: its weights mix two setups) and ``step1.pt``
(the EMA weights at the end; reusing them warns about nothing, whatever the setup now: the pipeline's
provenance records the setup they were trained with).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm
from ultralytics.utils.torch_utils import ModelEMA

from dynamicdet.config import Config
from dynamicdet.data.coco import prepare_dataset
from dynamicdet.data.loaders import build_dataset, make_loader, seed_everything, to_device
from dynamicdet.engine.build import build_model, is_dynamic, resolve_device
from dynamicdet.engine.checkpoint import load_into, save_checkpoint
from dynamicdet.engine.runs import STEP1, write_config
from dynamicdet.engine.validate import evaluate_routes
from dynamicdet.files import append_csv_rows, write_csv, write_json

MAX_GRAD_NORM = 10.0  # ultralytics' clip (its loss is multiplied by the batch size: the clip is active at every step)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Conv/linear weights decay; norm-layer weights and all biases do not (ultralytics' grouping)."""
    decay, no_decay, bias = [], [], []
    norm_types = tuple(v for k, v in nn.__dict__.items() if "Norm" in k and isinstance(v, type))
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "bias":
                bias.append(p)
            elif isinstance(module, norm_types):
                no_decay.append(p)
            else:
                decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
        {"params": bias, "weight_decay": 0.0, "name": "bias"},
    ]


def clip_gradients(model: nn.Module, mode: str, max_norm: float = MAX_GRAD_NORM) -> dict[str, float]:
    """Clip the step-1 gradients and report their norms before clipping.

    Modes (``train.clip``):
        - ``joint``: one norm over every trainable parameter (both detectors and the
          links), clipped to ``max_norm`` as one model: the detectors share one step length;
        - ``per_detector``: each detector's own norm (detector 2 with its links) clipped
          to ``max_norm`` separately, as if each were a model trained alone;
        - ``none``: no clipping (the authors' YOLOv7 loop).

    Returns:
        ``{"grad_norm": total, "grad_norm_det1": ..., "grad_norm_det2": ..., "clipped": 0 or 1}``
        (``det2`` only for dynamic models; ``clipped`` = 1 when any gradient was scaled down).
    """
    groups = {k: [p for p in ps if p.grad is not None] for k, ps in model.detector_groups().items()}
    # ||g||_2 of each detector's parameters (read only: computed before any scaling)
    norms = {f"grad_norm_{k}": float(torch.nn.utils.get_total_norm([p.grad for p in ps])) for k, ps in groups.items()}
    if mode == "joint":
        total = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=max_norm))
        clipped = total > max_norm
    else:
        # ||g|| = sqrt(sum_k ||g_k||^2) over the detectors
        total = math.sqrt(sum(v**2 for v in norms.values()))
        clipped = False
        if mode == "per_detector":
            for k, ps in groups.items():
                torch.nn.utils.clip_grad_norm_(ps, max_norm=max_norm)
                clipped |= norms[f"grad_norm_{k}"] > max_norm
    return {"grad_norm": total, **norms, "clipped": int(clipped)}


def reset_mosaic_buffer(dataset, seed: int) -> None:
    """Put ultralytics' mosaic buffer in a fixed state at the start of an epoch.

    Mosaic draws its partner images from a buffer of recently loaded image indices, which
    normally carries over from the previous epoch. Refilling it with images drawn at random
    by ``seed`` (and dropping the rest of the in-memory image cache) makes an epoch depend
    only on (seed, epoch), so a resumed run repeats the uninterrupted one exactly. The images
    are loaded as ultralytics' own buffer holds them: a fixed buffer of the first indices
    with no image loaded would draw twice as many partners from those images.
    """
    dataset.buffer.clear()
    dataset.ims = [None] * dataset.ni
    dataset.im_hw0, dataset.im_hw = [None] * dataset.ni, [None] * dataset.ni
    n = min(dataset.max_buffer_length, dataset.ni)
    for i in np.random.default_rng(seed).permutation(dataset.ni)[:n]:
        dataset.load_image(int(i))  # caches the image and appends i to the buffer


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _truncate_log(path, epochs: int) -> None:
    """Drop rows of epochs after ``epochs`` (a run killed after logging an epoch it had not saved)."""
    if path.exists():
        df = pd.read_csv(path)
        write_csv(df[df["epoch"] <= epochs], path)


def compute_setup(device: torch.device, workers: int, world: int) -> dict:
    """What moves step-1 floats besides the config: torch's thread counts, workers, processes.

    The same config trained twice with the same setup gives bit-identical weights
    (``tests/test_train.py``); another thread count changes the order of float reductions,
    so its weights differ like another seed's (docs: reproducibility).
    """
    return {
        "torch_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "dataloader_workers": workers,
        "world_size": world,
        "device": device.type,
        "torch": torch.__version__,
    }


SETUP_FILE = "step1_setup.json"


def check_setup(folder: Path, now: dict, action: str) -> list[str]:
    """Compare the setup a run folder was trained with against ``now``; warn on every difference.

    Returns:
        The differences, ``"torch_threads: run 1, now 2"`` (empty when the run has no record).
    """
    path = folder / SETUP_FILE
    if not path.exists():
        return []
    was = json.loads(path.read_text())
    diff = [f"{k}: run {was.get(k)!r}, now {v!r}" for k, v in now.items() if was.get(k) != v]
    if diff:
        warnings.warn(
            f"{folder.name}: {action} with another setup than it was trained with ({'; '.join(diff)}): "
            "its weights differ from an uninterrupted run of this setup like another seed's would",
            stacklevel=3,
        )
    return diff


def _fmt(items: dict) -> str:
    return ", ".join(f"{k} {float(v):.4g}" for k, v in items.items())


def train_step1(
    cfg: Config,
    resume: bool = False,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    validate: bool = True,
) -> Path:
    """Step 1: train the config's model (both detectors jointly, min L1 + L2).

    Args:
        cfg: the config.
        resume: continue from ``step1_last.pt`` if present.
        progress: tqdm bars.
        stop_after_epoch: stop (as if killed) after this many epochs; for tests.
        validate: compute val AP of both detectors (off for throughput benchmarks).

    Returns:
        Path of the final checkpoint ``step1.pt`` (EMA weights). If it already exists for
        this config, nothing is trained.
    """
    rank, world = _dist_info()
    folder = STEP1.path(cfg)
    final = folder / "step1.pt"
    t_cfg = cfg.train
    device = resolve_device(cfg.device)
    if final.exists():  # cached: the setup it was trained with is in step1_setup.json and the run's provenance
        return final
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    info = prepare_dataset(cfg)
    if rank == 0:
        write_config(cfg, folder)
    seed_everything(t_cfg.seed)
    model = build_model(cfg, nc=len(info.names)).to(device)
    if is_dynamic(model):
        model.router.requires_grad_(False)  # step 1 trains the detectors and the links only

    # accumulate gradients up to the nominal batch size, and scale weight decay with it (ultralytics' rule)
    accumulate = max(round(t_cfg.nbs / (t_cfg.batch * world)), 1)
    weight_decay = t_cfg.weight_decay * t_cfg.batch * world * accumulate / t_cfg.nbs
    groups = param_groups(model, weight_decay)
    if t_cfg.optimizer == "SGD":
        opt = torch.optim.SGD(groups, lr=t_cfg.lr0, momentum=t_cfg.momentum, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=t_cfg.lr0, betas=(t_cfg.momentum, 0.999))
    # cosine from 1 to lrf over the epochs:  lf(e) = ((1 - cos(pi e / E)) / 2) (lrf - 1) + 1
    lf = lambda e: ((1 - math.cos(e * math.pi / t_cfg.epochs)) / 2) * (t_cfg.lrf - 1) + 1  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lf)
    ema = ModelEMA(model) if t_cfg.ema else None

    start_epoch = 0
    last = folder / "step1_last.pt"
    metrics_path, norms_path = folder / "step1_metrics.csv", folder / "step1_grad_norms.csv"
    setup = compute_setup(device, t_cfg.workers, world)
    if resume and last.exists():
        if rank == 0:
            diff = check_setup(folder, setup, "resumed")
            if diff:  # the record keeps every setup the run saw
                rec = json.loads((folder / SETUP_FILE).read_text())
                write_json(
                    {**rec, "resumed_with": [*rec.get("resumed_with", []), setup]}, folder / SETUP_FILE, indent=2
                )
        ckpt = load_into(model, last)
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if ema is not None:
            ema.ema.load_state_dict(ckpt["ema"])
            ema.updates = ckpt["ema_updates"]
        start_epoch = ckpt["epoch"]
        _set_rng_state(ckpt["rng"])
        if rank == 0:
            for p in (metrics_path, norms_path):
                _truncate_log(p, start_epoch)
    elif rank == 0:
        metrics_path.unlink(missing_ok=True)
        norms_path.unlink(missing_ok=True)
        write_json(setup, folder / SETUP_FILE, indent=2)

    ddp = model
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    aug = {"mosaic": t_cfg.mosaic, "mixup": t_cfg.mixup}
    dataset = build_dataset(info.data, "train", cfg.data.img_size, augment=True, batch=t_cfg.batch, **aug)
    nb = math.ceil(len(dataset) / (t_cfg.batch * world))
    n_warmup = round(t_cfg.warmup_epochs * nb)
    for epoch in range(start_epoch, t_cfg.epochs):
        t0 = time.time()
        if epoch >= t_cfg.epochs - t_cfg.close_mosaic:
            dataset.close_mosaic(dataset.dd_hyp)
        reset_mosaic_buffer(dataset, t_cfg.seed * 1000 + epoch)
        loader = make_loader(dataset, t_cfg.batch, True, t_cfg.seed * 1000 + epoch, t_cfg.workers, world > 1)
        model.train()
        opt.zero_grad()
        sums: dict[str, float] = {}
        norm_rows: list[dict] = []
        bar = tqdm(loader, desc=f"step 1 epoch {epoch + 1}/{t_cfg.epochs}", disable=not progress or rank != 0)
        for i, batch in enumerate(bar):
            ni = i + nb * epoch
            if ni <= n_warmup:  # linear warm-up: biases from warmup_bias_lr down, others from 0 up
                for g in opt.param_groups:
                    start = t_cfg.warmup_bias_lr if g["name"] == "bias" else 0.0
                    g["lr"] = np.interp(ni, [0, max(n_warmup, 1)], [start, g["initial_lr"] * lf(epoch)])
                    if "momentum" in g:
                        g["momentum"] = np.interp(ni, [0, max(n_warmup, 1)], [0.8, t_cfg.momentum])
            batch = to_device(batch, device)
            loss, items = model.objective(batch, forward=ddp)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"step 1 epoch {epoch + 1} batch {i}: non-finite loss {float(loss)} ({_fmt(items)}); "
                    "lower train.lr0 or raise train.warmup_epochs"
                )
            loss.backward()
            if (i + 1) % accumulate == 0 or i + 1 == len(loader):
                norm_rows.append({"epoch": epoch + 1, "step": ni, **clip_gradients(model, t_cfg.clip)})
                opt.step()
                opt.zero_grad()
                if ema is not None:
                    ema.update(model)
            for k, v in items.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            mean = {k: v / (i + 1) for k, v in sums.items()}
            # progress: L1 and L2 (a static model has L1 only)
            tags = sorted({k.split("_")[0] for k in mean})
            bar.set_postfix({t: f"{sum(v for k, v in mean.items() if k.startswith(t + '_')):.3f}" for t in tags})
        sched.step()
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "time_s": round(time.time() - t0, 2)}
        row.update(mean)
        norms = pd.DataFrame(norm_rows).drop(columns=["epoch", "step"])
        row.update({k: float(v) for k, v in norms.mean().items() if k != "clipped"})
        row["clipped_frac"] = float(norms["clipped"].mean())
        if rank == 0:
            if validate and t_cfg.val_every and ((epoch + 1) % t_cfg.val_every == 0 or epoch + 1 == t_cfg.epochs):
                eval_model = ema.ema if ema is not None else model
                row.update(evaluate_routes(eval_model, cfg, info, device, progress))
                model.train()
            state = {
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch + 1,
                "rng": _rng_state(),
                "config": cfg.to_dict(),
            }
            if ema is not None:
                state.update(ema=ema.ema.state_dict(), ema_updates=ema.updates)
            append_csv_rows(norms_path, norm_rows)
            append_csv_rows(metrics_path, [row])
            save_checkpoint(last, model, **state)
        if world > 1:
            dist.barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            return last
    if os.environ.get("DYNAMICDET_DUMP_RANK_WEIGHTS"):  # test hook: every rank's parameters, to compare replicas
        # (BN running statistics are per rank between forwards; DDP broadcasts rank 0's at each forward)
        torch.save({k: p.detach() for k, p in model.named_parameters()}, folder / f"rank{rank}_weights.pt")
    if rank == 0:
        final_model = ema.ema if ema is not None else model
        save_checkpoint(final, final_model, config=cfg.to_dict(), epochs=t_cfg.epochs)
    if world > 1:
        dist.barrier()
    return final
