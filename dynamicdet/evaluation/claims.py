"""The claims scorecard: which of the paper's claims this run reproduces, by how much, from which file.

Each claim is a function of one results folder (``results/<config>/``, the tables the
notebooks write) that returns the run's value and its margin over a *bar* the value must clear
(value - bar), so a margin >= 0 means the claim holds in that run. Given the
folders of several seeds of one config, every margin gets a mean, a standard deviation
and a 95% interval (Student's t over the seeds), and the verdict follows the interval:

- **reproduced**: the interval lies above 0 (one seed: the margin is >= 0);
- **not reproduced**: the interval lies below 0 (one seed: the margin is < 0);
- **inconclusive**: the interval straddles 0 (only with two or more seeds);
- **not testable**: the run cannot test the claim (a table is missing, one static
  scale where a frontier needs two, two-stage models too small to have learned).

The two-stage claims are tested on one run even when seeds exist (their models are trained
once per config): over seeds they read the config's own results folder and say so.

``make reproduce`` writes ``results/<config>/claims.{csv,md}`` and prints it; each
notebook shows its own rows at its end (:func:`notebook_claims`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dynamicdet import paths
from dynamicdet.files import write_csv, write_text
from dynamicdet.metrics import interval, static_frontier, verdict

# Dy-YOLOv7 (COCO test-dev): static YOLOv7 51.4 AP, Dy /50 53.3, Dy /100 53.9
# c(0.5) = (AP(0.5) - AP_1) / (AP_2 - AP_1), with the static YOLOv7 as the easy route
PAPER_C50 = (53.3 - 51.4) / (53.9 - 51.4)
C50_TOLERANCE = 0.05  # c(0.5) counts as the paper's when it is at most this far below it
BALANCE_TOLERANCE = 0.1  # the adaptive offset balances the routes: |share of phi > 0.5 - 0.5| <= this
DIFFICULTY_BAR = 0.5  # Spearman(phi, generator difficulty) that counts as "hard = many small occluded objects"
# c(k) = (AP(k) - AP_1) / (AP_2 - AP_1) is read as a share only when detector 2 leads by more than this: the
# lead moved by 0.023 between 1 and 2 torch threads at quick (results/quick_tuning/thread_count.csv)
MIN_LEAD = 0.02
LEARNED_AP = 0.05  # a two-stage model under this AP has not learned: its claims are not testable here


class NotTestable(Exception):
    """The run cannot test this claim; the message says why."""


@dataclass(frozen=True)
class Claim:
    """One claim of the paper and how a results folder tests it.

    Attributes:
        name: the claim in a sentence.
        notebook: the notebook whose tables test it (``"06"``).
        paper: what the paper reports.
        evidence: the table (file stem in the results folder) the value comes from.
        measure: ``fn(folder) -> (value, margin)``, margin = how far the value clears the bar
            (>= 0: the claim holds); raises :class:`NotTestable`.
        bar: how the bar reads, for the table (``"> 0"``).
        seeded: False for a claim whose models are trained once per config (two-stage):
            over seeds it is tested on the config's own folder.
    """

    name: str
    notebook: str
    paper: str
    evidence: str
    bar: str
    measure: Callable[[Path], tuple[float, float]]
    seeded: bool = True


def _read(folder: Path, stem: str) -> pd.DataFrame:
    path = folder / f"{stem}.csv"
    if not path.exists():
        raise NotTestable(f"{stem}.csv not written by this run")
    return pd.read_csv(path)


def _row(df: pd.DataFrame, column: str, value: str, stem: str) -> pd.Series:
    hit = df[df[column] == value]
    if hit.empty:
        raise NotTestable(f"{stem}.csv has no row {column} = {value!r}")
    return hit.iloc[0]


def _joint_gain(folder: Path) -> tuple[float, float]:
    df = _read(folder, "joint_training")
    ap = df.set_index("detector")["AP"]
    gain = float(ap.iloc[1] - ap.iloc[0])
    return gain, gain


def _static_same(folder: Path) -> tuple[float, float]:
    df = _read(folder, "variable_speed").set_index("model")
    static = [m for m in df.index if m.endswith("(static)")]
    if not static:
        raise NotTestable("no static model in variable_speed.csv")
    # the static model of the dynamic model's architecture: the one with Dy /0's GFLOPs (the router adds < 1%)
    same = min(static, key=lambda m: abs(df.loc[m, "GFLOPs"] - df.loc["Dy /0", "GFLOPs"]))
    diff = float(df.loc["Dy /0", "AP"] - df.loc[same, "AP"])
    return diff, diff


def _capture(router: str) -> Callable[[Path], tuple[float, float]]:
    def measure(folder: Path) -> tuple[float, float]:
        df = _read(folder, "capture_ratio").set_index("router")["c(0.5)"]
        return float(df["learned"]), float(df["learned"] - df[router])

    return measure


def _c50(folder: Path) -> tuple[float, float]:
    ap = _read(folder, "joint_training")["AP"]
    if ap.iloc[1] - ap.iloc[0] < MIN_LEAD:  # c(k) divides by the lead: a lead within noise makes it any number
        raise NotTestable(f"detector 2's lead {ap.iloc[1] - ap.iloc[0]:.3f} is under {MIN_LEAD}: c(k) is unstable")
    df = _read(folder, "capture_ratio").set_index("router")["c(0.5)"]
    return float(df["learned"]), float(df["learned"]) - (PAPER_C50 - C50_TOLERANCE)


def _frontier_claim(by: str, paper: str, cost: str) -> Claim:
    """The claim "Dy /50 on or above the static frontier, by ``by``": its gap to the frontier along ``cost``, a
    column of ``variable_speed.csv``, or ``"latency_ms_batch"`` for the latency at the table's batch size (the
    column ``latency_ms_b<B>``, B > 1)."""

    def measure(folder: Path) -> tuple[float, float]:
        df = _read(folder, "variable_speed")
        static = df[df["model"].str.endswith("(static)")]
        if len(static) < 2:
            raise NotTestable(f"{len(static)} static scale(s): the frontier needs two")
        col = cost
        if cost == "latency_ms_batch":
            cols = [c for c in df.columns if c.startswith("latency_ms_b") and c != "latency_ms_b1"]
            if not cols:
                raise NotTestable("variable_speed.csv has no latency at batch > 1")
            col = cols[0]
        if col not in df:
            raise NotTestable(f"variable_speed.csv has no column {col}")
        flag = "consistent_onnx" if col == "latency_ms_onnx_b1" else "consistent"
        if col.startswith("latency") and flag in df and not df[flag].fillna(True).astype(bool).all():
            raise NotTestable(f"the latency figures failed their consistency checks ({flag} False)")
        points = df[df["model"] == "Dy /50"]
        if points.empty:
            raise NotTestable("variable_speed.csv has no Dy /50 row")
        gap = static_frontier(points=points, static=static, cost=col)["gap"].iloc[0]
        return float(gap), float(gap)

    return Claim(
        f"Dy /50 on or above the static frontier, by {by}", "06", paper, "variable_speed", "AP - frontier >= 0", measure
    )


def _balance(folder: Path) -> tuple[float, float]:
    df = _read(folder, "router_variants")
    share = float(_row(df, "overrides", "{}", "router_variants")["val phi > 0.5"])
    # margin = tolerance - |share - 0.5|: >= 0 when the routes are balanced
    return share, BALANCE_TOLERANCE - abs(share - 0.5)


def _difficulty(folder: Path) -> tuple[float, float]:
    df = _read(folder, "difficulty_correlation").set_index("attribute")
    if "difficulty" not in df.index:
        raise NotTestable("no generator difficulty (real data)")
    rho = float(df.loc["difficulty", "Spearman corr. with phi"])
    return rho, rho - DIFFICULTY_BAR


def _two_stage(kind: str, dy: str, static: str) -> Callable[[Path], tuple[float, float]]:
    def measure(folder: Path) -> tuple[float, float]:
        stem = f"two_stage_{kind}"
        df = _read(folder, stem).set_index("model")
        for m in (dy, static):
            if m not in df.index:
                raise NotTestable(f"{stem}.csv has no row {m!r}")
        if max(df.loc[dy, "AP"], df.loc[static, "AP"]) < LEARNED_AP:
            raise NotTestable(f"two-stage APs under {LEARNED_AP}: models too small to have learned at this config")
        diff = float(df.loc[dy, "AP"] - df.loc[static, "AP"])
        return diff, diff

    return measure


CLAIMS: list[Claim] = [
    Claim(
        "detector 2 beats detector 1",
        "02",
        "+2.5 AP (YOLOv7 51.4 -> Dy /100 53.9)",
        "joint_training",
        "AP2 - AP1 > 0",
        _joint_gain,
    ),
    Claim(
        "joint training leaves detector 1 as good as a static model of its architecture",
        "06",
        "implied (Dy /10 52.1 vs YOLOv7 51.4)",
        "variable_speed",
        "AP(Dy /0) - AP(static) >= 0",
        _static_same,
    ),
    Claim(
        "the router beats random routing at /50",
        "06",
        "implied (not reported)",
        "capture_ratio",
        "c(0.5) > random",
        _capture("random"),
    ),
    Claim(
        "the router beats confidence escalation at /50",
        "06",
        "not reported (a baseline of this project)",
        "capture_ratio",
        "c(0.5) > escalation",
        _capture("confidence escalation"),
    ),
    Claim(
        "/50 keeps about three quarters of detector 2's gain",
        "06",
        f"c(0.5) = {PAPER_C50:.2f}",
        "capture_ratio",
        f"c(0.5) >= {PAPER_C50 - C50_TOLERANCE:.2f}",
        _c50,
    ),
    _frontier_claim("latency (batch 1)", "Dy /50 53.3 AP at 96 FPS vs YOLOv7-X 53.1 at 105", "latency_ms_b1"),
    _frontier_claim("latency (batch 8)", "not reported (the paper times batch 1)", "latency_ms_batch"),
    _frontier_claim(
        "onnxruntime latency (batch 1)", "not reported (the paper times PyTorch on a GPU)", "latency_ms_onnx_b1"
    ),
    _frontier_claim("GFLOPs", "Dy /50 53.3 AP at 143G vs YOLOv7-X 53.1 at 190G", "GFLOPs"),
    Claim(
        "the adaptive offset balances the routes without a tuned hyperparameter",
        "04",
        "hyperparameter-free (offset = median)",
        "router_variants",
        f"|val share phi > 0.5 - 0.5| <= {BALANCE_TOLERANCE}",
        _balance,
    ),
    Claim(
        "hard images are the crowded, small, occluded, cluttered ones",
        "07",
        "qualitative (figure)",
        "difficulty_correlation",
        f"Spearman(phi, difficulty) >= {DIFFICULTY_BAR}",
        _difficulty,
    ),
    Claim(
        "two-stage: Dy /50 at or above the deeper static trunk",
        "08",
        "Dy-Faster R50 /50 39.5 vs R101 39.4",
        "two_stage_faster_rcnn",
        "AP(Dy /50) - AP(R34) >= 0",
        _two_stage("faster_rcnn", "Dy /50", "static resnet34"),
        seeded=False,
    ),
    Claim(
        "two-stage: Dy /90 at or above the deeper static trunk",
        "08",
        "Dy-Faster R50 /90 40.4 vs R101 39.4",
        "two_stage_faster_rcnn",
        "AP(Dy /90) - AP(R34) >= 0",
        _two_stage("faster_rcnn", "Dy /90", "static resnet34"),
        seeded=False,
    ),
    Claim(
        "two-stage: detector 2 beats detector 1 (Faster R-CNN)",
        "08",
        "Dy-Faster /90 40.4 vs R50 37.4",
        "two_stage_faster_rcnn",
        "AP(Dy /100) - AP(Dy /0) > 0",
        _two_stage("faster_rcnn", "Dy /100", "Dy /0"),
        seeded=False,
    ),
    Claim(
        "two-stage: detector 2 beats detector 1 (Mask R-CNN, box)",
        "08",
        "Dy-Mask Swin-T /90 49.9 vs Swin-T 46.0",
        "two_stage_mask_rcnn",
        "AP(Dy /100) - AP(Dy /0) > 0",
        _two_stage("mask_rcnn", "Dy /100", "Dy /0"),
        seeded=False,
    ),
]


def claims_table(
    folders: list[Path] | Path, claims: list[Claim] | None = None, base: Path | None = None
) -> pd.DataFrame:
    """The scorecard of one run (a results folder) or of several seeds of one config.

    ``base``: the config's own results folder, where the claims trained once per config
    (``seeded=False``) are tested when ``folders`` are seeds (default: the first folder).

    Returns:
        One row per claim: ``claim``, ``notebook``, ``paper``, ``bar``, ``this run`` (mean value
        over seeds), ``margin`` (mean of value - bar), ``std``, ``ci95 lo``, ``ci95 hi``,
        ``seeds``, ``verdict``, ``evidence`` (``results/<folder>/<table>.csv``), ``note``
        (why a claim is not testable).
    """
    folders = [folders] if isinstance(folders, Path) else list(folders)
    rows = []
    for c in claims or CLAIMS:
        values, margins, note = [], [], ""
        tested = folders if c.seeded or len(folders) == 1 else [base or folders[0]]
        for i, f in enumerate(tested):
            try:
                value, margin = c.measure(f)
            except (NotTestable, KeyError) as e:  # KeyError: a table without the row or column (c(k) all NaN)
                note = str(e) if isinstance(e, NotTestable) else f"{c.evidence}.csv has no {e}"
                # one seed that cannot test the claim makes the claim not testable over the seeds
                note = f"{f.name} ({i + 1} of {len(tested)}): {note}" if len(tested) > 1 else note
                values, margins = [], []
                break
            values.append(value)
            margins.append(margin)
        finite = bool(margins) and bool(np.isfinite(margins).all())
        if not note and not finite:
            note = "the value is not a number in this run"
        mean, sd, lo, hi = interval(np.array(margins)) if finite else (math.nan,) * 4
        if finite and len(tested) < len(folders):
            note = "one run: these models are trained once per config, not per seed"
        rows.append(
            {
                "claim": c.name,
                "notebook": c.notebook,
                "paper": c.paper,
                "bar": c.bar,
                "this run": float(np.mean(values)) if finite else math.nan,
                "margin": mean,
                "std": sd,
                "ci95 lo": lo,
                "ci95 hi": hi,
                "seeds": len(tested),
                "verdict": verdict(np.array(margins)) if finite else "not testable",
                "evidence": "/".join((*_relative(tested[0]).parts, f"{c.evidence}.csv")),
                "note": note,
            }
        )
    return pd.DataFrame(rows)


def _relative(folder: Path) -> Path:
    try:
        return folder.resolve().relative_to(paths.REPO_ROOT)
    except ValueError:
        return Path("results") / folder.name


def to_markdown(df: pd.DataFrame) -> str:
    """The scorecard as a Markdown table (the columns a reader needs; intervals when seeds exist)."""
    cols = ["claim", "paper", "this run", "margin", "verdict", "evidence"]
    out = df.copy()
    if (out["seeds"] > 1).any():
        out["margin"] = [
            f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) else (f"{m:+.3f}" if np.isfinite(m) else "")
            for m, lo, hi in zip(out["margin"], out["ci95 lo"], out["ci95 hi"], strict=True)
        ]
    else:
        out["margin"] = [f"{m:+.3f}" if np.isfinite(m) else "" for m in out["margin"]]
    out["this run"] = [f"{v:.3f}" if np.isfinite(v) else "" for v in out["this run"]]
    notes = ["" if pd.isna(n) else str(n) for n in out["note"]]  # empty notes come back from a CSV as NaN
    out["verdict"] = [v if not n else f"{v}: {n}" for v, n in zip(out["verdict"], notes, strict=True)]
    return out[cols].to_markdown(index=False) + "\n"


def seed_folders(out: Path) -> list[Path]:
    """The seeds' folders of a results folder (``<out>/seeds/seed<k>/``, as ``seeds_provenance.json``
    lists them; ``python -m dynamicdet.experiments.seeds tables``), or [] without seeds."""
    record = out / "seeds_provenance.json"
    if not record.exists():
        return []
    folders = [out / "seeds" / f"seed{k}" for k in json.loads(record.read_text())["seeds"]]
    missing = [f for f in folders if not f.is_dir()]
    if missing:
        raise FileNotFoundError(f"{record}: seed folders missing: {[str(f) for f in missing]}")
    return folders


def write_claims(config: str, folders: list[Path] | None = None) -> pd.DataFrame:
    """Write ``results/<config>/claims.{csv,md}``: over the seeds' ``folders`` when given or when the
    folder has seeds (:func:`seed_folders`), else from the folder's own tables."""
    out = paths.results_dir(config)
    folders = folders or seed_folders(out) or [out]
    df = claims_table(folders, base=out)
    write_csv(df, out / "claims.csv")
    write_text(to_markdown(df), out / "claims.md")
    return df


def notebook_claims(config: str, notebook: str) -> pd.DataFrame:
    """The rows of one notebook (``"06"``) of the scorecard of ``results/<config>/``, as it stands now."""
    df = claims_table(paths.results_dir(config), [c for c in CLAIMS if c.notebook == notebook])
    return df[["claim", "paper", "bar", "this run", "margin", "verdict", "note"]]
