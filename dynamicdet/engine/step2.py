"""Step 2: freeze both detectors, train the router alone.

One pass of the frozen detectors over V augmented views of the training set stores,
per image, the router's input (pooled B1 features) and both detectors' losses L1, L2
(:data:`~dynamicdet.engine.runs.VIEW_CACHE`; the val split likewise, :data:`~dynamicdet.engine.runs.VAL_CACHE`).
The router then trains on that cache in seconds (:func:`fit_router`); the uncached path
(:func:`fit_router_direct`, the authors' loop shape) reaches the same router.

Writes into the step-2 folder (:data:`~dynamicdet.engine.runs.STEP2`): ``step2.pt``,
``router_metrics.csv``, ``train_losses.csv`` and ``val_scores.csv``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dynamicdet.config import Config
from dynamicdet.data.coco import prepare_dataset
from dynamicdet.data.loaders import build_dataset, make_loader, to_device
from dynamicdet.engine.build import build_model, is_dynamic, resolve_device
from dynamicdet.engine.checkpoint import CheckpointError, load_into, save_checkpoint
from dynamicdet.engine.runs import STEP2, VAL_CACHE, VIEW_CACHE, write_config
from dynamicdet.engine.step1 import train_step1
from dynamicdet.engine.validate import val_loader
from dynamicdet.evaluation.predict import image_ids_of
from dynamicdet.files import save_torch, write_csv
from dynamicdet.metrics import spearman
from dynamicdet.modeling.losses import RunningMedian, router_loss
from dynamicdet.modeling.router import AdaptiveRouter


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter frozen, every layer (BN included) in eval mode."""
    model.eval()
    model.requires_grad_(False)
    return model


def view_dataset(cfg: Config, info):
    """The training set with the router's view augmentation (no mosaic or mixup, as the authors')."""
    r = cfg.router
    aug = {name: getattr(r, name) for name in ("hsv_h", "hsv_s", "hsv_v", "translate", "scale", "fliplr")}
    return build_dataset(
        info.data, "train", cfg.data.img_size, augment=True, batch=r.batch, mosaic=0.0, mixup=0.0, **aug
    )


def view_loader(cfg: Config, dataset, view: int, batch: int | None = None):
    """The v-th augmented view of the training set; its order and augmentation depend on (seed, v)."""
    return make_loader(dataset, batch or cfg.router.batch, True, cfg.train.seed * 7919 + 104729 + view, 0)


def view_batches(model, cfg: Config, dataset, device, progress: bool = True):
    """Yield ``(view, batch, (pooled (B, C), L1 (B,), L2 (B,)))`` over the augmented views, frozen detectors."""
    _frozen(model)
    for v in range(cfg.router.views):
        loader = view_loader(cfg, dataset, v)
        desc = f"router view {v + 1}/{cfg.router.views}"
        for b in tqdm(loader, desc=desc, leave=False, disable=not progress):
            b = to_device(b, device)
            yield v, b, model.router_batch(b)


def build_router_cache(model, cfg: Config, info, device, progress: bool = True) -> dict[str, torch.Tensor]:
    """One pass over V augmented views of the training set with the frozen detectors.

    Returns:
        ``{"pooled": (M, C), "l1": (M,), "l2": (M,), "image_id": (M,), "view": (M,),
        "batch_start": (nbatches,)}``, M = V x N, in the order the views were read
        (batch boundaries kept so router training can replay the direct path exactly).
    """
    parts: dict[str, list] = {"pooled": [], "l1": [], "l2": [], "image_id": [], "view": [], "batch_start": []}
    n = 0
    for v, batch, (pooled, l1, l2) in view_batches(model, cfg, view_dataset(cfg, info), device, progress):
        ids = image_ids_of(batch, info.file_to_image_id["train"])
        parts["batch_start"].append(torch.tensor([n]))
        n += len(ids)
        for k, t in (("pooled", pooled), ("l1", l1), ("l2", l2)):
            parts[k].append(t.float().cpu())
        parts["image_id"].append(torch.tensor(ids))
        parts["view"].append(torch.full((len(ids),), v))
    return {k: torch.cat(t) for k, t in parts.items()}


@torch.no_grad()
def build_val_cache(model, cfg: Config, info, device, progress: bool = True) -> dict:
    """Router input and per-image L1, L2 on the val split (no augmentation)."""
    _frozen(model)
    parts: dict[str, list] = {"pooled": [], "l1": [], "l2": [], "image_id": []}
    for batch in tqdm(val_loader(cfg, info), desc="val cache", leave=False, disable=not progress):
        batch = to_device(batch, device)
        for k, t in zip(("pooled", "l1", "l2"), model.router_batch(batch), strict=True):
            parts[k].append(t.float().cpu())
        parts["image_id"].append(torch.tensor(image_ids_of(batch, info.file_to_image_id["val"])))
    return {k: torch.cat(t) for k, t in parts.items()}


@dataclass
class RouterFit:
    """A trained router and how it got there."""

    router: AdaptiveRouter
    delta: float  # Delta used (final value for the running median)
    history: pd.DataFrame  # per epoch: loss, mean phi, fraction phi > 0.5 (+ Spearman on held-out images)
    best_epoch: int = 0  # the epoch kept (router.holdout > 0), else the last
    holdout_ids: tuple = ()  # the training images held out (router.holdout > 0)


def _new_router(in_channels: int, seed: int) -> AdaptiveRouter:
    torch.manual_seed(seed)
    return AdaptiveRouter(in_channels)


def _train_router(
    epoch_batches,
    in_channels: int,
    cfg: Config,
    kind: str,
    lam: float,
    delta: float,
    running,
    epochs: int,
    scale: float = 1.0,
    holdout: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> RouterFit:
    """The router-training loop shared by the cached and the direct path.

    Args:
        epoch_batches: callable returning, for one epoch, an iterable of
            ``(pooled (B, C), L1 (B,), L2 (B,))`` batches on the CPU.
        delta: Delta of the adaptive offset (ignored by the naive losses); replaced by
            ``running.update(L1 - L2)`` at every batch when ``running`` is a RunningMedian.
        scale: s of the ``soft_target`` loss.
        holdout: ``(pooled (H, C), target (H,))`` of held-out training images (target: L1 - L2,
            or L1 with ``router.target: l1``): each epoch's Spearman correlation of the
            router's logit with the target there is logged, and the
            router of the best epoch is kept (early stopping on the ranking the routes need).
    """
    r = cfg.router
    router = _new_router(in_channels, cfg.train.seed)
    opt = torch.optim.AdamW(router.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    rows, best, best_state = [], -np.inf, None
    for epoch in range(epochs):
        losses, phis = [], []
        for pooled, l1, l2 in epoch_batches():
            if running is not None:
                delta = running.update(l1 - l2)
            z = router.logit(pooled)
            phi = torch.sigmoid(z)
            loss = router_loss(phi, l1, l2, kind=kind, lam=lam, delta=delta, logit=z, scale=scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            phis.append(phi.detach())
        phi = torch.cat(phis)
        row = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "delta": delta,
            "mean_phi": float(phi.mean()),
            "frac_hard": float((phi > 0.5).float().mean()),
        }
        if holdout is not None:
            with torch.no_grad():
                row["holdout_spearman"] = spearman(router.logit(holdout[0]).numpy(), holdout[1].numpy())
            if row["holdout_spearman"] > best:
                best, best_state = row["holdout_spearman"], copy.deepcopy(router.state_dict())
        rows.append(row)
    history = pd.DataFrame(rows)
    best_epoch = len(rows)
    if best_state is not None:
        router.load_state_dict(best_state)
        best_epoch = int(history.loc[history["holdout_spearman"].idxmax(), "epoch"])
    return RouterFit(router=router.eval(), delta=delta, history=history, best_epoch=best_epoch)


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

    Beyond the paper (``cfg.router``): ``target: l1`` (the default) ranks images by detector
    1's loss alone (L2 := 0, Delta = median L1; ``gain`` is the paper's L1 - L2); off by
    default: ``target_views: mean`` trains on
    each image's L1, L2 averaged over its views; ``normalize`` standardises the pooled
    features with the cache's mean and std (folded into ``fc1`` at the end, so the router
    still reads raw features); ``holdout`` keeps a fraction of the training images out of
    the batches and keeps the epoch whose logits rank their target best (Delta, s and the
    feature statistics then come from the images trained on).
    """
    r = cfg.router
    kind, lam = kind or r.loss, r.lam if lam is None else lam
    delta_mode, epochs = delta_mode or r.delta, r.epochs if epochs is None else epochs
    l1, l2, pooled, image_id = cache["l1"], cache["l2"], cache["pooled"], cache["image_id"]
    if r.target_views == "mean":
        # L_k(i) <- mean over the views v of image i of L_k(i, v)
        l1, l2 = _mean_over_views(image_id, l1), _mean_over_views(image_id, l2)
    l2 = _target_l2(cfg, l2)
    rows = torch.arange(len(l1))
    holdout, held_ids = None, np.array([], dtype=np.int64)
    if r.holdout > 0:
        ids = np.unique(image_id.numpy())
        n_held = round(r.holdout * len(ids))
        if n_held < 3 or n_held > len(ids) - 3:
            raise ValueError(
                f"{cfg.source or cfg.name}: router.holdout = {r.holdout} holds out {n_held} of {len(ids)} "
                "training images; a ranking needs at least 3 on each side"
            )
        held_ids = np.random.default_rng(cfg.train.seed).choice(ids, n_held, replace=False)
        held = torch.from_numpy(np.isin(image_id.numpy(), held_ids))
        rows = rows[~held]  # the stored order, held-out images dropped, cut into batches of router.batch
        bounds = list(range(0, len(rows), r.batch)) + [len(rows)]
    else:
        bounds = cache["batch_start"].tolist() + [len(l1)]
    # Delta = median over the training images of (L1 - L2), before router training (paper)
    delta = float(np.median((l1 - l2)[rows].numpy()))
    # s = std over the training images of (L1 - L2) (the soft target's temperature)
    scale = _soft_scale(l1[rows] - l2[rows])
    running = RunningMedian() if delta_mode == "running" else None
    mu = sd = None
    if r.normalize:
        # x <- (x - mean) / std, per feature, over the training images
        mu, sd = pooled[rows].mean(0), _feature_std(pooled[rows])
        pooled = (pooled - mu) / sd
    if r.holdout > 0:
        holdout = (pooled[held], (l1 - l2)[held])

    def epoch_batches():
        for s, e in zip(bounds[:-1], bounds[1:], strict=True):
            i = rows[s:e]
            yield pooled[i], l1[i], l2[i]

    fit = _train_router(epoch_batches, pooled.shape[1], cfg, kind, lam, delta, running, epochs, scale, holdout)
    if mu is not None:
        _fold_normalisation(fit.router, mu, sd)
    fit.holdout_ids = tuple(int(i) for i in held_ids)
    return fit


def _soft_scale(d: torch.Tensor) -> float:
    """s of the soft target: the spread of the target over the training images (floored)."""
    return float(d.std().clamp_min(1e-6))


def _feature_std(x: torch.Tensor) -> torch.Tensor:
    """Per-feature std, floored relative to the typical one (a near-constant feature must not get a 1e6 weight)."""
    sd = x.std(0)
    return sd.clamp_min(max(1e-3 * float(sd.median()), 1e-8))


def _target_l2(cfg: Config, l2: torch.Tensor) -> torch.Tensor:
    """``router.target``: ``gain`` ranks L1 - L2 (the paper); ``l1`` ranks detector 1's own loss (L2 := 0)."""
    return torch.zeros_like(l2) if cfg.router.target == "l1" else l2


def _mean_over_views(image_id: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Each entry replaced by the mean of ``x`` over the entries of the same image: (M,) -> (M,)."""
    _, inv = torch.unique(image_id, return_inverse=True)
    sums = torch.zeros(int(inv.max()) + 1, dtype=x.dtype).index_add_(0, inv, x)
    counts = torch.zeros_like(sums).index_add_(0, inv, torch.ones_like(x))
    return (sums / counts)[inv]


@torch.no_grad()
def _fold_normalisation(router: AdaptiveRouter, mu: torch.Tensor, sd: torch.Tensor) -> None:
    """Make ``router`` read raw features: fc1(x') with x' = (x - mu) / sd equals fc1'(x).

    W' = W / sd (per input feature), b' = b - W' mu.
    """
    w = router.fc1.weight / sd
    router.fc1.bias -= w @ mu
    router.fc1.weight.copy_(w)


def fit_router_direct(model, cfg: Config, info, device, progress: bool = True) -> RouterFit:
    """The uncached path: run both frozen detectors on every step (the authors' loop shape).

    Each epoch replays the V augmented views; with the same seeds it sees exactly the
    batches :func:`build_router_cache` stores, so it reaches the same router.
    """
    r = cfg.router
    variants = {"target_views": "each", "normalize": False, "holdout": 0.0}
    changed = [k for k, default in variants.items() if getattr(r, k) != default]
    if changed:
        raise ValueError(
            f"{cfg.source or cfg.name}: router.{', router.'.join(changed)} need the cached path (router.cached: true)"
        )
    dataset = view_dataset(cfg, info)

    def epoch_batches():
        for _, _, (pooled, l1, l2) in view_batches(model, cfg, dataset, device, progress):
            yield pooled.float().cpu(), l1.float().cpu(), _target_l2(cfg, l2.float().cpu())

    running, delta, scale = None, 0.0, 1.0
    if r.delta == "median" or r.loss == "soft_target":  # Delta (and s) need one pass over the training views first
        diffs = torch.cat([(l1 - l2) for _, l1, l2 in epoch_batches()])
        delta, scale = float(np.median(diffs.numpy())), _soft_scale(diffs)
    if r.delta != "median":
        running = RunningMedian()
    fc1 = model.router.fc1.in_features
    return _train_router(epoch_batches, fc1, cfg, r.loss, r.lam, delta, running, r.epochs, scale)


def load_cache(path: Path) -> dict[str, torch.Tensor]:
    """Read a cache written by :func:`train_step2` (clear error if it is unreadable)."""
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
    if not cfg.model.dual:
        raise ValueError(f"{cfg.source or cfg.name}: step 2 trains a router; this config has model.dual = false")
    out = STEP2.path(cfg)
    final = out / "step2.pt"
    if final.exists():
        return final
    device = resolve_device(cfg.device)
    step1 = train_step1(cfg, progress=progress, resume=True)  # an interrupted step 1 continues
    info = prepare_dataset(cfg)
    model = build_model(cfg, nc=len(info.names))
    assert is_dynamic(model)
    load_into(model, step1)
    model.to(device)
    cache_file, val_file = VIEW_CACHE.path(cfg), VAL_CACHE.path(cfg)
    if cache_file.exists():
        cache = load_cache(cache_file)
    else:
        cache = build_router_cache(model, cfg, info, device, progress)
        save_torch(cache, cache_file)
    if val_file.exists():
        val = load_cache(val_file)
    else:
        val = build_val_cache(model, cfg, info, device, progress)
        save_torch(val, val_file)

    t0 = time.time()
    fit = fit_router(cache, cfg) if cfg.router.cached else fit_router_direct(model, cfg, info, device, progress)
    wall = time.time() - t0
    model.router.load_state_dict(fit.router.state_dict())
    write_config(cfg, out)
    write_csv(fit.history.assign(wall_s=round(wall, 3)), out / "router_metrics.csv")
    losses = {
        "image_id": cache["image_id"].numpy(),
        "view": cache["view"].numpy(),
        "L1": cache["l1"].numpy(),
        "L2": cache["l2"].numpy(),
        "L1_minus_L2": (cache["l1"] - cache["l2"]).numpy(),
    }
    write_csv(pd.DataFrame(losses), out / "train_losses.csv")
    with torch.no_grad():
        z = model.router.logit(val["pooled"].to(device)).cpu()
    scores = {
        "image_id": val["image_id"].numpy(),
        "phi": torch.sigmoid(z).numpy(),
        "logit": z.numpy(),
        "L1": val["l1"].numpy(),
        "L2": val["l2"].numpy(),
    }
    write_csv(pd.DataFrame(scores), out / "val_scores.csv")
    save_checkpoint(final, model, config=cfg.to_dict(), delta=fit.delta, loss=cfg.router.loss, names=list(info.names))
    return final


def step_caches(cfg: Config) -> tuple[dict, dict]:
    """The training-view cache and the val cache of a config (after :func:`train_step2`)."""
    return load_cache(VIEW_CACHE.path(cfg)), load_cache(VAL_CACHE.path(cfg))
