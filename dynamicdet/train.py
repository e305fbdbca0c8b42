"""Training. Step 1: both detectors jointly (min L1 + L2). Step 2: the router alone.

Run folders (under ``paths.runs_dir()``) are keyed by the config sections that shape
their contents, so a notebook re-run reuses finished stages and a changed config gets a
new folder:

    <name>-<hash(data, model, train)>/          step 1
        config.yaml  step1_last.pt  step1.pt  step1_metrics.csv
        router_cache.pt  val_cache.pt           step 2 inputs (per image: router input, L1, L2)
        router-<hash(router)>/                  step 2
            step2.pt  router_metrics.csv  train_losses.csv  val_scores.csv
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import yaml
from torch import nn
from tqdm.auto import tqdm
from ultralytics.utils.torch_utils import ModelEMA

import dynamicdet  # noqa: F401  (offline configuration before ultralytics is imported)

from . import paths
from .checkpoint import load_into, read_checkpoint, save_atomic, save_checkpoint
from .config import Config
from .data.coco import prepare_dataset
from .data.loaders import build_dataset, make_loader, seed_everything, to_device
from .evaluate import coco_evaluate, detections_to_coco, segms_to_coco
from .losses import DetectionLoss, RunningMedian, attach_hyp, router_loss
from .model import AdaptiveRouter, DynamicDetector
from .predict import image_ids_of, predict
from .two_stage import HeadSizes, TwoStageDetector, build_two_stage, targets_from_batch


# ------------------------------------------------------------------------ run folders
def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda if available else cpu; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_dir(cfg: Config) -> Path:
    """Step-1 run folder, keyed by the data, model and train sections."""
    return paths.runs_dir() / f"{cfg.name}-{cfg.section_hash('data', 'model', 'train')}"


def router_dir(cfg: Config) -> Path:
    """Step-2 folder inside the run folder, keyed by the router section."""
    return run_dir(cfg) / f"router-{cfg.section_hash('router')}"


# The router fields that shape the cached views (the rest: loss, lr, epochs... only shape router training).
CACHE_FIELDS = ("views", "batch", "hsv_h", "hsv_s", "hsv_v", "translate", "scale", "fliplr")


def cache_path(cfg: Config) -> Path:
    """The step-2 cache of the training views, keyed by the fields that change its contents."""
    r = cfg.to_dict()["router"]
    key = hashlib.sha256(json.dumps({k: r[k] for k in CACHE_FIELDS}, sort_keys=True).encode()).hexdigest()[:10]
    return run_dir(cfg) / f"router_cache-{key}.pt"


def is_two_stage(cfg: Config) -> bool:
    return cfg.model.kind != "yolo"


def build_model(cfg: Config, nc: int) -> nn.Module:
    """The config's model: a :class:`DynamicDetector` (``kind: yolo``), a
    :class:`~dynamicdet.two_stage.DynamicTwoStage`, or (``dual: false``) a static
    :class:`~dynamicdet.two_stage.TwoStageDetector`."""
    m = cfg.model
    if is_two_stage(cfg):
        sizes = HeadSizes(m.fpn_channels, m.head_channels, m.anchor_base, m.rpn_batch, m.roi_batch, cfg.eval.max_det)
        return build_two_stage(m.kind, m.backbone, nc, dual=m.dual, sizes=sizes)
    model = DynamicDetector(m.family, m.scale, nc=nc)
    attach_hyp(model.det1)
    attach_hyp(model.det2)
    return model


def load_model(cfg: Config, step: int = 2, device: str | torch.device = "cpu") -> DynamicDetector:
    """The trained model of a config after step 1 or 2 (raises if that stage has not run)."""
    info = prepare_dataset(cfg)
    model = build_model(cfg, nc=len(info.names))
    path = run_dir(cfg) / "step1.pt" if step == 1 else router_dir(cfg) / "step2.pt"
    load_into(model, path)
    return model.to(device).eval()


def _write_config(cfg: Config, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _append_csv(path: Path, row: dict) -> None:
    """Append one row to a CSV log; missing columns stay empty.

    Rows may carry columns the file has not seen yet (validation metrics every
    ``val_every`` epochs): then the file is rewritten, atomically, with the union.
    """
    header = []
    if path.exists():
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
    if header and set(row) <= set(header):
        with path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=header).writerow(row)
        return
    old_rows = []
    if header:
        with path.open(newline="") as f:
            old_rows = list(csv.DictReader(f))
    fields = header + [k for k in row if k not in header]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows([*old_rows, row])
    os.replace(tmp, path)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


# ------------------------------------------------------------------------ evaluation
def val_loader(cfg: Config, info, batch: int | None = None):
    """The val split, letterboxed, not augmented, in file order (``eval.batch`` unless given)."""
    ds = build_dataset(info.data, "val", cfg.data.img_size, augment=False)
    return make_loader(ds, cfg.eval.batch if batch is None else batch, False, 0)


@torch.no_grad()
def evaluate_fn(fn, cfg: Config, info, device, loader, desc: str, progress: bool = True) -> tuple[dict, dict]:
    """COCO AP of ``fn`` on val, and the route each image took (see :func:`predict`).

    Box metrics (AP, AP50, ...); Mask R-CNN configs add mask metrics as ``mask_AP``...
    """
    e = cfg.eval
    rles = {} if cfg.model.kind == "mask_rcnn" else None
    dets, hard = predict(
        fn, loader, info.file_to_image_id["val"], device, e.conf, e.iou, e.max_det, desc, progress, masks_out=rles
    )
    gt = info.gt_json["val"]
    out = coco_evaluate(gt, detections_to_coco(dets, info.class_to_cat))
    if rles is not None:
        m = coco_evaluate(gt, segms_to_coco(dets, rles, info.class_to_cat), iou_type="segm")
        out.update({f"mask_{k}": v for k, v in m.items()})
    return out, hard


@torch.no_grad()
def evaluate_routes(model: nn.Module, cfg: Config, info, device, progress: bool = True) -> dict:
    """COCO AP of detector 1 (easy route) and detector 2 (hard route) on the val split.

    A static two-stage model has detector 1 only; Mask R-CNN adds mask AP (``det1_mask_AP``...).
    """
    model.eval()
    loader = val_loader(cfg, info)
    out = {}
    routes = [("det1", model.first)] + ([] if isinstance(model, TwoStageDetector) else [("det2", model.second)])
    for tag, fn in routes:
        m, _ = evaluate_fn(fn, cfg, info, device, loader, f"val {tag}", progress)
        out.update({f"{tag}_{k}": v for k, v in m.items()})
    return out


class _Objective:
    """Step-1 loss of a batch, whatever the model kind: ``(loss, {item name: value})``.

    YOLO: L1 + L2 with ultralytics' criterion (box, cls, dfl; each times the batch size).
    Two-stage: the sum of torchvision's losses of both detectors (batch means), or of the
    one detector of a static model.
    """

    def __init__(self, model: nn.Module, cfg: Config):
        self.two_stage = is_two_stage(cfg)
        self.masks = cfg.model.kind == "mask_rcnn"
        if not self.two_stage:
            self.crit1, self.crit2 = DetectionLoss(model.det1), DetectionLoss(model.det2)

    def __call__(self, ddp: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.two_stage:
            losses = ddp(batch["img"], targets_from_batch(batch, self.masks))
            if not any(k.startswith("L1_") for k in losses):  # static model: one detector
                losses = {f"L1_{k}": v for k, v in losses.items()}
            # L = L1 + L2 = sum of every RPN and RoI loss term of both detectors
            return sum(losses.values()), {k: v.detach() for k, v in losses.items()}
        out = ddp(batch["img"])
        l1, items1 = self.crit1(out["out1"], batch)
        l2, items2 = self.crit2(out["out2"], batch)
        names = ("box", "cls", "dfl")
        # ultralytics' loss items: {"box_loss", "cls_loss", "dfl_loss"}, batch means
        items = {f"L1_{n}": v for n, v in zip(names, items1.values(), strict=True)}
        items.update({f"L2_{n}": v for n, v in zip(names, items2.values(), strict=True)})
        # L = L1 + L2   (ultralytics' batch losses, each already multiplied by the batch size)
        return l1.sum() + l2.sum(), items


def _fmt(items: dict) -> str:
    return ", ".join(f"{k} {float(v):.4g}" for k, v in items.items())


# ------------------------------------------------------------------------ step 1
def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Conv/linear weights decay; BN weights and all biases do not (ultralytics' grouping)."""
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


def _reset_mosaic_buffer(dataset) -> None:
    """Put ultralytics' mosaic buffer in a fixed state at the start of an epoch.

    Mosaic draws its partner images from a buffer of recently loaded image indices, which
    normally carries over from the previous epoch. Resetting it to the first indices (and
    dropping the in-memory image cache) makes an epoch depend only on (seed, epoch), so a
    resumed run repeats the uninterrupted one exactly.
    """
    n = min(dataset.max_buffer_length, dataset.ni)
    dataset.buffer[:] = list(range(n))
    dataset.ims = [None] * dataset.ni
    dataset.im_hw0, dataset.im_hw = [None] * dataset.ni, [None] * dataset.ni


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train_step1(
    cfg: Config,
    resume: bool = False,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    validate: bool = True,
) -> Path:
    """Step 1: train both detectors jointly, min L1 + L2.

    ultralytics' data pipeline and augmentation (mosaic closed for the last
    ``close_mosaic`` epochs), SGD nesterov with cosine decay to ``lr0 * lrf``, linear
    warm-up, EMA. Validation reports COCO AP of both detectors. Runs under
    ``torchrun`` with DDP when a process group is initialised (rank 0 logs and saves).

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
    folder = run_dir(cfg)
    final = folder / "step1.pt"
    if final.exists():
        return final
    t_cfg = cfg.train
    device = resolve_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    info = prepare_dataset(cfg)
    if rank == 0:
        _write_config(cfg, folder)
    seed_everything(t_cfg.seed)
    model = build_model(cfg, nc=len(info.names)).to(device)
    if hasattr(model, "router"):
        model.router.requires_grad_(False)  # step 1 trains the detectors and the links only
    objective = _Objective(model, cfg)

    # accumulate gradients up to the nominal batch size, and scale weight decay with it (ultralytics' rule)
    accumulate = max(round(t_cfg.nbs / (t_cfg.batch * world)), 1)
    weight_decay = t_cfg.weight_decay * t_cfg.batch * world * accumulate / t_cfg.nbs
    groups = _param_groups(model, weight_decay)
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
    if resume and last.exists():
        ckpt = load_into(model, last)
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if ema is not None:
            ema.ema.load_state_dict(ckpt["ema"])
            ema.updates = ckpt["ema_updates"]
        start_epoch = ckpt["epoch"]
        _set_rng_state(ckpt["rng"])
    elif rank == 0:
        (folder / "step1_metrics.csv").unlink(missing_ok=True)

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
        _reset_mosaic_buffer(dataset)
        loader = make_loader(dataset, t_cfg.batch, True, t_cfg.seed * 1000 + epoch, t_cfg.workers, world > 1)
        model.train()
        opt.zero_grad()
        sums: dict[str, float] = {}
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
            loss, items = objective(ddp, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"step 1 epoch {epoch + 1} batch {i}: non-finite loss {float(loss)} ({_fmt(items)}); "
                    "lower train.lr0 or raise train.warmup_epochs"
                )
            loss.backward()
            if (i + 1) % accumulate == 0 or i + 1 == len(loader):
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
                opt.step()
                opt.zero_grad()
                if ema is not None:
                    ema.update(model)
            for k, v in items.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            mean = {k: v / (i + 1) for k, v in sums.items()}
            # progress: L1 and L2 (a static two-stage model has L1 only)
            tags = sorted({k.split("_")[0] for k in mean})
            bar.set_postfix({t: f"{sum(v for k, v in mean.items() if k.startswith(t + '_')):.3f}" for t in tags})
        sched.step()
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "time_s": round(time.time() - t0, 2)}
        row.update(mean)
        if rank == 0:
            if validate and ((epoch + 1) % t_cfg.val_every == 0 or epoch + 1 == t_cfg.epochs):
                eval_model = ema.ema if ema is not None else model
                row.update(evaluate_routes(eval_model, cfg, info, device, progress))
                model.train()
            _append_csv(folder / "step1_metrics.csv", row)
            state = {
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch + 1,
                "rng": _rng_state(),
                "config": cfg.to_dict(),
            }
            if ema is not None:
                state.update(ema=ema.ema.state_dict(), ema_updates=ema.updates)
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


# ------------------------------------------------------------------------ step 2
def _frozen(model: DynamicDetector) -> DynamicDetector:
    """Every parameter frozen, every layer (BN included) in eval mode."""
    model.eval()
    model.requires_grad_(False)
    return model


def _criteria(model: nn.Module):
    """Per-image loss criteria of a YOLO model; a two-stage model computes its own."""
    if isinstance(model, DynamicDetector):
        return DetectionLoss(model.det1), DetectionLoss(model.det2)
    if isinstance(model, TwoStageDetector):
        raise ValueError("step 2 needs a dynamic model; this config has model.dual = false")
    return None, None


@torch.no_grad()
def _router_batch(model: nn.Module, crit1, crit2, batch: dict) -> tuple[torch.Tensor, ...]:
    """Router input and detached per-image losses of one batch: pooled (B, C), L1 (B,), L2 (B,)."""
    img = batch["img"]
    if not isinstance(model, DynamicDetector):  # two-stage: heads run per image (see TwoStageDetector)
        return model.router_batch(img, targets_from_batch(batch, model.kind == "mask_rcnn"))
    y1 = model.backbone1(img)
    f1 = model.taps(y1)
    pooled = AdaptiveRouter.pool(f1)
    raw1 = model.head1(y1)[1]  # eval mode: (inference, raw) -> raw training dict
    raw2 = model.head2(model.backbone2(img, f1))[1]
    return pooled, crit1.per_image(raw1, batch)["total"], crit2.per_image(raw2, batch)["total"]


def _view_dataset(cfg: Config, info):
    r = cfg.router
    aug = dict(
        mosaic=0.0,
        mixup=0.0,
        hsv_h=r.hsv_h,
        hsv_s=r.hsv_s,
        hsv_v=r.hsv_v,
        translate=r.translate,
        scale=r.scale,
        fliplr=r.fliplr,
    )
    return build_dataset(info.data, "train", cfg.data.img_size, augment=True, batch=r.batch, **aug)


def _view_loader(cfg: Config, dataset, view: int):
    """The v-th augmented view of the training set; its order and augmentation depend on (seed, v)."""
    return make_loader(dataset, cfg.router.batch, True, cfg.train.seed * 7919 + 104729 + view, 0)


def build_router_cache(
    model: DynamicDetector, cfg: Config, info, device, progress: bool = True
) -> dict[str, torch.Tensor]:
    """One pass over V augmented views of the training set with the frozen detectors.

    Returns:
        ``{"pooled": (M, C), "l1": (M,), "l2": (M,), "image_id": (M,), "view": (M,),
        "batch_start": (nbatches,)}``, M = V x N, in the order the views were read
        (batch boundaries kept so router training can replay the direct path exactly).
    """
    _frozen(model)
    crit1, crit2 = _criteria(model)
    dataset = _view_dataset(cfg, info)
    parts: dict[str, list] = {"pooled": [], "l1": [], "l2": [], "image_id": [], "view": [], "batch_start": []}
    n = 0
    for v in range(cfg.router.views):
        for batch in tqdm(
            _view_loader(cfg, dataset, v),
            desc=f"router cache view {v + 1}/{cfg.router.views}",
            leave=False,
            disable=not progress,
        ):
            batch = to_device(batch, device)
            pooled, l1, l2 = _router_batch(model, crit1, crit2, batch)
            ids = image_ids_of(batch, info.file_to_image_id["train"])
            parts["batch_start"].append(torch.tensor([n]))
            n += len(ids)
            for k, t in (("pooled", pooled), ("l1", l1), ("l2", l2)):
                parts[k].append(t.float().cpu())
            parts["image_id"].append(torch.tensor(ids))
            parts["view"].append(torch.full((len(ids),), v))
    return {k: torch.cat(t) for k, t in parts.items()}


@torch.no_grad()
def build_val_cache(model: DynamicDetector, cfg: Config, info, device, progress: bool = True) -> dict:
    """Router input and per-image L1, L2 on the val split (no augmentation)."""
    _frozen(model)
    crit1, crit2 = _criteria(model)
    loader = val_loader(cfg, info)
    parts: dict[str, list] = {"pooled": [], "l1": [], "l2": [], "image_id": []}
    for batch in tqdm(loader, desc="val cache", leave=False, disable=not progress):
        batch = to_device(batch, device)
        pooled, l1, l2 = _router_batch(model, crit1, crit2, batch)
        parts["pooled"].append(pooled.float().cpu())
        parts["l1"].append(l1.float().cpu())
        parts["l2"].append(l2.float().cpu())
        parts["image_id"].append(torch.tensor(image_ids_of(batch, info.file_to_image_id["val"])))
    return {k: torch.cat(t) for k, t in parts.items()}


@dataclass
class RouterFit:
    """A trained router and how it got there."""

    router: AdaptiveRouter
    delta: float  # Delta used (final value for the running median)
    history: pd.DataFrame  # per epoch: loss, mean phi, fraction phi > 0.5


def _new_router(in_channels: int, seed: int) -> AdaptiveRouter:
    torch.manual_seed(seed)
    return AdaptiveRouter(in_channels)


def _train_router(
    epoch_batches, in_channels: int, cfg: Config, kind: str, lam: float, delta: float, running, epochs: int
) -> RouterFit:
    """The router-training loop shared by the cached and the direct path.

    Args:
        epoch_batches: callable returning, for one epoch, an iterable of
            ``(pooled (B, C), L1 (B,), L2 (B,))`` batches on the CPU.
        delta: Delta of the adaptive offset (ignored by the naive losses); replaced by
            ``running.update(L1 - L2)`` at every batch when ``running`` is a RunningMedian.
    """
    r = cfg.router
    router = _new_router(in_channels, cfg.train.seed)
    opt = torch.optim.AdamW(router.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    rows = []
    for epoch in range(epochs):
        losses, phis = [], []
        for pooled, l1, l2 in epoch_batches():
            if running is not None:
                delta = running.update(l1 - l2)
            phi = router.head(pooled)
            loss = router_loss(phi, l1, l2, kind=kind, lam=lam, delta=delta)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            phis.append(phi.detach())
        phi = torch.cat(phis)
        rows.append(
            {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)),
                "delta": delta,
                "mean_phi": float(phi.mean()),
                "frac_hard": float((phi > 0.5).float().mean()),
            }
        )
    return RouterFit(router=router.eval(), delta=delta, history=pd.DataFrame(rows))


def fit_router(
    cache: dict[str, torch.Tensor],
    cfg: Config,
    kind: str | None = None,
    lam: float | None = None,
    delta_mode: str | None = None,
    epochs: int | None = None,
) -> RouterFit:
    """Train a fresh router on the cache (seconds): AdamW, constant lr.

    The batches replay the cache's stored order (view by view, the views' own shuffled
    order and batch boundaries), so the result equals :func:`fit_router_direct` on the
    same data. ``kind``/``lam``/``delta_mode``/``epochs`` override the config.
    """
    r = cfg.router
    kind, lam = kind or r.loss, r.lam if lam is None else lam
    delta_mode, epochs = delta_mode or r.delta, r.epochs if epochs is None else epochs
    # Delta = median over the training images of (L1 - L2), before router training (paper)
    delta = float(np.median((cache["l1"] - cache["l2"]).numpy()))
    running = RunningMedian() if delta_mode == "running" else None
    bounds = cache["batch_start"].tolist() + [len(cache["l1"])]

    def epoch_batches():
        for s, e in zip(bounds[:-1], bounds[1:], strict=True):
            yield cache["pooled"][s:e], cache["l1"][s:e], cache["l2"][s:e]

    return _train_router(epoch_batches, cache["pooled"].shape[1], cfg, kind, lam, delta, running, epochs)


def fit_router_direct(model: DynamicDetector, cfg: Config, info, device, progress: bool = True) -> RouterFit:
    """The uncached path: run both frozen detectors on every step (the authors' loop shape).

    Each epoch replays the V augmented views; with the same seeds it sees exactly the
    batches :func:`build_router_cache` stores, so it reaches the same router.
    """
    r = cfg.router
    _frozen(model)
    crit1, crit2 = _criteria(model)
    dataset = _view_dataset(cfg, info)

    def epoch_batches():
        for v in range(r.views):
            loader = _view_loader(cfg, dataset, v)
            for batch in tqdm(loader, desc=f"direct router view {v + 1}", leave=False, disable=not progress):
                pooled, l1, l2 = _router_batch(model, crit1, crit2, to_device(batch, device))
                yield pooled.float().cpu(), l1.float().cpu(), l2.float().cpu()

    running, delta = None, 0.0
    if r.delta == "median":  # the paper's Delta needs one pass over the training views first
        diffs = [(l1 - l2) for _, l1, l2 in epoch_batches()]
        delta = float(np.median(torch.cat(diffs).numpy()))
    else:
        running = RunningMedian()
    return _train_router(epoch_batches, model.router.fc1.in_features, cfg, r.loss, r.lam, delta, running, r.epochs)


def load_cache(path: Path) -> dict[str, torch.Tensor]:
    """Read a cache written by :func:`train_step2` (clear error if it is unreadable)."""
    from .checkpoint import CheckpointError

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable cache ({type(e).__name__}: {e}); delete it to rebuild") from None


def train_step2(cfg: Config, progress: bool = True) -> Path:
    """Step 2: freeze both detectors, train the router; write the step-2 artefacts.

    Builds (or reuses) the per-image caches, trains the router with ``cfg.router.loss``
    (cached or direct path), and writes ``step2.pt``, ``router_metrics.csv``,
    ``train_losses.csv`` (image id, view, L1, L2, L1 - L2) and ``val_scores.csv``
    (image id, phi, logit, L1, L2; thresholds are chosen on the logit, see ``route``).
    Returns the step-2 checkpoint path (reused if it exists).
    """
    if is_two_stage(cfg) and not cfg.model.dual:
        raise ValueError(f"{cfg.source or cfg.name}: step 2 trains a router; this config has model.dual = false")
    out = router_dir(cfg)
    final = out / "step2.pt"
    if final.exists():
        return final
    device = resolve_device(cfg.device)
    step1 = train_step1(cfg, progress=progress, resume=True)  # an interrupted step 1 continues
    info = prepare_dataset(cfg)
    model = build_model(cfg, nc=len(info.names))
    load_into(model, step1)
    model.to(device)
    folder = run_dir(cfg)
    views_path = cache_path(cfg)
    if views_path.exists():
        cache = load_cache(views_path)
    else:
        cache = build_router_cache(model, cfg, info, device, progress)
        save_atomic(cache, views_path)
    val_path = folder / "val_cache.pt"
    if val_path.exists():
        val = load_cache(val_path)
    else:
        val = build_val_cache(model, cfg, info, device, progress)
        save_atomic(val, val_path)

    t0 = time.time()
    fit = fit_router(cache, cfg) if cfg.router.cached else fit_router_direct(model, cfg, info, device, progress)
    wall = time.time() - t0
    model.router.load_state_dict(fit.router.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    _write_config(cfg, out)
    hist = fit.history.assign(wall_s=round(wall, 3))
    hist.to_csv(out / "router_metrics.csv", index=False)
    pd.DataFrame(
        {
            "image_id": cache["image_id"].numpy(),
            "view": cache["view"].numpy(),
            "L1": cache["l1"].numpy(),
            "L2": cache["l2"].numpy(),
            "L1_minus_L2": (cache["l1"] - cache["l2"]).numpy(),
        }
    ).to_csv(out / "train_losses.csv", index=False)
    with torch.no_grad():
        z = model.router.logit(val["pooled"].to(device)).cpu()
    pd.DataFrame(
        {
            "image_id": val["image_id"].numpy(),
            "phi": torch.sigmoid(z).numpy(),
            "logit": z.numpy(),
            "L1": val["l1"].numpy(),
            "L2": val["l2"].numpy(),
        }
    ).to_csv(out / "val_scores.csv", index=False)
    save_checkpoint(final, model, config=cfg.to_dict(), delta=fit.delta, loss=cfg.router.loss)
    return final


def step_caches(cfg: Config) -> tuple[dict, dict]:
    """The training-view cache and the val cache of a config (after :func:`train_step2`)."""
    folder = run_dir(cfg)
    return load_cache(cache_path(cfg)), load_cache(folder / "val_cache.pt")


__all__ = [
    "RouterFit",
    "build_model",
    "build_router_cache",
    "build_val_cache",
    "evaluate_fn",
    "evaluate_routes",
    "fit_router",
    "fit_router_direct",
    "load_model",
    "read_checkpoint",
    "resolve_device",
    "router_dir",
    "run_dir",
    "step_caches",
    "train_step1",
    "train_step2",
]
