"""The static frontier in every cost a user pays: GFLOPs, CPU latency at batch 1 and at
``eval.batch`` (torch), and onnxruntime latency at batch 1 (notebook 06).

The paper reports FLOPs and GPU latency; whether Dy /k sits above the static models'
frontier can depend on the axis. :func:`onnx_latency` times the deployment runtime: the
dynamic routes through this project's export (:mod:`dynamicdet.deploy.export`: three graphs routed
in Python) and the static models through ultralytics' own ONNX export, on the latency
table's stream of val images, interleaved and checked like :func:`~.variable_speed.latency_table`.
:func:`frontier_by_cost` is one long table: one row per Dy /k and cost measure.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import onnxruntime as ort
import pandas as pd
import torch
from ultralytics import YOLO

from dynamicdet.deploy.export import OnnxDynamicDetector, export_onnx
from dynamicdet.engine.runs import ONNX_LATENCY, STATIC_MODELS
from dynamicdet.experiments.tradeoffs import static_frontier
from dynamicdet.experiments.trained import Trained
from dynamicdet.experiments.variable_speed import (
    TIMING_SEGMENT_IMAGES,
    latency_checks,
    stream_latency,
    time_until_consistent,
    timing_stream,
)
from dynamicdet.files import write_csv

ONNX_COLUMN = "latency_ms_onnx_b1"


def cost_columns(batch: int) -> dict[str, str]:
    """Cost measure -> column of ``variable_speed.csv`` (lower is cheaper)."""
    return {
        "GFLOPs": "GFLOPs",
        "CPU latency, batch 1 (torch)": "latency_ms_b1",
        f"CPU latency, batch {batch} (torch)": f"latency_ms_b{batch}",
        "CPU latency, batch 1 (onnxruntime)": ONNX_COLUMN,
    }


def _static_session(t: Trained, scale: str, folder: Path, threads: int) -> ort.InferenceSession:
    """ultralytics' ONNX export of the trained static ``scale`` (fp32, dynamic batch), on onnxruntime."""
    src = STATIC_MODELS.path(t.cfg) / scale / "weights" / "last.pt"
    if not src.exists():
        raise FileNotFoundError(f"{src}: static {t.cfg.model.family}{scale} not trained yet (run static_baselines)")
    weights = folder / f"{t.cfg.model.family}{scale}.pt"
    shutil.copy(src, weights)  # ultralytics writes the .onnx beside the weights: keep the run folder untouched
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = YOLO(str(weights), task="detect").export(
            format="onnx", imgsz=t.cfg.data.img_size, dynamic=True, simplify=False, opset=17, verbose=False
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the routes' sessions
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_latency(t: Trained, res: dict, static: pd.DataFrame, tries: int = 3) -> pd.DataFrame | None:
    """onnxruntime ms per image at batch 1 of every model of the trade-off, timed together, checked.

    The Dy rows route at the table's thresholds (``OnnxDynamicDetector.route``), the static
    rows run ultralytics' exported graph; onnxruntime gets torch's thread count. Timed on the
    latency table's stream, every :data:`~.variable_speed.TIMING_SEGMENT_IMAGES` images in
    alternation; checked by :func:`~.variable_speed.latency_checks` (timed again up to
    ``tries`` times). Cached (:data:`~dynamicdet.engine.runs.ONNX_LATENCY`).

    Returns:
        Columns ``model``, ``latency_ms_onnx_b1``, ``consistent_onnx``; None when the config
        turns it off (``eval.onnx_latency: false``).
    """
    if not t.cfg.eval.onnx_latency:
        return None
    table = res["table"]
    path = ONNX_LATENCY.path(t.cfg)
    names = [*table["model"], *static.get("model", [])]
    if path.exists():
        cached = pd.read_csv(path)
        if list(cached["model"]) == names:
            return cached
    threads = torch.get_num_threads()
    stream, z = timing_stream(t)
    k_timed = {m: float((z >= tau).mean()) for m, tau in zip(table["model"], table["tau"], strict=True)}
    with tempfile.TemporaryDirectory(prefix="dynamicdet_onnx_") as tmp:
        graphs = export_onnx(t.model, Path(tmp) / "dynamic", t.cfg.data.img_size, list(t.cfg.data.classes))
        dyn = OnnxDynamicDetector(graphs, threads)
        thresholds = zip(table["model"], table["tau"], strict=True)
        fns: dict = {m: (lambda x, tau=float(tau): dyn.route(x, tau)) for m, tau in thresholds}
        same = None
        for scale in t.cfg.eval.static_scales:
            name = f"{t.cfg.model.family}{scale} (static)"
            if name in names:
                sess = _static_session(t, scale, Path(tmp), threads)
                fns[name] = lambda x, s=sess: s.run(None, {"images": x.detach().cpu().numpy()})
                same = name if scale == t.cfg.model.scale else same

        def time_once(attempt: int) -> pd.DataFrame:
            ms = stream_latency(t, fns, stream, 1, segment=TIMING_SEGMENT_IMAGES)
            return pd.DataFrame({"model": names, "latency_ms_b1": [ms[n] for n in names]})

        def check(df: pd.DataFrame) -> pd.DataFrame:
            checks = latency_checks(df, k_timed, same)
            # Dy /0 here is two sessions (stage1 + head1) against ultralytics' one graph of the same network:
            # the ratio is the export's split, recorded; the monotone and linear-mix checks decide
            checks.loc[checks["check"] == "same network", "decides"] = False
            return checks

        df, checks, failed = time_until_consistent(time_once, check, k_timed, same, tries)
    if failed:
        warnings.warn(f"onnxruntime latency: checks failed after {tries} timing(s): {sorted(failed)}", stacklevel=2)
    df = df.rename(columns={"latency_ms_b1": ONNX_COLUMN})
    df["consistent_onnx"] = [n not in failed for n in names]
    write_csv(checks, path.with_name(path.stem + "_checks.csv"))
    write_csv(df, path)
    return df


def frontier_by_cost(table: pd.DataFrame, batch: int) -> pd.DataFrame:
    """Each Dy /k against the static frontier in every cost measure of ``table`` (``variable_speed.csv``).

    Returns:
        One row per cost measure and Dy row: ``cost``, ``model``, ``cost value``, ``AP``,
        ``AP_frontier``, ``gap`` (AP - AP_frontier, >= 0: on or above the frontier; NaN with
        fewer than two static models or without that cost column).
    """
    static = table[table["model"].str.endswith("(static)")]
    dy = table[~table["model"].str.endswith("(static)")]
    parts = []
    for cost, col in cost_columns(batch).items():
        if col not in table:
            continue
        # static_frontier interpolates along a column named latency_ms_b1: any cost goes through it
        pts, st = (d[["model", col, "AP"]].rename(columns={col: "latency_ms_b1"}) for d in (dy, static))
        f = static_frontier(pts, st).rename(columns={"latency_ms_b1": "cost value"})
        f.insert(0, "cost", cost)
        parts.append(f)
    return pd.concat(parts, ignore_index=True)
