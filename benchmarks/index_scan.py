"""Header-scan rate of `build_index` over many small files, from the page cache,
against a plain Python open+read+close loop over the same files (the floor of
any reader that touches every file) measured in the same run.

    python -m benchmarks.index_scan --files 100000

Prints files/s of each (median of --repeats, with min-max) and their ratio,
and the index's memory per sample.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from keras_npy import build_index


def write_files(root: str, num_files: int, num_classes: int = 10) -> None:
    payload = np.zeros((64, 4), "float32")  # 1 KiB of data, a 128-byte header
    for c in range(num_classes):
        os.makedirs(os.path.join(root, f"class_{c}"), exist_ok=True)
    for i in range(num_files):
        np.save(os.path.join(root, f"class_{i % num_classes}", f"{i:07d}.npy"), payload)


def open_read_close(paths: list[str]) -> None:
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            f.read(256)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        write_files(root, args.files)
        index = build_index(root, y="inferred", verbose=False)  # warms the page cache
        paths = list(index.x.paths)
        raw = [timed(lambda: open_read_close(paths)) for _ in range(args.repeats)]
        scan = [timed(lambda: build_index(root, y="inferred", verbose=False))
                for _ in range(args.repeats)]
    n = args.files
    for name, times in [("open+read+close loop", raw), ("build_index", scan)]:
        rates = sorted(n / t for t in times)
        print(f"{name:>22}: {statistics.median(rates):9.0f} files/s "
              f"(min {rates[0]:.0f}, max {rates[-1]:.0f})")
    print(f"{'ratio':>22}: {statistics.median(raw) / statistics.median(scan):.2f}x "
          "the open+read+close loop (walk, headers, labels included)")
    print(f"{'index memory':>22}: {index.nbytes / n:.1f} bytes/sample")


if __name__ == "__main__":
    main()
