"""Bench item 9: the ONNX export on onnxruntime vs the torch model (``make bench``, part ``export``).

9. ms/img of the easy route, the hard route and the routed stream at k = 0.5, batch 1 and 8 (report).
"""

from __future__ import annotations

import tempfile

import torch

from dynamicdet.config import Config
from dynamicdet.deploy.export import OnnxDynamicDetector, export_onnx
from dynamicdet.evaluation.speed import prepare_for_timing, time_streams
from dynamicdet.modeling import routing


def bench_export(cfg: Config, model, repeats: int, batches=(1, 8)) -> list[dict]:
    """Item 9: the ONNX export (three graphs, routed in Python) on onnxruntime vs the fused torch model, CPU.

    A stream of 16 random images per batch size; k = 0.5 thresholds at the median of the
    router's logits on that stream; torch and onnxruntime passes timed in alternation.
    """
    m = prepare_for_timing(model, torch.device("cpu")).float()
    size = cfg.data.img_size
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as tmp:
        ort_model = OnnxDynamicDetector(export_onnx(model, tmp, size, list(cfg.data.classes)))
        torch.manual_seed(0)
        xs = torch.rand(16, 3, size, size)
        with torch.inference_mode():
            tau = routing.threshold_for_fraction(m.score_logit(xs).numpy(), 0.5)
        for b in batches:
            batches_t = list(xs.split(b))
            for route, t in (("easy route", float("inf")), ("hard route", float("-inf")), ("routed, k=0.5", tau)):
                ms = time_streams(
                    {
                        "torch": lambda x, t=t: m.route(x, t),
                        "onnxruntime": lambda x, t=t: ort_model.route(x, t),
                    },
                    batches_t,
                    "cpu",
                    warmup=1,
                    repeats=repeats,
                )
                rows.append(
                    {
                        "item": f"9. onnxruntime / torch latency, {route}, batch {b}",
                        "value": ms["onnxruntime"] / ms["torch"],
                        "goal": "report",
                        "mark": "-",
                        "detail": f"onnxruntime {ms['onnxruntime']:.2f} ms/img, torch {ms['torch']:.2f} ms/img",
                    }
                )
    return rows
