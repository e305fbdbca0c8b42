"""Training on the smoke dataset: step 1, step 2 (cached == direct), resume after a kill, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from dynamicdet.config import load_config
from dynamicdet.data.coco import prepare_dataset
from dynamicdet.engine.build import build_model
from dynamicdet.engine.checkpoint import read_checkpoint
from dynamicdet.engine.runs import router_dir, run_dir
from dynamicdet.engine.step1 import SETUP_FILE, check_setup, clip_gradients, train_step1
from dynamicdet.engine.step2 import build_router_cache, fit_router, fit_router_direct, step_caches, train_step2
from dynamicdet.experiments.router_study import PAPER_ROUTER, router_variant
from dynamicdet.modeling.yolo import DynamicDetector


@pytest.fixture(scope="module")
def step2(smoke_cfg):
    """Steps 1 and 2 of the smoke config (trained once for the module)."""
    train_step2(smoke_cfg, progress=False)
    return smoke_cfg


@pytest.mark.slow
def test_step1_artefacts_and_metrics_of_both_detectors(step2):
    cfg = step2
    folder = run_dir(cfg)
    metrics = pd.read_csv(folder / "step1_metrics.csv")
    assert list(metrics["epoch"]) == list(range(1, cfg.train.epochs + 1))
    for det in ("det1", "det2"):
        assert metrics[f"{det}_AP"].between(0, 1).all() and metrics[f"{det}_AP50"].between(0, 1).all()
    for tag in ("L1", "L2"):
        assert (metrics[[f"{tag}_box", f"{tag}_cls", f"{tag}_dfl"]] >= 0).all().all()
    ckpt = read_checkpoint(folder / "step1.pt")
    assert ckpt["model_config"]["family"] == cfg.model.family
    assert yaml.safe_load((folder / "config.yaml").read_text())["train"]["epochs"] == cfg.train.epochs


@pytest.mark.slow
def test_step2_artefacts(step2):
    cfg = step2
    out = router_dir(cfg)
    losses = pd.read_csv(out / "train_losses.csv")
    assert list(losses.columns) == ["image_id", "view", "L1", "L2", "L1_minus_L2"]
    assert len(losses) == cfg.router.views * cfg.data.n_train
    assert (losses["L1_minus_L2"] - (losses["L1"] - losses["L2"])).abs().max() < 1e-5
    scores = pd.read_csv(out / "val_scores.csv")
    assert len(scores) == cfg.data.n_val and scores["phi"].between(0, 1).all()
    hist = pd.read_csv(out / "router_metrics.csv")
    assert len(hist) == cfg.router.epochs and "delta" in hist
    ckpt = read_checkpoint(out / "step2.pt")
    assert ckpt["loss"] == cfg.router.loss


@pytest.mark.slow
def test_finished_stages_are_reused(step2):
    path1, path2 = run_dir(step2) / "step1.pt", router_dir(step2) / "step2.pt"
    m1, m2 = path1.stat().st_mtime_ns, path2.stat().st_mtime_ns
    assert train_step2(step2, progress=False) == path2
    assert path1.stat().st_mtime_ns == m1 and path2.stat().st_mtime_ns == m2
    changed = load_config("smoke", overrides={"router": {"lr": 0.123}})
    assert router_dir(changed) != router_dir(step2) and run_dir(changed) == run_dir(step2)


@pytest.mark.slow
def test_cached_and_direct_router_training_agree(step2):
    # the paper's router (2 augmented views: the augmentation's random stream must replay, target L1 - L2)
    cfg = router_variant(load_config("smoke"), **{**PAPER_ROUTER, "epochs": 2})
    info = prepare_dataset(cfg)
    model = build_model(cfg, nc=len(info.names))
    model.load_state_dict(read_checkpoint(run_dir(step2) / "step1.pt")["model"])
    for delta_mode, loss in (("median", "adaptive_offset"), ("running", "adaptive_offset"), ("median", "soft_target")):
        cfg.router.delta, cfg.router.loss = delta_mode, loss
        cache = build_router_cache(model, cfg, info, "cpu", progress=False)
        cached = fit_router(cache, cfg)
        direct = fit_router_direct(model, cfg, info, "cpu", progress=False)
        assert cached.delta == pytest.approx(direct.delta, abs=1e-6)
        for a, b in zip(cached.router.state_dict().values(), direct.router.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        # and training actually moved the router
        fresh = fit_router(cache, cfg, epochs=0).router
        assert not torch.equal(fresh.fc2.bias, cached.router.fc2.bias)


@pytest.mark.slow
def test_naive_loss_collapses_and_offset_balances(step2):
    """On the cached smoke data: naive (1) pushes every phi up when L2 < L1 on most images."""
    cache, _ = step_caches(step2)
    paper = router_variant(step2, target="gain")  # the paper's target, L1 - L2
    frac_better2 = float(((cache["l1"] - cache["l2"]) > 0).float().mean())
    naive = fit_router(cache, paper, kind="naive", epochs=30)
    offset = fit_router(cache, paper, kind="adaptive_offset", epochs=30)
    if frac_better2 > 0.5:
        assert naive.history["mean_phi"].iloc[-1] > offset.history["mean_phi"].iloc[-1]
    else:
        assert naive.history["mean_phi"].iloc[-1] < offset.history["mean_phi"].iloc[-1]


# ---------------------------------------------------------------------- resume after a real kill
def _cfg_file(tmp_path: Path, epochs: int) -> Path:
    cfg = yaml.safe_load((Path(__file__).parents[1] / "dynamicdet" / "configs" / "smoke.yaml").read_text())
    cfg["train"]["epochs"] = epochs
    cfg["data"]["name"] = "smoke"  # share the session's generated smoke dataset
    p = tmp_path / "resume.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _train_cmd(cfg_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dynamicdet.cli", "train", "--config", str(cfg_path), "--step", "1", *extra]


def _env(home: Path) -> dict:
    return {**os.environ, "DYNAMICDET_HOME": str(home), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(smoke_cfg, tmp_path):
    cfg_path = _cfg_file(tmp_path, epochs=4)
    cfg = load_config(cfg_path)
    # uninterrupted reference
    ref_home = tmp_path / "ref"
    subprocess.run(_train_cmd(cfg_path), env=_env(ref_home), check=True, capture_output=True)
    rel = run_dir(cfg).relative_to(Path(os.environ["DYNAMICDET_HOME"]))
    ref = read_checkpoint(ref_home / rel / "step1.pt")["model"]

    # interrupted run: SIGKILL as soon as the first epoch's checkpoint exists
    home = tmp_path / "killed"
    last = home / rel / "step1_last.pt"
    proc = subprocess.Popen(_train_cmd(cfg_path), env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (home / rel / "step1.pt").exists(), "the run finished before it could be killed"
    killed_at = read_checkpoint(last)["epoch"]
    assert 1 <= killed_at < cfg.train.epochs

    subprocess.run(_train_cmd(cfg_path, "--resume"), env=_env(home), check=True, capture_output=True)
    resumed = read_checkpoint(home / rel / "step1.pt")["model"]
    for k in ref:
        torch.testing.assert_close(resumed[k], ref[k], rtol=0, atol=0, msg=f"{k} differs after resume")
    metrics = pd.read_csv(home / rel / "step1_metrics.csv")
    assert list(metrics["epoch"]) == list(range(1, cfg.train.epochs + 1))


@pytest.mark.slow
def test_validation_every_n_epochs_keeps_the_metrics_csv_readable(smoke_cfg, tmp_path):
    """Epochs without validation log no AP columns; a later validated epoch adds them."""
    cfg_path = _cfg_file(tmp_path, epochs=3)
    raw = yaml.safe_load(cfg_path.read_text())
    raw["train"]["val_every"] = 2
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = load_config(cfg_path)
    train_step1(cfg, progress=False)
    metrics = pd.read_csv(run_dir(cfg) / "step1_metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3]
    validated = metrics["det1_AP"].notna().tolist()
    assert validated == [False, True, True]  # every 2nd epoch, and the last
    assert metrics.loc[[1, 2], "det2_AP"].between(0, 1).all() and metrics["time_s"].notna().all()


# ---------------------------------------------------------------------- DDP with 2 gloo processes
@pytest.mark.slow
def test_ddp_two_gloo_ranks_hold_identical_weights(smoke_cfg, tmp_path):
    cfg_path = _cfg_file(tmp_path, epochs=1)
    home = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29517",
        "-m",
        "dynamicdet.cli",
        "train",
        "--config",
        str(cfg_path),
        "--step",
        "1",
    ]
    env = {**_env(home), "DYNAMICDET_DUMP_RANK_WEIGHTS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = load_config(cfg_path)
    rel = run_dir(cfg).relative_to(Path(os.environ["DYNAMICDET_HOME"]))
    w0 = torch.load(home / rel / "rank0_weights.pt", weights_only=True)
    w1 = torch.load(home / rel / "rank1_weights.pt", weights_only=True)
    assert w0.keys() == w1.keys() and len(w0) > 100
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0, msg=f"{k} differs between ranks")
    assert (home / rel / "step1.pt").exists()


# ---------------------------------------------------------------------- gradient clipping (train.clip)
def _model_with_gradients(scale1: float, scale2: float):
    """A small dynamic model whose detector-1 and detector-2 gradients have norms ~scale1 and ~scale2."""

    torch.manual_seed(0)
    model = DynamicDetector("yolov8", "n", nc=2)
    groups = model.detector_groups()
    for name, scale in (("det1", scale1), ("det2", scale2)):
        for p in groups[name]:
            p.grad = torch.randn_like(p) * scale / 100
    return model, groups


def _norm(params) -> float:
    return float(torch.nn.utils.get_total_norm([p.grad for p in params]))


def test_per_detector_clipping_bounds_each_detectors_own_norm():

    model, groups = _model_with_gradients(3.0, 40.0)
    n1, n2 = _norm(groups["det1"]), _norm(groups["det2"])
    assert n1 > 10 and n2 > 10 and n2 > 5 * n1
    out = clip_gradients(model, "per_detector", max_norm=10.0)
    assert out["grad_norm_det1"] == pytest.approx(n1) and out["grad_norm_det2"] == pytest.approx(n2)
    assert out["clipped"] == 1
    # each detector is clipped to the limit on its own: detector 1 keeps its full step length
    assert _norm(groups["det1"]) == pytest.approx(10.0, rel=1e-4)
    assert _norm(groups["det2"]) == pytest.approx(10.0, rel=1e-4)


def test_joint_clipping_shares_one_step_length_and_none_leaves_gradients():

    model, groups = _model_with_gradients(3.0, 40.0)
    n1, n2 = _norm(groups["det1"]), _norm(groups["det2"])
    out = clip_gradients(model, "joint", max_norm=10.0)
    # ||g|| = sqrt(||g1||^2 + ||g2||^2), scaled as one vector to 10: detector 1 shrinks by the same factor as detector 2
    assert out["grad_norm"] == pytest.approx((n1**2 + n2**2) ** 0.5, rel=1e-4)
    assert _norm(groups["det1"]) + _norm(groups["det2"]) > 0
    assert (_norm(groups["det1"]) ** 2 + _norm(groups["det2"]) ** 2) ** 0.5 == pytest.approx(10.0, rel=1e-4)
    assert _norm(groups["det1"]) / n1 == pytest.approx(_norm(groups["det2"]) / n2, rel=1e-4)
    model, groups = _model_with_gradients(3.0, 40.0)
    before = [p.grad.clone() for p in groups["det1"]]
    out = clip_gradients(model, "none", max_norm=10.0)
    assert out["clipped"] == 0 and all(torch.equal(a, p.grad) for a, p in zip(before, groups["det1"], strict=True))


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant",
    [
        {"train": {"clip": "joint"}},
        {"train": {"clip": "none"}},
        {"train": {"clip": "joint", "detach_links": True}},
        {"train": {"clip": "per_detector", "detach_links": True}},
        {"model": {"dual": False}},
    ],
    ids=["joint", "no_clip", "joint+detach", "per_detector+detach", "static_yolo"],
)
def test_step1_variants_train_through_the_cli(smoke_cfg, tmp_path, variant):
    """Each step-1 ablation variant trains at smoke size through `dynamicdet train` and logs gradient norms."""
    raw = yaml.safe_load((Path(__file__).parents[1] / "dynamicdet" / "configs" / "smoke.yaml").read_text())
    raw["data"]["name"] = "smoke"
    raw["train"]["epochs"] = 1
    for section, values in variant.items():
        raw.setdefault(section, {}).update(values)
    cfg_path = tmp_path / "variant.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    home = tmp_path / "home"
    r = subprocess.run(_train_cmd(cfg_path), env=_env(home), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = load_config(cfg_path)
    rel = run_dir(cfg).relative_to(Path(os.environ["DYNAMICDET_HOME"]))
    metrics = pd.read_csv(home / rel / "step1_metrics.csv")
    norms = pd.read_csv(home / rel / "step1_grad_norms.csv")
    assert len(norms) >= 1 and (norms["grad_norm"] > 0).all()
    dual = cfg.model.dual
    assert ("grad_norm_det2" in norms) == dual and ("det2_AP" in metrics) == dual
    assert metrics["det1_AP"].between(0, 1).all()
    if cfg.train.clip == "none":
        assert (norms["clipped"] == 0).all()


# ---------------------------------------------------------------------- reproducibility
@pytest.mark.slow
def test_same_config_twice_gives_bit_identical_weights(smoke_cfg, tmp_path):
    """Two processes, same config and setup (2 threads, 2 dataloader workers): the same step-1 weights."""
    cfg_path = _cfg_file(tmp_path, epochs=2)
    raw = yaml.safe_load(cfg_path.read_text())
    raw["train"]["workers"] = 2  # the real configs load with workers; their seeding must not depend on timing
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = load_config(cfg_path)
    rel = run_dir(cfg).relative_to(Path(os.environ["DYNAMICDET_HOME"]))
    weights, setups = [], []
    for name in ("a", "b"):
        env = {**_env(tmp_path / name), "OMP_NUM_THREADS": "2"}
        subprocess.run(_train_cmd(cfg_path), env=env, check=True, capture_output=True)
        weights.append(read_checkpoint(tmp_path / name / rel / "step1.pt")["model"])
        setups.append(json.loads((tmp_path / name / rel / SETUP_FILE).read_text()))
    assert setups[0] == setups[1]
    assert setups[0]["torch_threads"] == 2 and setups[0]["dataloader_workers"] == 2
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), f"{k} differs between two runs of one config"


def test_reusing_a_finished_step1_trained_with_another_setup_warns_about_nothing(step2):
    """A cached model's setup is provenance, not news: a notebook run on it prints the same outputs whichever
    process trained the cache (strict nbval compares two executions)."""
    record = run_dir(step2) / SETUP_FILE
    saved = record.read_text()
    record.write_text(json.dumps({**json.loads(saved), "torch_threads": 99}))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert train_step1(step2, resume=True, progress=False) == run_dir(step2) / "step1.pt"
    finally:
        record.write_text(saved)


def test_a_run_resumed_with_another_setup_says_so(tmp_path):
    setup = {"torch_threads": 1, "interop_threads": 1, "dataloader_workers": 2, "world_size": 1}
    (tmp_path / SETUP_FILE).write_text(json.dumps(setup))
    assert check_setup(tmp_path, dict(setup), "resumed") == []
    with pytest.warns(UserWarning, match="torch_threads: run 1, now 2"):
        diff = check_setup(tmp_path, {**setup, "torch_threads": 2}, "resumed")
    assert diff == ["torch_threads: run 1, now 2"]
    assert check_setup(tmp_path / "nowhere", setup, "resumed") == []  # runs made before the record existed


def test_the_mosaic_buffer_starts_each_epoch_as_ultralytics_holds_it(smoke_cfg):
    """Loaded images drawn by the epoch's seed, no index twice: mosaic partners are not skewed to a fixed few."""
    from dynamicdet.data.coco import prepare_dataset
    from dynamicdet.data.loaders import build_dataset
    from dynamicdet.engine.step1 import reset_mosaic_buffer

    ds = build_dataset(prepare_dataset(smoke_cfg).data, "train", smoke_cfg.data.img_size, augment=True, batch=4)
    reset_mosaic_buffer(ds, seed=3)
    first = list(ds.buffer)
    # ultralytics' buffer holds one image fewer than its length (loading the last pops and unloads the first)
    assert len(first) == len(set(first)) == min(ds.max_buffer_length, ds.ni) - 1
    assert all(ds.ims[i] is not None for i in first)  # loaded: using one as a partner does not load it again
    reset_mosaic_buffer(ds, seed=3)
    assert list(ds.buffer) == first  # an epoch depends on (seed, epoch) only: resume stays exact
    reset_mosaic_buffer(ds, seed=4)
    assert list(ds.buffer) != first or ds.ni <= ds.max_buffer_length


@pytest.mark.slow
def test_in_loop_validation_leaves_step1_training_unchanged(smoke_cfg, tmp_path, monkeypatch):
    """Validating every epoch (our loop) or never (as ultralytics' trainer with val=False): the same weights."""
    from dynamicdet.experiments.static_models import static_config

    cfg = static_config(load_config("smoke", {"train": {"val_every": 1, "epochs": 2}}), "n")
    states, folders = [], []
    for validate in (True, False):
        monkeypatch.setenv("DYNAMICDET_HOME", str(tmp_path / str(validate)))
        weights = train_step1(cfg, progress=False, validate=validate)
        states.append(read_checkpoint(weights))
        folders.append(Path(weights).parent)
    assert pd.read_csv(folders[0] / "step1_metrics.csv")["det1_AP"].notna().all()  # it did validate
    for k, v in states[0]["model"].items():  # the trained (EMA) weights
        assert torch.equal(v, states[1]["model"][k]), f"{k} differs with in-loop validation"
