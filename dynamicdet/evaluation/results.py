"""Writing tables and figures into ``results/<config>/``, with provenance.

Notebooks save every table and figure through :func:`save_table` and
:func:`save_figure`, so everything they produce lands in one folder, and
:func:`provenance` records how it was made (git SHA, config, versions, device, times).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from dynamicdet import paths
from dynamicdet.config import Config, load_config
from dynamicdet.evaluation.speed import environment
from dynamicdet.files import write_csv, write_text

STYLE = {"context": "notebook", "style": "whitegrid", "palette": "deep"}


def use_style() -> None:
    """The one figure style of every notebook (seaborn whitegrid, readable at README size)."""
    sns.set_theme(**STYLE)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 130, "savefig.bbox": "tight", "axes.titleweight": "bold"})


def out_dir(config: str) -> Path:
    d = paths.results_dir(config)
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_table(df: pd.DataFrame, name: str, config: str, floatfmt: str = ".4g", index: bool = False) -> Path:
    """Write ``<name>.csv`` and ``<name>.md`` into ``results/<config>/``; returns the CSV path."""
    d = out_dir(config)
    write_csv(df, d / f"{name}.csv", index=index)
    write_text(df.to_markdown(index=index, floatfmt=floatfmt) + "\n", d / f"{name}.md")
    return d / f"{name}.csv"


def save_figure(fig, name: str, config: str) -> Path:
    """Write ``<name>.png`` into ``results/<config>/``."""
    path = out_dir(config) / f"{name}.png"
    fig.savefig(path)
    return path


def git_sha() -> str:
    """The checkout's commit (``+dirty`` when the code differs from it); ``dynamicdet <version>`` when installed
    as a package (site-packages may sit inside some other repository, whose commit says nothing of this code)."""
    if not paths.IN_CHECKOUT:
        return f"dynamicdet {metadata.version('dynamicdet')}"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=paths.REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            # +dirty means the code differs from HEAD; regenerated results do not count
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
            cwd=paths.REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(config: str, cfg_dict: dict, extra: dict[str, Any] | None = None) -> Path:
    """Merge a record into ``results/<config>/provenance.json`` (git SHA, config, env, times).

    The SHAs of earlier runs merged into the same file are kept in ``git_sha_history``.
    """

    def stamp(record: dict) -> None:
        now = run_stamp(cfg_dict)
        if record.get("git_sha") not in (None, now["git_sha"]):  # results of earlier commits stay attributable
            record["git_sha_history"] = [*record.get("git_sha_history", []), record["git_sha"]]
        record.update(now)

    return _merge_into(config, extra or {}, stamp)


def run_stamp(cfg_dict: dict) -> dict[str, Any]:
    """Who made a result: git SHA, config, environment, date."""
    return {
        "git_sha": git_sha(),
        "config": cfg_dict,
        "environment": environment(),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def read_provenance(config: str) -> dict:
    """``results/<config>/provenance.json`` ({} if there is none yet)."""
    path = out_dir(config) / "provenance.json"
    return json.loads(path.read_text()) if path.exists() else {}


def merge_provenance(config: str, extra: dict[str, Any]) -> Path:
    """Merge sections into ``results/<config>/provenance.json`` leaving its top-level record alone.

    For results that carry their own SHA and environment (the two-stage tables): adding them
    must not re-attribute the results of the run that wrote the file.
    """
    return _merge_into(config, extra)


def _merge_into(config: str, extra: dict[str, Any], stamp=None) -> Path:
    """Read provenance.json, ``stamp`` its top level (if given), merge ``extra``'s sections, write it back.

    A dict section both have is ``update``d; anything else is replaced.
    """
    path = out_dir(config) / "provenance.json"
    record = read_provenance(config)
    if stamp is not None:
        stamp(record)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(record.get(k), dict):
            record[k].update(v)
        else:
            record[k] = v
    write_text(json.dumps(record, indent=2, default=str), path)
    return path


def setup_notebook(config: str, home: str = "") -> tuple[Config, Path]:
    """The set-up cell of every notebook: run-folder root, config, results folder, figure style.

    Args:
        config: a config name (``dynamicdet/configs/<config>.yaml``).
        home: run-folder root (checkpoints, caches); empty keeps ``DYNAMICDET_HOME`` or the repo's ``runs/``.

    Returns:
        ``(cfg, results)``: the loaded config and ``results/<config>/``.
    """
    if home:
        os.environ["DYNAMICDET_HOME"] = home
    cfg = load_config(config)
    use_style()
    print(f"config {config!r} -> results in results/{config}/")
    return cfg, out_dir(config)
