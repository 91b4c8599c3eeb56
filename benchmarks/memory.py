"""Memory: anonymous RSS growth while streaming a rows file several times larger than
the bound NpyDataset promises, and the index's bytes per sample."""

from __future__ import annotations

import os

import numpy as np

from benchmarks.common import ROW, Results, rss_anon


def run(results: Results, root: str, gib: float, files_folder: str | None) -> None:
    from keras_npy import NpyDataset, build_index

    path = os.path.join(root, "big.npy")
    rows = int(gib * 2**30) // (ROW * 4)
    np.lib.format.open_memmap(path, "w+", "float32", (rows, ROW)).flush()  # sparse on disk
    batch = 1024
    bound = 64 + batch * ROW * 4 * (10 + 2) / 2**20
    group = results.group(f"memory: streaming {gib:g} GiB of rows, batch {batch} (the promised "
                          f"bound is {bound:.0f} MiB); peak RssAnon growth")
    for shuffle in (False, True):
        ds = NpyDataset(path, batch_size=batch, shuffle=shuffle, seed=0)
        ds[0]
        before, peak = rss_anon(), 0
        for i in range(len(ds)):
            ds[i]
            if i % 64 == 0:
                peak = max(peak, rss_anon())
        grown = (max(peak, rss_anon()) - before) / 2**20
        results.value(group, f"NpyDataset, {'shuffled' if shuffle else 'sequential'}",
                      "keras_npy", grown, "MiB")
    results.value(group, "np.load of the same file (what it would hold)", "baseline",
                  rows * ROW * 4 / 2**20, "MiB")
    if files_folder is not None:
        index = build_index(files_folder, y="inferred", verbose=False)
        results.value(group, "index memory, files layout, inferred labels", "keras_npy",
                      index.nbytes / index.num_samples, "B/sample")
