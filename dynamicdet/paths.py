"""Every path the project uses, in one place.

Notebooks and scripts import their folders from here and never hard-code them. Where
the folders go by default depends on how the package was installed:

- **In a checkout** (an editable ``pip install -e .`` or ``make venv``: the folder above
  the package holds ``pyproject.toml``), everything stays in the repository:
  ``<repo>/runs``, ``<repo>/data`` and ``<repo>/results`` (all git-ignored but the
  committed reference results).
- **Installed** (``pip install .`` or a wheel: the package sits in ``site-packages``), the
  folders are made under the current working folder when first needed: ``./runs``,
  ``./data`` and ``./results``. ultralytics' own config dir goes to a per-user cache
  (``$XDG_CACHE_HOME/dynamicdet/ultralytics``, default ``~/.cache/dynamicdet/ultralytics``)
  unless ``DYNAMICDET_HOME`` is set, so that ``import dynamicdet`` writes nothing into the
  current folder. The notebooks (and so ``dynamicdet reproduce`` with notebooks) need a
  checkout: they are part of the repository, not of the package.

Three environment variables move the heavy folders elsewhere, in both cases:

- ``DYNAMICDET_HOME``: long-run artefacts (training runs, caches, ultralytics' config
  dir). Point it outside the repository to keep checkpoints across fresh checkouts.
- ``DYNAMICDET_DATA``: datasets.
- ``DYNAMICDET_RESULTS``: regenerated tables and figures.

The shipped configs (``smoke``, ``quick``, ``standard``, ...) are package data,
``dynamicdet/configs/<name>.yaml``, read through :mod:`importlib.resources`
(:func:`shipped_configs`); a config of your own is given by its path.
"""

from __future__ import annotations

import os
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

PACKAGE = __name__.partition(".")[0]  # "dynamicdet"
# this module is <package>/paths.py (or deeper: one parent per dot in its name)
PACKAGE_DIR = Path(__file__).resolve().parents[__name__.count(".") - 1]
# The folder holding the package: the repository's root in a checkout, site-packages when installed.
REPO_ROOT = PACKAGE_DIR.parent
# A checkout: the package's parent folder holds pyproject.toml (the package is not in site-packages).
IN_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file()
CONFIGS_DIR = PACKAGE_DIR / "configs"  # the shipped configs on disk (prefer shipped_configs())
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"  # exists in a checkout only (require_notebooks())


def _env_path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser().resolve() if value else default


def default_root() -> Path:
    """Where runs/, data/ and results/ go by default: the repository, or the current folder when installed."""
    return REPO_ROOT if IN_CHECKOUT else Path.cwd()


def home_dir() -> Path:
    """Root of long-run artefacts (``$DYNAMICDET_HOME``, else ``<repo>/runs`` or ``./runs`` when installed)."""
    return _env_path("DYNAMICDET_HOME", default_root() / "runs")


def data_dir() -> Path:
    """Root of datasets (``$DYNAMICDET_DATA``, else ``<repo>/data`` or ``./data`` when installed)."""
    return _env_path("DYNAMICDET_DATA", default_root() / "data")


def config_name(config: str) -> str:
    """The name of a config given by name (``"quick"``) or by the path of its YAML file (its stem, as
    :func:`dynamicdet.config.load_config` names it)."""
    return Path(config).stem if str(config).endswith((".yaml", ".yml")) else str(config)


def results_dir(config: str | None = None) -> Path:
    """``results/`` or ``results/<config name>/`` (``$DYNAMICDET_RESULTS`` moves the root; ``./results`` when
    installed); ``config``: a shipped config's name or a YAML file's path (:func:`config_name`)."""
    root = _env_path("DYNAMICDET_RESULTS", default_root() / "results")
    return root / config_name(config) if config else root


def runs_dir() -> Path:
    """Folder holding one sub-folder per (config name, config hash) training run."""
    return home_dir() / "runs"


def ultralytics_config_dir() -> Path:
    """The config dir we hand to ultralytics (``YOLO_CONFIG_DIR``), owned by this project.

    ``<home>/ultralytics``; when installed and ``DYNAMICDET_HOME`` is unset, a per-user cache
    folder instead, so that importing the package leaves the current folder untouched.
    """
    if IN_CHECKOUT or os.environ.get("DYNAMICDET_HOME"):
        return home_dir() / "ultralytics"
    cache = _env_path("XDG_CACHE_HOME", Path.home() / ".cache")
    return cache / PACKAGE / "ultralytics"


def dataset_dir(name: str) -> Path:
    """Folder of one dataset, ``<data>/<name>``."""
    return data_dir() / name


def shipped_configs() -> Traversable:
    """The folder of the configs shipped with the package (``dynamicdet/configs``), as package data."""
    return resources.files(PACKAGE) / "configs"


def require_notebooks() -> Path:
    """The notebooks' folder, or a clear error when the package runs outside a checkout.

    Raises:
        FileNotFoundError: the notebooks are not installed with the package.
    """
    if not NOTEBOOKS_DIR.is_dir():
        raise FileNotFoundError(
            f"{NOTEBOOKS_DIR}: no notebooks here. The notebooks are part of the repository, not of the "
            f"installed package ({PACKAGE_DIR}): clone the repository and run `make reproduce` there, "
            "or pass --no-notebooks to run the pipeline's stages alone"
        )
    return NOTEBOOKS_DIR
