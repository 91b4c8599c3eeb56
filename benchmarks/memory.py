"""Memory: anonymous RSS growth while streaming a rows file several times larger than
the bound NpyDataset promises, and the index's bytes per sample."""

from __future__ import annotations

import os

import numpy as np

from benchmarks.common import ROW, Results, rss_anon, rss_file


def run(results: Results, root: str, gib: float, files_folder: str | None) -> None:
    from keras_npy import NpyDataset, build_index

    path = os.path.join(root, "big.npy")
    rows = int(gib * 2**30) // (ROW * 4)
    np.lib.format.open_memmap(path, "w+", "float32", (rows, ROW)).flush()  # sparse on disk
    batch = 1024
    bound = 64 + batch * ROW * 4 * (10 + 2) / 2**20
    group = results.group(f"memory: streaming {gib:g} GiB of rows, batch {batch} (the promised "
                          f"bound is {bound:.0f} MiB); peak RSS growth, anonymous unless said")
    for shuffle in (False, True):
        anon, mapped = _stream(NpyDataset(path, batch_size=batch, shuffle=shuffle, seed=0))
        kind = "shuffled" if shuffle else "sequential"
        results.value(group, f"NpyDataset, {kind}", "keras_npy", anon, "MiB")
        results.value(group, f"NpyDataset, {kind}: RssFile (mapped page cache)", "keras_npy",
                      mapped, "MiB")
    results.value(group, "np.load of the same file (what it would hold)", "baseline",
                  rows * ROW * 4 / 2**20, "MiB")
    # The same bytes as files of 256 MiB: their maps are kept too (up to 64
    # files per process), mapped page cache resident though not anonymous.
    folder = os.path.join(root, "parts")
    os.makedirs(folder)
    per_file = 2**28 // (ROW * 4)
    for k in range(-(-rows // per_file)):
        np.lib.format.open_memmap(os.path.join(folder, f"{k:03d}.npy"), "w+", "float32",
                                  (min(per_file, rows - k * per_file), ROW)).flush()
    for shuffle in (False, True):
        anon, mapped = _stream(NpyDataset(folder, layout="rows", batch_size=batch,
                                          shuffle=shuffle, seed=0))
        kind = "shuffled" if shuffle else "sequential"
        results.value(group, f"NpyDataset, {kind}, 256 MiB files: RssAnon", "keras_npy", anon,
                      "MiB")
        results.value(group, f"NpyDataset, {kind}, 256 MiB files: RssFile (mapped page "
                      "cache)", "keras_npy", mapped, "MiB")
    if files_folder is not None:
        index = build_index(files_folder, y="inferred", verbose=False)
        results.value(group, "index memory, files layout, inferred labels", "keras_npy",
                      index.nbytes / index.num_samples, "B/sample")


def _stream(ds) -> tuple[float, float]:
    """Reads every batch; the peak growth of anonymous and of file-backed RSS, in MiB.
    Maps are one table per process: the last stream's are closed first."""
    from keras_npy.read import handles

    handles.TABLE.clear()
    ds[0]
    before, peak = (rss_anon(), rss_file()), (0, 0)
    for i in range(len(ds)):
        ds[i]
        if i % 64 == 0:
            peak = max(peak[0], rss_anon()), max(peak[1], rss_file())
    return tuple((max(p, now) - b) / 2**20
                 for p, now, b in zip(peak, (rss_anon(), rss_file()), before))
