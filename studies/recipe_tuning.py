"""Tuning a config's recipe for its budget: one change per row, same data, seed and epochs.

Each row is the base config with one set of overrides (``{"train": {"optimizer": "AdamW"}}``),
trained by the ordinary entry points (:func:`~dynamicdet.experiments.trained.trained`: step 1
then step 2), so every row is a cached, resumable stage and rows that share step 1 (router
changes) reuse it. A row reports what the main job needs from a recipe:

- ``AP det1`` / ``AP det2``: COCO AP of both detectors on val (pycocotools);
- ``c(0.5) learned`` / ``random`` / ``conf. escalation`` / ``oracle AP gain``: the capture
  ratio c(k) = (AP(k) - AP_1) / (AP_2 - AP_1) at k = 0.5 of the trained router, of random
  routing (mean of ``eval.random_seeds`` draws), of confidence escalation and of the oracle
  that ranks by detector 2's per-image AP gain;
- ``spearman gain~difficulty``: Spearman of detector 2's per-image AP gain with the
  generator's difficulty (synthetic data: > 0 means detector 2 gains most on hard images);
- ``train min``: step-1 training time (validation excluded), from ``step1_metrics.csv``
  (a timing: comparable only between rows trained in the same conditions).

``python -m studies.recipe_tuning --config quick`` runs :data:`QUICK_ROWS` and
writes ``results/<config>_tuning/recipe_tuning.{csv,md}`` (each row appended as it finishes).
``--table workers --seeds 0 1 2`` runs :data:`WORKER_ROWS` once per seed into
``workers_seeds.{csv,md}`` and their mean and std per row into ``workers_seeds_summary.{csv,md}``.
``--claims img128_e20`` trains nothing: it scores the claims testable from that budget row's
seeds and sets them beside ``results/standard/claims.csv`` and the main job's runs
(:func:`seed_claims`, ``quick_vs_standard.{csv,md}``). Rows run side by side in other processes
(``--out <part>``, one torch thread each) join the table with ``--table budget --merge <part> ...``;
``--table budget --compare img128_e20 img128_e24`` sets one row against another over their seeds
(``budget_seeds_img128_e24_vs_img128_e20.{csv,md}``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time

import pandas as pd

from dynamicdet import paths
from dynamicdet.config import Config, load_config
from dynamicdet.data.synthetic import generate_from_config, image_difficulty
from dynamicdet.engine.runs import STEP1
from dynamicdet.evaluation.claims import C50_TOLERANCE, PAPER_C50
from dynamicdet.evaluation.results import merge_provenance, provenance, save_table
from dynamicdet.experiments.router_study import Capture
from dynamicdet.experiments.trained import route_detections, trained
from dynamicdet.metrics import interval, spearman, superiority
from dynamicdet.modeling import routing

# row -> (what changes, overrides of the quick config); every row names its whole step-1 recipe and
# image size, so the table reproduces whatever quick.yaml holds. Row "base" is ultralytics' SGD
# defaults at 8 epochs. These rows ran at 160 px (the image size before BUDGET_ROWS).
SGD8 = {"optimizer": "SGD", "lr0": 0.01, "epochs": 8, "batch": 16, "nbs": 16, "val_every": 1}
ADAMW = {**SGD8, "optimizer": "AdamW", "lr0": 0.004}
IMG160 = {"img_size": 160}
QUICK_ROWS: dict[str, tuple[str, dict]] = {
    "base": ("SGD lr0 0.01, 8 epochs", {"data": IMG160, "train": SGD8, "router": {"target": "l1"}}),
    "adamw_lr4": ("AdamW lr0 0.004", {"data": IMG160, "train": ADAMW, "router": {"target": "l1"}}),
    "adamw_lr4_gain": (
        "AdamW lr0 0.004, router target L1 - L2",
        {"data": IMG160, "train": ADAMW, "router": {"target": "gain"}},
    ),
    "adamw_lr4_b8": (
        "AdamW lr0 0.004, batch 8 (twice the steps)",
        {"data": IMG160, "train": {**ADAMW, "batch": 8, "nbs": 8}, "router": {"target": "l1"}},
    ),
    "adamw_lr4_e12": (
        "AdamW lr0 0.004, 12 epochs",
        {"data": IMG160, "train": {**ADAMW, "epochs": 12}, "router": {"target": "l1"}},
    ),
    "adamw_lr4_e12_gain": (
        "AdamW lr0 0.004, 12 epochs, router target L1 - L2",
        {"data": IMG160, "train": {**ADAMW, "epochs": 12}, "router": {"target": "gain"}},
    ),
}

# the dataloader lever of results/quick_tuning/step1_speed*.md (0 workers: faster beside 2 torch
# threads) over seeds: does reading the data in the main process change what the recipe learns?
QUICK160 = {"data": IMG160, "train": {"epochs": 12}}  # quick before BUDGET_ROWS: 160 px, 12 epochs
WORKER_ROWS: dict[str, tuple[str, dict]] = {
    "workers0": ("the config as it is (0 dataloader workers at quick)", QUICK160),
    "workers2": ("2 dataloader workers", {**QUICK160, "train": {"epochs": 12, "workers": 2}}),
}

# the training budget over seeds: smaller images buy more epochs for the same step-1 time
# (step time scales with pixels: 128 px is 0.64x of 160 px), which detector 2's lead needs most
IMG128 = {"img_size": 128, "name": "quick128"}  # its own dataset folder: the 160 px one stays as it is
BUDGET_ROWS: dict[str, tuple[str, dict]] = {
    "img160_e12": ("160 px, 12 epochs (quick before this table)", QUICK160),
    "img128_e16": ("128 px, 16 epochs (about 0.85x the step-1 time)", {"data": IMG128, "train": {"epochs": 16}}),
    "img128_e20": ("128 px, 20 epochs (about 1.07x the step-1 time)", {"data": IMG128, "train": {"epochs": 20}}),
    "img128_e24": ("128 px, 24 epochs (about 1.28x the step-1 time)", {"data": IMG128, "train": {"epochs": 24}}),
    "img128_e20_gain": (
        "128 px, 20 epochs, router target L1 - L2",
        {"data": IMG128, "train": {"epochs": 20}, "router": {"target": "gain"}},
    ),
}
TABLES = {
    "recipe": ("recipe_tuning", QUICK_ROWS),
    "workers": ("workers_seeds", WORKER_ROWS),
    "budget": ("budget_seeds", BUDGET_ROWS),
}


def with_seeds(rows: dict[str, tuple[str, dict]], seeds: list[int]) -> dict[str, tuple[str, dict]]:
    """Each row once per seed: ``"<row> seed<k>"`` with ``train.seed = k`` added to its overrides."""
    out = {}
    for name, (change, overrides) in rows.items():
        for k in seeds:
            seeded = {**overrides, "train": {**overrides.get("train", {}), "seed": k}}
            out[f"{name} seed{k}"] = (f"{change}, seed {k}", seeded)
    return out


SUMMARY_COLUMNS = (
    "AP det1",
    "AP det2",
    "AP det2 - det1",
    "c(0.5) learned",
    "c(0.5) random",
    "c(0.5) conf. escalation",
    "spearman gain~difficulty",
)


def seed_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of :func:`with_seeds` (``"<row> seed<k>"``) over their seeds, each row against the first.

    Per row: the mean and std of :data:`SUMMARY_COLUMNS` over its seeds; per row after the
    first: the per-seed difference from the first row (same seed, one change), its mean and
    Student-t 95% interval (:func:`~dynamicdet.metrics.interval`).

    Returns:
        Columns ``row``, ``statistic``, ``seeds`` and :data:`SUMMARY_COLUMNS`.
    """
    parts = df["row"].str.extract(r"^(?P<row>.*) seed(?P<seed>\d+)$")
    if parts.isna().any().any():
        raise ValueError(f"seed_summary: rows must be named '<row> seed<k>', got {list(df['row'])}")
    cols = [c for c in SUMMARY_COLUMNS if c in df]
    values = df[cols].set_index([parts["row"], parts["seed"].astype(int)])
    names = list(dict.fromkeys(parts["row"]))
    ref = values.loc[names[0]]
    out = []
    for name in names:
        v = values.loc[name]
        out.append({"row": name, "statistic": "mean", "seeds": len(v), **v.mean().to_dict()})
        out.append({"row": name, "statistic": "std", "seeds": len(v), **v.std().to_dict()})
        if name == names[0]:
            continue
        diff = (v - ref).dropna(how="all")  # the seeds both rows have
        stats = {c: interval(diff[c].to_numpy(float)) for c in cols}
        label = f"{name} - {names[0]}"
        for i, stat in ((0, "mean"), (2, "ci95 lo"), (3, "ci95 hi")):
            out.append({"row": label, "statistic": stat, "seeds": len(diff), **{c: stats[c][i] for c in cols}})
    return pd.DataFrame(out)


# claim of dynamicdet.evaluation.claims -> its per-seed margin from a budget_seeds row (same bars as claims.py)
SEED_CLAIMS = {
    "detector 2 beats detector 1": lambda d: d["AP det2 - det1"],
    "the router beats random routing at /50": lambda d: d["c(0.5) learned"] - d["c(0.5) random"],
    "the router beats confidence escalation at /50": lambda d: d["c(0.5) learned"] - d["c(0.5) conf. escalation"],
}


def seed_claims(seeds: pd.DataFrame, row: str, standard: pd.DataFrame, main_job: list[dict]) -> pd.DataFrame:
    """The claims testable at both sizes: the quick verdicts beside the standard config's.

    Args:
        seeds: ``budget_seeds.csv`` (rows ``"<row> seed<k>"``).
        row: the row that is the quick recipe (``img128_e20``).
        standard: ``results/standard/claims.csv`` (over its seeds).
        main_job: ``results/main_job.json`` (each fresh-clone run's scorecard, one run each; a
            column ``main job <row>`` per run that recorded one).

    Returns:
        One row per claim the standard scorecard tests: ``quick seeds`` (the margin's mean and
        Student-t 95% interval over ``row``'s seeds, for :data:`SEED_CLAIMS` and c(0.5) against
        the paper's 0.76), its verdict, the verdict of each main-job run, the standard margin
        and verdict, and ``agree`` (the quick seeds' verdict, else the main job's, against the
        standard one; empty where either side is not testable).
    """
    claims = {**SEED_CLAIMS, "/50 keeps about three quarters of detector 2's gain": None}
    d = seeds[seeds["row"].str.fullmatch(rf"{row} seed\d+")]
    if d.empty:
        raise ValueError(f"seed_claims: no rows '{row} seed<k>' in the seeds table ({sorted(set(seeds['row']))})")
    out = []
    for _, s in standard.iterrows():
        name, margin = s["claim"], None
        if name in SEED_CLAIMS:
            margin = SEED_CLAIMS[name](d).to_numpy(float)
        elif name in claims:  # the paper's c(0.5) = 0.76 less the tolerance of claims.py
            margin = (d["c(0.5) learned"] - (PAPER_C50 - C50_TOLERANCE)).to_numpy(float)
        r = {"claim": name, "quick seeds": "", "quick verdict": ""}
        if margin is not None:
            mean, _, lo, hi = interval(margin)
            r["quick seeds"] = f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"
            r["quick verdict"] = superiority(margin)[0]
        for i, run in enumerate(main_job):
            if not run.get("claims"):  # a run recorded before the scorecard was kept
                continue
            got = {c["claim"]: c for c in run.get("claims", [])}.get(name)
            r[f"main job {i + 1}"] = "" if got is None else str(got["verdict"]).split(":")[0]
        lo, hi = s.get("ci95 lo", math.nan), s.get("ci95 hi", math.nan)
        band = "" if pd.isna(lo) else f" [{lo:+.3f}, {hi:+.3f}]"
        r["standard"] = "" if pd.isna(s["margin"]) else f"{s['margin']:+.3f}{band}"
        r["standard verdict"] = str(s["verdict"]).split(":")[0]
        jobs = [r[k] for k in r if k.startswith("main job") and r[k]]
        quick = r["quick verdict"] or (jobs[-1] if jobs else "")
        testable = quick and quick != "not testable" and r["standard verdict"] != "not testable"
        r["agree"] = ("yes" if quick == r["standard verdict"] else "no") if testable else ""
        out.append(r)
    return pd.DataFrame(out)


def merge_parts(out: str, parts: list[str], name: str, rows: dict[str, tuple[str, dict]]) -> pd.DataFrame:
    """Fold the tables of runs made side by side into ``results/<out>/<name>.csv`` and its summary.

    Rows run in separate processes (one torch thread each, ``--out <part>``) write their own
    ``results/<part>/<name>.csv``; this adds their rows to ``out``'s (a row of the same name is
    replaced), orders them as ``rows`` (the table's rows, each over its seeds), rewrites the seed
    summary, keeps each part's provenance under ``parts`` in ``out``'s and deletes the part folders.
    Nothing is trained.
    """
    root = paths.results_dir()
    base = root / out / f"{name}.csv"
    tables = [pd.read_csv(base)] if base.exists() else []
    records = {}
    for part in parts:
        path = root / part / f"{name}.csv"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no {name} table in part {part!r} (run it with --out {part})")
        tables.append(pd.read_csv(path))
        prov = root / part / "provenance.json"
        records[f"{name} {part}"] = json.loads(prov.read_text()) if prov.exists() else {}
    df = pd.concat(tables, ignore_index=True).drop_duplicates("row", keep="last")
    order = {k: i for i, k in enumerate(rows)}
    base_row = df["row"].str.replace(r" seed\d+$", "", regex=True)
    unknown = sorted(set(base_row) - set(order))
    if unknown:
        raise ValueError(f"merge: rows {unknown} are not in the table ({sorted(order)})")
    df = df.assign(_o=base_row.map(order)).sort_values(["_o", "row"], kind="stable").drop(columns="_o")
    df = df.reset_index(drop=True)
    save_table(df, name, out)
    save_table(seed_summary(df), f"{name}_summary", out, floatfmt=".3f")
    merge_provenance(out, {"parts": records})
    for part in parts:
        shutil.rmtree(root / part)
    return df


def apply(base: Config, overrides: dict) -> Config:
    """A copy of ``base`` with ``{section: {field: value}}`` overrides (unknown field: clear error)."""
    cfg = copy.deepcopy(base)
    for section, values in overrides.items():
        part = getattr(cfg, section, None)
        if part is None:
            raise ValueError(f"overrides: {section!r} is not a config section")
        for k, v in values.items():
            if not hasattr(part, k):
                raise ValueError(f"overrides: {section}.{k} is not a config field")
            setattr(part, k, v)
    return cfg


def recipe_row(cfg: Config, progress: bool = False) -> dict:
    """Train (or reuse) one recipe and measure it (see the module docstring for the columns).

    A synthetic dataset is (re)generated for the row first: rows of other sizes share a folder name.
    """
    if cfg.data.source == "synthetic":
        generate_from_config(cfg, progress=False)
    t = trained(cfg, progress=progress)
    cap = Capture(t)
    dets1, _ = route_detections(t, progress=False)
    learned = t.val_scores.set_index("image_id").loc[cap.ids, "logit"].to_numpy()
    conf = routing.confidence_escalation_score(dets1, cap.ids)
    diff = image_difficulty(t.info.gt_json["val"], cap.ids)
    metrics = pd.read_csv(STEP1.path(cfg) / "step1_metrics.csv")
    return {
        "AP det1": cap.ap1,
        "AP det2": cap.ap2,
        "AP det2 - det1": cap.ap2 - cap.ap1,
        "c(0.5) learned": cap.of(learned)["c(0.5)"],
        "c(0.5) random": cap.random(cfg.eval.random_seeds)["c(0.5)"],
        "c(0.5) conf. escalation": cap.of(conf)["c(0.5)"],
        "c(0.5) oracle AP gain": cap.of(cap.ap_gain)["c(0.5)"],
        "spearman gain~difficulty": spearman(cap.ap_gain, diff) if diff is not None else float("nan"),
        "train min": float(metrics["time_s"].sum() / 60),
        "run": STEP1.path(cfg).name,
    }


def tuning_table(
    base: str | Config,
    rows: dict[str, tuple[str, dict]],
    out: str | None = None,
    progress: bool = True,
    name: str = "recipe_tuning",
) -> pd.DataFrame:
    """Every row of ``rows`` on ``base`` (see :func:`recipe_row`).

    Saved as ``results/<out>/<name>.{csv,md}`` after each row when ``out`` is set.
    """
    base_cfg = base if isinstance(base, Config) else load_config(base)
    table = []
    start = time.time()
    for row_name, (change, overrides) in rows.items():
        t0 = time.time()
        row = {"row": row_name, "change": change, "overrides": json.dumps(overrides, sort_keys=True)}
        row.update(recipe_row(apply(base_cfg, overrides), progress=progress))
        row["wall min"] = (time.time() - t0) / 60  # this call's time (0 when every stage was cached)
        table.append(row)
        df = pd.DataFrame(table)
        if out:
            save_table(df, name, out)
        if progress:
            print(df.drop(columns=["overrides", "run"]).tail(1).to_string(index=False, float_format="%.3f"), flush=True)
    df = pd.DataFrame(table)
    if out:
        record = {"rows": {k: v[1] for k, v in rows.items()}, "wall_min": (time.time() - start) / 60}
        provenance(out, base_cfg.to_dict(), {name: record})
    return df


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="quick")
    p.add_argument(
        "--table",
        choices=sorted(TABLES),
        default="recipe",
        help="recipe: QUICK_ROWS; workers: WORKER_ROWS; budget: BUDGET_ROWS",
    )
    p.add_argument("--rows", nargs="*", help="row names of the table (default: all)")
    p.add_argument("--seeds", nargs="*", type=int, help="run every row once per seed (train.seed)")
    p.add_argument("--out", default="", help="results folder (default <config>_tuning)")
    p.add_argument(
        "--claims",
        metavar="ROW",
        help="no training: the claims of the budget table's ROW (its seeds) beside results/standard/claims.csv "
        "and the main job's runs -> <out>/quick_vs_standard.{csv,md}",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="PART",
        help="no training: add the --table's rows of results/<PART>/ (runs made side by side with --out PART) "
        "to <out>'s table, rewrite its summary and delete the part folders",
    )
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("FIRST", "SECOND"),
        help="no training: SECOND against FIRST over their seeds (paired differences, Student-t 95%% interval) "
        "-> <out>/<table>_SECOND_vs_FIRST.{csv,md}",
    )
    a = p.parse_args(argv)
    out = a.out or f"{a.config}_tuning"
    if a.claims:
        root = paths.results_dir()
        runs = root / "main_job.json"
        table = seed_claims(
            pd.read_csv(root / out / "budget_seeds.csv"),
            a.claims,
            pd.read_csv(root / "standard" / "claims.csv"),
            json.loads(runs.read_text()) if runs.exists() else [],
        )
        save_table(table, "quick_vs_standard", out)
        print(table.to_string(index=False))
        return
    name, table_rows = TABLES[a.table]
    if a.compare:
        df = pd.read_csv(paths.results_dir() / out / f"{name}.csv")
        first, second = a.compare
        parts = [df[df["row"].str.fullmatch(rf"{row} seed\d+")] for row in (first, second)]
        if any(part.empty for part in parts):
            p.error(f"--compare: rows '{first} seed<k>' and '{second} seed<k>' must both be in {out}/{name}.csv")
        summary = seed_summary(pd.concat(parts))  # the first row is the reference
        save_table(summary, f"{name}_{second}_vs_{first}", out, floatfmt=".3f")
        print(summary.to_string(index=False, float_format="%.3f"))
        return
    if a.merge:
        df = merge_parts(out, a.merge, name, table_rows)
        print(df.drop(columns=["overrides", "run"]).to_string(index=False, float_format="%.3f"))
        return
    unknown = set(a.rows or []) - set(table_rows)
    if unknown:
        p.error(f"--rows: {sorted(unknown)} not in the {a.table} table ({sorted(table_rows)})")
    rows = {k: v for k, v in table_rows.items() if not a.rows or k in a.rows}
    if a.seeds:
        rows = with_seeds(rows, a.seeds)
    df = tuning_table(a.config, rows, out=out, name=name)
    print(df.drop(columns=["overrides", "run"]).to_string(index=False, float_format="%.3f"))
    if a.seeds:
        summary = seed_summary(df)
        save_table(summary, f"{name}_summary", out, floatfmt=".3f")
        print(summary.to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main()
