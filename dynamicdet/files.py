"""Writing files atomically: the one writer every cached artefact goes through.

Each writer fills a temporary file in the target's folder and renames it over the
target (``os.replace``), so an interrupted run never leaves a half-written file under the
real name, and a stage whose file exists is complete.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pandas as pd
import torch


def atomic_write(path: str | Path, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save`` atomically."""
    return atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def write_csv(df: pd.DataFrame, path: str | Path, **kwargs: Any) -> Path:
    """``df.to_csv`` atomically (no index unless ``index=True``)."""
    kwargs.setdefault("index", False)
    return atomic_write(path, lambda f: df.to_csv(f, **kwargs))


def write_json(obj: Any, path: str | Path, **kwargs: Any) -> Path:
    """``json.dump`` atomically (newline-terminated)."""
    return atomic_write(path, lambda f: f.write(json.dumps(obj, **kwargs) + "\n"))


def write_text(text: str, path: str | Path) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def append_csv_rows(path: str | Path, rows: list[dict]) -> None:
    """Append rows to a CSV log; columns missing from a row stay empty.

    Rows may bring columns the file has not seen yet (validation metrics every
    ``val_every`` epochs): the file is then rewritten, atomically, with the union.
    """
    path = Path(path)
    if not rows:
        return
    header: list[str] = []
    if path.exists():
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
    new = set().union(*rows)
    if header and new <= set(header):
        with path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=header).writerows(rows)
        return
    old_rows = []
    if header:
        with path.open(newline="") as f:
            old_rows = list(csv.DictReader(f))
    fields = header + [k for r in rows for k in r if k not in header]
    fields = list(dict.fromkeys(fields))

    def write(f):
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows([*old_rows, *rows])

    atomic_write(path, write)
