"""The claims scorecard: which of the paper's claims this run reproduces, by how much, from which file.

Each claim (:data:`CLAIMS`) is a function of one results folder (``results/<config>/``, or one seed's
``results/<config>/seeds/seed<k>/``) that returns what the run shows: its value and its margin over a *bar*
(value - bar, >= 0 when the claim holds in that run). Over the seeds' folders, :mod:`.evidence` applies one
standard of evidence (three runs for a verdict; intervals against 0 and the paper's effect; equivalence tests
for "as good as"; dominance, then the gap linear in cost and in log cost, for the frontier). ``make reproduce``
writes ``results/<config>/claims.{csv,md}``; each notebook shows its own rows (:func:`notebook_claims`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from dynamicdet import paths
from dynamicdet.evaluation import evidence
from dynamicdet.evaluation.evidence import (
    C50_TOLERANCE,
    MIN_LEAD,
    PAPER,
    PAPER_C50,
    PAPER_GAIN,
    PAPER_OVER_RANDOM,
    PAPER_RANDOM_50,
    Claim,
    NotTestable,
    Rule,
    Run,
    seed_folders,
)
from dynamicdet.evaluation.results import capture_in_words, to_markdown  # noqa: F401 (notebooks import them here)
from dynamicdet.files import write_csv, write_text
from dynamicdet.metrics import dominance, static_frontier

EQUIVALENCE_MARGIN = 0.01  # "as good as": within +-0.01 AP, the paper's 1-point scale (its gaps are 0.2 to 2.5 AP)
BALANCE_TOLERANCE = 0.1  # the adaptive offset balances the routes: val share of phi > 0.5 within 0.5 +- this
DIFFICULTY_BAR = 0.5  # Spearman(phi, generator difficulty) that counts as "hard = many small occluded objects"
LEARNED_AP = 0.05  # a two-stage model under this AP has not learned: its claims are not testable here
HEADLINE_STATIC = "yolov8ns (static)"  # the static YOLOv8 width within 10% of Dy /100's GFLOPs (the paper's YOLOv7-X)
# router -> its row in capture_ratio.csv, router_variants.csv and its column in difficulty_correlation.csv
ROUTERS = {
    "default": ("learned", "default", "Spearman corr. with phi"),
    "paper": ("paper's router", "paper", "Spearman corr. with phi (paper's router)"),
}


def _read(folder: Path, stem: str) -> pd.DataFrame:
    path = folder / f"{stem}.csv"
    if not path.exists():
        raise NotTestable(f"{stem}.csv not written by this run")
    return pd.read_csv(path)


def _label(name: object) -> str:
    """The short name in a notebook's descriptive row label: ``"default: target L1, 1 view"`` -> ``default``,
    ``"learned, paper's router (L1 - L2, augmented views)"`` -> ``paper's router``."""
    return str(name).split(":")[0].split(" (")[0].removeprefix("learned, ").strip()


def _row(df: pd.DataFrame, column: str, value: str, stem: str) -> pd.Series:
    hit = df[df[column] == value]
    if hit.empty:  # a notebook's table names its rows at length (the seed tables use the short names)
        hit = df[df[column].map(_label) == value]
    if hit.empty:
        raise NotTestable(f"{stem}.csv has no row {column} = {value!r}")
    return hit.iloc[0]


def _joint_gain(folder: Path) -> Run:
    ap = _read(folder, "joint_training")["AP"]
    gain = float(ap.iloc[1] - ap.iloc[0])
    return Run(gain, gain)


def _static_same(folder: Path) -> Run:
    df = _read(folder, "variable_speed").set_index("model")
    static = [m for m in df.index if m.endswith("(static)")]
    if not static:
        raise NotTestable("no static model in variable_speed.csv")
    # the static model of the dynamic model's architecture: the one with Dy /0's GFLOPs (the router adds < 1%)
    same = min(static, key=lambda m: abs(df.loc[m, "GFLOPs"] - df.loc["Dy /0", "GFLOPs"]))
    diff = float(df.loc["Dy /0", "AP"] - df.loc[same, "AP"])
    return Run(diff, diff)


def _c50_of(folder: Path, router: str) -> float:
    return float(_row(_read(folder, "capture_ratio"), "router", router, "capture_ratio")["c(0.5)"])


def _capture(who: str, baseline: str) -> Callable[[Path], Run]:
    """The router against a baseline routing at /50, in AP: the router's AP(0.5) and its lead over the
    baseline's. Unlike a difference of c(0.5), it keeps its sign and scale when detector 2's lead is small
    or negative (c(k) divides by that lead)."""

    def measure(folder: Path) -> Run:
        ap = _read(folder, "joint_training")["AP"]
        ap1, ap2 = float(ap.iloc[0]), float(ap.iloc[1])
        mine, base = _c50_of(folder, ROUTERS[who][0]), _c50_of(folder, baseline)
        # AP(0.5) = AP_1 + c(0.5) (AP_2 - AP_1), so AP_router(0.5) - AP_base(0.5) = (c_router - c_base) (AP_2 - AP_1)
        return Run(ap1 + mine * (ap2 - ap1), (mine - base) * (ap2 - ap1))

    return measure


def _c50(who: str) -> Callable[[Path], Run]:
    def measure(folder: Path) -> Run:
        ap = _read(folder, "joint_training")["AP"]
        if ap.iloc[1] - ap.iloc[0] < MIN_LEAD:  # c(k) divides by the lead: a lead within noise makes it any number
            lead = ap.iloc[1] - ap.iloc[0]
            raise NotTestable(f"detector 2's lead {lead:.3f} is under {MIN_LEAD}: c(k) is unstable")
        c = _c50_of(folder, ROUTERS[who][0])
        return Run(c, c - (PAPER_C50 - C50_TOLERANCE))

    return measure


def _balance(who: str) -> Callable[[Path], Run]:
    def measure(folder: Path) -> Run:
        df = _read(folder, "router_variants")
        share = float(_row(df, "router", ROUTERS[who][1], "router_variants")["val phi > 0.5"])
        return Run(share, share - 0.5)

    return measure


def _difficulty(who: str) -> Callable[[Path], Run]:
    def measure(folder: Path) -> Run:
        df = _read(folder, "difficulty_correlation").set_index("attribute")
        col = ROUTERS[who][2]
        if "difficulty" not in df.index:
            raise NotTestable("no generator difficulty (real data)")
        if col not in df:
            raise NotTestable(f"difficulty_correlation.csv has no column {col!r}")
        rho = float(df.loc["difficulty", col])
        return Run(rho, rho - DIFFICULTY_BAR)

    return measure


def _cost_column(df: pd.DataFrame, cost: str) -> str:
    """The column of ``variable_speed.csv`` for ``cost`` (``"latency_ms_batch"``: ``latency_ms_b<B>``, B > 1),
    once its latency figures passed their consistency checks."""
    col = cost
    if cost == "latency_ms_batch":
        cols = [c for c in df.columns if c.startswith("latency_ms_b") and c != "latency_ms_b1"]
        if not cols:
            raise NotTestable("variable_speed.csv has no latency at batch > 1")
        col = cols[0]
    if col not in df or df[col].isna().all():  # a run timed without this cost (`seeds tables --no-timing`)
        raise NotTestable(f"variable_speed.csv has no figures in column {col}")
    flag = "consistent_onnx" if col == "latency_ms_onnx_b1" else "consistent"
    if col.startswith("latency") and flag in df and not df[flag].fillna(True).astype(bool).all():
        raise NotTestable(f"the latency figures failed their consistency checks ({flag} False)")
    return col


def _frontier(dy: str, cost: str) -> Callable[[Path], Run]:
    """Dy ``dy``'s gap to the static frontier along ``cost`` (linear in cost and in log cost) and the static
    models that dominate it or that it dominates (the run's own static rows)."""

    def measure(folder: Path) -> Run:
        df = _read(folder, "variable_speed")
        col = _cost_column(df, cost)
        static, points = df[df["model"].str.endswith("(static)")], df[df["model"] == dy]
        if static.empty or points.empty:
            raise NotTestable(f"variable_speed.csv has no {'static model' if static.empty else repr(dy) + ' row'}")
        lin = float(static_frontier(points=points, static=static, cost=col)["gap"].iloc[0])
        log = float(static_frontier(points=points, static=static, cost=col, log_cost=True)["gap"].iloc[0])
        dom = dominance(points=points, static=static, cost=col).iloc[0]
        c, lo, hi = float(points[col].iloc[0]), float(static[col].min()), float(static[col].max())
        decided = dom["dominated_by"] or (c < lo and dom["dominates"])  # no line needed: below, or above, any
        if len(static) >= 2 and not decided and not lo <= c <= hi:  # NaN too: never an extrapolated gap
            raise NotTestable(f"{dy} ({c:.3g}) is not within the static models' {col} ({lo:.3g}-{hi:.3g})")
        return Run(lin, lin, log, dom["dominated_by"], dom["dominates"], len(static))

    return measure


def _headline(dy: str, cost: str) -> Callable[[Path], Run]:
    """AP(Dy ``dy``) - AP(:data:`HEADLINE_STATIC`), with the cost ratio Dy / static along ``cost``."""

    def measure(folder: Path) -> Run:
        df = _read(folder, "variable_speed")
        col = _cost_column(df, cost)
        t = df.set_index("model")
        for m in (dy, HEADLINE_STATIC):
            if m not in t.index:
                raise NotTestable(f"variable_speed.csv has no row {m!r}")
        ap, diff = float(t.loc[dy, "AP"]), float(t.loc[dy, "AP"] - t.loc[HEADLINE_STATIC, "AP"])
        return Run(ap, diff, cost_ratio=float(t.loc[dy, col] / t.loc[HEADLINE_STATIC, col]))

    return measure


def _two_stage(kind: str, dy: str, static: str) -> Callable[[Path], Run]:
    def measure(folder: Path) -> Run:
        stem = f"two_stage_{kind}"
        df = _read(folder, stem).set_index("model")
        for m in (dy, static):
            if m not in df.index:
                raise NotTestable(f"{stem}.csv has no row {m!r}")
        if max(df.loc[dy, "AP"], df.loc[static, "AP"]) < LEARNED_AP:
            raise NotTestable(f"two-stage APs under {LEARNED_AP}: models too small to have learned at this config")
        diff = float(df.loc[dy, "AP"] - df.loc[static, "AP"])
        return Run(diff, diff)

    return measure


# cost measure -> (the words of the claim's name, the column of variable_speed.csv, reported by the paper)
COSTS = [
    ("latency (batch 1)", "latency_ms_b1", True),
    ("latency (batch 8)", "latency_ms_batch", False),  # the table's batch B > 1 (8 at every config today)
    ("onnxruntime latency (batch 1)", "latency_ms_onnx_b1", False),
    ("GFLOPs", "GFLOPs", True),
]


def _frontier_claims(dy: str) -> list[Claim]:
    out = []
    for by, col, reported in COSTS:
        gap = (evidence.paper_gap(dy, col, False), evidence.paper_gap(dy, col, True)) if reported else (math.nan,) * 2
        paper, bar = evidence.paper_cost(dy, col, reported), "AP - frontier >= 0 (in cost and in log cost)"
        rule, name = (
            Rule("frontier", effect=gap[0], effect_log=gap[1]),
            f"{dy} on or above the static frontier, by {by}",
        )
        out.append(Claim(name, "06", paper, "variable_speed", bar, _frontier(dy, col), rule=rule))
    return out


def _headline_claims(dy: str) -> list[Claim]:
    # the paper's test: Dy-YOLOv7 /k against YOLOv7-X, the static model at Dy /100's cost (evidence.headline_rule)
    static = HEADLINE_STATIC.removesuffix(" (static)")
    return [
        Claim(
            f"{dy} has more AP at less cost than {HEADLINE_STATIC}, by {by}",
            "06",
            evidence.paper_cost(dy, col, reported),
            "variable_speed",
            f"AP({dy}) - AP({static}) > 0",
            _headline(dy, col),
            rule=evidence.headline_rule(dy, col, reported),
        )
        for by, col, reported in COSTS
    ]


def _router_claims(who: str) -> list[Claim]:
    """The router's claims for the default router (``who`` = ``"default"``) or the paper's (``"paper"``)."""
    tail = "" if who == "default" else " (paper's router)"
    share = Rule("equivalence", effect=0.0, ap=False, transform="logit", bar=0.5, bound=BALANCE_TOLERANCE)
    return [
        Claim(
            "the router beats random routing at /50" + tail,
            "06",
            f"implied (not reported): Dy /50 {PAPER['Dy /50'][2]} AP against {PAPER_RANDOM_50:.2f} for random "
            f"routing (c(0.5) {PAPER_C50:.2f} against 0.5)",
            "capture_ratio",
            "AP(/50) > random routing's",
            _capture(who, "random"),
            rule=Rule(effect=PAPER_OVER_RANDOM * PAPER_GAIN),
        ),
        Claim(
            "the router beats confidence escalation at /50" + tail,
            "06",
            "not reported (a baseline of this project)",
            "capture_ratio",
            "AP(/50) > escalation's",
            _capture(who, "confidence escalation"),
            rule=Rule(),
        ),
        Claim(
            "/50 keeps about three quarters of detector 2's gain" + tail,
            "06",
            f"c(0.5) = {PAPER_C50:.2f}",
            "capture_ratio",
            f"c(0.5) >= {PAPER_C50 - C50_TOLERANCE:.2f}",
            _c50(who),
            rule=Rule(effect=C50_TOLERANCE, ap=False),  # the paper's 0.76 less the bar 0.71
        ),
        Claim(
            "the adaptive offset balances the routes without a tuned hyperparameter" + tail,
            "04",
            "hyperparameter-free (offset = median: half the training images each way)",
            "router_variants",
            f"val share phi > 0.5 within 0.5 +- {BALANCE_TOLERANCE}",
            _balance(who),
            rule=share,
        ),
        Claim(
            "hard images are the crowded, small, occluded, cluttered ones" + tail,
            "07",
            "qualitative (figure)",
            "difficulty_correlation",
            f"Spearman(phi, difficulty) > {DIFFICULTY_BAR}",
            _difficulty(who),
            rule=Rule(ap=False, transform="fisher", bar=DIFFICULTY_BAR),
        ),
    ]


def _two_stage_claim(dy: str, vs: str, paper: str, effect: float = math.nan, kind: str = "faster_rcnn") -> Claim:
    """A two-stage claim (trained once per config): Dy ``dy`` against the deeper static trunk or Dy /0 (``vs``)."""
    net = "Faster R-CNN" if kind == "faster_rcnn" else "Mask R-CNN, box"
    name = f"detector 2 beats detector 1 ({net})" if vs == "Dy /0" else f"{dy} at or above the deeper static trunk"
    bar = f"AP({dy}) - AP({'R34' if vs == 'static resnet34' else vs}) {'>' if vs == 'Dy /0' else '>='} 0"
    rule = Rule(effect=effect)
    return Claim(f"two-stage: {name}", "08", paper, f"two_stage_{kind}", bar, _two_stage(kind, dy, vs), False, rule)


def _interleave(a: list[Claim], b: list[Claim]) -> list[Claim]:
    return [c for pair in zip(a, b, strict=True) for c in pair]


_ROUTER = _interleave(_router_claims("default"), _router_claims("paper"))
CLAIMS: list[Claim] = [
    Claim(
        "detector 2 beats detector 1",
        "02",
        "+2.5 AP (YOLOv7 51.4 -> Dy /100 53.9)",
        "joint_training",
        "AP2 - AP1 > 0",
        _joint_gain,
        rule=Rule(effect=PAPER_GAIN),
    ),
    Claim(
        "joint training leaves detector 1 as good as a static model of its architecture",
        "06",
        "implied (Dy /10 52.1 vs YOLOv7 51.4)",
        "variable_speed",
        f"|AP(Dy /0) - AP(static)| <= {EQUIVALENCE_MARGIN}",
        _static_same,
        rule=Rule("equivalence", bound=EQUIVALENCE_MARGIN),
    ),
    *_ROUTER[:6],
    *_headline_claims("Dy /50"),
    *_headline_claims("Dy /90"),
    *_frontier_claims("Dy /50"),
    *_frontier_claims("Dy /90"),
    *_ROUTER[6:],
    _two_stage_claim("Dy /50", "static resnet34", "Dy-Faster R50 /50 39.5 vs R101 39.4", (39.5 - 39.4) / 100),
    _two_stage_claim("Dy /90", "static resnet34", "Dy-Faster R50 /90 40.4 vs R101 39.4", (40.4 - 39.4) / 100),
    # the paper reports neither /0 nor /100 of the two-stage models: no effect in this margin's units
    _two_stage_claim("Dy /100", "Dy /0", "Dy-Faster /90 40.4 vs R50 37.4"),
    _two_stage_claim("Dy /100", "Dy /0", "Dy-Mask Swin-T /90 49.9 vs Swin-T 46.0", kind="mask_rcnn"),
]


def claims_table(
    folders: list[Path] | Path, claims: list[Claim] | None = None, base: Path | None = None
) -> pd.DataFrame:
    """The scorecard of one run (a results folder) or of several seeds of one config: one row per claim
    (:func:`~.evidence.score`, columns :data:`~.evidence.COLUMNS`: the paper's value and effect, this run's mean
    value and margin with its intervals, ``runs``, ``verdict``, ``qualifier``, ``evidence``, ``note``).

    ``base``: the config's own results folder, where the claims trained once per config
    (``seeded=False``) are tested when ``folders`` are seeds (default: the first folder).
    """
    folders = [folders] if isinstance(folders, Path) else list(folders)
    return pd.DataFrame([evidence.score(c, folders, base) for c in claims or CLAIMS], columns=evidence.COLUMNS)


def write_claims(config: str, folders: list[Path] | None = None) -> pd.DataFrame:
    """Write ``results/<config>/claims.{csv,md}``: over the seeds' ``folders`` when given or when the
    folder has seeds (:func:`seed_folders`), else from the folder's own tables."""
    out = paths.results_dir(config)
    folders = folders or seed_folders(out) or [out]
    df = with_budget(claims_table(folders, base=out), folders)
    write_csv(df, out / "claims.csv")
    write_text(to_markdown(df), out / "claims.md")
    return df


def with_budget(df: pd.DataFrame, folders: list[Path]) -> pd.DataFrame:
    """``df`` (over seeds ``folders``) + ``sign differs at 2x epochs`` where the first seed has a ``-2x`` folder:
    whether each margin on that seed changes sign at twice the epochs (one run each: a sign, not a verdict)."""
    longer = folders[0].with_name(f"{folders[0].name}-2x")
    if len(folders) > 1 and longer.is_dir():
        a, b = claims_table([folders[0]]), claims_table([longer])
        df["sign differs at 2x epochs"] = (a["margin"] * b["margin"] < 0).to_numpy()
    return df


def notebook_claims(config: str, notebook: str) -> pd.DataFrame:
    """The rows of one notebook (``"06"``) of the scorecard of ``results/<config>/`` as ``claims.csv`` has them
    (:func:`write_claims`: over the folder's seeds when it has them, else its own tables); :func:`to_markdown`
    shows them."""
    out = paths.results_dir(config)
    folders = seed_folders(out) or [out]
    df = with_budget(claims_table(folders, base=out), folders)
    return df[df["notebook"] == notebook].reset_index(drop=True)
