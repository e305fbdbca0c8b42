"""Make ultralytics work with no network, before it is imported.

ultralytics probes connectivity, syncs settings, auto-installs missing packages and
downloads ``Arial.ttf`` for its plotting unless told otherwise. :func:`configure` turns
all of that off; ``import dynamicdet`` calls it first thing, so every entry point of
the project (library, CLI, notebooks, tests) is offline by construction.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from . import paths

_DONE = False


def configure() -> Path:
    """Set ultralytics' environment for offline use and return its config dir.

    Idempotent. Must run before the first ``import ultralytics`` to take full effect
    (``YOLO_CONFIG_DIR`` and ``YOLO_AUTOINSTALL`` are read at import time).
    """
    global _DONE
    cfg_dir = paths.ultralytics_config_dir()
    if _DONE:
        return cfg_dir
    cfg_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"  # is_online() returns False without any DNS probe
    os.environ["YOLO_AUTOINSTALL"] = "False"  # never pip-install at run time
    os.environ["YOLO_VERBOSE"] = os.environ.get("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cfg_dir))
    cfg_dir = Path(os.environ["YOLO_CONFIG_DIR"])
    cfg_dir.mkdir(parents=True, exist_ok=True)
    # ultralytics' Annotator and dataset checks look for Arial.ttf in its config dir and
    # download it when absent: put matplotlib's DejaVu Sans there under both names.
    import matplotlib

    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = cfg_dir / name
        if not target.exists():
            shutil.copyfile(dejavu, target)

    from ultralytics.utils import SETTINGS

    if SETTINGS.get("sync", True):
        SETTINGS.update({"sync": False})
    _DONE = True
    return cfg_dir
