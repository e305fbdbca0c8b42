"""Step-2 variants (target, views, normalisation, hold-out) and the router diagnosis of notebook 04."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynamicdet.config import ConfigError, load_config
from dynamicdet.engine.runs import STEP2, VIEW_CACHE
from dynamicdet.engine.step2 import _fold_normalisation, _mean_over_views, fit_router, fit_router_direct
from dynamicdet.experiments import trained
from dynamicdet.experiments.router_study import (
    PAPER_ROUTER,
    Capture,
    holdout_fit,
    loss_difference_stats,
    router_variant,
    signal_table,
    variant_table,
    view_agreement,
)
from dynamicdet.metrics import spearman
from dynamicdet.modeling.router import AdaptiveRouter


def _cache(n_images=60, views=2, channels=12, seed=0):
    """A step-2 cache whose L1 is a linear function of the features (plus view noise), L2 = 0.8 L1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(1, n_images + 1).repeat(views)
    view = torch.arange(views).repeat_interleave(n_images)
    base = torch.randn(n_images, channels, generator=g) * torch.linspace(0.1, 10, channels)  # unequal feature scales
    pooled = base.repeat(views, 1) + 0.01 * torch.randn(n_images * views, channels, generator=g)
    l1 = 2 + 3 * base[:, 0].repeat(views) + 0.05 * torch.randn(n_images * views, generator=g)  # signal std 0.3
    perm = torch.randperm(n_images * views, generator=g)
    out = {"pooled": pooled, "l1": l1, "l2": 0.8 * l1, "image_id": ids, "view": view}
    out = {k: v[perm] for k, v in out.items()}
    out["batch_start"] = torch.arange(0, n_images * views, 16)
    return out


def _cfg(**router):
    cfg = load_config("smoke")
    return router_variant(cfg, epochs=60, batch=16, lr=0.01, **router)


def test_router_options_are_validated():
    with pytest.raises(ConfigError, match=r"router\.target = 'l2' is not one of \['gain', 'l1'\]"):
        load_config("smoke", {"router": {"target": "l2"}})
    with pytest.raises(ConfigError, match=r"router\.holdout = 0\.9 is outside \[0\.0, 0\.5\]"):
        load_config("smoke", {"router": {"holdout": 0.9}})
    with pytest.raises(ValueError, match="router.views_x is not a router field"):
        router_variant(load_config("smoke"), views_x=1)


def test_router_variants_move_step_2_and_share_the_views_when_only_the_target_changes():
    paper = router_variant(load_config("smoke"), **PAPER_ROUTER)
    assert STEP2.key(router_variant(paper, normalize=True)) != STEP2.key(paper)
    assert STEP2.key(router_variant(paper, target="l1")) != STEP2.key(paper)
    assert VIEW_CACHE.key(router_variant(paper, target="l1")) == VIEW_CACHE.key(paper)  # same views, same cache


def test_target_l1_ranks_detector_1s_loss_with_delta_its_median():
    cache = _cache()
    fit = fit_router(cache, _cfg(target="l1"))
    # Delta = median over the training entries of L1 (L2 := 0)
    assert fit.delta == pytest.approx(float(np.median(cache["l1"].numpy())))
    paper = fit_router(cache, _cfg(target="gain"))
    assert paper.delta == pytest.approx(float(np.median((cache["l1"] - cache["l2"]).numpy())))


def test_mean_over_views_averages_each_images_entries():
    ids = torch.tensor([3, 1, 3, 2, 1])
    x = torch.tensor([1.0, 10.0, 3.0, 5.0, 20.0])
    torch.testing.assert_close(_mean_over_views(ids, x), torch.tensor([2.0, 15.0, 2.0, 5.0, 15.0]))


def test_normalisation_is_folded_into_fc1():
    torch.manual_seed(0)
    router, x = AdaptiveRouter(8), torch.randn(5, 8) * 4 + 3
    mu, sd = x.mean(0), x.std(0)
    with torch.no_grad():
        z_std = router.logit((x - mu) / sd)
        _fold_normalisation(router, mu, sd)
        torch.testing.assert_close(router.logit(x), z_std, rtol=1e-5, atol=1e-5)


def test_normalize_helps_on_features_of_unequal_scale():
    cache = _cache()
    y = cache["l1"].numpy()
    plain, norm = fit_router(cache, _cfg()), fit_router(cache, _cfg(normalize=True))
    with torch.no_grad():
        rho = {k: spearman(f.router.logit(cache["pooled"]).numpy(), y) for k, f in (("plain", plain), ("norm", norm))}
    # the signal is in the smallest-scale feature: standardising makes it visible to AdamW's first steps
    assert rho["norm"] > 0.8 and rho["norm"] > rho["plain"]


def test_holdout_keeps_images_out_and_the_best_epoch():
    cache = _cache()
    fit = fit_router(cache, _cfg(holdout=0.25, normalize=True))
    assert len(fit.holdout_ids) == 15 and set(fit.holdout_ids) <= set(cache["image_id"].tolist())
    h = fit.history
    assert "holdout_spearman" in h and fit.best_epoch == int(h.loc[h["holdout_spearman"].idxmax(), "epoch"])
    # the router kept is the best epoch's: its held-out Spearman is the logged maximum
    held = torch.from_numpy(np.isin(cache["image_id"].numpy(), fit.holdout_ids))
    with torch.no_grad():
        z = fit.router.logit(cache["pooled"][held]).numpy()
    assert spearman(z, cache["l1"][held].numpy()) == pytest.approx(h["holdout_spearman"].max(), abs=1e-6)
    report = holdout_fit(cache, {k: cache[k] for k in ("pooled", "l1", "l2")}, _cfg(normalize=True), holdout=0.25)
    assert report["best epoch"] == fit.best_epoch and report["spearman (held-out training images)"] > 0.5


def test_holdout_needs_images_on_both_sides():
    with pytest.raises(ValueError, match=r"router.holdout = 0.02 holds out 1 of 60 training images"):
        fit_router(_cache(), _cfg(holdout=0.02))


def test_the_direct_path_refuses_cache_only_options():
    with pytest.raises(ValueError, match=r"router\.normalize, router\.holdout need the cached path"):
        fit_router_direct(None, _cfg(normalize=True, holdout=0.1), None, "cpu")


def test_loss_difference_stats_and_view_agreement():
    cache = _cache(views=2)
    val = {k: v[:30] for k, v in _cache(n_images=30, views=1, seed=1).items() if k != "batch_start"}
    stats = loss_difference_stats(cache, val).set_index("split")
    d = (cache["l1"] - cache["l2"]).numpy()
    assert stats.loc["training views", "median"] == pytest.approx(float(np.median(d)))
    assert stats.loc["training views", "share above the training median"] == pytest.approx(0.5, abs=0.02)
    agree = view_agreement(cache)
    # the views differ by a little noise only: their targets agree, and most variance is between images
    assert agree["spearman L1"] > 0.8 and agree["within-image share of var(L1 - L2)"] < 0.2
    assert np.isnan(view_agreement(_cache(views=1))["spearman L1"])


@pytest.mark.slow
def test_variant_and_signal_tables_on_the_smoke_model(smoke_cfg):
    t = trained(smoke_cfg, progress=False)
    cap = Capture(t)
    ks = [f"c({k:g})" for k in smoke_cfg.eval.fractions if 0 < k < 1]
    table = variant_table(t, {"default": {}, "paper": PAPER_ROUTER}, cap)
    assert list(table["router"]) == ["default", "paper"] and set(ks) <= set(table.columns)
    # the default row is the trained model's own router: same logits, hence the same c(k)
    own = cap.of(t.val_scores.set_index("image_id").loc[cap.ids, "logit"].to_numpy())
    # (at smoke size both detectors may score AP 0: c(k) is then NaN for every row alike)
    assert np.allclose(table.loc[0, ks].to_numpy(float), [own[k] for k in ks], atol=1e-9, equal_nan=True)
    signals = signal_table(t, cap).set_index("ranked by")
    assert {"oracle: per-image AP gain", "generator: difficulty", "random"} <= set(signals.index)
    assert signals[ks].isna().all().all() == (cap.ap1 == cap.ap2)
    if np.ptp(cap.ap_gain) > 0:
        assert signals.loc["oracle: per-image AP gain", "spearman with AP gain"] == pytest.approx(1.0)
