"""The notebooks' figures: one function per figure, drawn from the plain tables the notebook holds.

Each returns a :class:`~matplotlib.figure.Figure`, which the notebook writes with
:func:`dynamicdet.evaluation.results.save_figure`. Every figure keeps these rules (checked on
fabricated tables by ``tests/test_figures.py``): no two texts overlap; axes carry units (ms per
image, GFLOPs per image, AP as a fraction 0-1); the Dy /k points are labelled (``/50``); the static
models are one line, the static frontier, with the models named. Point labels are placed after
``fig.tight_layout()`` (:func:`_label_points` measures the texts: the layout must not move after).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.patches import Patch, Rectangle
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from dynamicdet.metrics import static_frontier

AP_LABEL = "val box AP@[.5:.95] (0-1)"
MS = "ms per image"
STATIC = " (static)"  # static rows of variable_speed.csv: their model name ends with it
ROUTERS = {  # router of the trade-off sweep -> colour, marker, line style
    "learned": ("tab:red", "o", "-"),
    "random": ("tab:gray", "s", "--"),
    "confidence escalation": ("tab:green", "^", "-."),
    "oracle (L1-L2)": ("tab:purple", "d", ":"),
    "oracle (AP gain)": ("tab:blue", "v", ":"),
}
# offsets (points) of a point's label, tried in turn; the sign of x / y picks the text's side of the point
OFFSETS = [(4, 4), (4, -4), (-4, 4), (-4, -4), (7, 0), (-7, 0), (0, 8), (0, -8)]
OFFSETS += [(m * x, m * y) for m in (2, 3.5) for x, y in OFFSETS]
OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "fontsize": 9}  # a legend right of its axes


def _label_points(ax, xs, ys, labels: Sequence[str], fontsize: float = 9, color: str = "0.1") -> None:
    """Write ``labels`` next to the points (``xs``, ``ys``) of ``ax``, over no other text or marker.

    Each label takes the first of :data:`OFFSETS` inside the axes that covers no text of the
    figure (the layout must be final) and no marker of the axes' lines; failing all, the least
    bad (a text covered weighs more than a marker). A label set apart gets a leader line.
    """
    ax.set(xlim=ax.get_xlim(), ylim=ax.get_ylim())  # frozen: the leader lines must not rescale the axes
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    texts = [t.get_window_extent(renderer) for t in ax.figure.findobj(Text) if t.get_visible() and t.get_text()]
    texts += [leg.get_window_extent(renderer) for leg in ax.figure.findobj(Legend)]
    marks = []  # boxes around every marker and along every line (a point each 5 px)
    for line in ax.lines:
        xy = ax.transData.transform(np.c_[line.get_xdata(), line.get_ydata()].astype(float))
        xy = xy[np.isfinite(xy).all(axis=1)]
        if line.get_linestyle() not in ("None", "none", "", " ") and len(xy) > 1:
            steps = np.maximum(np.ceil(np.hypot(*np.diff(xy, axis=0).T) / 5), 1).astype(int)
            segs = [a + (b - a) * np.arange(n)[:, None] / n for a, b, n in zip(xy[:-1], xy[1:], steps, strict=True)]
            xy = np.vstack([*segs, xy[-1:]])
        r = (line.get_markersize() / 2 + 2) * ax.figure.dpi / 72
        marks += [Bbox([[px - r, py - r], [px + r, py + r]]) for px, py in xy]
    for x, y, text in zip(xs, ys, labels, strict=True):
        ann = ax.annotate(text, (x, y), xytext=OFFSETS[0], textcoords="offset points", fontsize=fontsize, color=color)
        ann.set_bbox({"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.7})

        def place(dx, dy, ann=ann):
            ann.xyann = (dx, dy)
            ann.set(ha="left" if dx > 0 else "right" if dx < 0 else "center")
            ann.set(va="bottom" if dy > 0 else "top" if dy < 0 else "center")
            box = ann.get_window_extent(renderer)
            out = not (frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1)
            return 100 * out + 10 * sum(map(box.overlaps, texts)) + sum(map(box.overlaps, marks)), box

        best = min(OFFSETS, key=lambda off: (place(*off)[0], OFFSETS.index(off)))
        texts.append(box := place(*best)[1])
        px, py = ax.transData.transform((x, y))
        end = (np.clip(px, box.x0, box.x1), np.clip(py, box.y0, box.y1))
        if np.hypot(end[0] - px, end[1] - py) > 10 * ax.figure.dpi / 72:  # far from its point: a leader line
            (lx, ly) = ax.transData.inverted().transform(end)
            ax.plot([x, lx], [y, ly], color=color, lw=0.6, alpha=0.7, zorder=1)


def _frontier(ax, names: Sequence[str], x, y, span: tuple[float, float]) -> tuple:
    """The static models as stars on one line, the static frontier, dotted where extended over ``span``
    (along its end segments, as the scorecard measures it). Returns the names' entry of :func:`_finish`."""
    s = pd.DataFrame({"model": list(names), "cost": np.asarray(x, float), "AP": np.asarray(y, float)})
    s = s.sort_values("cost")
    ax.plot(s["cost"], s["AP"], "*-", color="black", ms=13, lw=1.5, zorder=4, label="static frontier")
    lo, hi = min(span[0], s["cost"].min()), max(span[1], s["cost"].max())
    if len(s) >= 2 and (lo < s["cost"].min() or hi > s["cost"].max()):
        f = static_frontier(pd.DataFrame({"model": ["lo", "hi"], "cost": [lo, hi], "AP": 0.0}), s, cost="cost")
        ys = [f["AP_frontier"][0], *s["AP"], f["AP_frontier"][1]]
        ax.plot([lo, *s["cost"], hi], ys, ":", color="k", lw=1, label="static frontier, extended")
    return ax, s["cost"], s["AP"], list(s["model"]), "0.1"


def _finish(fig: Figure, labels: list, rect=(0, 0, 1, 1)) -> Figure:
    """Lay ``fig`` out, then write the point labels: ``labels`` holds ``(ax, xs, ys, texts, color)``."""
    fig.tight_layout(rect=rect)
    for ax, xs, ys, texts, color in labels:
        _label_points(ax, xs, ys, texts, color=color)
    return fig


def training_curves_figure(metrics: pd.DataFrame) -> Figure:
    """Step-1 training loss and validation AP per epoch, for both detectors.

    Args:
        metrics: ``step1_metrics.csv``: ``epoch``, ``L1_box``, ``L1_cls``, ``L1_dfl``, ``L2_*`` alike,
            ``det1_AP``, ``det2_AP`` (NaN on epochs without validation).
    """
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for tag, det in (("L1", "detector 1"), ("L2", "detector 2")):
        ax1.plot(metrics["epoch"], metrics.filter(regex=f"^{tag}_(box|cls|dfl)$").sum(axis=1), marker="o", label=det)
    ax1.set(xlabel="epoch", ylabel="training loss (box + cls + dfl)", title="Step-1 training loss")
    val = metrics.dropna(subset=["det1_AP"])
    for det, name in (("det1", "detector 1"), ("det2", "detector 2")):
        ax2.plot(val["epoch"], val[f"{det}_AP"], marker="o", label=name)
    ax2.set(xlabel="epoch", ylabel=AP_LABEL, title="Validation AP (pycocotools)")
    for ax in (ax1, ax2):
        ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def image_grid_figure(images: Sequence, titles: Sequence[str], title: str, boxes=None, classes=None) -> Figure:
    """Images in a grid of 4 columns, each with its boxes and a (two-line) title.

    Args:
        images: H x W (x 3) arrays.
        titles: one per image; keep each line under ~28 characters (a ``\\n`` between lines).
        title: the figure's title.
        boxes: per image, an N x 4 array of xyxy pixel boxes (None: no boxes).
        classes: per image, N class ids colouring the boxes (None: all lime).
    """
    rows = -(-len(images) // 4)
    fig, axes = plt.subplots(rows, 4, figsize=(12, 3.4 * rows + 0.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(images):
            continue
        ax.imshow(images[i])
        for j, (x0, y0, x1, y1) in enumerate(np.asarray(boxes[i] if boxes is not None else [], float).reshape(-1, 4)):
            color = plt.cm.tab10(int(classes[i][j]) % 10) if classes is not None else "lime"
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=color, lw=1))
        ax.set_title(titles[i], fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def loss_difference_figure(losses: pd.DataFrame, note: str = "", augmented: bool | None = None) -> Figure:
    """Histogram of the per-image training loss difference L1 - L2, with its median Delta.

    Args:
        losses: the step-2 cache's ``train_losses.csv``: ``L1_minus_L2``, with ``image_id`` and
            ``view`` (the y label counts them), ``L1``, ``L2``.
        note: what the router does with the median (second line of its legend entry).
        augmented: whether the cache's views were augmented (None: not said).
    """
    diff = losses["L1_minus_L2"].to_numpy(float)
    delta = float(np.median(diff))
    views = losses["view"].nunique() if "view" in losses else 1
    images = losses["image_id"].nunique() if "image_id" in losses else len(diff) // views
    kind = {None: "", True: "augmented ", False: "un-augmented "}[augmented]
    ylabel = f"training images (1 {kind}view each)" if views == 1 else f"image views ({images} x {views} {kind}views)"
    fig, ax = plt.subplots(figsize=(10, 4))
    lo, hi = np.percentile(diff, [0.5, 99.5])
    ax.hist(diff.clip(lo, hi), bins=60, color="tab:blue", alpha=0.8)
    ax.axvline(delta, color="tab:red", lw=2, label=f"median L1 - L2 = {delta:.3f}" + (f"\n({note})" if note else ""))
    ax.axvline(0, color="k", lw=1, ls="--", label="L1 = L2")
    ax.set(xlabel="L1 - L2 per image (the 1% tails piled into the end bins)", ylabel=ylabel)
    ax.set_title("Training loss difference between the two detectors")
    ax.legend(**OUTSIDE)
    fig.tight_layout()
    return fig


def router_scores_figure(scores: Mapping[str, np.ndarray], seed: int = 0) -> Figure:
    """The router's score phi on the val images under each step-2 loss, one jittered row per loss.

    Args:
        scores: loss name -> phi per val image (0-1).
        seed: of the vertical jitter (the same seed draws the same PNG).
    """
    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(scores) + 1.6))
    shares = []
    for i, phi in enumerate(scores.values()):
        phi = np.asarray(phi, float)
        ax.scatter(phi, i + rng.uniform(-0.25, 0.25, len(phi)), s=5, alpha=0.5, color="tab:blue", lw=0)
        shares.append(f"{(phi > 0.5).mean():.0%}")
    ax.axvline(0.5, color="k", ls="--", lw=1)
    ax.set_yticks(range(len(scores)), list(scores))
    ax.set(xlim=(-0.02, 1.02), ylim=(len(scores) - 0.5, -0.5), xlabel="router score phi on val images (0-1)")
    ax.set_title("Router scores under each step-2 loss (paper's setup)")
    right = ax.twinx()
    right.set(ylim=ax.get_ylim(), ylabel="share phi > 0.5 (detector 2)")
    right.set_yticks(range(len(scores)), shares)
    right.grid(False)
    fig.tight_layout()
    return fig


def router_variants_figure(var: pd.DataFrame, signals: pd.DataFrame) -> Figure:
    """Capture ratio c(k) of each router variant (bars, the first row in red) against fixed rankings.

    Args:
        var: ``router_variants.csv``: ``router`` and ``c(<k>)`` columns.
        signals: ``router_signals.csv``: ``ranked by`` and the same ``c(<k>)`` columns; its rows
            ``random``, ``oracle: val L1 - L2``, ``oracle: per-image AP gain`` are drawn as lines.
    """
    ks = [c for c in var.columns if c.startswith("c(")]
    sig = signals.set_index("ranked by")
    fig, axes = plt.subplots(1, len(ks), figsize=(3.6 * len(ks) + 5.5, 0.42 * len(var) + 1.9), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, k in zip(axes, ks, strict=True):
        ax.barh(var["router"], var[k], color=["tab:red"] + ["tab:gray"] * (len(var) - 1))
        for name, ls in (("random", "--"), ("oracle: val L1 - L2", ":"), ("oracle: per-image AP gain", "-.")):
            if name in sig.index:
                ax.axvline(sig.loc[name, k], color="k", ls=ls, lw=1.2, label=name)
        ax.set_title(f"k = {k[2:-1]}")
    axes[0].invert_yaxis()
    axes[-1].legend(**OUTSIDE)
    fig.supxlabel("capture ratio c(k): share of the AP gain of /100 over /0 kept at hard fraction k", fontsize=11)
    fig.suptitle("Router variants on the same two detectors (val)")
    fig.tight_layout()
    return fig


def controller_disturbance_figure(history: pd.DataFrame, target_ms: float | None = None) -> Figure:
    """The open and closed latency loops through a slow-down: ms per image, hard fraction k, threshold.

    Args:
        history: per controller window: ``loop``, ``phase`` (``loaded`` is shaded), ``images``
            (cumulative), ``ms_per_image``, ``k``, ``threshold``.
        target_ms: the target latency (ms per image), drawn as a line; None: none.
    """
    fig, axes = plt.subplots(3, 1, figsize=(10.5, 7), sharex=True)
    for loop, h in history.groupby("loop", sort=False):
        for ax, col in zip(axes, ("ms_per_image", "k", "threshold"), strict=True):
            ax.plot(h["images"], h[col], marker=".", label=loop)
    if target_ms is not None:
        axes[0].axhline(target_ms, color="k", ls="--", lw=1, label="target")
    loaded = history.loc[history["phase"] == "loaded", "images"]
    handles, labels = axes[0].get_legend_handles_labels()
    if len(loaded):  # the loaded phase (both loops cover the same image counts), shaded
        for ax in axes:
            ax.axvspan(loaded.min(), loaded.max(), color="0.85", zorder=0)
        handles, labels = [*handles, Patch(color="0.85")], [*labels, "competing process\nrunning"]
    axes[0].legend(handles, labels, **OUTSIDE)
    axes[0].set(ylabel=f"{MS}\n(window mean)", title="Latency control through a slow-down")
    axes[1].set(ylabel="hard fraction k\n(0-1)")
    axes[2].set(ylabel="router logit\nthreshold", xlabel="images processed (each loop from its start)")
    fig.tight_layout()
    return fig


def tradeoff_figure(sweep: pd.DataFrame, static: pd.DataFrame, fractions: Sequence[float] | None = None) -> Figure:
    """AP against batch-1 latency of every router's sweep, the static frontier, the learned /k labelled.

    Args:
        sweep: ``router``, ``k``, ``latency_ms`` (ms per image, batch 1), ``AP``; ``AP_std`` of the
            random router is drawn as a band.
        static: the static models: ``model``, ``latency_ms_b1``, ``AP``.
        fractions: the learned router's k to label (None: its rows ``measured_by == "route()"``).
    """
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for name in [*[r for r in ROUTERS if r in set(sweep["router"])], *sorted(set(sweep["router"]) - set(ROUTERS))]:
        color, marker, ls = ROUTERS.get(name, (None, ".", "-"))
        d = sweep[sweep["router"] == name].sort_values("latency_ms")
        ax.plot(d["latency_ms"], d["AP"], color=color, marker=marker, ls=ls, ms=4, label=f"{name} router")
        if name == "random" and "AP_std" in d:
            ax.fill_between(d["latency_ms"], d["AP"] - d["AP_std"], d["AP"] + d["AP_std"], color=color, alpha=0.15)
    span = (sweep["latency_ms"].min(), sweep["latency_ms"].max())
    stars = _frontier(ax, static["model"].str.removesuffix(STATIC), static["latency_ms_b1"], static["AP"], span)
    ax.set(xlabel=f"CPU latency, batch 1 ({MS})", ylabel=AP_LABEL)
    ax.set_title("Accuracy vs latency: one dynamic model, many speeds")
    ax.legend(**OUTSIDE)
    ax.margins(0.06)
    learned = sweep[sweep["router"] == "learned"]
    if fractions is not None:
        learned = learned[np.isclose(learned["k"].to_numpy()[:, None], np.asarray(fractions)[None]).any(axis=1)]
    elif "measured_by" in learned:
        learned = learned[learned["measured_by"] == "route()"]
    ks = [f"/{round(100 * k)}" for k in learned["k"]]
    return _finish(fig, [stars, (ax, learned["latency_ms"], learned["AP"], ks, "tab:red")])


def frontier_costs_figure(table: pd.DataFrame, columns: Mapping[str, str]) -> Figure:
    """Each Dy /k against the static frontier, one panel per cost measure (GFLOPs, latencies).

    Args:
        table: ``variable_speed.csv``: ``model`` (``Dy /k`` rows; static rows end with ``(static)``),
            ``AP`` and the cost columns.
        columns: cost measure (panel title) -> column of ``table``; ``latency_ms*`` columns are in
            ms per image, others in GFLOPs per image; measures whose column is missing are skipped.
    """
    costs = {c: col for c, col in columns.items() if col in table}
    fig, axes = plt.subplots(1, len(costs), figsize=(4.3 * len(costs) + 2, 4.6), sharey=True, squeeze=False)
    statics = table[table["model"].str.endswith(STATIC)]
    dynamic = table[~table["model"].str.endswith(STATIC)]
    labels, notes = [], []
    for ax, (cost, col) in zip(axes[0], costs.items(), strict=True):
        d = dynamic.sort_values("k") if "k" in dynamic else dynamic
        ax.plot(d[col], d["AP"], "o-", color="tab:red", ms=4, label="Dy /k (route())")
        names, span = statics["model"].str.removesuffix(STATIC), (d[col].min(), d[col].max())
        labels.append(_frontier(ax, names, statics[col], statics["AP"], span))
        labels.append((ax, d[col], d["AP"], list(d["model"].str.removeprefix("Dy ")), "tab:red"))
        ax.set(title=cost, xlabel=MS if col.startswith("latency_ms") else "GFLOPs per image")
        ax.margins(0.08)
        batch = col.removeprefix("latency_ms_b")
        if batch.isdigit() and int(batch) > 1:
            loops = (np.diff(d[col].to_numpy(float)) < 0).any()
            notes.append(
                f"Batch {batch}: a Dy /k with 0 < k < 1 splits each batch between the two routes, a real overhead"
                + (", so a mixed /k can cost more than /100 (the curve loops back)." if loops else ".")
            )
    axes[0][0].set_ylabel(AP_LABEL)
    axes[0][-1].legend(**OUTSIDE)
    fig.suptitle("Dy /k against the static frontier in each cost measure")
    if notes:  # a caption under the panels, in a strip the layout keeps free
        fig.text(0.01, 0.01, textwrap.fill(" ".join(notes), 200), fontsize=10, va="bottom")
    return _finish(fig, labels, rect=(0, 0.07 if notes else 0, 1, 1))


def two_stage_figure(faster: pd.DataFrame, mask: pd.DataFrame) -> Figure:
    """Box AP against batch-1 latency of the two-stage Dy /k and the static backbones (Faster, Mask R-CNN).

    Args:
        faster, mask: ``two_stage_<kind>.csv``: ``model`` (``Dy /k`` rows, the others static),
            ``backbone`` (names the static models), ``k_measured``, ``latency_ms_b1``, ``AP`` (box AP).
    """
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    labels = []
    for ax, (kind, df) in zip(axes, (("Faster R-CNN", faster), ("Mask R-CNN", mask)), strict=True):
        dy = df[df["model"].str.startswith("Dy")].sort_values("k_measured")
        st, x = df[~df["model"].str.startswith("Dy")], dy["latency_ms_b1"]
        ax.plot(x, dy["AP"], "o-", color="tab:red", label="Dy /k (one model)")
        names = st["backbone"] if "backbone" in st else st["model"]
        labels.append(_frontier(ax, names, st["latency_ms_b1"], st["AP"], (x.min(), x.max())))
        labels.append((ax, x, dy["AP"], list(dy["model"].str.removeprefix("Dy ")), "tab:red"))
        ax.set(xlabel=f"CPU latency, batch 1 ({MS})", ylabel=AP_LABEL, title=kind)
        ax.margins(0.1)
    axes[-1].legend(**OUTSIDE)
    fig.suptitle("Two-stage detectors: box AP of one dynamic model and of static backbones")
    return _finish(fig, labels)


def step1_ablation_figure(means: pd.DataFrame) -> Figure:
    """Val AP of both detectors per step-1 recipe (one change per row), row a's static model as a line.

    Args:
        means: ``step1_ablation_summary.csv``: ``row``, ``recipe``, ``seeds``, ``AP det1``,
            ``AP det2`` (NaN for a static row); row ``a`` (if present) is the reference line.
    """
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(means) + 1.5))
    labels = [f"{r.row}: {r.recipe}" + (f" ({r.seeds} seeds)" if r.seeds > 1 else "") for r in means.itertuples()]
    y = np.arange(len(means))
    ax.barh(y - 0.2, means["AP det1"], height=0.4, label="detector 1 (easy route)")
    ax.barh(y + 0.2, means["AP det2"].fillna(0), height=0.4, label="detector 2 (hard route)")
    static = means.loc[means["row"] == "a", "AP det1"]
    if len(static):
        ax.axvline(static.iloc[0], color="k", ls="--", lw=1, label="row a: static model,\nultralytics' trainer")
    ax.set(yticks=y, yticklabels=labels, xlabel=f"{AP_LABEL}, mean over seeds")
    ax.set_title("Step-1 recipes, one change per row")
    ax.invert_yaxis()
    ax.legend(**OUTSIDE)
    fig.tight_layout()
    return fig


def grad_norms_figure(logs: Mapping[str, pd.DataFrame], clip: float = 10.0) -> Figure:
    """Gradient norms before clipping per optimizer step, one panel per run, log scale.

    Args:
        logs: panel title -> ``step1_grad_norms.csv``: ``step`` and ``grad_norm*`` columns
            (``grad_norm``: all parameters; ``grad_norm_det1`` / ``_det2``: each detector's).
        clip: the clipping threshold, drawn as a line.
    """
    fig, axes = plt.subplots(1, len(logs), figsize=(3.8 * len(logs) + 2, 3.4), sharey=True, squeeze=False)
    cols = sorted({c for log in logs.values() for c in log.columns if c.startswith("grad_norm")})
    colors = dict(zip(cols, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    names = {"grad_norm": "whole model", "grad_norm_det1": "detector 1", "grad_norm_det2": "detector 2"}
    for ax, (title, log) in zip(axes[0], logs.items(), strict=True):
        for col in [c for c in cols if c in log and log[c].notna().any()]:
            ax.plot(log["step"], log[col], lw=0.8, color=colors[col], label=names.get(col, col))
        ax.axhline(clip, color="k", ls=":", lw=1.2, label=f"clip threshold ({clip:g})")
        ax.set(yscale="log", xlabel="optimizer step", title=title)
    axes[0][0].set_ylabel("gradient norm\n(before clipping, log)")
    handles = {lab: h for ax in axes[0] for h, lab in zip(*ax.get_legend_handles_labels(), strict=True)}
    axes[0][-1].legend(handles.values(), handles.keys(), **OUTSIDE)
    fig.tight_layout()
    return fig
