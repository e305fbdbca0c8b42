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


def refresh_committed_notebooks(progress: bool = True) -> dict[str, float]:
    """Execute ``notebooks/*.ipynb`` in place at their default parameters (the ``standard`` config).

    This is how the committed notebooks come to show the reference results; the stages
    they call must already be cached (run ``make reproduce CONFIG=standard`` first), so
    this only re-reads them. Returns the wall time per notebook.
    """
    import papermill as pm

    times = {}
    for nb in notebook_paths():
        t0 = time.time()
        pm.execute_notebook(
            str(nb), str(nb), kernel_name="python3", cwd=str(paths.NOTEBOOKS_DIR), progress_bar=progress
        )
        times[nb.name] = round(time.time() - t0, 1)
    return times


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
