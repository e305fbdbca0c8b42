"""The record the bench scripts share: ``results/<name>.{json,md}``, its provenance and a row's mark.

- :func:`stamp`: a run's provenance (date, git sha, environment, wall time), the keys every record holds;
- :func:`provenance`: the header line a report prints from it;
- :func:`save`: load ``results/<name>.json``, merge one config's record, write the json and its markdown;
- :func:`mark` and :func:`spread`: a suite row's PASS / MISS and how its paired ratio was taken.

Used by ``bench/suite.py`` (and its item modules), ``bench/segment_compare.py`` and
``bench/controller_compare.py``; imported by module name, as the scripts run with ``bench/`` on ``sys.path``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from dynamicdet import paths
from dynamicdet.evaluation.results import git_sha
from dynamicdet.evaluation.speed import environment


def stamp(t0: float) -> dict:
    """The provenance of a run started at ``t0`` (``time.time()``): date, git sha, environment, wall time."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git_sha": git_sha(),
        "env": environment(),
        "wall_s": round(time.time() - t0, 1),
    }


def provenance(r: dict) -> str:
    """The header line of a record's section: when, at which commit, on what (the caller adds its own)."""
    e = r["env"]
    return f"{r['date']}, git {r['git_sha']}, {e['device']}, {e['threads']} threads, torch {e['torch']}"


def save(
    name: str,
    rec: dict,
    render: Callable[[dict], str],
    keep: Callable[[dict, dict], dict] | None = None,
) -> dict:
    """Merge ``rec`` into ``results/<name>.json`` under ``rec["config"]`` and rewrite ``<name>.md`` from all.

    ``keep(old, rec)``, when given and the file already holds this config, returns the record to
    store in its place (a partial run keeping the old record's other parts). Returns the stored record.
    """
    root = paths.results_dir()
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.json"
    allrec = json.loads(path.read_text()) if path.exists() else {}
    old = allrec.get(rec["config"])
    if keep is not None and old is not None:
        rec = keep(old, rec)
    allrec[rec["config"]] = rec
    path.write_text(json.dumps(allrec, indent=2, default=float))
    (root / f"{name}.md").write_text(render(allrec))
    return rec


def mark(value: float, goal: float, higher_is_better: bool) -> str:
    """PASS when ``value`` meets ``goal`` (at least it, or at most it), else MISS."""
    ok = value >= goal if higher_is_better else value <= goal
    return "PASS" if ok else "MISS"


def spread(r: dict) -> str:
    """How a paired ratio (``speed.paired_ratio``) was taken (for a row's detail)."""
    return f"median of {r['rounds']} per-round ratios ({r['lo']:.3f}-{r['hi']:.3f})"
