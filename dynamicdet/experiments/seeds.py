"""Seeds as a dimension: the YOLO reference trained for several seeds, and the claims with intervals.

A seed changes ``train.seed`` only (initialisation, shuffling and augmentation of step 1 and
of the static models; the data stay the same). Every stage is the pipeline's own cached
stage, keyed by the config with that seed, so the campaign is a queue of cached jobs
(:func:`campaign`, :mod:`dynamicdet.engine.jobs`) that any number of processes share and
that resumes where it stopped::

    # one worker per core, one torch thread each (the jobs are split between them by file locks)
    OMP_NUM_THREADS=1 python -m dynamicdet.experiments.seeds work --config standard --seeds 0 1 2 3 4 5 6 &
    OMP_NUM_THREADS=1 python -m dynamicdet.experiments.seeds work --config standard --seeds 0 1 2 3 4 5 6 &
    python -m dynamicdet.experiments.seeds tables --config standard --seeds 0 1 2 3 4 5 6   # quiet machine

Per seed: the joint model with the default router and with the paper's (``router: paper``),
the frontier's static models (``eval.static_scales`` by our step-1 loop; the last scale, the
far end, on the first ``--few`` seeds only) and, on the first ``--few`` seeds, yolov8n by
ultralytics' trainer (the trainer reference); on seed 0, the same at twice the epochs (convergence).
``tables`` writes, per seed, the tables the claims read into ``results/<config>/seeds/seed<k>/``,
one row per seed and model into ``results/<config>/seeds.csv``, and the scorecard over the
seeds into ``results/<config>/claims.{csv,md}`` (:func:`dynamicdet.evaluation.claims.write_claims`).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dynamicdet import paths
from dynamicdet.config import Config, load_config
from dynamicdet.data.synthetic import image_difficulty, image_table
from dynamicdet.engine.jobs import Job, work
from dynamicdet.engine.runs import REFERENCE_ROW, STATIC_ROW, STEP1, TRADEOFF
from dynamicdet.engine.step1 import SETUP_FILE
from dynamicdet.evaluation.claims import claims_table, to_markdown
from dynamicdet.evaluation.results import run_stamp
from dynamicdet.experiments.router_study import Capture
from dynamicdet.experiments.static_models import static_baselines, static_config, ultralytics_reference
from dynamicdet.experiments.tradeoffs import ONNX_COLUMN, cost_columns, frontier_by_cost, onnx_latency, tradeoff
from dynamicdet.experiments.trained import trained
from dynamicdet.experiments.variable_speed import latency_table, variable_speed_table
from dynamicdet.files import write_csv, write_json, write_text
from dynamicdet.metrics import interval, spearman, verdict

SEEDS = (0, 1, 2)


def seed_config(config: str, seed: int) -> Config:
    """``config`` with ``train.seed = seed`` (everything else as in the file)."""
    return load_config(config, {"train": {"seed": seed}})


def seed_folder(config: str, seed: int, out: Path | None = None) -> Path:
    """``<out>/seeds/seed<k>/`` (``out``: ``results/<config>/``): the tables of one seed that the claims read."""
    return (out or paths.results_dir(config)) / "seeds" / f"seed{seed}"


def _model_jobs(config: str, train: dict, tag: str, scales: list[str]) -> list[Job]:
    """The jobs of ``config`` with the ``train`` overrides: the joint model with the default router and with
    the paper's (the preset ``router: paper``; the same step 1), and the static ``scales``."""
    cfg = load_config(config, {"train": train})
    paper = load_config(config, {"train": train, "router": "paper"})
    jobs = [
        Job(f"{tag}-joint", lambda: tradeoff(trained(cfg, progress=False), progress=False), lambda: TRADEOFF.done(cfg)),
        Job(
            f"{tag}-paper-router",
            lambda: tradeoff(trained(paper, progress=False), progress=False),
            lambda: TRADEOFF.done(paper),
            ready=lambda: STEP1.done(cfg),  # step 1 is the joint job's: never train it twice at once
        ),
    ]
    for scale in scales:
        one = copy.deepcopy(cfg)
        one.eval.static_scales = [scale]
        jobs.append(
            Job(
                f"{tag}-static-{scale}",
                lambda one=one: static_baselines(one, progress=False),
                lambda one=one, scale=scale: STATIC_ROW.done(static_config(one, scale)),
            )
        )
    return jobs


def campaign(config: str, seeds: list[int], few: int = 3, longer: bool = True) -> list[Job]:
    """The seed runs of ``config`` as a queue of cached jobs (:func:`dynamicdet.engine.jobs.work`), seed by seed.

    Per seed: :func:`_model_jobs` with every static scale but the last (the far end of the frontier),
    which, like ultralytics' yolov8n (the trainer reference), trains on the first ``few`` seeds;
    ``longer``: then seed ``seeds[0]`` at twice the epochs (joint, both routers, the static scales but the last).
    """
    base = load_config(config)
    scales = base.eval.static_scales
    jobs = []
    for i, seed in enumerate(seeds):
        jobs += _model_jobs(config, {"seed": seed}, f"seed{seed}", scales if i < few else scales[:-1])
        if i < few:
            cfg = seed_config(config, seed)
            jobs.append(
                Job(
                    f"seed{seed}-ultralytics-n",
                    lambda cfg=cfg: ultralytics_reference(cfg, ["n"], progress=False),
                    lambda cfg=cfg: REFERENCE_ROW.done(cfg, model=f"{cfg.model.family}n"),
                )
            )
    if longer:  # twice the epochs, mosaic closed for twice as many
        t = {"seed": seeds[0], "epochs": 2 * base.train.epochs, "close_mosaic": 2 * base.train.close_mosaic}
        jobs += _model_jobs(config, t, f"seed{seeds[0]}-2x", scales[:-1])
    return jobs


def seed_tables(
    config: str,
    seed: int,
    out: Path | None = None,
    timing: bool = True,
    progress: bool = False,
    timing_seed: int | None = None,
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
    ``timing=False`` leaves the latency columns out (their claims are then not testable).
    """
    cfg = seed_config(config, seed)
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
    sweep = res.sweep
    capture = sweep[sweep["k"].isin(cfg.eval.fractions)].pivot_table(index="router", columns="k", values="capture")
    capture.columns = [f"c({k:g})" for k in capture.columns]
    scores = tr.val_scores.set_index("image_id")
    tables = {
        "joint_training": pd.DataFrame(
            {
                "detector": ["detector 1 (B1 + H1)", "detector 2 (B1 -> B2 + H2)"],
                "AP": [res.detector1["AP"], res.detector2["AP"]],
            }
        ),
        "variable_speed": variable_speed_table(res, static, lat, cfg.eval.batch, onnx),
        "capture_ratio": capture.reset_index(),
        "router_variants": pd.DataFrame(
            {"router": ["default"], "overrides": ["{}"], "val phi > 0.5": [float((scores["logit"] > 0).mean())]}
        ),
    }
    cap = Capture(tr)
    diff = image_difficulty(tr.info.gt_json["val"], cap.ids)
    if diff is not None:  # detector 2's per-image AP gain against the generator's difficulty
        tables["gain_difficulty"] = pd.DataFrame({"Spearman(AP gain, difficulty)": [spearman(cap.ap_gain, diff)]})
    if cfg.data.source == "synthetic":
        df = scores.join(image_table(tr.info.root, "val"), how="left")
        cols = [c for c in ("difficulty", "n_objects", "mean_rel_area", "occlusion", "clutter") if c in df]
        corr = df[["logit", *cols]].corr(method="spearman")["logit"].drop("logit").rename("Spearman corr. with phi")
        tables["difficulty_correlation"] = corr.rename_axis("attribute").reset_index()
    setup = STEP1.path(cfg) / SETUP_FILE
    if setup.exists():
        tables["step1_setup"] = pd.json_normalize(json.loads(setup.read_text()), max_level=0).astype(str)
    folder = seed_folder(config, seed, out)
    for name, df in tables.items():
        write_csv(df, folder / f"{name}.csv")
    return tables


def seeds_table(config: str, seeds: tuple[int, ...] = SEEDS, out: Path | None = None) -> pd.DataFrame:
    """One row per seed and model from the seeds' folders: AP, GFLOPs, latencies, and the routers' c(0.5)."""
    rows = []
    for seed in seeds:
        folder = seed_folder(config, seed, out)
        vs = pd.read_csv(folder / "variable_speed.csv")
        cap = pd.read_csv(folder / "capture_ratio.csv").set_index("router")
        ck = [c for c in cap.columns if c.startswith("c(")]
        for _, r in vs.iterrows():
            row = {"seed": seed, **{c: r[c] for c in vs.columns if c not in ("k_measured",)}}
            if r["model"] == "Dy /50":  # the routers' c(0.5), on the row they describe
                row.update({f"{c} {name}": cap.loc[name, c] for name in cap.index for c in ck if c == "c(0.5)"})
            rows.append(row)
    return pd.DataFrame(rows)


def _optional(folder: Path, stem: str, column: str, row: str | None = None) -> float:
    path = folder / f"{stem}.csv"
    if not path.exists():
        return math.nan
    df = pd.read_csv(path)
    if row is not None:
        df = df.set_index(df.columns[0])
        return float(df.loc[row, column]) if row in df.index else math.nan
    return float(df[column].iloc[0])


def run_summary(folder: Path) -> dict:
    """The quantities a run is judged by, from the tables in its results ``folder``.

    Both detectors' AP and detector 2's lead, detector 1 against the static model of its
    architecture (NaN without one), the routers' c(0.5), Spearman of the router's score with the
    generator's difficulty and of detector 2's per-image AP gain with it (NaN when a table is missing).
    """
    ap = pd.read_csv(folder / "joint_training.csv")["AP"]
    vs = pd.read_csv(folder / "variable_speed.csv").set_index("model")
    same = [
        m for m in vs.index if m.endswith("(static)") and abs(vs.loc[m, "GFLOPs"] - vs.loc["Dy /0", "GFLOPs"]) < 0.01
    ]
    return {
        "AP det1": ap.iloc[0],
        "AP det2": ap.iloc[1],
        "AP det2 - det1": ap.iloc[1] - ap.iloc[0],
        "AP det1 - static": ap.iloc[0] - vs.loc[same[0], "AP"] if same else math.nan,
        **{
            f"c(0.5) {r}": _optional(folder, "capture_ratio", "c(0.5)", r)
            for r in ("learned", "random", "confidence escalation")
        },
        "spearman phi~difficulty": _optional(folder, "difficulty_correlation", "Spearman corr. with phi", "difficulty"),
        "spearman gain~difficulty": _gain_difficulty(folder),
    }


def _gain_difficulty(folder: Path) -> float:
    """Spearman of detector 2's per-image AP gain with the generator's difficulty (NaN without it).

    A seed run writes it as ``gain_difficulty.csv`` (:func:`seed_tables`); a pipeline run has it in
    notebook 04's ``router_signals.csv`` (row ``generator: difficulty``: the same two vectors).
    """
    if (folder / "gain_difficulty.csv").exists():
        return _optional(folder, "gain_difficulty", "Spearman(AP gain, difficulty)")
    return _optional(folder, "router_signals", "spearman with AP gain", "generator: difficulty")


def seeds_summary(config: str, seeds: tuple[int, ...] = SEEDS, out: Path | None = None) -> pd.DataFrame:
    """One row per seed of :func:`run_summary`, then their mean, std and 95% interval."""
    df = pd.DataFrame([{"seed": str(s), **run_summary(seed_folder(config, s, out))} for s in seeds])
    stats = {name: interval(df[name].to_numpy(float)) for name in df.columns[1:]}
    for i, label in enumerate(("mean", "std", "ci95 lo", "ci95 hi")):
        df.loc[len(df)] = {"seed": label, **{name: v[i] for name, v in stats.items()}}
    return df


def seeds_frontier(config: str, seeds: tuple[int, ...] = SEEDS, out: Path | None = None) -> pd.DataFrame:
    """Each Dy /k's gap to the static frontier in every cost measure, over the seeds.

    Per seed, :func:`~.tradeoffs.frontier_by_cost` on its ``variable_speed.csv`` (gap = AP - the
    frontier's AP at the point's cost, >= 0: on or above it); then the mean, std, Student-t 95%
    interval and the interval's verdict (:func:`~dynamicdet.metrics.verdict`; "not testable" when
    a seed has no gap, e.g. one static model or no such cost column).

    Returns:
        One row per cost and Dy row: ``cost``, ``model``, ``gap seed <k>`` per seed, ``mean``,
        ``std``, ``ci95 lo``, ``ci95 hi``, ``verdict``, ``checks passed`` (the latency costs:
        every seed's latency table marked that row and the static models consistent).
    """
    batch = load_config(config).eval.batch
    flags = {
        cost: "consistent_onnx" if col == ONNX_COLUMN else "consistent" for cost, col in cost_columns(batch).items()
    }
    flags["GFLOPs"] = None  # counted, not timed
    gaps: dict[tuple[str, str], dict[int, float]] = {}
    checked: dict[tuple[str, str], bool] = {}
    for seed in seeds:
        vs = pd.read_csv(seed_folder(config, seed, out) / "variable_speed.csv")
        static_ok = vs[vs["model"].str.endswith("(static)")]
        for r in frontier_by_cost(vs, batch).itertuples(index=False):
            key = (r.cost, r.model)
            gaps.setdefault(key, {})[seed] = float(r.gap)
            flag = flags.get(r.cost)
            ok = True
            if flag is not None:
                ok = flag in vs and bool(vs.loc[vs["model"] == r.model, flag].all() and static_ok[flag].all())
            checked[key] = checked.get(key, True) and ok
    rows = []
    for (cost, model), by_seed in gaps.items():
        g = np.array([by_seed.get(s, math.nan) for s in seeds], dtype=float)
        testable = bool(np.isfinite(g).all())
        mean, sd, lo, hi = interval(g) if testable else (math.nan,) * 4
        rows.append(
            {
                "cost": cost,
                "model": model,
                **{f"gap seed {s}": v for s, v in zip(seeds, g, strict=True)},
                "mean": mean,
                "std": sd,
                "ci95 lo": lo,
                "ci95 hi": hi,
                "verdict": verdict(g) if testable else "not testable",
                "checks passed": checked[(cost, model)],
            }
        )
    return pd.DataFrame(rows)


def write_seed_results(
    config: str, seeds: tuple[int, ...] = SEEDS, out: Path | None = None, wall_s: float | None = None
) -> pd.DataFrame:
    """``<out>/seeds.{csv,md}``, ``seeds_summary.{csv,md}`` (:func:`seeds_summary`), ``seeds_frontier.{csv,md}``
    (:func:`seeds_frontier`), ``seeds_provenance.json`` and the scorecard over the seeds (``claims.{csv,md}``).

    ``out``: ``results/<config>/`` by default.
    """
    out = out or paths.results_dir(config)
    table = seeds_table(config, seeds, out)
    write_csv(table, out / "seeds.csv")
    write_text(table.to_markdown(index=False, floatfmt=".4g") + "\n", out / "seeds.md")
    summary = seeds_summary(config, seeds, out)
    write_csv(summary, out / "seeds_summary.csv")
    write_text(summary.to_markdown(index=False, floatfmt=".3f") + "\n", out / "seeds_summary.md")
    frontier = seeds_frontier(config, seeds, out)
    write_csv(frontier, out / "seeds_frontier.csv")
    write_text(frontier.to_markdown(index=False, floatfmt=".3f") + "\n", out / "seeds_frontier.md")
    record = {**run_stamp(load_config(config).to_dict()), "seeds": list(seeds), "tables_wall_s": wall_s}
    record["command"] = f"python -m dynamicdet.experiments.seeds tables --config {config}"
    write_json(record, out / "seeds_provenance.json", indent=2)
    df = claims_table([seed_folder(config, s, out) for s in seeds], base=out)
    write_csv(df, out / "claims.csv")
    write_text(to_markdown(df), out / "claims.md")
    return df


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("work", "tables"))
    ap.add_argument("--config", default="standard")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument(
        "--few", type=int, default=3, help="work: seeds that also train the far static scale and the reference"
    )
    ap.add_argument("--no-longer", action="store_true", help="work: leave out the first seed at twice the epochs")
    ap.add_argument("--out", type=Path, default=None, help="tables: results folder (default results/<config>)")
    ap.add_argument("--no-timing", action="store_true", help="tables: leave the latencies out (no quiet machine)")
    args = ap.parse_args(argv)
    if args.action == "work":
        jobs = campaign(args.config, args.seeds, few=args.few, longer=not args.no_longer)
        ran = work(jobs, paths.runs_dir() / "locks", log=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True))
        print(f"{len(ran)} job(s) run here; {sum(j.done() for j in jobs)} of {len(jobs)} done", flush=True)
        return 0
    t0 = time.time()
    for seed in args.seeds:
        seed_tables(args.config, seed, args.out, timing=not args.no_timing, timing_seed=args.seeds[0])
        print(f"seed {seed}: tables written to {seed_folder(args.config, seed, args.out)}", flush=True)
    df = write_seed_results(args.config, tuple(args.seeds), args.out, round(time.time() - t0, 1))
    print(to_markdown(df))
    return 0


if __name__ == "__main__":
    sys.exit(main())
