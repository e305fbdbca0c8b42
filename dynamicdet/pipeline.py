"""``make reproduce``: the whole pipeline, then every notebook with papermill.

COCO-format data -> step 1 -> per-image caches -> step 2 -> evaluation stages ->
notebooks -> ``results/<config>/`` (executed notebooks, tables, figures, provenance).
Each stage is cached by config, so the notebooks reuse what the pipeline computed.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import paths
from .config import load_config
from .results import out_dir, provenance


def notebook_paths() -> list[Path]:
    """The paper's notebooks, in paper order."""
    return sorted(p for p in paths.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def run_notebook(nb: Path, config: str, progress: bool = True) -> tuple[Path, float]:
    """Execute one notebook with papermill at ``config`` into ``results/<config>/notebooks/``."""
    import papermill as pm

    out = out_dir(config) / "notebooks" / nb.name
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pm.execute_notebook(
        str(nb),
        str(out),
        parameters={"config": config},
        kernel_name="python3",
        cwd=str(paths.NOTEBOOKS_DIR),
        progress_bar=progress,
    )
    return out, time.time() - t0


def publish_notebooks(config: str = "standard") -> list[Path]:
    """Copy the notebooks executed at ``config`` over ``notebooks/``, so the committed ones show its results.

    ``make reproduce CONFIG=standard`` executes every notebook into
    ``results/standard/notebooks/``; their ``parameters`` defaults are the standard
    config, so dropping papermill's ``injected-parameters`` cell leaves exactly the
    notebook a reader would get by running it in JupyterLab.
    """
    import nbformat

    written = []
    for nb in notebook_paths():
        executed = out_dir(config) / "notebooks" / nb.name
        if not executed.exists():
            raise FileNotFoundError(f"{executed}: not executed yet; run `make reproduce CONFIG={config}` first")
        doc = nbformat.read(executed, as_version=4)
        doc.cells = [c for c in doc.cells if "injected-parameters" not in c.metadata.get("tags", [])]
        nbformat.write(doc, nb)
        written.append(nb)
    return written


def reproduce(config: str = "quick", run_notebooks: bool = True, progress: bool = True) -> None:
    """Run every stage for ``config`` and regenerate its results folder."""
    from .data.coco import prepare_dataset
    from .data.synthetic import generate_from_config, summarize
    from .experiments import static_baselines, tradeoff, trained

    cfg = load_config(config)
    times: dict[str, float] = {}
    t0 = time.time()
    if cfg.data.source == "synthetic":
        generate_from_config(cfg, progress=progress)
    info = prepare_dataset(cfg)
    times["data"] = time.time() - t0
    if cfg.data.source == "synthetic":
        print(summarize(info.root).to_string())
    t = time.time()
    tr = trained(cfg, progress=progress)
    times["train (step 1 + step 2)"] = time.time() - t
    t = time.time()
    tradeoff(tr, progress=progress)
    times["evaluation (trade-off)"] = time.time() - t
    t = time.time()
    static_baselines(cfg, progress=progress)
    times["static baselines"] = time.time() - t
    nb_times = {}
    if run_notebooks:
        for nb in notebook_paths():
            print(f"running {nb.name} ...", flush=True)
            _, dt = run_notebook(nb, config, progress=False)
            nb_times[nb.name] = round(dt, 1)
    total = time.time() - t0
    provenance(
        config,
        cfg.to_dict(),
        {
            "stage_wall_s": {k: round(v, 1) for k, v in times.items()},
            "notebook_wall_s": nb_times,
            "reproduce_wall_s": round(total, 1),
        },
    )
    print(f"reproduce {config}: done in {total / 60:.1f} min -> {out_dir(config)}")
