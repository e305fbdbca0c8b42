"""Benchmark of the synthetic dataset generator: images per second.

Usage::

    python bench/bench_datagen.py [--n 1000] [--size 256] [--workers 2]

Generates ``n`` training images into a temporary folder and prints the measured speed
as json. The benchmark suite (``make bench``, ``bench/suite.py``) reports the same
measurement (:func:`measure_datagen`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from dynamicdet.config import DEFAULT_CLASSES
from dynamicdet.data.synthetic import generate


def measure_datagen(n: int = 1000, size: int = 256, workers: int = 2) -> dict:
    """Generate ``n`` images of side ``size`` into a temporary folder; images per second."""
    with tempfile.TemporaryDirectory(prefix="bench_datagen_") as tmp:
        t0 = time.perf_counter()
        stats = generate(
            Path(tmp),
            n_train=n,
            n_val=0,
            img_size=size,
            seed=0,
            classes=list(DEFAULT_CLASSES),
            workers=workers,
            progress=False,
        )
        seconds = time.perf_counter() - t0
    return {
        "n": n,
        "size": size,
        "workers": workers,
        "seconds": round(seconds, 3),
        "images_per_s": round(n / seconds, 1),
        "annotations": stats["train"]["n_annotations"],
    }


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="images to generate")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=2, help="generator processes")
    args = parser.parse_args()
    result = measure_datagen(args.n, args.size, args.workers)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
