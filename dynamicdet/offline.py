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

from dynamicdet import paths

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
    # ultralytics sets OMP_NUM_THREADS=1 on import when it is unset, which would leave torch on one
    # core for everything (inference, our training loop); keep torch's default of all cores instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    os.environ["YOLO_OFFLINE"] = "1"  # is_online() returns False without any DNS probe
    os.environ["YOLO_AUTOINSTALL"] = "False"  # never pip-install at run time
    os.environ["YOLO_VERBOSE"] = os.environ.get("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cfg_dir))
    cfg_dir = Path(os.environ["YOLO_CONFIG_DIR"])
    cfg_dir.mkdir(parents=True, exist_ok=True)
    # ultralytics' Annotator and dataset checks look for Arial.ttf in its config dir and
    # download it when absent: put matplotlib's DejaVu Sans there under both names.
    import matplotlib  # heavy: only the first configure() needs it (its font file)

    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = cfg_dir / name
        if not target.exists():
            shutil.copyfile(dejavu, target)

    # deferred: ultralytics reads YOLO_CONFIG_DIR / YOLO_OFFLINE at import time, so set them (above) first
    from ultralytics.utils import SETTINGS

    if SETTINGS.get("sync", True):
        SETTINGS.update({"sync": False})
    _DONE = True
    return cfg_dir


class same_threads:
    """Context manager: make ultralytics' trainer use as many CPU threads as the rest of the project.

    On CPU, ultralytics' ``select_device`` calls ``torch.set_num_threads(NUM_THREADS)`` with
    NUM_THREADS = cores - 1 (1 on a 2-core machine). Comparisons with its trainer (static
    baselines, throughput benchmarks) should run at the same thread count as ours.
    """

    def __enter__(self):
        # deferred: this module is imported before ultralytics (it sets ultralytics' environment)
        import torch
        from ultralytics.utils import torch_utils

        self._threads = torch.get_num_threads()
        self._saved = torch_utils.NUM_THREADS
        torch_utils.NUM_THREADS = self._threads
        return self

    def __exit__(self, *exc):
        # deferred: as in __enter__
        import torch
        from ultralytics.utils import torch_utils

        torch_utils.NUM_THREADS = self._saved
        torch.set_num_threads(self._threads)
        return False
