"""Benchmark of the synthetic dataset generator: images per second.

Usage::

    python bench/bench_datagen.py [--n 400] [--size 256] [--workers 2]

Generates ``n`` training images into a temporary folder and prints the measured speed
as json. The measurement itself is :func:`dynamicdet.bench.measure_datagen`, which the
benchmark suite (``make bench``) also reports.
"""

from __future__ import annotations

import argparse
import json

from dynamicdet.bench import measure_datagen


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="images to generate")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=2, help="generator processes")
    args = parser.parse_args()
    result = measure_datagen(args.n, args.size, args.workers)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
