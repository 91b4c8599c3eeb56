"""Scale: index build time and epoch time from 10^3 samples up, with the slope of
log(time) against log(samples) (1 is linear)."""

from __future__ import annotations

import os
import time

import numpy as np

from benchmarks import common
from benchmarks.common import Results


def run(results: Results, root: str, largest: int) -> dict:
    from keras_npy import NpyDataset, build_index

    sizes = [10**k for k in range(3, int(np.log10(largest)) + 1)]
    group = results.group(f"scale: per-sample 1 KiB files in 10 class folders, "
                          f"{sizes[0]:,} to {sizes[-1]:,} samples (page cache)")
    folder = os.path.join(root, "scale")
    written, timings = 0, {"index": [], "epoch": []}
    for n in sizes:
        _extend(folder, written, n)
        written = n
        common.written()
        build_index(folder, y="inferred", verbose=False, index_file=False)  # warm the cache
        started = time.perf_counter()
        build_index(folder, y="inferred", verbose=False, index_file=False)
        timings["index"].append(time.perf_counter() - started)
        ds = NpyDataset.from_index(build_index(folder, y="inferred", verbose=False,
                                               index_file=False), batch_size=256)
        started = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        timings["epoch"].append(time.perf_counter() - started)
        results.value(group, f"{n:>9,} samples: index build", "keras_npy",
                      timings["index"][-1], "s")
        results.value(group, f"{n:>9,} samples: one epoch, NpyDataset", "keras_npy",
                      timings["epoch"][-1], "s")
    _index_file(results, group, folder, sizes[-1])
    for what, seconds in timings.items():
        slope = np.polyfit(np.log10(sizes), np.log10(seconds), 1)[0]
        results.value(group, f"slope of log({what} time) on log(samples)", "keras_npy", slope,
                      "(1=linear)")
    return {"sizes": sizes, **timings}


def _index_file(results: Results, group: str, folder: str, n: int) -> None:
    """What each process pays before its first batch once `keras-npy index`
    has run: loading the index file (checked against the folders), and
    making the dataset of the folder, which loads it."""
    from keras_npy import NpyDataset, load_index, write_index

    started = time.perf_counter()
    path = write_index(folder, y="inferred", verbose=False)
    results.value(group, f"{n:>9,} samples: keras-npy index (build and write)", "keras_npy",
                  time.perf_counter() - started, "s")
    for name, make in (("load_index", lambda: load_index(path)),
                       ("NpyDataset(folder) with the index file",
                        lambda: NpyDataset(folder, y="inferred", batch_size=256))):
        times = []
        for _ in range(results.repeats):
            started = time.perf_counter()
            make()
            times.append(time.perf_counter() - started)
        results.value(group, f"{n:>9,} samples: {name}", "keras_npy", float(np.median(times)),
                      "s", min(times), max(times))
    results.value(group, f"{n:>9,} samples: index file", "keras_npy",
                  os.path.getsize(path) / 2**20, "MiB")


def _extend(folder: str, start: int, stop: int) -> None:
    """Adds 1 KiB samples numbered `start` to `stop - 1`, in 10 class folders."""
    sample = np.zeros((16, 16), "float32")
    for c in range(10):
        os.makedirs(os.path.join(folder, f"class_{c}"), exist_ok=True)
    for i in range(start, stop):
        np.save(os.path.join(folder, f"class_{i % 10}", f"{i:07d}.npy"), sample)
