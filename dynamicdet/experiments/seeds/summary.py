"""Over the seeds: one row per seed and model, the per-seed summary, the frontier gaps and the scorecard."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from dynamicdet import paths
from dynamicdet.config import load_config
from dynamicdet.evaluation.claims import claims_table, to_markdown, with_budget
from dynamicdet.evaluation.results import run_stamp
from dynamicdet.experiments.seeds.campaign import SEEDS, seed_folder
from dynamicdet.experiments.tradeoffs import ONNX_COLUMN, cost_columns, frontier_by_cost
from dynamicdet.files import write_csv, write_json, write_text
from dynamicdet.metrics import interval, superiority


def seeds_table(config: str, seeds: tuple[int, ...] = SEEDS, out: Path | None = None) -> pd.DataFrame:
    """One row per seed and model from the seeds' folders: AP, GFLOPs, latencies, and the routers' c(0.5)."""
    rows = []
    for seed in seeds:
        folder = seed_folder(config, seed, out)
        vs = pd.read_csv(folder / "variable_speed.csv")
        cap = pd.read_csv(folder / "capture_ratio.csv").set_index("router")
        ck = [c for c in cap.columns if c.startswith("c(")]
        for _, r in vs.iterrows():
            row = {"seed": seed, **{c: r[c] for c in vs.columns}}  # k_measured: the fraction achieved beside k
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
    # a correlation's interval through Fisher's z stays inside [-1, 1] (SUMMARY_NOTE)
    stats = {
        name: interval(df[name].to_numpy(float), transform="fisher" if name.startswith("spearman") else None)
        for name in df.columns[1:]
    }
    for i, label in enumerate(("mean", "std", "ci95 lo", "ci95 hi")):
        df.loc[len(df)] = {"seed": label, **{name: v[i] for name, v in stats.items()}}
    return df


SUMMARY_NOTE = (
    "mean, std and Student-t 95% interval over the seeds; the Spearman correlations' interval through Fisher's z "
    "(z = atanh r), so it stays inside [-1, 1]; c(0.5) is a ratio with no bound."
)
FRONTIER_NOTE = (
    "gap = AP - the static frontier's AP at the point's cost (the frontier linear in cost; `(log cost)` columns: "
    "in log cost); mean, std and Student-t 95% interval over the seeds; bracketed: the point's cost lies between "
    "the static models' on every seed."
)


def seeds_frontier(config: str, seeds: tuple[int, ...] = SEEDS, out: Path | None = None) -> pd.DataFrame:
    """Each Dy /k's gap to the static frontier in every cost measure, over the seeds.

    Per seed, :func:`~.tradeoffs.frontier_by_cost` on its ``variable_speed.csv`` (gap = AP - the
    frontier's AP at the point's cost, >= 0: on or above it); then the mean, std, Student-t 95%
    interval and the interval's verdict (:func:`~dynamicdet.metrics.superiority`; the frontier interpolated
    linearly in cost and in log cost must agree; "not testable" when a seed has no gap, e.g. one static
    model or no such cost column).

    Returns:
        One row per cost and Dy row: ``cost``, ``model``, ``gap seed <k>`` per seed, ``mean``,
        ``std``, ``ci95 lo``, ``ci95 hi``, ``verdict``, ``checks passed`` (the latency costs:
        every seed's latency table marked that row and the static models consistent), ``bracketed`` (on every
        seed, the point's cost lies between the static models': its gap interpolates).
    """
    batch = load_config(config).eval.batch
    flags = {
        cost: "consistent_onnx" if col == ONNX_COLUMN else "consistent" for cost, col in cost_columns(batch).items()
    }
    flags["GFLOPs"] = None  # counted, not timed
    gaps: dict[tuple[str, str], dict[int, float]] = {}
    log_gaps: dict[tuple[str, str], dict[int, float]] = {}
    checked: dict[tuple[str, str], bool] = {}
    bracketed: dict[tuple[str, str], bool] = {}
    for seed in seeds:
        vs = pd.read_csv(seed_folder(config, seed, out) / "variable_speed.csv")
        static_ok = vs[vs["model"].str.endswith("(static)")]
        for r in frontier_by_cost(vs, batch).to_dict("records"):
            key = (r["cost"], r["model"])
            gaps.setdefault(key, {})[seed] = float(r["gap"])
            log_gaps.setdefault(key, {})[seed] = float(r["gap (log cost)"])
            flag = flags.get(r["cost"])
            ok = True
            if flag is not None:
                ok = flag in vs and bool(vs.loc[vs["model"] == r["model"], flag].all() and static_ok[flag].all())
            checked[key] = checked.get(key, True) and ok
            bracketed[key] = bracketed.get(key, True) and bool(r["bracketed"])
    rows = []
    for (cost, model), by_seed in gaps.items():
        g = np.array([by_seed.get(s, math.nan) for s in seeds], dtype=float)
        g_log = np.array([log_gaps[(cost, model)].get(s, math.nan) for s in seeds], dtype=float)
        testable = bool(np.isfinite(g).all())
        mean, sd, lo, hi = interval(g) if testable else (math.nan,) * 4
        _, _, lo_log, hi_log = interval(g_log) if testable else (math.nan,) * 4
        # a verdict needs the frontier interpolated linearly in cost and in log cost to agree
        linear, log = (superiority(x)[0] if testable else "not testable" for x in (g, g_log))
        rows.append(
            {
                "cost": cost,
                "model": model,
                **{f"gap seed {s}": v for s, v in zip(seeds, g, strict=True)},
                "mean": mean,
                "std": sd,
                "ci95 lo": lo,
                "ci95 hi": hi,
                "mean (log cost)": float(np.mean(g_log)) if testable else math.nan,
                "ci95 lo (log cost)": lo_log,
                "ci95 hi (log cost)": hi_log,
                "verdict": (
                    "not scored: outside the static models' cost range on some seed (the gap extrapolates)"
                    if testable and not bracketed[(cost, model)]
                    else linear
                    if linear == log
                    else f"not decided: linear in cost {linear}, in log cost {log}"
                ),
                "checks passed": checked[(cost, model)],
                "bracketed": bracketed[(cost, model)],
            }
        )
    return pd.DataFrame(rows)


LATE = 0.2  # convergence: the AP gained over the last 20% of epochs


def convergence(config: str, seeds: tuple[int, ...] = SEEDS, out: Path | None = None) -> pd.DataFrame:
    """How converged each model is: the AP it gained over the last :data:`LATE` of its epochs, per seed.

    From each seed's ``learning_curves.csv``: AP at the last epoch minus AP at the last validated epoch
    at or before ``(1 - LATE) * epochs`` (a model still learning gains > 0).

    Returns:
        One row per model: ``model``, ``epochs``, ``from epoch``, ``gain seed <k>`` per seed (NaN when the
        seed has no curve for it), ``mean``.
    """
    gains: dict[str, dict[int, float]] = {}
    span: dict[str, tuple[int, int]] = {}
    for seed in seeds:
        path = seed_folder(config, seed, out) / "learning_curves.csv"
        if not path.exists():
            continue
        for model, curve in pd.read_csv(path).groupby("model", sort=False):
            curve = curve.sort_values("epoch")
            last = int(curve["epoch"].iloc[-1])
            before = curve[curve["epoch"] <= round((1 - LATE) * last)]
            if before.empty:
                continue
            # gain = AP(E) - AP(e'), e' the last validated epoch <= (1 - LATE) E
            gains.setdefault(model, {})[seed] = float(curve["AP"].iloc[-1] - before["AP"].iloc[-1])
            span[model] = (last, int(before["epoch"].iloc[-1]))
    rows = []
    for model, by_seed in gains.items():
        g = [by_seed.get(s, math.nan) for s in seeds]
        rows.append(
            {
                "model": model,
                "epochs": span[model][0],
                "from epoch": span[model][1],
                **{f"gain seed {s}": v for s, v in zip(seeds, g, strict=True)},
                "mean": float(np.nanmean(g)),
            }
        )
    return pd.DataFrame(rows)


def gap_table(rows: list[dict]) -> pd.DataFrame:
    """Our step-1 loop against ultralytics' trainer on the same static model, one row per seed, then statistics.

    Args:
        rows: ``{"seed", "our loop", "ultralytics"}`` per seed (an AP may be NaN: that trainer's run is missing).

    Returns:
        The rows with ``ours - ultralytics``, then ``mean``, ``std``, ``ci95 lo``, ``ci95 hi``: Student-t per
        trainer; for the difference, the difference of the means and Welch's 95% interval (the two trainers'
        runs are independent samples: a seed number draws different random streams in each, so it pairs nothing).
    """
    from scipy import stats  # deferred like metrics.interval's

    cols = ["seed", "our loop", "ultralytics", "ours - ultralytics"]
    df = pd.DataFrame(rows, columns=cols[:3])
    df["ours - ultralytics"] = df["our loop"] - df["ultralytics"]
    ours, theirs = (df[c].dropna().to_numpy(float) for c in ("our loop", "ultralytics"))
    if min(len(ours), len(theirs)) >= 2:
        a, b = interval(ours), interval(theirs)
        welch = stats.ttest_ind(ours, theirs, equal_var=False).confidence_interval(0.95)
        diff = (a[0] - b[0], math.nan, float(welch.low), float(welch.high))
        for i, label in enumerate(("mean", "std", "ci95 lo", "ci95 hi")):
            df.loc[len(df)] = {"seed": label, "our loop": a[i], "ultralytics": b[i], "ours - ultralytics": diff[i]}
    return df[cols]


GAP_NOTE = (
    "Per trainer: mean, standard deviation and Student-t 95% interval over its seeds. ours - ultralytics: the "
    "difference of the means and Welch's 95% interval (the trainers' seeds are independent samples)."
)


def trainer_gap(config: str, seeds: tuple[int, ...] = SEEDS, out: Path | None = None) -> pd.DataFrame:
    """The same static model by our step-1 loop and by ultralytics' trainer, from the seed tables (:func:`gap_table`).

    From the seeds with a ``trainer_reference.csv``: the AP of ``<family>n (static)`` in ``variable_speed.csv``
    (our loop) and in the reference (ultralytics).
    """
    rows = []
    for seed in seeds:
        folder = seed_folder(config, seed, out)
        if not (folder / "trainer_reference.csv").exists():
            continue
        ref = pd.read_csv(folder / "trainer_reference.csv").iloc[0]
        ours = pd.read_csv(folder / "variable_speed.csv").set_index("model")
        name = str(ref["model"]).replace(" (static, ultralytics' trainer)", " (static)")
        if name in ours.index:
            rows.append({"seed": str(seed), "our loop": float(ours.loc[name, "AP"]), "ultralytics": float(ref["AP"])})
    return gap_table(rows)


def budget(config: str, seed: int, out: Path | None = None) -> pd.DataFrame | None:
    """Every claim on one seed at the config's epochs and at twice as many, side by side (None: no ``-2x`` tables).

    Returns:
        One row per claim: ``claim``, ``margin (E epochs)``, ``margin (2E epochs)`` (one run each: no verdict),
        ``sign differs`` (the budget turns the claim's margin around).
    """
    longer = seed_folder(config, seed, out, longer=True)
    if not longer.is_dir():
        return None
    epochs = load_config(config).train.epochs
    a, b = (claims_table([f]) for f in (seed_folder(config, seed, out), longer))
    df = pd.DataFrame(
        {
            "claim": a["claim"],
            f"margin ({epochs} epochs)": a["margin"],
            f"margin ({2 * epochs} epochs)": b["margin"],
        }
    )
    df["sign differs"] = a["margin"] * b["margin"] < 0
    return df


def write_seed_results(
    config: str, seeds: tuple[int, ...] = SEEDS, out: Path | None = None, wall_s: float | None = None
) -> pd.DataFrame:
    """``<out>/seeds.{csv,md}``, ``seeds_summary.{csv,md}`` (:func:`seeds_summary`), ``seeds_frontier.{csv,md}``
    (:func:`seeds_frontier`), ``seeds_provenance.json`` and the scorecard over the seeds (``claims.{csv,md}``).

    ``out``: ``results/<config>/`` by default.
    """
    out = out or paths.results_dir(config)
    for name, make, fmt in (
        ("seeds", seeds_table, ".4g"),
        ("seeds_summary", seeds_summary, ".3f"),
        ("seeds_frontier", seeds_frontier, ".3f"),
        ("trainer_gap", trainer_gap, ".4f"),
        ("convergence", convergence, ".3f"),
    ):
        table = make(config, seeds, out)
        write_csv(table, out / f"{name}.csv")
        note = {"trainer_gap": GAP_NOTE, "seeds_summary": SUMMARY_NOTE, "seeds_frontier": FRONTIER_NOTE}.get(name)
        note = f"\n{note}\n" if note else ""
        write_text(table.to_markdown(index=False, floatfmt=fmt) + "\n" + note, out / f"{name}.md")
    record = {**run_stamp(load_config(config).to_dict()), "seeds": list(seeds), "tables_wall_s": wall_s}
    record["command"] = (
        f"python -m dynamicdet.experiments.seeds tables --config {config} --seeds {' '.join(map(str, seeds))}"
    )
    write_json(record, out / "seeds_provenance.json", indent=2)
    folders = [seed_folder(config, s, out) for s in seeds]
    df = with_budget(claims_table(folders, base=out), folders)  # + where a margin changes sign at 2x epochs
    longer = budget(config, seeds[0], out)
    if longer is not None:  # every claim's margin on the first seed at both budgets (one run each)
        write_csv(longer, out / "budget.csv")
        write_text(longer.to_markdown(index=False, floatfmt="+.3f") + "\n", out / "budget.md")
    write_csv(df, out / "claims.csv")
    write_text(to_markdown(df), out / "claims.md")
    return df
