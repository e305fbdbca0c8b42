"""The tables of one trained seed, as the claims read them (``results/<config>/seeds/seed<k>/``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from dynamicdet.config import ROUTER_PRESETS, Config, load_config
from dynamicdet.data.synthetic import image_difficulty, image_table
from dynamicdet.engine.runs import REFERENCE_ROW, STATIC_ROW, STEP1, TRADEOFF
from dynamicdet.engine.step1 import SETUP_FILE
from dynamicdet.experiments.router_study import Capture
from dynamicdet.experiments.seeds.campaign import seed_config, seed_folder, train_overrides
from dynamicdet.experiments.static_models import static_baselines, static_config, ultralytics_reference
from dynamicdet.experiments.tradeoffs import onnx_latency, tradeoff
from dynamicdet.experiments.trained import trained
from dynamicdet.experiments.variable_speed import latency_table, variable_speed_table
from dynamicdet.files import write_csv
from dynamicdet.metrics import spearman


def seed_tables(
    config: str,
    seed: int,
    out: Path | None = None,
    timing: bool = True,
    progress: bool = False,
    timing_seed: int | None = None,
    longer: bool = False,
) -> dict[str, pd.DataFrame]:
    """The tables of one trained seed, written into :func:`seed_folder` (names as the notebooks write them).

    ``joint_training`` (AP of both detectors), ``variable_speed`` (the /k rows and the static
    models with every cost: GFLOPs, latency at batch 1 and ``eval.batch``, checked like
    notebook 05's), ``capture_ratio`` (learned, random, confidence escalation, oracles),
    ``router_variants`` (the default router's val share phi > 0.5 only),
    ``step1_setup`` (threads, workers, processes step 1 was trained with) and
    ``difficulty_correlation`` (Spearman of the router's score with the generator's attributes).
    Times the models (``timing``): run it on a quiet machine. Latency depends on the networks and the
    route fractions, not on the seed: every seed takes the latencies of ``timing_seed`` (default: its
    own), timed once per architecture and cost measure (Dy /k at that seed's thresholds).
    ``timing=False`` leaves the latency columns out (their claims are then not testable). ``longer``: the
    seed at twice the epochs (:func:`~.campaign.train_overrides`), into ``seed<k>-2x/``.
    """
    cfg = seed_config(config, seed, longer)
    tr = trained(cfg, progress=progress)
    res = tradeoff(tr, progress=progress)
    cfg.eval.static_scales = [s for s in cfg.eval.static_scales if STATIC_ROW.done(static_config(cfg, s))]
    static = static_baselines(cfg, progress=progress)
    if timing:
        tcfg = seed_config(config, seed if timing_seed is None else timing_seed)
        ttr = trained(tcfg, progress=progress)
        tres, tstatic = tradeoff(ttr, progress=progress), static_baselines(tcfg, progress=progress)
        lat = latency_table(ttr, tres, tstatic, progress=progress)
        onnx = onnx_latency(ttr, tres, tstatic)
    else:  # the table's rows without latencies
        lat, onnx = pd.DataFrame({"model": [*res.table["model"], *static["model"]], "latency_ms_b1": math.nan}), None
    default = _router_tables(cfg, tr, res, "learned", "default", "Spearman corr. with phi")
    tables = {
        "joint_training": pd.DataFrame(
            {
                "detector": ["detector 1 (B1 + H1)", "detector 2 (B1 -> B2 + H2)"],
                "AP": [res.detector1["AP"], res.detector2["AP"]],
            }
        ),
        "variable_speed": variable_speed_table(res, static, lat, cfg.eval.batch, onnx),
        **default,
    }
    paper = load_config(config, {"train": train_overrides(config, seed, longer), "router": "paper"})
    if TRADEOFF.done(paper):  # the paper's router on the same detectors (the campaign's paper-router job)
        ptr = trained(paper, progress=progress)
        other = _router_tables(paper, ptr, tradeoff(ptr, progress=progress), "paper's router", "paper", "")
        tables["capture_ratio"] = pd.concat(
            [tables["capture_ratio"], other["capture_ratio"].query('router == "paper\'s router"')], ignore_index=True
        )
        tables["router_variants"] = pd.concat([tables["router_variants"], other["router_variants"]], ignore_index=True)
        if "difficulty_correlation" in tables:
            col = other["difficulty_correlation"].set_index("attribute").iloc[:, 0]
            corr = tables["difficulty_correlation"]
            corr["Spearman corr. with phi (paper's router)"] = corr["attribute"].map(col)
    cap = Capture(tr)
    diff = image_difficulty(tr.info.gt_json["val"], cap.ids)
    if diff is not None:  # detector 2's per-image AP gain against the generator's difficulty
        tables["gain_difficulty"] = pd.DataFrame({"Spearman(AP gain, difficulty)": [spearman(cap.ap_gain, diff)]})
    tables["learning_curves"] = learning_curves(cfg)
    if REFERENCE_ROW.done(cfg, model=f"{cfg.model.family}n"):  # ultralytics' trainer on yolov8n (the first seeds)
        ref = ultralytics_reference(cfg, ["n"], progress=progress)
        tables["trainer_reference"] = ref[["model", "trainer", "AP", "epochs"]]
    setup = STEP1.path(cfg) / SETUP_FILE
    if setup.exists():
        tables["step1_setup"] = pd.json_normalize(json.loads(setup.read_text()), max_level=0).astype(str)
    folder = seed_folder(config, seed, out, longer)
    for name, df in tables.items():
        write_csv(df, folder / f"{name}.csv")
    return tables


AP_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
TRAINED = "trained on this seed"  # variable_speed.csv: False on a static row anchored from other seeds


def anchor_far_end(config: str, seeds: list[int], out: Path | None = None) -> list[str]:
    """Give every seed the far end of the frontier (the last of two or more ``eval.static_scales``, e.g.
    yolov8s, which the campaign trains on the first ``--few`` seeds only), so that the static models bracket
    Dy /0 ... /100 on every seed. Only the far end: every other static model is the seed's own or absent.

    The anchored row of a seed's ``variable_speed.csv`` takes the model's costs (the same on every seed:
    GFLOPs are counted, latencies timed once per architecture) and its AP columns averaged over every seed
    folder on disk that trained it (so a subset of ``seeds`` anchors alike); column ``trained on this seed``
    marks it False. Run after :func:`seed_tables` of every seed.

    Returns:
        ``"<model> -> seed<k>"`` for each row added.
    """
    cfg = load_config(config)
    if len(cfg.eval.static_scales) < 2:
        return []
    far = f"{cfg.model.family}{cfg.eval.static_scales[-1]} (static)"

    def own(t: pd.DataFrame) -> pd.DataFrame:  # the rows seed_tables wrote (an earlier anchor is redone)
        return (t[t[TRAINED].astype(str) != "False"] if TRAINED in t else t).assign(**{TRAINED: True})

    root = seed_folder(config, seeds[0], out).parent
    everywhere = [
        own(pd.read_csv(f / "variable_speed.csv")) for f in sorted(root.glob("seed*")) if f.name[4:].isdigit()
    ]
    have = [t[t["model"] == far] for t in everywhere if (t["model"] == far).any()]
    if not have:
        return []
    anchor = have[0].copy()
    for col in [c for c in AP_COLUMNS if c in anchor]:
        # the far end's AP: its mean over the seeds that trained it
        anchor[col] = float(pd.concat(h[col] for h in have).mean())
    anchor[TRAINED] = False
    added = []
    for seed in seeds:
        path = seed_folder(config, seed, out) / "variable_speed.csv"
        t = own(pd.read_csv(path))
        if not (t["model"] == far).any():
            t = pd.concat([t, anchor], ignore_index=True)
            added.append(f"{far} -> seed{seed}")
        write_csv(t, path)
    return added


def learning_curves(cfg: Config) -> pd.DataFrame:
    """Val AP per epoch of every model of a seed trained by our step-1 loop (its ``step1_metrics.csv``).

    Returns:
        Long table: ``model`` (``detector 1``, ``detector 2``, ``<family><scale> (static)``), ``epoch``,
        ``AP`` (epochs without a validation are left out).
    """
    runs = {"joint": STEP1.path(cfg)}
    for scale in cfg.eval.static_scales:
        s = static_config(cfg, scale)
        if STEP1.done(s):
            runs[f"{cfg.model.family}{scale} (static)"] = STEP1.path(s)
    rows = []
    for name, folder in runs.items():
        m = pd.read_csv(folder / "step1_metrics.csv")
        columns = {"det1_AP": "detector 1", "det2_AP": "detector 2"} if name == "joint" else {"det1_AP": name}
        for col, model in columns.items():
            if col in m:
                part = m[["epoch", col]].dropna().rename(columns={col: "AP"})
                rows.append(part.assign(model=model)[["model", "epoch", "AP"]])
    return pd.concat(rows, ignore_index=True)


def _router_tables(cfg: Config, tr, res, name: str, variant: str, spearman_column: str) -> dict[str, pd.DataFrame]:
    """One router's rows: ``capture_ratio`` (its sweep's c(k) as row ``name``, with the baselines' rows),
    ``router_variants`` (its val share of phi > 0.5, row ``variant``) and ``difficulty_correlation``
    (Spearman of its score with the generator's attributes, synthetic data only; column ``spearman_column``
    or the default's name)."""
    sweep = res.sweep.replace({"router": {"learned": name}})
    capture = sweep[sweep["k"].isin(cfg.eval.fractions)].pivot_table(index="router", columns="k", values="capture")
    capture.columns = [f"c({k:g})" for k in capture.columns]
    scores = tr.val_scores.set_index("image_id")
    overrides = json.dumps(ROUTER_PRESETS[variant], sort_keys=True) if variant in ROUTER_PRESETS else "{}"
    out = {
        "capture_ratio": capture.reset_index(),
        "router_variants": pd.DataFrame(
            {"router": [variant], "overrides": [overrides], "val phi > 0.5": [float((scores["logit"] > 0).mean())]}
        ),
    }
    if cfg.data.source == "synthetic":
        df = scores.join(image_table(tr.info.root, "val"), how="left")
        cols = [c for c in ("difficulty", "n_objects", "mean_rel_area", "occlusion", "clutter") if c in df]
        corr = df[["logit", *cols]].corr(method="spearman")["logit"].drop("logit")
        out["difficulty_correlation"] = (
            corr.rename(spearman_column or "Spearman corr. with phi").rename_axis("attribute").reset_index()
        )
    return out
