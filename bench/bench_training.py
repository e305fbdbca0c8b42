"""Bench items 4-5: the cost of training (``make bench``, parts ``step2`` and ``step1``).

4. step 2: cached vs direct router training for the same views and epochs, and the authors' recipe;
5. step 1: img/s of joint training vs ultralytics' trainer on one plain detector.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from bench_record import mark

from dynamicdet.config import Config
from dynamicdet.data.coco import prepare_dataset
from dynamicdet.data.loaders import to_device
from dynamicdet.engine.build import build_model
from dynamicdet.engine.checkpoint import load_into
from dynamicdet.engine.step1 import train_step1
from dynamicdet.engine.step2 import build_router_cache, fit_router, fit_router_direct, view_dataset, view_loader
from dynamicdet.experiments import train_ultralytics


@contextmanager
def _temporary_home():
    old = os.environ.get("DYNAMICDET_HOME")
    with tempfile.TemporaryDirectory(prefix="bench_home_") as tmp:
        os.environ["DYNAMICDET_HOME"] = tmp
        try:
            yield Path(tmp)
        finally:
            if old is None:
                os.environ.pop("DYNAMICDET_HOME")
            else:
                os.environ["DYNAMICDET_HOME"] = old


def bench_step2(cfg: Config) -> list[dict]:
    """Item 4: router training with the cache vs the direct path vs the authors' recipe."""
    device = torch.device("cpu")
    info = prepare_dataset(cfg)
    model = build_model(cfg, nc=len(info.names))
    load_into(model, train_step1(cfg, progress=False))
    epochs = cfg.router.epochs
    t0 = time.perf_counter()
    cache = build_router_cache(model, cfg, info, device, progress=False)
    t_cache = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit_router(cache, cfg)
    t_fit = time.perf_counter() - t0
    one = copy.deepcopy(cfg)
    one.router.epochs = 1
    t0 = time.perf_counter()
    fit_router_direct(model, one, info, device, progress=False)
    t_direct1 = time.perf_counter() - t0  # median pass + one epoch
    t_direct = t_direct1 + (epochs - 1) * t_cache  # each further epoch = one more pass over the views
    # the authors' loop shape: batch 1, both detectors every step, router backward, V views x N images
    router = copy.deepcopy(model.router).train().requires_grad_(True)
    opt = torch.optim.AdamW(router.parameters(), lr=1e-5)
    ds = view_dataset(cfg, info)
    n_time, seen = 16, 0
    t0 = time.perf_counter()
    for batch in view_loader(cfg, ds, 0, batch=1):
        pooled, l1, l2 = model.router_batch(to_device(batch, device))
        phi = router.head(pooled)
        loss = ((1 - phi) * l1 + phi * l2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        seen += 1
        if seen >= n_time:
            break
    per_img = (time.perf_counter() - t0) / seen
    n_views = cfg.router.views * len(ds)
    t_authors = per_img * n_views
    t_cached = t_cache + t_fit
    return [
        {
            "item": f"4. step 2, direct / cached ({cfg.router.views} views x {len(ds)} images, {epochs} epochs)",
            "value": t_direct / t_cached,
            "goal": ">= 10",
            "mark": mark(t_direct / t_cached, 10, True),
            "detail": f"cached {t_cached:.1f} s (cache {t_cache:.1f} s + fit {t_fit:.2f} s); direct {t_direct:.1f} s "
            f"(measured 1 epoch + median pass {t_direct1:.1f} s, + {epochs - 1} x one pass)",
        },
        {
            "item": "4. step 2, authors' recipe (batch 1, both detectors per step, 1 pass of the views) / cached",
            "value": t_authors / t_cached,
            "goal": "report",
            "mark": "-",
            "detail": f"authors {t_authors:.1f} s ({per_img * 1e3:.0f} ms/img timed on {seen} images x {n_views}); "
            f"cached {t_cached:.1f} s incl. {epochs} router epochs",
        },
    ]


def bench_step1(cfg: Config) -> list[dict]:
    """Item 5: one epoch of joint training vs ultralytics' trainer on one plain detector (no validation)."""
    one = copy.deepcopy(cfg)
    one.train.epochs = 1
    n = cfg.data.n_train if cfg.data.source == "synthetic" else None
    with _temporary_home():
        t0 = time.perf_counter()
        train_step1(one, progress=False, validate=False)
        ours = time.perf_counter() - t0
    with _temporary_home() as home:
        t0 = time.perf_counter()
        train_ultralytics(one, cfg.model.scale, 1, home, "u", close_mosaic=0)
        theirs = time.perf_counter() - t0
    ratio = theirs / ours
    return [
        {
            "item": "5. step-1 img/s: joint (2 detectors) / ultralytics trainer (1 detector)",
            "value": ratio,
            "goal": "report (~0.45 expected)",
            "mark": "-",
            "detail": f"ours {n / ours:.1f} img/s ({ours:.1f} s), ultralytics {n / theirs:.1f} img/s ({theirs:.1f} s), "
            f"{n} images, 1 epoch incl. setup",
        }
    ]
