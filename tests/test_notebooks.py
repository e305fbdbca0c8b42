"""Every notebook end to end at the smoke config (papermill), then strict ``pytest --nbval`` on the results.

The committed notebooks in ``notebooks/`` show the reference (standard) results. Here
papermill injects ``config = "smoke"`` into each one's ``parameters`` cell and runs it
into a temporary results folder; nbval then re-runs those executed copies and compares
every output, but for the volatile ones ``tools/nbval_sanitize.cfg`` names and the cells
tagged ``nbval-ignore-output`` (live latency measurements). The rendered conclusion of each
notebook (the cell tagged ``conclusion``) must quote only numbers of the run's own tables.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

from dynamicdet import paths
from dynamicdet.pipeline import notebook_paths, run_notebook

NOTEBOOKS = notebook_paths()
# the notebooks that show scorecard rows (03 and 05: the rows their tables feed)
SCORECARD = {"02", "03", "04", "05", "06", "07", "08"}
# calls that time the machine live at every execution: their cells' outputs differ from one to the next
LIVE = ("target_latency(", "disturbed_stream(")
TIMES_FIRST = "05"  # the first notebook to call latency_table times the models; the later ones read its cache


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


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_says_what_its_run_shows(nb):
    """The text is true at every config: a rendered banner names the config that ran, the notebook ends with
    "What this shows" rendered from the run (after its scorecard rows), and live timings are not compared."""
    cells = nbformat.read(nb, as_version=4).cells
    text = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    assert "The prose of this notebook quotes" not in text, f"{nb.name}: the static banner is back"
    setup = [i for i, c in enumerate(cells) if "results = setup_notebook(" in c.source]
    assert len(setup) == 1 and "Markdown(config_banner(config))" in cells[setup[0] + 1].source, nb.name
    # ... | scorecard rows | ## What this shows | conclusion (rendered) | ## Checks | checks
    assert cells[-4].cell_type == "markdown" and cells[-4].source.strip() == "## What this shows", nb.name
    conclusions = [i for i, c in enumerate(cells) if "conclusion" in c.metadata.get("tags", [])]
    assert conclusions == [len(cells) - 3], f"{nb.name}: one conclusion cell, right under 'What this shows'"
    assert "Markdown(" in cells[-3].source and cells[-2].source.startswith("## Checks"), nb.name
    scorecards = [i for i, c in enumerate(cells) if c.cell_type == "code" and "notebook_claims(config" in c.source]
    assert bool(scorecards) == (nb.stem[:2] in SCORECARD), f"{nb.name}: scorecard rows {scorecards}"
    assert all(i < len(cells) - 4 for i in scorecards), f"{nb.name}: the scorecard rows come before the conclusion"
    for c in cells:
        live = any(call in c.source for call in LIVE) or (nb.stem[:2] == TIMES_FIRST and "latency_table(" in c.source)
        if c.cell_type == "code" and live:
            assert "nbval-ignore-output" in c.metadata.get("tags", []), f"{nb.name}: live timing compared:\n{c.source}"


def _tree(root: Path) -> set[str]:
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=root, capture_output=True, text=True
    ).stdout
    return set(out.splitlines())


@pytest.fixture(scope="module")
def executed(smoke_cfg):
    """Run every notebook at smoke with papermill; check nothing is written outside results/.

    Returns ``results`` (the folder), ``outs`` (the executed notebooks) and ``numbers``: every number of the
    run's tables as the notebooks left them (nbval executes them again, and 05 re-times its latencies).
    """
    results = paths.results_dir("smoke")
    before = _tree(paths.REPO_ROOT)
    outs = []
    for nb in NOTEBOOKS:
        out, _ = run_notebook(nb, "smoke", progress=False)
        outs.append(out)
    after = _tree(paths.REPO_ROOT)
    assert after == before, f"notebooks wrote into the repository: {sorted(after - before)}"
    return SimpleNamespace(results=results, outs=outs, numbers=_run_numbers(results, smoke_cfg))


# A number in rendered text: not part of a word (yolov8n, L1, B2), with an optional percent sign; its sign is
# left out (the text may say "below" instead). Numbers in `code` and names (detector 2, notebook 06, row 4,
# Table 4, step-1) are not results.
NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(%?)(?!\w|\.\d)")
CODE_SPAN = re.compile(r"`[^`]*`")
NAMES = re.compile(r"\b(?:detectors?|steps?|notebooks?|rows?|tables?)[\s-]+\d+\b", re.I)
# numbers a conclusion may state that no table holds: notebook 05's goal for a target latency (within 5%)
ALLOWED_PERCENTS = {5.0}


def _numbers_in(value) -> list[float]:
    """The numbers of one table cell: the cell itself, or the numbers written in its text."""
    try:
        return [float(value)]
    except (TypeError, ValueError):
        return [float(m.group(1)) for m in NUMBER.finditer(str(value))]


def _run_numbers(results: Path, cfg) -> set[float]:
    """What a conclusion may quote: the run's tables (every CSV of its results folder), its scorecard rows
    (the paper's numbers and the bars included), the paper's table and the run's configs (epochs, sizes, k)."""
    # deferred: the two-stage configs import torchvision's detectors, which only the slow tests need
    from dynamicdet.evaluation.claims import claims_table
    from dynamicdet.evaluation.evidence import PAPER
    from dynamicdet.experiments.generality import KINDS, two_stage_config

    cells = []
    for path in sorted(results.glob("*.csv")):
        with open(path, newline="") as f:
            cells += [v for row in csv.reader(f) for v in row]
    cells += claims_table(results).to_numpy().ravel().tolist()
    cells += [v for row in PAPER.values() for v in row]
    for c in [cfg, *(two_stage_config("smoke", kind) for kind in KINDS)]:
        cells += [v for v in _leaves(dataclasses.asdict(c)) if isinstance(v, (int, float))]
        cells += [100 * k for k in c.eval.fractions]  # /50: the hard fraction in percent
    return {abs(x) for v in cells for x in _numbers_in(v) if x == x and abs(x) != float("inf")}


def _leaves(d):
    for v in d.values() if isinstance(d, dict) else d:
        if isinstance(v, (dict, list, tuple)):
            yield from _leaves(v)
        else:
            yield v


def _quoted(number: str, percent: bool, numbers: set[float]) -> bool:
    """``number`` (as written, ``percent``: followed by %) is one of ``numbers`` rounded to its decimals."""
    x = float(number)
    if percent and x in ALLOWED_PERCENTS:
        return True
    decimals = len(number.partition(".")[2])
    tol, scale = 0.5 * 10**-decimals + 1e-9, 100 if percent else 1
    return any(abs(v * scale - x) <= tol for v in numbers)


@pytest.mark.slow
def test_notebooks_run_and_write_only_results(executed):
    results, outs = executed.results, executed.outs
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
        "dataset_difficulty.csv",
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
def test_conclusions_quote_the_runs_tables(executed):
    """Every number of a notebook's rendered "What this shows" is in the run's tables (to the decimals shown;
    a percentage against a fraction x 100), its scorecard, the paper's table or the run's config."""
    for out in executed.outs:
        cells = [c for c in nbformat.read(out, as_version=4).cells if "conclusion" in c.metadata.get("tags", [])]
        assert len(cells) == 1, f"{out.name}: {len(cells)} conclusion cells"
        text = "".join(o["data"]["text/markdown"] for o in cells[0].outputs if "text/markdown" in o.get("data", {}))
        assert text.strip(), f"{out.name}: the conclusion rendered nothing"
        prose = NAMES.sub("", CODE_SPAN.sub("", text))
        stray = [
            m.group(0) for m in NUMBER.finditer(prose) if not _quoted(m.group(1), bool(m.group(2)), executed.numbers)
        ]
        assert not stray, f"{out.name}: numbers in no table of the run: {stray}\n{text}"


def test_number_matching():
    numbers = {0.7712, 0.0019, 12.0, 50.0, 0.5}
    found = [(m.group(1), bool(m.group(2))) for m in NUMBER.finditer("phi > 0.5 on 77% of 12, Dy /50, yolov8n, L1.")]
    assert found == [("0.5", False), ("77", True), ("12", False), ("50", False)]
    assert all(_quoted(n, p, numbers) for n, p in found)
    assert _quoted("77.1", True, numbers) and _quoted("0.002", False, numbers) and _quoted("5", True, set())
    assert (
        not _quoted("0.78", False, numbers) and not _quoted("78", True, numbers) and not _quoted("13", False, numbers)
    )
    assert NAMES.sub("", "detector 2 and notebook 06, the step-1 loop, Table 4") == " and , the  loop, "


@pytest.mark.slow
def test_strict_nbval_on_executed_notebooks(executed):
    """``make nbval`` on the smoke run: every output matches a second execution, sanitised by
    tools/nbval_sanitize.cfg, but for the cells tagged nbval-ignore-output; the second execution
    leaves the run's tables and figures as they were (it writes into a scratch copy)."""
    from dynamicdet.pipeline import check_notebooks

    def files():
        return {p: p.read_bytes() for p in executed.results.rglob("*") if p.is_file() and p.parent.name != "notebooks"}

    before = files()
    assert check_notebooks("smoke") == 0
    after = files()
    assert after.keys() == before.keys() and all(after[p] == before[p] for p in before), [
        p.name for p in before if after.get(p) != before[p]
    ]


def test_nbval_on_a_run_with_no_executed_notebooks_says_what_to_run(tmp_path, monkeypatch):
    from dynamicdet.pipeline import check_notebooks

    monkeypatch.setenv("DYNAMICDET_RESULTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make reproduce CONFIG=smoke"):
        check_notebooks("smoke")


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


def test_the_sanitiser_maps_a_results_path_and_its_scratch_copy_to_one_text():
    """`make nbval` executes into a scratch copy of results/: a cell that shows a saved file's path must read the
    same in the run's notebook and in the second execution (sections applied in the file's order, as nbval does)."""
    from nbval.plugin import get_sanitize_patterns  # nbval's own reading of the file: (regex, replace) in order

    patterns = get_sanitize_patterns((paths.REPO_ROOT / "tools" / "nbval_sanitize.cfg").read_text())

    def sanitise(text):
        for regex, replace in patterns:
            text = re.sub(regex, replace, text)
        return text

    run = sanitise("PosixPath('/work/main/results/quick/tradeoff.png')")
    again = sanitise("PosixPath('/tmp/dynamicdet-nbval-k2x9/results/quick/tradeoff.png')")
    assert run == again == "PosixPath('<RESULTS>/quick/tradeoff.png')"
    assert sanitise("/tmp/tmpab12/x.json") == "<TMP>"  # other temporary paths as before
