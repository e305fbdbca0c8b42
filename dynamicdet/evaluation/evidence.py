"""The scorecard's standard of evidence: what the paper reports, what each run shows, and the verdict.

A claim (:class:`Claim`) is measured once per results folder (one per training seed), giving a
:class:`Run`; :func:`judge` turns the runs into the scorecard's columns by the claim's :class:`Rule`:

- **runs**: a verdict needs :data:`~dynamicdet.metrics.MIN_RUNS` (3) independent runs; with one
  or two, the row carries its margin and says ``one run`` / ``two runs``;
- **superiority** (value - bar > 0): the 95% interval against 0 and the paper's effect
  (:func:`~dynamicdet.metrics.superiority`): ``reproduced``, ``contradicted`` or ``not decided``,
  qualified by the paper's effect and the seeds that would decide it;
- **equivalence** ("as good as"): two one-sided tests, the 90% interval inside +-bound
  (:func:`~dynamicdet.metrics.equivalence`);
- **bounded values** keep their intervals in range: Spearman via Fisher z, shares via logit;
- **frontier**: a static model at lower or equal cost and higher AP dominates the Dy point; if
  it does in every run the claim is ``contradicted``; else the gap to the frontier decides, linear
  in cost and in log cost, and a verdict needs both to agree;
- **headline** (Dy /k against the static model at Dy /100's cost): a superiority test of the AP
  difference, with the cost ratio Dy / static beside it.

:func:`score` is one claim's row of the scorecard (:func:`~.results.to_markdown` the scorecard in plain words);
:data:`PAPER` and :func:`paper_gap` give the paper's effects.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dynamicdet import paths
from dynamicdet.metrics import MIN_RUNS, RUN_WORDS, equivalence, interval, static_frontier, superiority

# The paper's COCO test-dev table (DESIGN.md section 1; V100, batch 1, fp16): model -> (GFLOPs, FPS, AP in points)
PAPER = {
    "YOLOv7": (104.7, 114, 51.4),
    "Dy /10": (112.4, 110, 52.1),
    "Dy /50": (143.2, 96, 53.3),
    "Dy /90": (174.0, 85, 53.8),
    "Dy /100": (181.7, 83, 53.9),
    "YOLOv7-X": (189.9, 105, 53.1),
}

# c(0.5) = (AP(0.5) - AP_1) / (AP_2 - AP_1), with the static YOLOv7 as the easy route: (53.3 - 51.4) / (53.9 - 51.4)
PAPER_C50 = (PAPER["Dy /50"][2] - PAPER["YOLOv7"][2]) / (PAPER["Dy /100"][2] - PAPER["YOLOv7"][2])
C50_TOLERANCE = 0.05  # c(0.5) counts as the paper's when it is at most this far below it
# detector 2's gain: Dy /100 - YOLOv7 = 53.9 - 51.4 = 2.5 AP = +0.025
PAPER_GAIN = (PAPER["Dy /100"][2] - PAPER["YOLOv7"][2]) / 100
# random routing keeps about half of the gain at /50 (c(0.5) = 0.5 for a linear mix of the two detectors' AP), so
# the paper's c(0.5) beats it by about 0.76 - 0.5 = +0.26 (the paper reports no random routing: an implied effect)
PAPER_OVER_RANDOM = PAPER_C50 - 0.5
# in AP: random routing at /50 would reach 51.4 + 0.5 x 2.5 = 52.65, so Dy /50 (53.3) beats it by 0.26 x 2.5 = 0.65 AP
PAPER_RANDOM_50 = PAPER["YOLOv7"][2] + 0.5 * (PAPER["Dy /100"][2] - PAPER["YOLOv7"][2])
# c(k) = (AP(k) - AP_1) / (AP_2 - AP_1) is read as a share only when detector 2 leads by more than this: the
# lead moved by 0.023 between 1 and 2 torch threads at quick (results/quick_tuning/thread_count.csv)
MIN_LEAD = 0.02
INTERVALS = (
    "Intervals: Student-t 95% over seeds; Spearman via Fisher z; shares via logit; "
    "equivalence: TOST at 90% (the 90% interval shown); frontier gaps linear in cost, then in log cost."
)


# a headline claim's cost ratio above 1 + this in every run is "costs more" (latencies are timed to +-2%, 95%)
COST_TIE = 0.02


@dataclass(frozen=True)
class Rule:
    """How a claim's runs are judged.

    Attributes:
        kind: ``"superiority"``, ``"equivalence"``, ``"frontier"`` or ``"headline"``.
        effect: the paper's margin, in the margin's units (NaN: the paper reports none); for a
            frontier, the gap with AP linear in cost.
        effect_log: a frontier's paper gap with AP linear in log cost.
        ap: the margin is in AP (a fraction): the effect also reads in points.
        transform: the value's range: None, ``"fisher"`` (a correlation) or ``"logit"`` (a share).
            With a transform, the interval is of the value and ``bar`` is subtracted after.
        bar: with a transform, the fixed number the value is compared with (margin = value - bar).
        bound: equivalence: the margin must lie within +-bound.
        cost_tie: headline: a cost ratio above 1 + this in every run is "costs more" (a latency: its timing
            precision, :data:`COST_TIE`; GFLOPs, counted exactly: 0).
        paper_ratio: headline: the paper's own cost ratio of its Dy point to YOLOv7-X (NaN: not reported).
    """

    kind: str = "superiority"
    effect: float = math.nan
    effect_log: float = math.nan
    ap: bool = True
    transform: str | None = None
    bar: float = 0.0
    bound: float = math.nan
    cost_tie: float = 0.0
    paper_ratio: float = math.nan


@dataclass(frozen=True)
class Run:
    """What one results folder shows for a claim.

    Attributes:
        value: the run's value (``this run``).
        margin: value - bar (>= 0: the claim holds in this run); a frontier: the gap, AP linear in cost.
        margin_log: a frontier: the gap with AP linear in log cost.
        dominated_by: a frontier: the static models at lower or equal cost and higher AP.
        dominates: a frontier: the static models the Dy point beats at lower cost.
        n_static: a frontier: how many static models the run has (two make a line).
        cost_ratio: a headline claim: cost(Dy) / cost(static).
    """

    value: float
    margin: float
    margin_log: float = math.nan
    dominated_by: tuple[str, ...] = ()
    dominates: tuple[str, ...] = ()
    n_static: int = 2
    cost_ratio: float = math.nan


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
        bar: how the bar reads, for the table (``"> 0"``).
        measure: ``fn(folder) -> Run``; raises :class:`NotTestable`.
        seeded: False for a claim whose models are trained once per config (two-stage):
            over seeds it is tested on the config's own folder (one run).
        rule: how its runs are judged, with the paper's effect.
    """

    name: str
    notebook: str
    paper: str
    evidence: str
    bar: str
    measure: Callable[[Path], Run]
    seeded: bool = True
    rule: Rule = field(default_factory=Rule)


def paper_gap(dy: str, cost: str, log_cost: bool) -> float:
    """The paper's own frontier gap of Dy ``dy``: its AP less the YOLOv7 - YOLOv7-X line's at its cost (AP as a
    fraction; ``cost``: ``GFLOPs`` or ``latency_ms_b1``, latency = 1000 / FPS ms).

    By GFLOPs, /50: 0.533 - (0.514 + (143.2 - 104.7) (0.531 - 0.514) / (189.9 - 104.7)) = +0.011 (+0.010 in
    log cost); /90: +0.010 (+0.009). By latency the paper's Dy points are slower than YOLOv7-X (96 and 85 FPS
    against 105), so the line is extended past YOLOv7-X and the gaps are negative: /50 -0.018, /90 -0.044.
    """
    t = pd.DataFrame(
        [(m, g, 1000 / fps, ap / 100) for m, (g, fps, ap) in PAPER.items()],
        columns=["model", "GFLOPs", "latency_ms_b1", "AP"],
    )
    static = t[t["model"].isin(["YOLOv7", "YOLOv7-X"])]
    return float(static_frontier(t[t["model"] == dy], static, cost, log_cost=log_cost)["gap"].iloc[0])


def paper_cost(dy: str, col: str, reported: bool) -> str:
    """What the paper reports of Dy ``dy`` against YOLOv7-X along the cost column ``col`` (``reported``: at all)."""
    (g, fps, ap), (gx, fpsx, apx) = PAPER[dy], PAPER["YOLOv7-X"]
    if not reported:
        return f"{dy} {ap} AP vs YOLOv7-X {apx}; not reported at this cost (the paper times batch 1 in PyTorch)"
    if col == "GFLOPs":
        return f"{dy} {ap} AP at {g}G vs YOLOv7-X {apx} at {gx}G ({g / gx:.2f}x the cost)"
    return f"{dy} {ap} AP at {fps} FPS vs YOLOv7-X {apx} at {fpsx} FPS ({fpsx / fps:.2f}x the latency)"


def headline_rule(dy: str, col: str, reported: bool) -> Rule:
    """The paper's own test of Dy ``dy`` along the cost column ``col``: more AP than YOLOv7-X (/50 53.3 - 53.1 =
    +0.2 AP, /90 +0.7 AP, whatever the cost) at less cost, with the paper's cost ratio there where it reports one."""
    (g, fps, ap), (gx, fpsx, apx) = PAPER[dy], PAPER["YOLOv7-X"]
    ratio = (g / gx if col == "GFLOPs" else fpsx / fps) if reported else math.nan
    tie = 0.0 if col == "GFLOPs" else COST_TIE  # GFLOPs are counted exactly; a latency is timed to +-COST_TIE
    return Rule("headline", effect=(ap - apx) / 100, cost_tie=tie, paper_ratio=ratio)


def effect_text(rule: Rule) -> str:
    """The paper's effect in the margin's units: ``"+0.025 (2.5 AP)"``; ``"not reported"``."""
    if not math.isfinite(rule.effect):
        return "not reported"
    text = _ap_text(rule.effect) if rule.ap else f"{rule.effect:+.2f}"
    if rule.kind == "frontier" and math.isfinite(rule.effect_log):
        text += f"; log cost {_ap_text(rule.effect_log)}"
    return text


def _ap_text(x: float) -> str:
    """An AP difference as a fraction and in points: ``"+0.025 (2.5 AP)"``; under 1 AP point, one more digit
    when three decimals would round it (the paper's 0.65-AP lead over random routing: ``"+0.0065 (0.65 AP)"``)."""
    d = 4 if abs(x) < 0.01 and abs(round(x, 3) - x) > 1e-9 else 3
    return f"{x:+.{d}f} ({100 * x:.{d - 2}f} AP)"


def _blank() -> dict:
    cols = ("margin", "std", "ci95 lo", "ci95 hi", "ci90 lo", "ci90 hi")
    return {**dict.fromkeys(cols, math.nan), "verdict": "not testable", "qualifier": "", "note": ""}


def _stats(values: np.ndarray, margins: np.ndarray, rule: Rule) -> dict:
    """Mean margin, std and intervals (of value - bar on the value's own scale)."""
    bar = rule.bar if rule.transform else 0.0
    _, sd, lo, hi = interval(values, transform=rule.transform)
    out = {"margin": float(margins.mean()), "std": sd, "ci95 lo": lo - bar, "ci95 hi": hi - bar}
    if rule.kind == "equivalence":
        _, _, lo90, hi90 = interval(values, level=0.90, transform=rule.transform)
        out |= {"ci90 lo": lo90 - bar, "ci90 hi": hi90 - bar}
    return out


def _band(m: float, lo: float, hi: float) -> str:
    return f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" if math.isfinite(lo) else f"{m:+.3f}"


def _count(runs: list[Run], attr: str, label: str) -> str:
    """``"dominated by yolov8n (static) in 3 of 3 runs"``: the static models named in any run."""
    hit = [r for r in runs if getattr(r, attr)]
    if not hit:
        return ""
    names = ", ".join(dict.fromkeys(n for r in hit for n in getattr(r, attr)))
    return f"{label} {names} in {len(hit)} of {len(runs)} runs"


def _frontier(runs: list[Run], rule: Rule) -> dict:
    out = _blank()
    n = len(runs)
    dominated, dominates = _count(runs, "dominated_by", "dominated by"), _count(runs, "dominates", "dominates")
    lin = np.array([r.margin for r in runs], dtype=float)
    log = np.array([r.margin_log for r in runs], dtype=float)
    if np.isfinite(lin).all():
        out |= _stats(lin, lin, rule)
    if all(r.dominated_by for r in runs):  # below any frontier in every run, with one static model or several
        out |= {"verdict": RUN_WORDS.get(n, "contradicted"), "qualifier": dominated, "note": dominates}
        return out
    one = sum(r.n_static < 2 for r in runs)
    if one:
        out["note"] = "; ".join(
            t for t in (f"one static model in {one} of {n} runs: the frontier needs two", dominated, dominates) if t
        )
        return out
    if not (np.isfinite(lin).all() and np.isfinite(log).all()):
        out["note"] = "the gap is not a number in this run"
        return out
    (w_lin, q_lin), (w_log, q_log) = superiority(lin, effect=rule.effect), superiority(log, effect=rule.effect_log)
    _, _, lo, hi = interval(log)
    log_band = _band(float(log.mean()), lo, hi)
    if w_lin == w_log:
        out["verdict"] = w_lin
        out["qualifier"] = q_lin if q_lin == q_log else f"linear in cost: {q_lin}; in log cost: {q_log}"
    else:
        lin_band = _band(out["margin"], out["ci95 lo"], out["ci95 hi"])
        out["verdict"] = "not decided"
        out["qualifier"] = f"linear in cost {lin_band} ({w_lin}), in log cost {log_band} ({w_log})"
    out["note"] = "; ".join(t for t in (f"gap in log cost {log_band}", dominated, dominates) if t)
    return out


def judge(runs: list[Run], rule: Rule) -> dict:
    """The scorecard's columns for a claim's runs: ``margin``, ``std``, ``ci95 lo``, ``ci95 hi``,
    ``ci90 lo``, ``ci90 hi`` (equivalence), ``verdict``, ``qualifier`` and ``note``."""
    if not runs:
        return _blank()
    if rule.kind == "frontier":
        return _frontier(runs, rule)
    out = _blank()
    margins = np.array([r.margin for r in runs], dtype=float)
    values = np.array([r.value for r in runs], dtype=float) if rule.transform else margins
    if not np.isfinite(margins).all() or not np.isfinite(values).all():
        out["note"] = "the value is not a number in this run"
        return out
    out |= _stats(values, margins, rule)
    bar = rule.bar if rule.transform else 0.0
    if rule.kind == "equivalence":
        out["verdict"], out["qualifier"] = equivalence(values, rule.bound, center=bar, transform=rule.transform)
    else:
        out["verdict"], out["qualifier"] = superiority(values, bar, rule.effect, rule.transform)
    if rule.kind == "headline":
        ratios = np.array([r.cost_ratio for r in runs], dtype=float)
        note = f"cost Dy / static {ratios.mean():.2f}x (mean of {len(runs)} run{'s' * (len(runs) > 1)})"
        more = int((ratios > 1).sum())
        out["note"] = note + (f"; costs more in {more} of {len(runs)} runs" if more else "")
        if (ratios > 1 + rule.cost_tie).all() and len(runs) >= MIN_RUNS:
            # "more AP at less cost" fails on cost whatever the AP: the static model is the cheaper one
            ap_words = ": ".join(t for t in (out["verdict"], out["qualifier"]) if t)
            out["verdict"] = "contradicted"
            paper = (
                f", as the paper's does ({rule.paper_ratio:.2f}x)" if rule.paper_ratio > 1
                else f", the paper's less ({rule.paper_ratio:.2f}x)" if math.isfinite(rule.paper_ratio)
                else ", at a cost the paper does not report"
            )  # fmt: skip
            more = f"Dy costs more in every run ({ratios.mean():.2f}x)"
            out["qualifier"] = f"{more}{paper}; its AP margin alone: {ap_words}"
    return out


COLUMNS = [
    "claim", "notebook", "paper", "paper effect", "bar", "this run", "margin", "std", "ci95 lo", "ci95 hi",
    "ci90 lo", "ci90 hi", "runs", "verdict", "qualifier", "evidence", "note",
]  # fmt: skip


def score(claim: Claim, folders: list[Path], base: Path | None = None) -> dict:
    """One claim's row of the scorecard (the columns :data:`COLUMNS`) over the results ``folders``.

    A claim trained once per config (``seeded=False``) is tested on ``base`` (default: the first
    folder) alone. One folder that cannot test the claim makes it ``not testable`` over all of them,
    the note naming the folder.
    """
    runs: list[Run] = []
    notes = []
    tested = folders if claim.seeded or len(folders) == 1 else [base or folders[0]]
    for i, f in enumerate(tested):
        try:
            runs.append(claim.measure(f))
        except (NotTestable, KeyError) as e:  # KeyError: a table without the row or column (c(k) all NaN)
            note = str(e) if isinstance(e, NotTestable) else f"{claim.evidence}.csv has no {e}"
            notes.append(f"{f.name} ({i + 1} of {len(tested)}): {note}" if len(tested) > 1 else note)
            runs = []
            break
    judged = judge(runs, claim.rule)
    notes.append(judged.pop("note"))
    if runs and len(tested) < len(folders):
        notes.append("trained once per config, not per seed")
    testable = judged["verdict"] != "not testable"
    return {
        "claim": claim.name,
        "notebook": claim.notebook,
        "paper": claim.paper,
        "paper effect": effect_text(claim.rule),
        "bar": claim.bar,
        "this run": float(np.mean([r.value for r in runs])) if testable else math.nan,
        **judged,
        "runs": len(tested),
        "evidence": "/".join((*_relative(tested[0]).parts, f"{claim.evidence}.csv")),
        "note": "; ".join(n for n in notes if n),
    }


def _relative(folder: Path) -> Path:
    """``results/<config>/...`` whatever the results root (``DYNAMICDET_RESULTS`` moves it, e.g. ``make nbval``)."""
    try:
        return Path("results") / folder.resolve().relative_to(paths.results_dir().resolve())
    except ValueError:
        return Path("results") / folder.name


def is_true(flag: object) -> bool:
    """A flag read from a table: True, numpy's True (a bool column) or the string "True"; NaN is not."""
    return isinstance(flag, (bool, np.bool_, str)) and str(flag) == "True"


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
