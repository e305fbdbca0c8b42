"""The main job as a newcomer runs it: a fresh clone, ``make reproduce``, its wall time and what it shows.

Usage::

    python -m studies.main_job [--config quick]          # on a quiet machine; run it twice to see the spread
    python -m studies.main_job --config smoke --venv .venv --args=--no-notebooks   # smoke: reuse an install

Clones the repository's committed ``HEAD`` into a temporary folder and runs, there, ``make venv``
(the install, timed; pip's cache on this machine makes it faster than on a machine that never
installed) and ``make reproduce CONFIG=<config>`` (timed), with the training runs, data and
results inside the clone (``DYNAMICDET_*`` unset: nothing cached from earlier runs). ``--venv``
links an installed environment into the clone instead of installing (the install is then not
timed). The clone is removed at the end (``--keep`` keeps it).

Each run appends one row to ``results/main_job.csv``: the date, git sha, the machine's load
average before the run, the install, pipeline and total minutes, and the run's quantities
(:func:`dynamicdet.experiments.seeds.run_summary`: both detectors' AP, the routers' c(0.5),
Spearman of detector 2's per-image gain with difficulty) plus whether its latency table passed
its checks. ``results/main_job.md`` shows every row and, for the ``quick`` config, each run
against the main job's goals (:data:`GOALS`); ``results/main_job.json`` keeps each run's
stage and notebook times (from the clone's ``provenance.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from dynamicdet import paths
from dynamicdet.evaluation.speed import environment
from dynamicdet.experiments.seeds import run_summary
from dynamicdet.files import write_csv, write_json, write_text

NAME = "main_job"
# The main job's goals (quick): a fresh clone on a quiet machine, install included.
# A goal returns None where the run cannot test it (the wall time of a run that reused an install).
GOALS: dict[str, Callable[[dict], bool | None]] = {
    "wall time <= 20 min": lambda r: None if pd.isna(r["install min"]) else r["total min"] <= 20.0,
    "AP det1 >= 0.30": lambda r: r["AP det1"] >= 0.30,
    "AP det2 - det1 >= 0.03": lambda r: r["AP det2 - det1"] >= 0.03,
    "c(0.5) learned >= random + 0.15": lambda r: r["c(0.5) learned"] >= r["c(0.5) random"] + 0.15,
    "c(0.5) learned >= confidence escalation": lambda r: r["c(0.5) learned"] >= r["c(0.5) confidence escalation"],
    "spearman gain~difficulty > 0": lambda r: r["spearman gain~difficulty"] > 0,
    "latency table consistent": lambda r: bool(r["latency consistent"]),
}
GOALS_CONFIG = "quick"
CLAIM_COLUMNS = ("claim", "this run", "margin", "verdict")  # kept per run in main_job.json


def _run(cmd: list[str], cwd: Path, env: dict, log: Path) -> float:
    """Run ``cmd`` in ``cwd`` with its output to ``log``; its wall time in seconds (clear error on failure)."""
    t0 = time.time()
    with log.open("a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        rc = subprocess.call(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{shlex.join(cmd)} failed (exit {rc}) in {cwd}; the end of {log}:\n{tail}")
    return time.time() - t0


def _clean_env(clone: Path) -> dict:
    """The environment of a newcomer's shell: no project folders moved, no thread count forced."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNAMICDET_") and k != "OMP_NUM_THREADS"}
    # a linked venv's editable install points at another checkout: the clone's package comes first
    # (inherited by the notebooks' kernels)
    env["PYTHONPATH"] = str(clone)
    return env


def time_main_job(config: str, venv: Path | None, args: str, keep: bool, progress: bool = True) -> dict:
    """One fresh-clone ``make reproduce``: its times and quantities (one row of ``main_job.csv``)."""
    source = paths.REPO_ROOT
    status = ["git", "status", "--porcelain", "--untracked-files=no"]
    if subprocess.run(status, cwd=source, capture_output=True, text=True).stdout.strip():
        print("main_job: uncommitted changes are not part of the clone (it runs the committed HEAD)", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="dynamicdet-main-job-"))
    clone, log = tmp / "repo", tmp / "main_job.log"
    load = os.getloadavg()[0]
    try:
        subprocess.run(["git", "clone", "--quiet", str(source), str(clone)], check=True)
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
        env = _clean_env(clone)
        make = ["make", f"CONFIG={config}"] + ([f"ARGS={args}"] if args else [])
        if venv is None:
            install_s = _run(["make", "venv"], clone, env, log)
        else:
            (clone / ".venv").symlink_to(venv.resolve(), target_is_directory=True)
            make += ["-o", ".venv/.installed"]  # never reinstall into the linked environment
            install_s = float("nan")
        if progress:
            print(f"main_job: {shlex.join(make + ['reproduce'])} in {clone} (log: {log})", flush=True)
        pipeline_s = _run(make + ["reproduce"], clone, env, log)
        out = clone / "results" / config
        vs = pd.read_csv(out / "variable_speed.csv")
        consistent = bool(vs["consistent"].all()) if "consistent" in vs else float("nan")
        prov = json.loads((out / "provenance.json").read_text())
        total_s = pipeline_s + (install_s if venv is None else 0.0)
        row = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "git sha": sha[:12],
            "config": config,
            "args": args,
            "load before": round(load, 2),
            "install min": install_s / 60,
            "pipeline min": pipeline_s / 60,
            "total min": total_s / 60,
            **run_summary(out),
            "latency consistent": consistent,
        }
        claims = pd.read_csv(out / "claims.csv") if (out / "claims.csv").exists() else pd.DataFrame()
        detail = {
            **row,
            "git sha": sha,
            # the scorecard `make reproduce` printed (results/<config>/claims.csv of the clone)
            "claims": claims.reindex(columns=list(CLAIM_COLUMNS)).to_dict("records"),
            "installed": "linked venv (not timed)" if venv is not None else "make venv",
            "env": environment(),
            "stage_wall_s": prov.get("stage_wall_s", {}),
            "notebook_wall_s": prov.get("notebook_wall_s", {}),
        }
        return {"row": row, "detail": detail}
    finally:
        if keep:
            print(f"main_job: kept {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def goals_table(df: pd.DataFrame) -> pd.DataFrame:
    """For the runs of :data:`GOALS_CONFIG`: one row per goal, one column per run (PASS / MISS)."""
    runs = df[df["config"] == GOALS_CONFIG]
    table = {"goal": list(GOALS)}
    for i, r in runs.iterrows():
        label = f"row {i + 1}: {r['date']}, {r['git sha'][:7]}"
        table[label] = [{True: "PASS", False: "MISS", None: "n/a"}[ok(r)] for ok in GOALS.values()]
    return pd.DataFrame(table)


def claims_of_runs(runs: list[dict]) -> pd.DataFrame:
    """The verdict of each claim in each recorded run (one column per run; ``main_job.json`` records)."""
    table: dict[str, dict[str, str]] = {}
    for i, run in enumerate(runs):
        label = f"row {i + 1}: {run['date']}, {run['git sha'][:7]}"
        for c in run.get("claims", []):
            margin = "" if pd.isna(c["margin"]) else f" ({c['margin']:+.3f})"
            table.setdefault(c["claim"], {})[label] = f"{c['verdict']}{margin}"
    return pd.DataFrame.from_dict(table, orient="index").rename_axis("claim").reset_index() if table else pd.DataFrame()


def render(df: pd.DataFrame, runs: list[dict] | None = None) -> str:
    """``main_job.md``: every run, the quick runs against the goals, then each run's claims scorecard."""
    text = (
        "# The main job on a fresh clone\n\n`python -m studies.main_job` (one row per run; install = `make venv` "
        "from pip's cache on this machine, empty when a linked venv was reused).\n\n"
        + df.to_markdown(index=False, floatfmt=".3f")
        + "\n"
    )
    goals = goals_table(df)
    if goals.shape[1] > 1:
        text += (
            f"\n## The `{GOALS_CONFIG}` runs against the main job's goals\n\n" + goals.to_markdown(index=False) + "\n"
        )
    claims = claims_of_runs(runs or [])
    if not claims.empty:
        text += (
            "\n## The claims scorecard of each run\n\nThe verdict (and margin) of each claim in the `claims.md` "
            "that `make reproduce` printed (one run: no interval; runs before the scorecard was recorded are blank)."
            "\n\n" + claims.fillna("").to_markdown(index=False) + "\n"
        )
    return text


def record(result: dict) -> pd.DataFrame:
    """Append a run to ``results/main_job.{csv,json}`` and rewrite ``main_job.md``; all rows."""
    root = paths.results_dir()
    root.mkdir(parents=True, exist_ok=True)
    csv, js = root / f"{NAME}.csv", root / f"{NAME}.json"
    df = pd.read_csv(csv, dtype={"git sha": str, "args": str}).fillna({"args": ""}) if csv.exists() else pd.DataFrame()
    df = pd.concat([df, pd.DataFrame([result["row"]])], ignore_index=True)
    runs = json.loads(js.read_text()) if js.exists() else []
    write_csv(df, csv)
    write_json(runs + [result["detail"]], js, indent=2, default=float)
    write_text(render(df, runs + [result["detail"]]), root / f"{NAME}.md")
    return df


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="quick")
    p.add_argument("--venv", type=Path, default=None, help="link this installed environment instead of `make venv`")
    p.add_argument("--args", default="", help="ARGS for `make reproduce` (e.g. --no-notebooks)")
    p.add_argument("--keep", action="store_true", help="keep the clone (its .venv takes about 7 GB)")
    a = p.parse_args(argv)
    if a.venv is not None and not (a.venv / "bin" / "python").exists():
        p.error(f"--venv {a.venv}: no bin/python there")
    df = record(time_main_job(a.config, a.venv, a.args, a.keep))
    print(render(df.tail(1)))


if __name__ == "__main__":
    main()
