"""Packing many small files: `keras-npy pack` (`keras_npy.pack`) rewrites a directory of
1 KiB per-sample files as a few shards, and `NpyDataset(dst)` reads them. Measured cold
and shuffled, where per-sample files cost most (an open and a seek per sample): every
pass starts with the files it reads evicted from the page cache (`posix_fadvise
(DONTNEED)`), and is divided by a cold open+read of every per-sample file with 64
threads (the most a reader of the files can get) in the same rounds. Samples of one
shape are packed as rows (`x-NNNNN.npy`); samples of varying length (a half to one and a
half times 1 KiB) as ragged rows (`values-NNNNN.npy` and `offsets-NNNNN.npy`), read
padded to the batch's longest like their files. Each is read with the exact shuffle
(`shuffle=True`) and the block shuffle (`shuffle="block"`: blocks of about 1 MiB of
consecutive samples, or 64 files, permuted, and the samples of 32 blocks shuffled
together), the same for the files and the pack."""

from __future__ import annotations

import os
import time

import numpy as np

from benchmarks.cold import THREADS, _open_read_threaded
from benchmarks.common import Results, each, evict, write_files, written

BATCH = 256


def run(results: Results, root: str, num_files: int) -> None:
    for vary in (False, True):
        _group(results, root, num_files, vary)


def _group(results: Results, root: str, num_files: int, vary: bool) -> None:
    from keras_npy import NpyDataset, pack

    source = write_files(os.path.join(root, f"pack_source_{vary}"), num_files, 1024, vary,
                         num_classes=2)
    dst = os.path.join(root, f"pack_{vary}")
    started = time.perf_counter()
    manifest = pack(source, dst, verbose=False)
    seconds = time.perf_counter() - started
    written()
    padding = {"pad_to": "longest"} if vary else {}
    datasets = {(where, shuffle): NpyDataset(*data, batch_size=BATCH, shuffle=shuffle, seed=0,
                                            verbose=False, **padding)
                for where, data in (("files", (source, "inferred")), ("pack", (dst,)))
                for shuffle in (True, "block")}
    paths = datasets["files", True].file_paths
    shards = [os.path.join(dst, n) for n in sorted(os.listdir(dst)) if n.endswith(".npy")]
    shuffled = [paths[int(i)] for i in np.random.default_rng(0).permutation(len(paths))]
    kind = "variable length, ragged rows" if vary else "fixed length, rows"
    group = results.group(
        f"pack, cold, shuffled, {'variable' if vary else 'fixed'} length: {num_files:,} samples "
        f"of 1 KiB ({kind}), batch {BATCH}; ratio to a cold open+read of each file with "
        f"{THREADS} threads")
    results.rate(group, f"cold open+read of each file, {THREADS} threads", "limit", num_files,
                 "samples/s", lambda: _open_read_threaded(shuffled), base=True,
                 setup=lambda: evict(*paths))
    names = {}
    for (where, shuffle), ds in datasets.items():
        over = "the per-sample files" if where == "files" else f"the pack ({manifest['layout']})"
        names[where, shuffle] = f"NpyDataset ds[i] over {over}, shuffle={shuffle!r}"
        results.rate(group, names[where, shuffle], "baseline" if where == "files" else
                     "keras_npy", num_files, "samples/s",
                     lambda ds=ds: each(ds.__getitem__, range(len(ds))),
                     setup=lambda where=where: evict(*(paths if where == "files" else shards)))
    results.finish()
    rates = {f.name: f.median for f in results.figures if f.group == group}
    for shuffle in (True, "block"):
        results.value(group, f"the pack over the files, both shuffle={shuffle!r} (ratio of "
                      "medians)", "keras_npy", rates[names["pack", shuffle]]
                      / rates[names["files", shuffle]], "x")
    results.value(group, "the pack with shuffle='block' over the files with shuffle=True "
                  "(ratio of medians)", "keras_npy",
                  rates[names["pack", "block"]] / rates[names["files", True]], "x")
    results.value(group, f"keras_npy.pack, write and verify ({num_files:,} files)", "keras_npy",
                  seconds, "s")
