"""What a prediction becomes: final detection rows, annotated pictures, file names, COCO records.

The predictor (:mod:`dynamicdet.deploy.predictor`) turns a route's predictions into final rows
with :func:`detection_rows`; the CLI (``dynamicdet predict --save``) draws :func:`annotate` d
pictures named by :func:`output_names` and writes :func:`results_to_coco` records.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from ultralytics.data.utils import VID_FORMATS
from ultralytics.engine.results import Results
from ultralytics.utils.nms import non_max_suppression

from dynamicdet.modeling.routing import Preds


def detection_rows(preds: Preds, conf: float, iou: float, max_det: int) -> list[torch.Tensor]:
    """Final detections of a batch: per image (n, 6) [x1, y1, x2, y2, conf, class] in network-input pixels.

    Args:
        preds: a route's predictions (:data:`~dynamicdet.modeling.routing.Preds`): YOLO's raw
            (B, 4 + nc, A), through ultralytics' NMS here; or torchvision's per-image dicts, final
            already (labels 1-based, shifted to 0-based classes; masks are not kept).
        conf, iou, max_det: the NMS settings (torchvision's dicts: only ``conf`` and ``max_det`` apply).
    """
    if isinstance(preds, torch.Tensor):
        return non_max_suppression(preds, conf_thres=conf, iou_thres=iou, max_det=max_det)
    rows = []
    for d in preds:  # sorted by score already
        keep = (d["scores"] >= conf).nonzero().squeeze(1)[:max_det]
        rows.append(torch.cat([d["boxes"][keep], d["scores"][keep, None], (d["labels"][keep, None] - 1).float()], 1))
    return rows


def route_label(result: Results) -> str:
    """The text drawn on an annotated picture: the route and phi."""
    return f"{result.route} route, phi {result.phi:.2f}"


def annotate(result: Results, min_size: int = 640) -> np.ndarray:
    """ultralytics' plot of the detections with the route and phi written in the top-left corner (BGR).

    A picture smaller than ``min_size`` on its long side (e.g. a 192 px val image) is enlarged
    to it first, boxes with it, so that ultralytics' labels (12 px at least) stay readable.
    """
    h, w = result.orig_shape
    f = min_size / max(h, w)
    if f > 1:
        data = result.boxes.data.clone()
        data[:, :4] *= f  # x1, y1, x2, y2 (then conf, cls)
        big = cv2.resize(result.orig_img, (round(w * f), round(h * f)), interpolation=cv2.INTER_LINEAR)
        enlarged = Results(big, path=result.path, names=result.names, boxes=data)
        enlarged.route, enlarged.phi = result.route, result.phi
        result = enlarged
    im = result.plot()
    text = route_label(result)
    scale = max(im.shape[0], im.shape[1]) / 900
    thick = max(1, round(2 * scale))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    colour = (40, 40, 200) if result.route == "hard" else (60, 150, 40)
    cv2.rectangle(im, (0, 0), (w + 12, h + base + 12), colour, -1)
    cv2.putText(im, text, (6, h + 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return im


def output_names(results: list[Results]) -> list[str]:
    """A distinct image file name per result, for saving the annotated pictures in one folder.

    A picture keeps its name (``bus.jpg``); a video's frames become ``<stem>_<frame>.jpg``
    (frame counted from 1 within each video); a name already taken (the same file name in two
    folders) gets ``_2``, ``_3``, ... before its suffix.
    """
    names, taken, frames = [], set(), {}
    for r in results:
        p = Path(r.path)
        if is_video(str(p)):
            frames[p] = frames.get(p, 0) + 1
            p = Path(f"{p.stem}_{frames[p]:06d}.jpg")
        name, n = p.name, 1
        while name in taken:
            n += 1
            name = f"{p.stem}_{n}{p.suffix}"
        taken.add(name)
        names.append(name)
    return names


def is_video(path: str) -> bool:
    """Whether a path names a video (by its suffix, as ultralytics reads it)."""
    return path.rpartition(".")[-1].lower() in VID_FORMATS


def results_to_coco(results: list[Results]) -> list[dict]:
    """COCO-results records of predictions on arbitrary pictures: ``image_id`` = position in the list,
    plus ``file_name``, ``category_id`` = class index, ``bbox`` = [x, y, w, h] in original pixels, ``score``,
    and the picture's ``route`` and ``phi``."""
    out = []
    for i, r in enumerate(results):
        boxes = r.boxes
        for (x1, y1, x2, y2), score, cls in zip(
            boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist(), strict=True
        ):
            out.append(
                {
                    "image_id": i,
                    "file_name": Path(r.path).name,
                    "category_id": int(cls),
                    "category": r.names[int(cls)],
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(score), 5),
                    "route": r.route,
                    "phi": round(r.phi, 5),
                }
            )
    return out
