"""Route-aware batching of an image stream, and a latency controller that closes the loop.

``route()`` splits each batch into an easy and a hard sub-batch, so at batch 8 a small hard
sub-batch costs nearly a full batch of B2 + H2. :class:`StreamScheduler` instead keeps the
hard images waiting, with their backbone-1 features, until a full hard batch is ready (or
the oldest has waited ``max_wait_s``), so every B2 + H2 call runs on a full batch; with
``batch_easy`` the easy images wait the same way for a full H1 batch::

    images ──► B1 + router (full batches) ──┬── easy ──► [queue (x, B1 state)] ──► H1 ──► results
                                            └── hard ──► queue (x, F1) ──► B2 + H2 ──────► results
                                                         (flush: full batch or deadline)

Results come back in input order, each with its id, route, logit and latency (arrival to
result). :class:`LatencyController` adjusts the hard fraction online from measured batch
times so that a target ms per image holds when the machine slows down (an open-loop
threshold, calibrated once, cannot).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from . import routing
from .model import AdaptiveRouter, DynamicDetector, select
from .two_stage import DynamicTwoStage


@dataclass
class StreamResult:
    """One image's result: its id, its detections (as :meth:`route` gives them), route, logit, latency."""

    id: object
    preds: object  # YOLO: (4 + nc, A) raw detections; two-stage: a torchvision detection dict
    hard: bool
    logit: float
    latency_ms: float  # from entering the scheduler to its result being ready


@dataclass
class _Waiting:
    id: object
    x: torch.Tensor  # (3, H, W)
    feats: list  # this image's backbone-1 features: hard: the taps F1, each (C, h, w); easy: H1's input state
    logit: float
    t_in: float


class StreamScheduler:
    """Batched dynamic inference over a stream, with full hard batches.

    Args:
        model: a dynamic model (YOLO :class:`~.model.DynamicDetector` or
            :class:`~.two_stage.DynamicTwoStage`), eval mode.
        threshold: on the router logit (as :meth:`route`); or a :class:`LatencyController`
            whose current threshold is read before every batch and which is told the time of each.
        batch: images per B1 + router batch, and per B2 + H2 batch.
        max_wait_s: a queued image waits at most this long for its batch to fill (None: until
            the batch is full or the stream ends).
        batch_easy: queue easy images too, so H1 also runs on full batches (throughput; an easy
            image then waits for ``batch`` easy images or the deadline). False: H1 runs at once on
            each batch's easy sub-batch (lowest latency of easy images).
    """

    def __init__(self, model, threshold, batch: int = 8, max_wait_s: float | None = None, batch_easy: bool = True):
        if not isinstance(model, DynamicDetector | DynamicTwoStage):
            raise TypeError(f"a dynamic model is needed, got {type(model).__name__}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.model, self.batch, self.max_wait_s, self.batch_easy = model, batch, max_wait_s, batch_easy
        self.controller = threshold if isinstance(threshold, LatencyController) else None
        self.threshold = None if self.controller else float(threshold)
        self.yolo = isinstance(model, DynamicDetector)

    # ---------------------------------------------------------------- the model's two halves
    def _first_half(self, x: torch.Tensor):
        """B1 + router on a batch: (state for H1, taps F1, logits z (B,))."""
        m = self.model
        if self.yolo:
            y1 = m.backbone1(x)
            f1 = m.taps(y1)
            return y1, f1, m.router.logit(AdaptiveRouter.pool(f1))
        t1 = m.taps1(x)
        return t1, t1, m.router.logit(AdaptiveRouter.pool(t1))

    def _easy(self, x: torch.Tensor, state) -> list:
        """H1 on a batch of easy images ``x`` (B, 3, H, W) and their B1 state -> per-image predictions."""
        m = self.model
        if self.yolo:
            return list(m._inference(m.head1(state)))
        return list(m.det1.heads(x, m.det1.backbone.pyramid(state))[0])

    def _hard(self, x: torch.Tensor, f1: list[torch.Tensor]) -> list:
        """B2 (+ links) + H2 on a batch of hard images -> per-image predictions."""
        m = self.model
        if self.yolo:
            return list(m._inference(m.head2(m.backbone2(x, f1))))
        return list(m.det2.heads(x, m.pyramid2(x, f1))[0])

    # ---------------------------------------------------------------- the stream
    @torch.no_grad()
    def run(self, stream: Iterable[tuple[object, torch.Tensor]]) -> Iterator[StreamResult]:
        """Yield a :class:`StreamResult` per ``(id, image (3, H, W) in [0, 1])``, in input order."""
        self._clock = time.perf_counter()  # the controller is charged wall time, from here on
        order: list = []  # ids in arrival order, not yet yielded
        done: dict = {}
        easy_q: list[_Waiting] = []  # easy images waiting for H1 (batch_easy only)
        hard_q: list[_Waiting] = []  # hard images waiting for B2 + H2
        pending: list[tuple[object, torch.Tensor, float]] = []
        it = iter(stream)
        exhausted = False
        while not exhausted or pending or easy_q or hard_q:
            while not exhausted and len(pending) < self.batch:
                try:
                    i, x = next(it)
                except StopIteration:
                    exhausted = True
                    break
                pending.append((i, x, time.perf_counter()))
                order.append(i)
            if pending:
                easy, hard = self._run_batch(pending, done)
                easy_q += easy
                hard_q += hard
                pending = []
            for queue, run in ((easy_q, self._run_easy), (hard_q, self._run_hard)):
                late = self.max_wait_s is not None and queue and time.perf_counter() - queue[0].t_in >= self.max_wait_s
                while len(queue) >= self.batch or (queue and (exhausted or late)):
                    run(queue[: self.batch], done)
                    del queue[: self.batch]
                    late = False
            while order and order[0] in done:
                yield done.pop(order.pop(0))

    def _run_batch(self, pending, done: dict) -> tuple[list[_Waiting], list[_Waiting]]:
        """B1 + router on one batch. Returns the easy images that wait for H1 (``batch_easy``;
        otherwise they finish now, through H1 on the batch's easy sub-batch) and the hard ones."""
        tau = self.controller.threshold if self.controller else self.threshold
        x = torch.stack([p[1] for p in pending])
        state, f1, z = self._first_half(x)
        hard = z >= tau
        easy_idx, hard_idx = (~hard).nonzero().squeeze(1), hard.nonzero().squeeze(1)
        easy_waiting = []
        if len(easy_idx) and self.batch_easy:
            easy_waiting = [
                _Waiting(pending[j][0], x[j], [None if t is None else t[j] for t in state], float(z[j]), pending[j][2])
                for j in easy_idx.tolist()
            ]
        elif len(easy_idx):
            now_preds = self._easy(x[easy_idx], select(state, easy_idx))
            t = time.perf_counter()
            for j, p in zip(easy_idx.tolist(), now_preds, strict=True):
                i, _, t_in = pending[j]
                done[i] = StreamResult(i, p, False, float(z[j]), (t - t_in) * 1e3)
        hard_waiting = [
            _Waiting(pending[j][0], x[j], [f[j] for f in f1], float(z[j]), pending[j][2]) for j in hard_idx.tolist()
        ]
        if self.controller:
            self.controller.observe_first_half(len(pending), self._charge())
        return easy_waiting, hard_waiting

    @staticmethod
    def _stack(flush: list[_Waiting]) -> tuple[torch.Tensor, list]:
        """Queued images -> a batch (B, 3, H, W) and their features stacked level by level (None stays None)."""
        levels = range(len(flush[0].feats))
        feats = [None if flush[0].feats[j] is None else torch.stack([w.feats[j] for w in flush]) for j in levels]
        return torch.stack([w.x for w in flush]), feats

    def _finish(self, flush: list[_Waiting], preds: list, hard: bool, done: dict) -> None:
        t = time.perf_counter()
        for w, p in zip(flush, preds, strict=True):
            done[w.id] = StreamResult(w.id, p, hard, w.logit, (t - w.t_in) * 1e3)
        if self.controller:
            self.controller.observe_queued(self._charge())

    def _run_easy(self, flush: list[_Waiting], done: dict) -> None:
        x, state = self._stack(flush)
        self._finish(flush, self._easy(x, state), False, done)

    def _run_hard(self, flush: list[_Waiting], done: dict) -> None:
        x, f1 = self._stack(flush)
        self._finish(flush, self._hard(x, f1), True, done)

    def _charge(self) -> float:
        """Wall ms since the last charge: model time plus everything between (the caller's work on
        the results, e.g. NMS, included), which is what a target latency per image means."""
        now = time.perf_counter()
        ms, self._clock = (now - self._clock) * 1e3, now
        return ms


@dataclass
class LatencyController:
    """Closed-loop choice of the hard fraction k for a target latency per image.

    Open loop, k = (target - lat_easy) / (lat_hard - lat_easy) from one calibration; the
    threshold is the val-score quantile that sends a fraction k of images to the hard route.
    Closed loop, after every window of ``window`` images the measured wall time per image
    (charged by the scheduler at every batch: model time and the caller's work between)
    corrects k in proportion to the error, scaled by the
    calibrated cost of one more hard image (an integral controller on k):

        k <- clip(k + gain (target - measured) / (lat_hard - lat_easy), 0, 1)

    Attributes:
        history: per window: images, measured ms/img, k and threshold used after it.
    """

    target_ms: float
    val_logits: np.ndarray
    lat_easy: float
    lat_hard: float
    gain: float = 0.5
    window: int = 32
    k: float = field(init=False)
    threshold: float = field(init=False)
    history: list[dict] = field(default_factory=list, init=False)

    def __post_init__(self):
        if not self.lat_hard > self.lat_easy:
            raise ValueError(f"lat_hard ({self.lat_hard}) must exceed lat_easy ({self.lat_easy})")
        # open-loop start: k = (lat_t - lat_easy) / (lat_hard - lat_easy), clipped to [0, 1]
        self.k = float(np.clip((self.target_ms - self.lat_easy) / (self.lat_hard - self.lat_easy), 0.0, 1.0))
        self.threshold = routing.threshold_for_fraction(self.val_logits, self.k)
        self._images, self._ms = 0, 0.0

    def observe_first_half(self, images: int, ms: float) -> None:
        """Time of one B1 + router batch (+ H1 of its easy images when they do not queue): ``images`` new images."""
        self._images += images
        self._ms += ms
        if self._images >= self.window:
            self._update()

    def observe_queued(self, ms: float) -> None:
        """Time of one batch of queued images (H1 of easy ones, or B2 + H2 of hard ones), charged to the window."""
        self._ms += ms

    def _update(self) -> None:
        measured = self._ms / self._images
        # k <- clip(k + gain (target - measured) / (lat_hard - lat_easy), 0, 1)
        self.k = float(
            np.clip(self.k + self.gain * (self.target_ms - measured) / (self.lat_hard - self.lat_easy), 0, 1)
        )
        self.threshold = routing.threshold_for_fraction(self.val_logits, self.k)
        self.history.append(
            {"images": self._images, "ms_per_image": measured, "k": self.k, "threshold": self.threshold}
        )
        self._images, self._ms = 0, 0.0
