"""``make reproduce``: the whole pipeline, then every notebook with papermill.

COCO-format data -> step 1 -> per-image caches -> step 2 -> evaluation stages ->
two-stage models (``<config>_faster_rcnn``, ``<config>_mask_rcnn``) -> notebooks ->
``results/<config>/`` (executed notebooks, tables, figures, provenance).
Each stage is cached by config, so the notebooks reuse what the pipeline computed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import papermill as pm

from dynamicdet import paths
from dynamicdet.config import load_config
from dynamicdet.data.coco import prepare_dataset
from dynamicdet.data.synthetic import generate_from_config, summarize
from dynamicdet.engine import runs
from dynamicdet.engine.step1 import SETUP_FILE
from dynamicdet.evaluation.claims import to_markdown, write_claims
from dynamicdet.evaluation.docs import update as update_docs
from dynamicdet.evaluation.results import merge_provenance, out_dir, provenance, read_provenance, run_stamp
from dynamicdet.experiments import (
    latency_table,
    onnx_latency,
    static_baselines,
    static_config,
    tradeoff,
    trained,
    two_stage_config,
    two_stage_table,
)
from dynamicdet.modeling.two_stage import KINDS

# notebooks that `make reproduce` runs only when asked (`--notebooks`): experiments about this
# replication itself rather than tables of the paper, too long for the default main job
ON_REQUEST = ("09_step1_ablation",)
REFERENCE_CONFIG = {"09_step1_ablation": "ablation"}  # an on-request notebook's reference run (`make ablation`)
TWO_STAGE_NOTEBOOK = "08_two_stage"
DOCS_CONFIG = "standard"  # the config whose results README.md and docs/ show (`make docs` regenerates their tables)


def notebook_paths() -> list[Path]:
    """Every notebook, in paper order (the paper's tables and figures, then our own ablations).

    Raises:
        FileNotFoundError: outside a checkout (the notebooks are not part of the installed package).
    """
    return sorted(p for p in paths.require_notebooks().glob("[0-9][0-9]_*.ipynb"))


def run_notebook(nb: Path, config: str, progress: bool = True, parameters: dict | None = None) -> tuple[Path, float]:
    """Execute one notebook with papermill at ``config`` (and any other ``parameters``) into
    ``results/<config>/notebooks/``."""
    out = out_dir(config) / "notebooks" / nb.name
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pm.execute_notebook(
        str(nb),
        str(out),
        parameters={**(parameters or {}), "config": config},
        kernel_name="python3",
        cwd=str(paths.NOTEBOOKS_DIR),
        progress_bar=progress,
    )
    return out, time.time() - t0


def publish_notebooks(config: str = "standard") -> list[Path]:
    """Copy the notebooks executed at ``config`` over ``notebooks/``, so the committed ones show its results.

    ``make reproduce CONFIG=standard`` executes every notebook into
    ``results/standard/notebooks/``. The copy keeps papermill's ``injected-parameters`` cell
    (``config = "standard"`` below the ``parameters`` cell, whose default is the main job's
    config), so the saved notebook says which config its outputs come from, and running it
    in JupyterLab reproduces them. A notebook whose executed copy was run from other cell
    sources (an older version) is left as it is and named. An on-request notebook
    (:data:`ON_REQUEST`) is published from its own reference run (:data:`REFERENCE_CONFIG`).
    """
    written = []
    for nb in notebook_paths():
        own = REFERENCE_CONFIG.get(nb.stem, config)  # 09: the ablation config's run (`make ablation`)
        executed = out_dir(own) / "notebooks" / nb.name
        if not executed.exists() and nb.stem in ON_REQUEST:
            print(f"{nb.name}: not published, {executed} does not exist; run it on request (`make ablation`)")
            continue
        if not executed.exists():
            raise FileNotFoundError(f"{executed}: not executed yet; run `make reproduce CONFIG={config}` first")
        doc = nbformat.read(executed, as_version=4)
        if _cell_sources(doc) != _cell_sources(nbformat.read(nb, as_version=4)):
            # executed from an older version of the notebook: copying it would bring old code back
            print(f"{nb.name}: not published, {executed} was executed from an older version; re-run it")
            continue
        nbformat.write(doc, nb)
        written.append(nb)
    return written


def check_notebooks(config: str, args: tuple[str, ...] = ()) -> int:
    """``make nbval``: strict ``pytest --nbval`` on the notebooks a run executed (``results/<config>/notebooks/``).

    nbval executes every notebook again, and the notebooks save their tables and figures (05 re-times its
    latencies). The second execution writes into a scratch copy of ``results/`` (``DYNAMICDET_RESULTS``), so the
    run's own tables stay the ones its notebooks show. Volatile outputs are sanitised by
    ``tools/nbval_sanitize.cfg``.

    Returns:
        pytest's exit code (0: every output matched).
    """
    notebooks = paths.results_dir(config) / "notebooks"
    if not any(notebooks.glob("*.ipynb")):
        raise FileNotFoundError(f"{notebooks}: no executed notebooks; run `make reproduce CONFIG={config}` first")
    sanitize = paths.REPO_ROOT / "tools" / "nbval_sanitize.cfg"
    if not sanitize.is_file():
        raise FileNotFoundError(f"{sanitize}: nbval's sanitiser ships with a checkout, not the package")
    with tempfile.TemporaryDirectory(prefix="dynamicdet-nbval-") as scratch:
        shutil.copytree(paths.results_dir(), Path(scratch) / "results")
        env = {**os.environ, "DYNAMICDET_RESULTS": str(Path(scratch) / "results")}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval"]
        cmd += ["--nbval-sanitize-with", str(sanitize), *args, str(notebooks)]
        return subprocess.run(cmd, env=env, cwd=notebooks).returncode


def _cell_sources(doc) -> list[tuple[str, str]]:
    """The notebook's own cells (papermill's ``injected-parameters`` cell left out)."""
    return [(c.cell_type, c.source) for c in doc.cells if "injected-parameters" not in c.metadata.get("tags", [])]


def reproduce(
    config: str = "quick",
    run_notebooks: bool = True,
    progress: bool = True,
    notebooks: list[str] | None = None,
    stages: bool = True,
    two_stage: bool = True,
) -> None:
    """Run every stage for ``config`` and regenerate its results folder.

    Stages already computed for this config are reused; ``provenance.json`` keeps the wall
    time of the run that computed each stage (a reused stage does not overwrite it and is
    listed under ``cached_stages``). ``notebooks``: run only these (file stems), e.g.
    ``["08_two_stage"]``; default: the paper's notebooks (every one but :data:`ON_REQUEST`).
    ``stages=False`` skips the pipeline's stages (the notebooks compute what they need),
    e.g. for ``09_step1_ablation`` on the ``ablation`` config (``make ablation``).
    ``two_stage=False`` skips the two-stage models and, unless named in ``notebooks``,
    ``08_two_stage`` (the YOLO part of the standard run alone: about 1.5 h of its 2.5 h);
    the results folder then keeps whatever two-stage tables an earlier run wrote.
    """
    if str(config).endswith((".yaml", ".yml")):  # a config of your own: the notebooks run from notebooks/
        config = str(Path(config).resolve())
    cfg = load_config(config)
    if not stages:
        return _run_notebooks(config, cfg, notebooks, None, [], time.time()) if run_notebooks else None
    times: dict[str, float] = {}
    cached: list[str] = []

    def stage(name: str, done: bool, fn):
        t = time.time()
        out = fn()
        if done:
            cached.append(name)
        else:
            times[name] = time.time() - t
        return out

    t0 = time.time()
    if cfg.data.source == "synthetic":
        generate_from_config(cfg, progress=progress)
    info = prepare_dataset(cfg)
    times["data"] = time.time() - t0
    if cfg.data.source == "synthetic":
        print(summarize(info.root).to_string())
    tr = stage("train (step 1 + step 2)", runs.STEP2.done(cfg), lambda: trained(cfg, progress=progress))
    res = stage("evaluation (trade-off)", runs.TRADEOFF.done(cfg), lambda: tradeoff(tr, progress=progress))
    static_done = all(runs.STATIC_ROW.done(static_config(cfg, s)) for s in cfg.eval.static_scales)
    static = stage("static baselines", static_done, lambda: static_baselines(cfg, progress))
    stage("latency table", runs.LATENCY.done(cfg), lambda: latency_table(tr, res, static, progress=progress))
    if cfg.eval.onnx_latency:
        stage("onnxruntime latency", runs.ONNX_LATENCY.done(cfg), lambda: onnx_latency(tr, res, static))
    for kind in KINDS if two_stage else ():  # 08_two_stage: Dy-Faster / Dy-Mask R-CNN and static rows
        ts_cfg = two_stage_config(config, kind)
        if ts_cfg.data.source == "synthetic":
            generate_from_config(ts_cfg, progress=progress)
        done = runs.TWO_STAGE_TABLE.done(ts_cfg)
        stage(f"two-stage {kind}", done, lambda kind=kind: two_stage_table(config, kind, progress=progress))
    skip = () if two_stage else (TWO_STAGE_NOTEBOOK,)
    if run_notebooks:
        return _run_notebooks(config, cfg, notebooks, times, cached, t0, skip)
    _record(config, cfg, notebooks, times, cached, {}, t0, skip)


def _run_notebooks(
    config: str, cfg, notebooks: list[str] | None, times: dict | None, cached: list, t0: float, skip: tuple = ()
) -> None:
    nb_times = {}
    for nb in notebook_paths():
        if (notebooks and nb.stem not in notebooks) or (not notebooks and nb.stem in ON_REQUEST + skip):
            continue
        print(f"running {nb.name} ...", flush=True)
        _, dt = run_notebook(nb, config, progress=False)
        nb_times[nb.name] = round(dt, 1)
    _record(config, cfg, notebooks, times, cached, nb_times, t0, skip)


def _record(
    config: str, cfg, notebooks, times: dict | None, cached: list, nb_times: dict, t0: float, skip: tuple = ()
) -> None:
    """Merge this run's stage and notebook times into the provenance (``times`` None: stages skipped).

    A run of the stages stamps the file's top level (git SHA, config, environment): its tables
    are the results folder's. A notebooks-only run (``--no-stages``) after a stage run leaves the
    top level to that run and records itself per notebook under ``notebook_runs``; on a config no
    stage run has made (``make ablation``: notebook 09 makes its tables) it stamps the top level.
    """
    total = time.time() - t0
    if times is None and "stage_wall_s" in read_provenance(config):
        stamp = run_stamp(cfg.to_dict())
        runs_record = {name: {**stamp, "wall_s": dt} for name, dt in nb_times.items()}
        merge_provenance(config, {"notebook_wall_s": nb_times, "notebook_runs": runs_record})
        print(f"reproduce {config}: notebooks done in {total / 60:.1f} min -> {out_dir(config)}")
        _print_claims(config)
        return
    record: dict = {"notebook_wall_s": nb_times}
    if times is not None:  # a stage run says what it left out (an earlier run's tables stay)
        record.update(stage_wall_s={k: round(v, 1) for k, v in times.items()}, cached_stages=cached)
        record["skipped"] = list(skip)
    # the end-to-end time only means something when every stage was computed by this run
    complete = times is not None and not cached and not notebooks and not skip
    record["reproduce_wall_s" if complete else "last_partial_run_wall_s"] = round(total, 1)
    setup = runs.STEP1.path(cfg) / SETUP_FILE
    if times is not None and setup.exists():  # threads, workers, processes step 1 was trained with
        record["step1_setup"] = json.loads(setup.read_text())
    provenance(config, cfg.to_dict(), record)
    print(f"reproduce {config}: done in {total / 60:.1f} min -> {out_dir(config)}")
    _print_claims(config)
    if config == DOCS_CONFIG and nb_times:  # README's and docs/' tables are this config's
        changed = update_docs()
        print("docs updated: " + ", ".join(p.name for p in changed) if changed else "docs: tables up to date")


def _print_claims(config: str) -> None:
    """Write ``results/<config>/claims.{csv,md}`` and print it: over the folder's seeds when it has
    them (``seeds_provenance.json``), else from the tables the notebooks wrote."""
    out = out_dir(config)
    df = write_claims(config)
    if (df["runs"] > 1).any():
        made = json.loads((out / "seeds_provenance.json").read_text())
        print(
            f"\nclaims of the paper over seeds {made['seeds']} ({out / 'claims.md'}; the seeds' tables: "
            f"{out / 'seeds'}, made at git {made['git_sha'][:12]} by `{made['command']}`):"
        )
    else:
        print(f"\nclaims of the paper, this run ({out / 'claims.md'}):")
    print(to_markdown(df))
