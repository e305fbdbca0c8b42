"""Every notebook end to end at the smoke config (papermill), then ``pytest --nbval-lax`` on the results.

The committed notebooks in ``notebooks/`` show the reference (standard) results. Here
papermill injects ``config = "smoke"`` into each one's ``parameters`` cell and runs it
into a temporary results folder; nbval then re-runs those executed copies and compares
the outputs of the cells marked ``# NBVAL_CHECK_OUTPUT`` (the checks cells).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from dynamicdet import paths
from dynamicdet.pipeline import notebook_paths, run_notebook

NOTEBOOKS = notebook_paths()


def test_there_are_notebooks_in_paper_order():
    names = [p.stem for p in NOTEBOOKS]
    assert names == [
        "00_dataset",
        "01_architecture",
        "02_joint_training",
        "03_loss_difference",
        "04_router_losses",
        "05_variable_speed",
        "06_tradeoffs",
        "07_easy_hard",
        "08_two_stage",
        "09_step1_ablation",
    ]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_shape(nb):
    # nbformat 4.5 cell ids (a missing one is a warning now, an error in future nbformat)
    missing = [i for i, c in enumerate(json.loads(nb.read_text())["cells"]) if "id" not in c]
    assert not missing, f"{nb.name}: cells {missing} have no id (nbformat.validator.normalize adds them)"
    cells = nbformat.read(nb, as_version=4).cells
    params = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{nb.name}: {len(params)} cells tagged 'parameters' (want exactly 1)"
    # plain values only: every statement is `name = literal`
    import ast

    for node in ast.parse(params[0].source).body:
        assert isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant), ast.dump(node)
    src = params[0].source
    assert "config =" in src and "home =" in src
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# ")
    assert "NBVAL_CHECK_OUTPUT" in cells[-1].source and "assert" in cells[-1].source
    for c in cells:  # nbval fails on cells that keep outputs but lost their execution count
        if c.cell_type == "code" and c.get("outputs"):
            assert c.execution_count is not None, f"{nb.name}: a cell has outputs but no execution count"
    # nothing in a notebook defines a model or a loss
    code = "\n".join(c.source for c in cells if c.cell_type == "code")
    assert "class " not in code and "nn.Module" not in code


def _tree(root: Path) -> set[str]:
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=root, capture_output=True, text=True
    ).stdout
    return set(out.splitlines())


@pytest.fixture(scope="module")
def executed(smoke_cfg):
    """Run every notebook at smoke with papermill; check nothing is written outside results/."""
    results = paths.results_dir("smoke")
    before = _tree(paths.REPO_ROOT)
    outs = []
    for nb in NOTEBOOKS:
        out, _ = run_notebook(nb, "smoke", progress=False)
        outs.append(out)
    after = _tree(paths.REPO_ROOT)
    assert after == before, f"notebooks wrote into the repository: {sorted(after - before)}"
    return results, outs


@pytest.mark.slow
def test_notebooks_run_and_write_only_results(executed):
    results, outs = executed
    assert all(o.is_relative_to(results) for o in outs)
    for o in outs:
        nb = json.loads(o.read_text())
        last = nb["cells"][-1]
        text = "".join("".join(x.get("text", "")) for x in last.get("outputs", []))
        assert "checks passed" in text, f"{o.name}: checks cell did not pass"
    produced = {p.name for p in results.iterdir()}
    # each two-stage table names the commit that made it
    two_stage = json.loads((results / "provenance.json").read_text())["two_stage"]
    for kind in ("faster_rcnn", "mask_rcnn"):
        t = two_stage[kind]["table"]
        assert t.get("git_sha") and t.get("eval_wall_s", 0) > 0, (kind, t)
    for name in (
        "dataset_stats.csv",
        "dataset_samples.png",
        "architecture_cost.md",
        "joint_training.csv",
        "training_curves.png",
        "loss_difference.png",
        "router_losses.csv",
        "router_scores.png",
        "variable_speed.csv",
        "target_latency.csv",
        "tradeoff.png",
        "capture_ratio.csv",
        "static_models.csv",
        "static_frontier.csv",
        "frontier_costs.png",
        "easy_hard.png",
        "difficulty_correlation.csv",
        "two_stage_faster_rcnn.csv",
        "two_stage_mask_rcnn.csv",
        "two_stage_summary.csv",
        "two_stage.png",
        "step1_ablation.csv",
        "step1_ablation.png",
        "step1_grad_norms.png",
    ):
        assert name in produced, f"missing {name}"
    # the trade-off table carries every cost of the four-cost frontier, onnxruntime included
    with open(results / "variable_speed.csv", newline="") as f:
        header = next(csv.reader(f))
    assert {"GFLOPs", "latency_ms_b1", "latency_ms_onnx_b1", "consistent_onnx"} <= set(header)
    with open(results / "static_frontier.csv", newline="") as f:
        costs = {row["cost"] for row in csv.DictReader(f)}  # a cost name holds a comma ("CPU latency, batch 1")
    assert len(costs) == 4, costs


@pytest.mark.slow
def test_nbval_lax_on_executed_notebooks(executed):
    results, outs = executed
    env = {**os.environ}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", *[str(o) for o in outs]],
        cwd=results,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert r.returncode == 0, r.stdout[-4000:]


def test_notebooks_default_to_the_main_jobs_config():
    # JupyterLab after `make reproduce` must read the run just made, not start another config's training
    import re

    from dynamicdet.pipeline import ON_REQUEST

    make = (paths.REPO_ROOT / "Makefile").read_text()
    main_job = re.search(r"^CONFIG \?= (\w+)$", make, flags=re.M).group(1)
    for nb in NOTEBOOKS:
        if nb.stem in ON_REQUEST:  # run on request on its own config (09: `make ablation`)
            continue
        params = [c for c in nbformat.read(nb, as_version=4).cells if "parameters" in c.metadata.get("tags", [])][0]
        default = re.search(r'^config = "(\w+)"', params.source, flags=re.M).group(1)
        assert default == main_job, f"{nb.name}: parameters default config {default!r}, Makefile's CONFIG {main_job!r}"
