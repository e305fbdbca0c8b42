"""Writing tables and figures into ``results/<config>/``, with provenance, and the notebooks' words about a run.

Notebooks save every table and figure through :func:`save_table` and
:func:`save_figure`, so everything they produce lands in one folder, and
:func:`provenance` records how it was made (git SHA, config, versions, device, times).
What a notebook says about its run is rendered from the run's values: :func:`config_banner`
opens every notebook, :func:`fmt`, :func:`pct` and :func:`verdict_text` write the numbers and
scorecard verdicts of its "What this shows" cell.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from dynamicdet import paths
from dynamicdet.config import Config, load_config
from dynamicdet.evaluation.evidence import INTERVALS, MIN_LEAD, is_true
from dynamicdet.evaluation.speed import environment
from dynamicdet.files import write_csv, write_text
from dynamicdet.metrics import MIN_RUNS

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


# what each shipped config is for (the notebooks' opening banner); any other config is the reader's own
CONFIG_PURPOSES = {
    "smoke": "the test-sized run (`make test`): every stage in seconds on a few dozen tiny images. Its numbers "
    "check the plumbing and mean nothing about the paper",
    "quick": "the main job (`make reproduce`): the mechanism in minutes on 2 CPU cores. Small but real "
    "numbers from one training run; the verdicts of the README come from `standard`",
    "standard": "the reference results: the scorecard of the README reads this config (over its seeds, "
    "`results/standard/claims.md`); a notebook's own scorecard rows are this one run's",
    "ablation": "the step-1 ablation (`make ablation`): the quick data at twice its epochs, one change of the "
    "training recipe per row",
    "coco": "COCO 2017, the paper's data, on GPUs: the one config whose numbers compare with the paper's",
}


def config_name(config: str) -> str:
    """A config's name: ``quick`` for ``"quick"``, ``mine`` for ``"path/to/mine.yaml"``."""
    path = Path(str(config))
    return path.stem if path.suffix in (".yaml", ".yml") else str(config)


def config_banner(config: str) -> str:
    """The Markdown that opens every notebook: which config ran and what it is for.

    The notebooks' text cells state what the paper reports and how to read each table;
    whatever they say about the run itself is rendered from its values, as this banner is.
    """
    name = config_name(config)
    purpose = CONFIG_PURPOSES.get(name, "a config of your own: the numbers are your run's, on your data")
    return (
        f"**This run: config `{name}`**, {purpose}.\n\n"
        "The text cells state what the paper reports and how to read each table. What this notebook says "
        "about the run itself (numbers, directions, verdicts) is rendered from the run's own tables, like "
        "this banner, in the cells that print Markdown, and summed up at the end under *What this shows*."
    )


def fmt(x: float | None, digits: int = 3, signed: bool = False) -> str:
    """A number as the notebooks' rendered text shows it (``digits`` decimals, ``+`` if ``signed``);
    ``n/a`` for a missing value (None, NaN)."""
    if x is None or pd.isna(x):
        return "n/a"
    return f"{float(x):{'+' if signed else ''}.{digits}f}"


def pct(x: float | None, digits: int = 0) -> str:
    """A fraction as a percentage (``0.77`` -> ``77%``); ``n/a`` for a missing value."""
    return "n/a" if x is None or pd.isna(x) else f"{100 * float(x):.{digits}f}%"


def over_seeds(row: pd.Series) -> str:
    """`` on average over N seeds`` when a scorecard row's value is a mean over seeds, else ``""`` (one run)."""
    runs = row.get("runs", 1)
    return f" on average over {int(runs)} seeds" if pd.notna(runs) and runs > 1 else ""


def verdict_text(row: pd.Series) -> str:
    """One scorecard row's verdict in words (:func:`~dynamicdet.evaluation.claims.notebook_claims`):
    the verdict in italics, with why for *not testable* and what it lacks for *one run* / *two runs*;
    a verdict over seeds says how many, and the margin's mean and 95% interval."""
    verdict = row["verdict"]
    if verdict == "not testable":
        return f"*not testable* in this run ({row['note']})"
    if verdict in ("one run", "two runs"):  # a status, not an outcome: said so, the margin read in the text
        return f"measured in *{verdict}*, no verdict (a verdict needs {MIN_RUNS} seeds)"
    qualifier = row.get("qualifier", "")
    text = f"*{verdict}*" + (f" ({qualifier})" if isinstance(qualifier, str) and qualifier else "")
    level = "90" if pd.notna(row.get("ci90 lo")) else "95"  # an equivalence claim's interval is its 90% one
    lo, hi = row.get(f"ci{level} lo"), row.get(f"ci{level} hi")
    if pd.notna(lo) and pd.notna(hi):
        text += (
            f" over {int(row['runs'])} seeds, margin {fmt(row['margin'], 3, signed=True)} "
            f"({level}% interval {fmt(lo, 3, signed=True)} to {fmt(hi, 3, signed=True)})"
        )
    return text


def capture_in_words(
    c50: dict[str, float],
    ap1: float,
    ap2: float,
    hard_fraction: dict[str, float] | None = None,
    paper_c50: float | None = None,
) -> str:
    """Routings compared at /50 in one or two sentences for a notebook: each one's AP(0.5) (from its c(0.5) and
    the two detectors' AP) and c(0.5), then how the first (the router) ranks against the others, in AP. When
    detector 2 leads by less than :data:`MIN_LEAD`, c(k) is said to be no share of a gain (a ratio of a
    difference within noise), only the AP is read and the paper's c(0.5) is not quoted.

    Args:
        c50: ``{"the default router": c(0.5), "random routing": c(0.5), ...}``, the router first.
        ap1, ap2: the AP of detector 1 (/0) and detector 2 (/100).
        hard_fraction: the fraction of val images each routing actually sent to detector 2 at /50, where it is
            not exactly one half (``route()`` at a calibrated threshold); named beside the routing, with what a
            difference in fraction can account for.
        paper_c50: the paper's c(0.5), quoted when c(k) means something in this run.
    """
    lead = ap2 - ap1
    hard_fraction = {n: k for n, k in (hard_fraction or {}).items() if n in c50 and abs(k - 0.5) > 1e-6}
    # AP(0.5) = AP_1 + c(0.5) (AP_2 - AP_1)
    ap = {name: ap1 + c * lead for name, c in c50.items()}
    each = ", ".join(
        f"{name} {ap[name]:.4f} (c(0.5) {c:.2f}"
        + (f"; it sent {hard_fraction[name]:.3f} of images to detector 2" if name in hard_fraction else "")
        + ")"
        for name, c in c50.items()
    )
    if lead < MIN_LEAD:
        text = (
            f"Detector 2 leads detector 1 by {lead:+.4f} AP in this run, under {MIN_LEAD}: c(k), a share of that "
            f"lead, measures nothing here, so the routings are compared in AP. At /50, AP: {each}. "
        )
    else:
        text = f"At /50, AP (and c(0.5), the share of detector 2's lead of {lead:.4f} AP kept): {each}. "
        if paper_c50 is not None:
            text += f"(The paper: c(0.5) = {paper_c50:.2f}.) "
    for name, k in hard_fraction.items():
        # random routing at fraction k: AP(k) = AP_1 + k (AP_2 - AP_1); a fraction off by (k - 0.5) moves AP by
        # (k - 0.5) (AP_2 - AP_1) before any ranking
        text += (
            f"{name[0].upper() + name[1:]} sent {k:.3f} rather than 0.500 of images to detector 2 (a threshold "
            "set beforehand). "
        )
    if hard_fraction:
        others = "the other routings" if len(hard_fraction) == 1 else "the routings not named so"
        text += (
            f"{others[0].upper() + others[1:]} split exactly half: an AP difference within |k - 0.5| times the "
            "lead can be the fraction rather than the ranking. "
        )
    (router, mine), others = next(iter(ap.items())), list(ap.items())[1:]
    above = [f"{n} (by {mine - a:+.4f})" for n, a in others if mine > a]
    below = [f"{n} (by {mine - a:+.4f})" for n, a in others if mine <= a]
    parts = ([f"above {' and '.join(above)}"] if above else []) + (
        [f"not above {' and '.join(below)}"] if below else []
    )
    return text + f"In AP, {router} is " + "; ".join(parts) + "."


def _text(v) -> str:
    return "" if pd.isna(v) else str(v)  # empty strings come back from a CSV as NaN


def _margin_text(m: float, lo: float, hi: float, level: str = "") -> str:
    if not np.isfinite(m):
        return ""
    return f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]{level}" if np.isfinite(lo) else f"{m:+.3f}"


def to_markdown(df: pd.DataFrame) -> str:
    """The scorecard as a Markdown table, the verdict and its qualifier in plain words, and under it how
    the intervals were computed (the 95% interval; an equivalence claim's 90% one)."""
    if "qualifier" not in df:
        raise ValueError("a scorecard written before these verdict rules (no 'qualifier' column): regenerate it")
    out = df.copy()
    get = {c: out[c] if c in out else pd.Series(math.nan, index=out.index) for c in ("ci90 lo", "ci90 hi")}
    out["margin"] = [
        _margin_text(m, l90, h90, " (90%)") if np.isfinite(l90) else _margin_text(m, lo, hi)
        for m, lo, hi, l90, h90 in zip(
            out["margin"], out["ci95 lo"], out["ci95 hi"], get["ci90 lo"], get["ci90 hi"], strict=True
        )
    ]
    out["this run"] = [f"{v:.3f}" if np.isfinite(v) else "" for v in out["this run"]]
    budget = out["sign differs at 2x epochs"] if "sign differs at 2x epochs" in out else [False] * len(out)
    out["verdict"] = [
        ": ".join(t for t in (_text(v), _text(q)) if t)
        + (f" ({_text(n)})" if _text(n) else "")
        + ("; at 2x epochs (first seed, one run) the margin changes sign" if is_true(b) else "")
        for v, q, n, b in zip(out["verdict"], out["qualifier"], out["note"], budget, strict=True)
    ]
    cols = ["claim", "paper", "paper effect", "this run", "margin", "verdict", "evidence"]
    return out[cols].to_markdown(index=False) + "\n\n" + INTERVALS + "\n"
