"""Cost accounting: parameters and GFLOPs of each part and each route.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the full-size input
(it counts conv/matmul FLOPs = 2 x MACs, the convention of ultralytics' GFLOPs). A
dynamic model at hard fraction k costs the linear mix, as in the authors' table
(:func:`dynamicdet.metrics.mix`):

    GFLOPs(k) = (1 - k) * GFLOPs_easy + k * GFLOPs_hard
"""

from __future__ import annotations

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from dynamicdet.modeling.yolo import DynamicDetector, run_layers

EASY = "easy route (B1+router+H1)"
HARD = "hard route (B1+router+links+B2+H2)"


@torch.inference_mode()
def gflops(fn, inputs: list[torch.Tensor] | None = None) -> float:
    """GFLOPs of ``fn()``, or the mean GFLOPs per input of ``fn(x)`` over ``inputs``.

    The one FLOP counter of the project (convolutions and matrix products; RoIAlign and
    NMS are not counted). A data-dependent model (two-stage heads, routed inference) is
    counted on real inputs, one at a time.
    """
    calls = [fn] if inputs is None else [lambda x=x: fn(x) for x in inputs]
    total = 0.0
    for call in calls:
        with FlopCounterMode(display=False) as counter:
            call()
        total += counter.get_total_flops()
    return total / len(calls) / 1e9


def _params(module_or_params) -> int:
    ps = module_or_params.parameters() if hasattr(module_or_params, "parameters") else module_or_params
    return sum(p.numel() for p in ps)


def _split_params(det, n_backbone: int) -> tuple[int, int]:
    backbone = sum(_params(m) for m in det.model[:n_backbone])
    return backbone, _params(det) - backbone


@torch.no_grad()
def cost_table(model: DynamicDetector, img_size: int) -> pd.DataFrame:
    """Params (M) and GFLOPs of B1, H1, links, B2, H2, router, and of the easy and hard routes.

    Args:
        model: the dynamic detector (put in eval mode for the count, restored after).
        img_size: square input side in pixels.

    Returns:
        DataFrame indexed by part with columns ``params_M`` and ``GFLOPs``.
    """
    was_training = model.training
    model.eval()
    x = torch.zeros(1, model.ch, img_size, img_size, device=next(model.parameters()).device)
    y1 = model.backbone1(x)
    f1 = model.taps(y1)
    links = model.links(f1)
    inject = dict(zip(model.spec.downsample, links, strict=True))

    def b2():
        run_layers(model.det2, x, 0, model.spec.n_backbone, [], inject=inject)

    y2 = model.backbone2(x, f1)
    nb = model.spec.n_backbone
    p_b1, p_h1 = _split_params(model.det1, nb)
    p_b2, p_h2 = _split_params(model.det2, nb)
    rows = {
        "B1": (p_b1, gflops(lambda: model.backbone1(x))),
        "H1": (p_h1, gflops(lambda: model.head1(y1))),
        "links": (_params(model.links), gflops(lambda: model.links(f1))),
        "B2": (p_b2, gflops(b2)),
        "H2": (p_h2, gflops(lambda: model.head2(y2))),
        "router": (_params(model.router), gflops(lambda: model.router(f1))),
    }
    df = pd.DataFrame(rows, index=["params", "GFLOPs"]).T
    easy = df.loc[["B1", "router", "H1"]].sum()
    hard = df.loc[["B1", "router", "links", "B2", "H2"]].sum()
    df.loc[EASY] = easy
    df.loc[HARD] = hard
    df["params_M"] = df.pop("params") / 1e6
    model.train(was_training)
    return df[["params_M", "GFLOPs"]]


def route_gflops(model: DynamicDetector, img_size: int) -> tuple[float, float]:
    """(easy, hard) route GFLOPs at ``img_size``."""
    t = cost_table(model, img_size)
    return float(t.loc[EASY, "GFLOPs"]), float(t.loc[HARD, "GFLOPs"])
