"""Benchmark of the synthetic dataset generator: images per second.

Usage::

    python bench/bench_datagen.py [--n 400] [--size 256] [--workers 2]

Generates ``n`` training images (difficulty spread over [0, 1] as in a real dataset) into
a temporary folder, deletes it, and prints the measured speed as json. :func:`measure`
is the importable core, for a benchmark suite.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from dynamicdet.config import DEFAULT_CLASSES
from dynamicdet.data.synthetic import generate


def measure(n: int = 400, size: int = 256, workers: int = 2) -> dict:
    """Generate ``n`` images of side ``size`` with ``workers`` processes and time it.

    Returns:
        ``{"n", "size", "workers", "seconds", "images_per_s", "ms_per_image",
        "mb_written", "annotations"}``; ``seconds`` covers the whole :func:`generate`
        call (pool start-up, JPEG and json writing included).
    """
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
        n_bytes = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
    return {
        "n": n,
        "size": size,
        "workers": workers,
        "seconds": round(seconds, 3),
        "images_per_s": round(n / seconds, 1),
        "ms_per_image": round(1000 * seconds / n, 2),
        "mb_written": round(n_bytes / 1e6, 2),
        "annotations": stats["train"]["n_annotations"],
    }


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="images to generate")
    parser.add_argument("--size", type=int, default=256, help="image side (px)")
    parser.add_argument("--workers", type=int, default=2, help="generator processes")
    args = parser.parse_args()
    result = measure(args.n, args.size, args.workers)
    print(f"{result['images_per_s']} images/s ({args.n} images, {args.size} px, {args.workers} workers)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
