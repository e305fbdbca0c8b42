"""Route-aware batching of an image stream, and a latency controller that closes the loop.

``route()`` splits each batch into an easy and a hard sub-batch, so at batch 8 a small hard
sub-batch costs nearly a full batch of B2 + H2. :class:`StreamScheduler` instead keeps the
hard images waiting, with their backbone-1 features, until a full hard batch is ready (or
the oldest has waited ``max_wait_s``), so every B2 + H2 call runs on a full batch; with
``batch_easy`` (the default) the easy images wait the same way for a full H1 batch::

    images ──► B1 + router (full batches) ──┬── easy ──► [queue (x, F1)] ──► H1 ──────────► results
                                            └── hard ──► queue (x, F1) ──► links + B2 + H2 ──► results
                                                         (flush: full batch or deadline)

The scheduler runs the three stages of :class:`~dynamicdet.modeling.routing.RoutedDetector`
(the split of :func:`~dynamicdet.modeling.routing.route`, with queues between the stages), so it
serves any dynamic model alike: YOLO, two-stage, or their ONNX export on onnxruntime.

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

from dynamicdet.modeling import routing
from dynamicdet.modeling.routing import RoutedDetector


@dataclass
class StreamResult:
    """One image's result: its id, its detections (as ``route()`` gives them), route, logit, latency."""

    id: object
    preds: object  # one image's row of route()'s preds: YOLO (4 + nc, A) raw detections; two-stage a torchvision dict
    hard: bool
    logit: float
    latency_ms: float  # from entering the scheduler to its result being ready


def _gather(parts: list[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
    """Rows ``rows`` of each ``(tensor, rows)`` (None: all rows), stacked along dim 0, in one copy.

    A single whole tensor is returned as it is (no copy); otherwise every row is copied once,
    straight into the output batch (no per-part index copy followed by a concatenation).
    """
    if len(parts) == 1:
        t, rows = parts[0]
        return t if rows is None else t.index_select(0, rows)
    sizes = [len(t) if rows is None else len(rows) for t, rows in parts]
    first = parts[0][0]
    out = first.new_empty((sum(sizes), *first.shape[1:]))
    at = 0
    for (t, rows), n in zip(parts, sizes, strict=True):
        if rows is None:
            out[at : at + n].copy_(t)
        else:
            torch.index_select(t, 0, rows, out=out[at : at + n])
        at += n
    return out


@dataclass
class _Chunk:
    """Queued images of one route that arrived in the same batch: the rows ``rows`` of that batch's
    images and backbone-1 features, kept as references to the batch (when they are at least half
    of it, see :meth:`compact`), so that most images are copied once, by :meth:`gather`, when they
    leave the queue."""

    ids: list
    x: torch.Tensor | None  # (B, 3, H, W): the whole batch they arrived in (None: the route reads no images)
    feats: list  # per level (B, C, h, w) or None: the taps F1
    rows: torch.Tensor | None  # (n,) indices of these images in x / feats; None: all B
    logits: list[float]
    t_in: list[float]  # arrival times

    def __len__(self) -> int:
        return len(self.ids)

    def _batch(self) -> torch.Tensor:
        """A tensor of the referenced batch (the images, or the first feature level when there are none)."""
        return self.x if self.x is not None else next(f for f in self.feats if f is not None)

    def split(self, n: int) -> tuple[_Chunk, _Chunk]:
        """The first ``n`` images and the rest (no copy)."""
        batch = self._batch()
        rows = torch.arange(len(batch), device=batch.device) if self.rows is None else self.rows

        def part(sl):
            return _Chunk(self.ids[sl], self.x, self.feats, rows[sl], self.logits[sl], self.t_in[sl])

        return part(slice(0, n)), part(slice(n, None))

    def compact(self) -> _Chunk:
        """Itself, or a copy of its own rows when they are under half of the batch it references.

        Queued chunks are compacted, so a queue holds at most twice the memory of the images in it
        (a long wait of a few hard images per batch does not keep every whole batch alive).
        """
        if self.rows is None or 2 * len(self.rows) >= len(self._batch()):
            return self
        x, feats = _Chunk.gather([self], images=self.x is not None)
        return _Chunk(self.ids, x, feats, None, self.logits, self.t_in)

    @staticmethod
    def gather(chunks: list[_Chunk], images: bool = True) -> tuple[torch.Tensor | None, list]:
        """The chunks' images (B, 3, H, W) (None unless ``images``) and features, as one batch."""
        x = _gather([(c.x, c.rows) for c in chunks]) if images else None
        feats = [
            None if chunks[0].feats[j] is None else _gather([(c.feats[j], c.rows) for c in chunks])
            for j in range(len(chunks[0].feats))
        ]
        return x, feats


class _Queue:
    """Images waiting for one route, in arrival order, kept as the sub-batches they came in."""

    def __init__(self):
        self.chunks: list[_Chunk] = []
        self.n = 0

    def push(self, chunk: _Chunk | None) -> None:
        if chunk is not None and len(chunk):
            self.chunks.append(chunk.compact())
            self.n += len(chunk)

    def waited(self) -> float:
        """Seconds the oldest queued image has waited."""
        return time.perf_counter() - self.chunks[0].t_in[0]

    def pop(self, n: int) -> list[_Chunk]:
        """The oldest ``min(n, len)`` images, as the pieces they are queued in (:meth:`_Chunk.gather` joins them)."""
        taken, count = [], 0
        while self.chunks and count < n:
            c = self.chunks.pop(0)
            if count + len(c) > n:
                c, rest = c.split(n - count)
                self.chunks.insert(0, rest.compact())
            taken.append(c)
            count += len(c)
        self.n -= count
        return taken


class StreamScheduler:
    """Batched dynamic inference over a stream, with full hard batches.

    Args:
        model: a dynamic model, any :class:`~dynamicdet.modeling.routing.RoutedDetector` (YOLO,
            two-stage, or the ONNX runner), eval mode.
        threshold: on the router logit (as ``route()``); or a :class:`LatencyController`
            whose current threshold is read before every batch and which is told the time of each.
        batch: images per B1 + router batch, and per B2 + H2 batch.
        max_wait_s: a queued image waits at most this long for its batch to fill (None: until
            the batch is full or the stream ends).
        batch_easy: True (default): queue easy images too, so H1 also runs on full batches (an
            easy image then waits for ``batch`` easy images or the deadline); False: H1 runs at once
            on each batch's easy sub-batch (lowest latency of easy images, ``max_wait_s`` aside).
            ``make bench`` items 8 / 8c time both modes in alternation (``results/bench.md``).
    """

    def __init__(self, model, threshold, batch: int = 8, max_wait_s: float | None = None, batch_easy: bool = True):
        if not isinstance(model, RoutedDetector):
            raise TypeError(f"a dynamic model (a RoutedDetector) is needed, got {type(model).__name__}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.model, self.batch, self.max_wait_s = model, batch, max_wait_s
        self.batch_easy = batch_easy
        self.controller = threshold if isinstance(threshold, LatencyController) else None
        self.threshold = None if self.controller else float(threshold)

    # ---------------------------------------------------------------- the stream
    @torch.no_grad()
    def run(self, stream: Iterable[tuple[object, torch.Tensor]]) -> Iterator[StreamResult]:
        """Yield a :class:`StreamResult` per ``(id, image (3, H, W) in [0, 1])``, in input order."""
        self._clock = time.perf_counter()  # the controller is charged wall time, from here on
        order: list = []  # ids in arrival order, not yet yielded
        done: dict = {}
        easy_q, hard_q = _Queue(), _Queue()  # easy images waiting for H1 (batch_easy only); hard ones for B2 + H2
        pending: list[tuple[object, torch.Tensor, float]] = []
        it = iter(stream)
        exhausted = False
        while not exhausted or pending or easy_q.n or hard_q.n:
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
                easy_q.push(easy)
                hard_q.push(hard)
                pending = []
            for queue, run in ((easy_q, self._run_easy), (hard_q, self._run_hard)):
                late = self.max_wait_s is not None and queue.n and queue.waited() >= self.max_wait_s
                while queue.n >= self.batch or (queue.n and (exhausted or late)):
                    run(queue.pop(self.batch), done)
                    late = False
            while order and order[0] in done:
                yield done.pop(order.pop(0))

    def _run_batch(self, pending, done: dict) -> tuple[_Chunk | None, _Chunk | None]:
        """B1 + router on one batch. Returns the easy images that wait for H1 (``batch_easy``;
        otherwise they finish now, through H1 on the batch's easy sub-batch) and the hard ones."""
        tau = self.controller.threshold if self.controller else self.threshold
        x = torch.stack([p[1] for p in pending])
        z, taps = self.model.first_stage(x)
        hard = z >= tau
        easy_idx, hard_idx = (~hard).nonzero().squeeze(1), hard.nonzero().squeeze(1)
        everyone = len(pending)

        def chunk(idx, feats, images=True):  # the images idx: references to the batch and their rows (all: None)
            if not len(idx):
                return None
            ids = idx.tolist()
            return _Chunk(
                [pending[j][0] for j in ids],
                x if images else None,
                feats,
                None if len(idx) == everyone else idx,
                z[idx].tolist(),
                [pending[j][2] for j in ids],
            )

        if self.controller:
            self.controller.observe("first", everyone, self._charge())
        easy = chunk(easy_idx, taps, images=self.model.easy_reads_images)  # YOLO's H1 reads no images
        if easy is not None and not self.batch_easy:
            self._run_easy([easy], done)
            easy = None
        return easy, chunk(hard_idx, taps)

    def _finish(self, chunks: list[_Chunk], preds: list, hard: bool, done: dict) -> None:
        t = time.perf_counter()
        meta = [(i, logit, t_in) for c in chunks for i, logit, t_in in zip(c.ids, c.logits, c.t_in, strict=True)]
        for (i, logit, t_in), p in zip(meta, preds, strict=True):
            done[i] = StreamResult(i, p, hard, logit, (t - t_in) * 1e3)
        if self.controller:
            self.controller.observe("hard" if hard else "easy", len(meta), self._charge())

    def _run_easy(self, chunks: list[_Chunk], done: dict) -> None:
        """H1 on queued easy images (and their images x, when the model's H1 reads them)."""
        x, taps = _Chunk.gather(chunks, images=self.model.easy_reads_images)
        self._finish(chunks, list(self.model.easy_stage(x, taps)), False, done)

    def _run_hard(self, chunks: list[_Chunk], done: dict) -> None:
        """Links + B2 + H2 on queued hard images."""
        x, taps = _Chunk.gather(chunks)
        self._finish(chunks, list(self.model.hard_stage(x, taps)), True, done)

    def _charge(self) -> float:
        """Wall ms since the last charge: model time plus everything between (the caller's work on
        the results, e.g. NMS, included), which is what a target latency per image means."""
        now = time.perf_counter()
        ms, self._clock = (now - self._clock) * 1e3, now
        return ms


CHARGES = ("first", "easy", "hard")  # what a charge paid for: B1 + router, H1 of easy images, B2 + H2 of hard ones


@dataclass
class LatencyController:
    """Closed-loop choice of the hard fraction k for a target latency per image.

    Open loop, k = (target - lat_easy) / (lat_hard - lat_easy) from one calibration; the
    threshold is the val-score quantile that sends a fraction k of images to the hard route.
    Closed loop, the same formula with the two latencies measured on the running stream: the
    scheduler charges the wall time of every batch (model time and the caller's work since
    the last charge) to what it paid for (:data:`CHARGES`), B1 + router (``first``), H1 of easy
    images or B2 + H2 of hard ones, with the batch's image count; after every window of ``window``
    new images the per-image cost of each charge, c = sum ms / sum images with both sums decayed by ``memory``
    per window (a route not taken keeps its last cost), gives

        k <- clip((target - c_first - c_easy) / (c_hard - c_easy), 0, 1)

    i.e. lat_easy = c_first + c_easy and lat_hard = c_first + c_hard as the machine runs now.
    Measured against the earlier integral controller (k corrected in proportion to each
    window's error) on the same disturbed streams: ``bench/controller_compare.py``.

    Attributes:
        history: per window: images, measured ms/img, the three costs, k and threshold used after it.
    """

    target_ms: float
    val_logits: np.ndarray
    lat_easy: float
    lat_hard: float
    window: int = 32
    memory: float = 0.5
    closed: bool = True
    k: float = field(init=False)
    threshold: float = field(init=False)
    history: list[dict] = field(default_factory=list, init=False)

    def __post_init__(self):
        if not self.lat_hard > self.lat_easy:
            raise ValueError(f"lat_hard ({self.lat_hard}) must exceed lat_easy ({self.lat_easy})")
        if not 0.0 <= self.memory < 1.0:
            raise ValueError(f"memory must be in [0, 1), got {self.memory}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        # open-loop start: k = (lat_t - lat_easy) / (lat_hard - lat_easy), clipped to [0, 1]
        self.k = float(np.clip((self.target_ms - self.lat_easy) / (self.lat_hard - self.lat_easy), 0.0, 1.0))
        self.threshold = routing.threshold_for_fraction(self.val_logits, self.k)
        self._ms = dict.fromkeys(CHARGES, 0.0)  # decayed sums per charge
        self._n = dict.fromkeys(CHARGES, 0.0)
        self._images, self._window_ms = 0, 0.0  # new images and wall ms in the current window

    def observe(self, charge: str, images: int, ms: float) -> None:
        """Wall ``ms`` of one batch of ``images`` images, paid for ``charge`` (one of :data:`CHARGES`)."""
        if charge not in CHARGES:
            raise ValueError(f"charge must be one of {CHARGES}, got {charge!r}")
        self._ms[charge] += ms
        self._n[charge] += images
        self._window_ms += ms
        if charge == "first":
            self._images += images
            if self._images >= self.window:
                self._update()

    def costs(self) -> dict[str, float]:
        """Current per-image ms of each charge (NaN for a charge not yet seen)."""
        return {c: self._ms[c] / self._n[c] if self._n[c] else float("nan") for c in CHARGES}

    def _update(self) -> None:
        c = self.costs()
        measured = self._window_ms / self._images
        k = self._next_k(measured, c) if self.closed else None
        if k is not None:
            self.k = k
            self.threshold = routing.threshold_for_fraction(self.val_logits, k)
        self.history.append(
            {
                "images": self._images,
                "ms_per_image": measured,
                **{f"c_{charge}": v for charge, v in c.items()},
                "k": self.k,
                "threshold": self.threshold,
            }
        )
        for charge in CHARGES:  # older windows count less: c follows the machine's speed
            self._ms[charge] *= self.memory
            self._n[charge] *= self.memory
        self._images, self._window_ms = 0, 0.0

    def _next_k(self, measured: float, c: dict[str, float]) -> float | None:
        """The hard fraction after a window that ran at ``measured`` ms/img (None: keep k)."""
        if not all(self._n.values()):  # a charge not timed yet
            return None
        # k <- (target - c_first - c_easy) / (c_hard - c_easy), clipped to [0, 1]
        extra = max(c["hard"] - c["easy"], 1e-9)  # a hard route timed no dearer: k goes to an end
        return float(np.clip((self.target_ms - c["first"] - c["easy"]) / extra, 0.0, 1.0))
