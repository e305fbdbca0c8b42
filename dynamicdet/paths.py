"""Every path the project uses, in one place.

Notebooks and scripts import their folders from here and never from the working
directory. Three environment variables move the heavy folders elsewhere:

- ``DYNAMICDET_HOME``: long-run artefacts (training runs, caches, ultralytics' config
  dir). Default ``<repo>/runs`` (git-ignored). Point it outside the repository to keep
  checkpoints across fresh checkouts.
- ``DYNAMICDET_DATA``: datasets. Default ``<repo>/data``.
- ``DYNAMICDET_RESULTS``: regenerated tables and figures. Default ``<repo>/results``.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = REPO_ROOT / "configs"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def _env_path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser().resolve() if value else default


def home_dir() -> Path:
    """Root of long-run artefacts (``$DYNAMICDET_HOME`` or ``<repo>/runs``)."""
    return _env_path("DYNAMICDET_HOME", REPO_ROOT / "runs")


def data_dir() -> Path:
    """Root of datasets (``$DYNAMICDET_DATA`` or ``<repo>/data``)."""
    return _env_path("DYNAMICDET_DATA", REPO_ROOT / "data")


def results_dir(config: str | None = None) -> Path:
    """``results/`` or ``results/<config>/`` (``$DYNAMICDET_RESULTS`` moves the root)."""
    root = _env_path("DYNAMICDET_RESULTS", REPO_ROOT / "results")
    return root / config if config else root


def runs_dir() -> Path:
    """Folder holding one sub-folder per (config name, config hash) training run."""
    return home_dir() / "runs"


def ultralytics_config_dir() -> Path:
    """The config dir we hand to ultralytics (``YOLO_CONFIG_DIR``), owned by this project."""
    return home_dir() / "ultralytics"


def dataset_dir(name: str) -> Path:
    """Folder of one dataset, ``<data>/<name>``."""
    return data_dir() / name
