"""What moves step-1 weights: thread count, dataloader workers, two trainings at once, machine load.

Usage::

    python -m studies.reproducibility --config quick [--epochs 2]

Trains the config's step 1 for ``--epochs`` epochs (validation at the end) in separate
processes, each with its own run folder, under these setups:

====================  ===============================================================
setup                 what differs from the reference
====================  ===============================================================
reference             2 torch threads, the config's dataloader workers, alone
reference again       nothing (the same setup twice: bit-identical?)
1 thread              1 torch thread
0 / 2 workers         the other dataloader setup (0 workers if the config has some, else 2)
under load            a competing busy process on one core
two at once (a, b)    two trainings of the reference setup at the same time, 1 thread each
====================  ===============================================================

Per setup: how many weight tensors equal the reference's bit for bit, the largest
absolute weight difference, and both detectors' val AP (and their difference from the
reference). Written to ``results/reproducibility.{json,md}`` per config.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from bench.bench_record import provenance, save, stamp
from dynamicdet.config import load_config
from dynamicdet.data.synthetic import generate_from_config
from dynamicdet.engine.runs import STEP1

BUSY = "import time\nwhile True:\n    sum(range(10000))\n"  # a bare interpreter that keeps one core busy


def _config_file(config: str, epochs: int, workers: int | None, folder: Path) -> Path:
    cfg = load_config(config)
    raw = cfg.to_dict()
    raw["data"]["name"] = cfg.dataset_name  # share the generated dataset
    raw["train"].update(epochs=epochs, val_every=epochs, close_mosaic=min(raw["train"]["close_mosaic"], epochs))
    if workers is not None:
        raw["train"]["workers"] = workers
    path = folder / f"{config}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _start(cfg_path: Path, home: Path, threads: int) -> subprocess.Popen:
    env = {**os.environ, "DYNAMICDET_HOME": str(home), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "dynamicdet.cli", "train", "--config", str(cfg_path), "--step", "1"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, what: str) -> None:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{what}: training failed (exit {proc.returncode}):\n{err[-2000:]}")


def _result(cfg_path: Path, home: Path) -> tuple[dict, dict]:
    cfg = load_config(cfg_path)
    folder = home / "runs" / STEP1.path(cfg).name
    weights = torch.load(folder / "step1.pt", map_location="cpu", weights_only=False)["model"]
    last = pd.read_csv(folder / "step1_metrics.csv").iloc[-1]
    setup = json.loads((folder / "step1_setup.json").read_text())
    return weights, {"AP det1": float(last["det1_AP"]), "AP det2": float(last["det2_AP"]), **setup}


def _train_setups(config: str, cfg, epochs: int, work: Path) -> dict[str, tuple[dict, dict]]:
    """Train every setup of the module docstring under ``work``; per setup its weights and record."""
    base = _config_file(config, epochs, None, work)
    # the other dataloader setup: the main process when the config uses workers, 2 workers when it does not
    other = 0 if cfg.train.workers else 2
    (work / "w").mkdir()
    other_workers = _config_file(config, epochs, other, work / "w")
    runs: dict[str, tuple[dict, dict]] = {}

    def alone(name: str, cfg_path: Path, threads: int) -> None:
        start = time.time()
        _finish(_start(cfg_path, work / name, threads), name)
        runs[name] = _result(cfg_path, work / name)
        runs[name][1]["train_s"] = round(time.time() - start, 1)

    alone("reference", base, 2)
    alone("reference again", base, 2)
    alone("1 thread", base, 1)
    alone(f"{other} workers", other_workers, 2)
    busy = subprocess.Popen([sys.executable, "-S", "-c", BUSY])
    try:
        alone("under load", base, 2)
    finally:
        busy.kill()
        busy.wait()
    start = time.time()
    procs = {name: _start(base, work / name, 1) for name in ("two at once (a)", "two at once (b)")}
    for name, p in procs.items():
        _finish(p, name)
        runs[name] = _result(base, work / name)
        runs[name][1]["train_s"] = round(time.time() - start, 1)
    return runs


def measure(config: str, epochs: int = 2) -> dict:
    cfg = load_config(config)
    if cfg.data.source == "synthetic":
        generate_from_config(cfg, progress=False)
    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="dynamicdet-repro-"))
    try:  # the run folders (about 100 MB per setup at quick) are not kept
        runs = _train_setups(config, cfg, epochs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ref_w, ref = runs["reference"]
    rows = []
    for name, (w, info) in runs.items():
        same = sum(torch.equal(w[k], ref_w[k]) for k in ref_w)
        diff = max(float((w[k].double() - ref_w[k].double()).abs().max()) for k in ref_w if w[k].numel())
        rows.append(
            {
                "setup": name,
                "torch threads": info["torch_threads"],
                "workers": info["dataloader_workers"],
                "identical tensors": f"{same}/{len(ref_w)}",
                "max |w - w_ref|": diff,
                "AP det1": info["AP det1"],
                "AP det2": info["AP det2"],
                "AP det1 - ref": info["AP det1"] - ref["AP det1"],
                "AP det2 - ref": info["AP det2"] - ref["AP det2"],
                "train s": info["train_s"],
            }
        )
    return {"config": config, "epochs": epochs, "rows": rows, **stamp(t0)}


def render(allrec: dict) -> str:
    out = ["# Reproducibility of step 1 (`python -m studies.reproducibility`)", ""]
    for config, r in allrec.items():
        out += [f"## {config}, {r['epochs']} epochs ({provenance(r)}; {r['wall_s'] / 60:.1f} min)", ""]
        out += [pd.DataFrame(r["rows"]).to_markdown(index=False, floatfmt=".4g"), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="quick")
    p.add_argument("--epochs", type=int, default=2)
    a = p.parse_args(argv)
    rec = save("reproducibility", measure(a.config, a.epochs), render)
    print(pd.DataFrame(rec["rows"]).to_string(index=False))


if __name__ == "__main__":
    main()
