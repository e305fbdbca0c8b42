"""The notebooks' figures (``dynamicdet.evaluation.figures``) on fabricated tables: every text readable.

Each figure function is drawn on small tables shaped like the ones its notebook passes, with
the hard cases of the real runs (Dy /90 and /100 at almost the same cost and AP, a batch-8
curve that loops back, one to three static models, long router names). For each figure:

- no two drawn texts overlap (titles, axis and tick labels, legend texts, annotations; boxes
  may touch): the texts are those ``fig.findobj(Text)`` finds, visible, non-empty and drawn
  by ``fig.canvas.draw()`` (a tick label outside the view keeps its text but is not drawn);
- the specific promises: /k labels, the static frontier line with its models named, units on
  the cost axes, box AP on the two-stage figure, legends off the data, a PNG that does not
  change from one render to the next (router scores).
"""

from __future__ import annotations

import io
import itertools
from unittest import mock

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text

from dynamicdet.evaluation import figures as F
from dynamicdet.evaluation.results import use_style

matplotlib.use("Agg")  # no display: the figures are drawn and measured off screen

STATICS = {1: ["yolov8n"], 2: ["yolov8n", "yolov8s"], 3: ["yolov8n", "yolov8ns", "yolov8s"]}
KS = [0.0, 0.1, 0.5, 0.9, 1.0]


@pytest.fixture(autouse=True)
def style():
    use_style()  # the notebooks' style (font sizes, dpi)
    yield
    plt.close("all")


def drawn_texts(fig) -> list[tuple[Text, object]]:
    """(text, window extent) of every visible, non-empty text the canvas draws."""
    drawn, draw = set(), Text.draw

    def record(self, renderer):
        drawn.add(id(self))
        return draw(self, renderer)

    with mock.patch.object(Text, "draw", record):
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) in drawn]
    return [(t, t.get_window_extent(renderer)) for t in texts]


def assert_readable(fig) -> list[str]:
    """No two drawn texts share an area (touching is allowed); returns the texts."""
    texts = drawn_texts(fig)
    clashes = [
        (a.get_text(), b.get_text())
        for (a, ea), (b, eb) in itertools.combinations(texts, 2)
        if ea.x0 < eb.x1 and eb.x0 < ea.x1 and ea.y0 < eb.y1 and eb.y0 < ea.y1
    ]
    assert not clashes, f"overlapping texts: {clashes}"
    return [t.get_text() for t, _ in texts]


def legend_off_axes(fig) -> None:
    """Every legend lies outside every axes' plotting area."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for leg in fig.findobj(matplotlib.legend.Legend):
        lb = leg.get_window_extent(renderer)
        for ax in fig.axes:
            ab = ax.get_window_extent(renderer)
            assert not (lb.x0 < ab.x1 and ab.x0 < lb.x1 and lb.y0 < ab.y1 and ab.y0 < lb.y1), "legend over the data"


def variable_speed(n_static: int, batch: int = 8) -> pd.DataFrame:
    """variable_speed.csv: Dy /k rows (/90 and /100 nearly equal; batch 8 loops back) and static rows."""
    dy = pd.DataFrame(
        {
            "model": [f"Dy /{round(100 * k)}" for k in KS],
            "k": KS,
            "GFLOPs": [0.728, 0.758, 0.880, 1.002, 1.032],
            "latency_ms_b1": [21.25, 21.86, 25.65, 30.73, 31.67],
            f"latency_ms_b{batch}": [7.29, 8.57, 10.34, 11.53, 10.70],
            "latency_ms_onnx_b1": [7.47, 7.81, 9.06, 11.23, 11.40],
            "AP": [0.6327, 0.6446, 0.6722, 0.6795, 0.6805],
        }
    )
    st = pd.DataFrame(  # yolov8n, a middle scale, yolov8s; 1 static model: n, 2: n and s, 3: all
        {
            "model": [f"{n} (static)" for n in STATICS[3]],
            "GFLOPs": [0.728, 1.5, 2.56],
            "latency_ms_b1": [21.38, 29.0, 38.26],
            f"latency_ms_b{batch}": [6.95, 13.0, 20.56],
            "latency_ms_onnx_b1": [7.2, 12.0, 18.0],
            "AP": [0.6565, 0.69, 0.7149],
        }
    ).iloc[{1: [0], 2: [0, 2], 3: [0, 1, 2]}[n_static]]
    return pd.concat([dy, st], ignore_index=True)


COLUMNS = {
    "GFLOPs": "GFLOPs",
    "CPU latency, batch 1 (torch)": "latency_ms_b1",
    "CPU latency, batch 8 (torch)": "latency_ms_b8",
    "CPU latency, batch 1 (onnxruntime)": "latency_ms_onnx_b1",
}


def sweep() -> pd.DataFrame:
    """The trade-off sweep of five routers at 21 hard fractions, latency mixed from /0 and /100."""
    rows = []
    for k in np.round(np.linspace(0, 1, 21), 2):
        for router, gain in (("learned", 0.6), ("random", 1.0), ("confidence escalation", 2.0)):
            ap = 0.6327 + 0.0478 * k ** (gain * 0.5)
            rows.append({"router": router, "k": k, "AP": ap, "AP_std": 0.002 if router == "random" else np.nan})
        rows.append({"router": "oracle (L1-L2)", "k": k, "AP": 0.6327 + 0.0478 * k**0.3})
        rows.append({"router": "oracle (AP gain)", "k": k, "AP": 0.6327 + 0.0478 * k**0.25})
    s = pd.DataFrame(rows)
    s["latency_ms"] = 21.25 + s["k"] * (31.67 - 21.25) + (s["router"] == "confidence escalation") * s["k"] * 12
    s["measured_by"] = np.where((s["router"] == "learned") & s["k"].isin(KS), "route()", "spliced")
    return s


def two_stage(kind: str) -> pd.DataFrame:
    """two_stage_<kind>.csv: two static backbones and Dy /0 /50 /90 /100 (/90 and /100 at equal AP)."""
    base = 160 if kind == "mask" else 80
    df = pd.DataFrame(
        {
            "model": ["static resnet18", "static resnet34", "Dy /0", "Dy /50", "Dy /90", "Dy /100"],
            "backbone": ["resnet18", "resnet34", "2x resnet18", "2x resnet18", "2x resnet18", "2x resnet18"],
            "k_measured": [np.nan, np.nan, 0.0, 0.5, 0.9, 1.0],
            "latency_ms_b1": [base + 1, base + 12, base - 0.4, base + 8.7, base + 16.1, base + 17.9],
            "AP": [0.6211, 0.6323, 0.6353, 0.6435, 0.64829, 0.64829],
        }
    )
    if kind == "mask":
        df["mask_AP"] = [0.3595, 0.3761, 0.3795, 0.3841, 0.3794, 0.3778]
    return df


def signals_and_variants() -> tuple[pd.DataFrame, pd.DataFrame]:
    cs = ["c(0.1)", "c(0.5)", "c(0.9)"]
    names = ["default: target L1, 1 un-augmented view", "paper: target L1 - L2, 2 augmented views"]
    names += ["2 augmented views, target averaged over them", "hold out 20%, keep the best epoch"]
    names += ["pairwise ranking (beyond the paper)"]
    rng = np.random.default_rng(1)
    var = pd.DataFrame({"router": names, **{c: rng.uniform(0.05, 1.0, len(names)) for c in cs}})
    ranked = ["learned router (this run)", "oracle: val L1 - L2", "oracle: per-image AP gain", "random"]
    sig = pd.DataFrame({"ranked by": ranked, "c(0.1)": [0.25, 0.28, 0.31, 0.1]})
    sig["c(0.5)"], sig["c(0.9)"] = [0.83, 0.78, 0.86, 0.5], [0.98, 0.995, 1.011, 0.89]
    return var, sig


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def frontier_line(fig) -> list:
    return [ln for ax in fig.axes for ln in ax.lines if ln.get_label() == "static frontier"]


@pytest.mark.parametrize("n_static", [1, 2, 3])
def test_tradeoff_labels_k_and_frontier(n_static):
    table = variable_speed(n_static)
    static = table[table["model"].str.endswith("(static)")]
    fig = F.tradeoff_figure(sweep(), static, fractions=KS)
    texts = assert_readable(fig)
    assert {"/0", "/10", "/50", "/90", "/100"} <= set(texts)
    assert set(STATICS[n_static]) <= set(texts)
    (line,) = frontier_line(fig)
    assert len(line.get_xdata()) == n_static
    assert "ms per image" in fig.axes[0].get_xlabel() and "(0-1)" in fig.axes[0].get_ylabel()
    legend_off_axes(fig)


@pytest.mark.parametrize("n_static", [1, 2, 3])
def test_frontier_costs_units_labels_and_batch_note(n_static):
    fig = F.frontier_costs_figure(variable_speed(n_static), COLUMNS)
    texts = assert_readable(fig)
    assert len(fig.axes) == 4
    for ax, (cost, col) in zip(fig.axes, COLUMNS.items(), strict=True):
        assert ax.get_title() == cost
        assert ax.get_xlabel() == ("ms per image" if col.startswith("latency") else "GFLOPs per image")
    assert sum(t == "/90" for t in texts) == 4 and sum(t == "/100" for t in texts) == 4
    assert all(sum(t == name for t in texts) == 4 for name in STATICS[n_static])
    assert len(frontier_line(fig)) == 4
    assert any("splits each batch" in t and "loops back" in t for t in texts)
    legend_off_axes(fig)


def test_frontier_costs_without_batch_column():
    table = variable_speed(2).drop(columns=["latency_ms_b8"])
    fig = F.frontier_costs_figure(table, COLUMNS)
    texts = assert_readable(fig)
    assert len(fig.axes) == 3 and not any("splits" in t for t in texts)


def test_two_stage_plots_box_ap():
    fig = F.two_stage_figure(two_stage("faster"), two_stage("mask"))
    texts = assert_readable(fig)
    for ax in fig.axes:
        assert "box AP" in ax.get_ylabel() and "mask" not in ax.get_ylabel().lower()
        assert "ms per image" in ax.get_xlabel()
        # the plotted APs are the box APs of the table
        dy = ax.lines[0].get_ydata()
        assert np.allclose(sorted(dy), sorted(two_stage("faster")["AP"].iloc[2:]))
    assert sum(t == "/90" for t in texts) == 2 and sum(t == "/100" for t in texts) == 2
    assert sum(t == "resnet34" for t in texts) == 2 and len(frontier_line(fig)) == 2
    legend_off_axes(fig)


@pytest.mark.parametrize("views", [1, 2])
def test_loss_difference_labels_from_data(views):
    rng = np.random.default_rng(0)
    n = 200
    losses = pd.DataFrame(
        {
            "image_id": np.tile(np.arange(n), views),
            "view": np.repeat(np.arange(views), n),
            "L1_minus_L2": np.r_[rng.normal(0.2, 0.12, n * views - 3), [-0.5, 1.5, 2.0]],
        }
    )
    note = "the router ranks L1: Delta = median L1 = 2.062"
    fig = F.loss_difference_figure(losses, note=note, augmented=views == 2)
    texts = assert_readable(fig)
    label = fig.axes[0].get_ylabel()
    if views == 1:
        assert label == "training images (1 un-augmented view each)"
    else:
        assert label == f"image views ({n} x 2 augmented views)"
    assert any(note in t for t in texts)
    legend_off_axes(fig)
    plain = F.loss_difference_figure(losses.drop(columns=["view"]))
    assert plain.axes[0].get_ylabel() == "training images (1 view each)"


def router_scores() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    names = ["naive (1)", *[f"naive (2), lambda={lam:g}" for lam in (0.05, 0.1, 0.2)]]
    names += ["adaptive offset (median Delta, paper)", "adaptive offset (running median, authors' code)"]
    return {n: rng.beta(0.3, 0.3, 300) for n in names}


def test_router_scores_readable_and_deterministic():
    scores = router_scores()
    fig = F.router_scores_figure(scores)
    texts = assert_readable(fig)
    assert set(scores) <= set(texts)
    assert png(F.router_scores_figure(scores)) == png(F.router_scores_figure(scores))


def test_router_variants_legend_off_the_bars():
    var, sig = signals_and_variants()
    fig = F.router_variants_figure(var, sig)
    texts = assert_readable(fig)
    assert {"random", "oracle: val L1 - L2", "oracle: per-image AP gain"} <= set(texts)
    legend_off_axes(fig)


def test_training_curves():
    epochs = np.arange(1, 16)
    m = pd.DataFrame({"epoch": epochs})
    for tag in ("L1", "L2"):
        for part in ("box", "cls", "dfl"):
            m[f"{tag}_{part}"] = 4 / epochs
    m["det1_AP"], m["det2_AP"] = 0.6 * (1 - np.exp(-epochs / 3)), 0.65 * (1 - np.exp(-epochs / 3))
    m.loc[m["epoch"] % 2 == 0, ["det1_AP", "det2_AP"]] = np.nan  # validation every other epoch
    fig = F.training_curves_figure(m)
    assert_readable(fig)
    assert "(0-1)" in fig.axes[1].get_ylabel()


@pytest.mark.parametrize("n_images", [8, 6])
def test_image_grid_titles_apart(n_images):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (128, 128, 3), dtype=np.uint8) for _ in range(n_images)]
    titles = [f"phi {i / 8:.2f} -> detector {1 + i // 4}\ntrue difficulty 0.{i}0" for i in range(n_images)]
    boxes = [np.array([[10, 10, 40, 50], [60, 60, 120, 100]]) for _ in range(n_images)]
    fig = F.image_grid_figure(
        images, titles, "Val images the router finds easiest (top) and hardest (bottom)", boxes, [[0, 3]] * n_images
    )
    texts = assert_readable(fig)
    assert set(titles) <= set(texts)


def test_controller_disturbance():
    rows = []
    for loop in ("open loop", "closed loop"):
        for i, images in enumerate(range(30, 2700, 30)):
            phase = "quiet" if images < 900 else "loaded" if images < 1800 else "quiet again"
            k = 0.75 if loop == "open loop" else (0.0 if phase == "loaded" else 0.6)
            thr = -26.0 if loop == "open loop" else (np.inf if phase == "loaded" else -5.0 + i % 7)
            ms = 12 + (25 if phase == "loaded" else 0) - (10 if loop == "closed loop" and phase == "loaded" else 0)
            rows.append({"loop": loop, "phase": phase, "images": images, "ms_per_image": ms, "k": k, "threshold": thr})
    fig = F.controller_disturbance_figure(pd.DataFrame(rows), target_ms=14.85)
    texts = assert_readable(fig)
    assert "ms per image" in fig.axes[0].get_ylabel() and "target" in texts
    legend_off_axes(fig)


def test_step1_ablation():
    means = pd.DataFrame(
        {
            "row": ["a", "b", "c", "d", "f2"],
            "recipe": [
                "static, ultralytics' trainer",
                "static, our loop",
                "joint, one clip",
                "joint, per-detector clip",
            ]
            + ["per-detector clip + links detached"],
            "seeds": [1, 1, 2, 1, 1],
            "AP det1": [0.17, 0.27, 0.23, 0.13, 0.27],
            "AP det2": [np.nan, np.nan, 0.25, 0.42, 0.27],
        }
    )
    fig = F.step1_ablation_figure(means)
    texts = assert_readable(fig)
    assert "c: joint, one clip (2 seeds)" in texts and "(0-1)" in fig.axes[0].get_xlabel()
    legend_off_axes(fig)


def test_grad_norms():
    rng = np.random.default_rng(0)
    steps = np.arange(600)
    joint = pd.DataFrame({"epoch": steps // 40 + 1, "step": steps, "clipped": 1})
    joint["grad_norm"] = 2000 * np.exp(-steps / 50) + 50 + rng.normal(0, 5, len(steps)).clip(-40)
    joint["grad_norm_det1"], joint["grad_norm_det2"] = joint["grad_norm"] * 0.9, joint["grad_norm"] * 0.5
    static = joint[["epoch", "step", "clipped", "grad_norm"]]
    logs = {
        "row c: joint, one clip": joint,
        "row d: joint, per-detector clip": joint,
        "row b: static, our loop": static,
    }
    fig = F.grad_norms_figure(logs, clip=10.0)
    texts = assert_readable(fig)
    assert {"whole model", "detector 1", "detector 2", "clip threshold (10)"} <= set(texts)
    legend_off_axes(fig)


def test_overlap_check_catches_the_old_easy_hard_titles():
    """The check itself: the old easy_hard layout (one-line titles over 4 columns) fails it."""
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.3))
    for i, ax in enumerate(axes):
        ax.imshow(np.zeros((8, 8)))
        ax.set_title(f"phi 0.{i}0 -> detector 1, true difficulty 0.{i}2", fontsize=9)
        ax.axis("off")
    with pytest.raises(AssertionError, match="overlapping texts"):
        assert_readable(fig)
