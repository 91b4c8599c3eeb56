"""Index build and index files: walking a tree and reading every header, against the
floor of any reader that touches every file (open, read the first 256 bytes, close) with
64 reads in flight, warm and cold; loading the index file `keras-npy index` writes; and
an index of 10^7 samples, simulated (no files), written and loaded."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from benchmarks.common import Results, evict, rss_anon, write_files

THREADS = 64


def run(results: Results, root: str, num_files: int) -> None:
    from keras_npy import build_index, load_index, write_index

    folder = write_files(os.path.join(root, "index"), num_files, 1024, vary=True,
                         num_classes=10)
    paths = list(build_index(folder, y="inferred", verbose=False, index_file=False).x.paths)
    index_path = write_index(folder, y="inferred", verbose=False)
    chunks = [paths[k::THREADS] for k in range(THREADS)]

    def open_read_close(some=paths):
        for path in some:
            fd = os.open(path, os.O_RDONLY)
            os.read(fd, 256)
            os.close(fd)

    def threaded():
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(open_read_close, chunks))

    def build():
        build_index(folder, y="inferred", verbose=False, index_file=False)

    for cold in (False, True):
        setup = (lambda: evict(*paths)) if cold else None
        group = results.group(
            f"index build{', cold' if cold else ''}: {num_files:,} files of 0.5-1.5 KiB in 10 "
            f"class folders; ratio to {THREADS} threads of open+read(256 bytes)+close")
        results.rate(group, f"open + read 256 bytes + close, {THREADS} threads", "limit",
                     num_files, "files/s", threaded, base=True, setup=setup)
        results.rate(group, "open + read 256 bytes + close, one thread", "limit", num_files,
                     "files/s", open_read_close, setup=setup)
        results.rate(group, "build_index (walk, headers, inferred labels)", "keras_npy",
                     num_files, "files/s", build, setup=setup)
        results.rate(group, "load_index (keras-npy index's file, checked)", "keras_npy",
                     num_files, "files/s", lambda: load_index(index_path),
                     setup=(lambda: evict(index_path, *paths)) if cold else None)


def simulated(results: Results, root: str, num_samples: int) -> None:
    """An index of `num_samples` per-sample files (paths under 1,000 folders),
    made in memory, written and loaded: its size on disk and in memory, and
    the load time, without 10^7 files to read."""
    from keras_npy import load_index
    from keras_npy.index import DatasetIndex, FileIndex
    from keras_npy.index_file import write_index_of

    group = results.group(f"index file of {num_samples:,} samples, simulated (no files)")
    before = rss_anon()
    index = _synthetic(num_samples)
    path = os.path.join(root, "simulated.index")
    write_index_of(index, path, check=False)
    del index
    times = []
    for _ in range(results.repeats):
        started = time.perf_counter()
        loaded = load_index(path, check=False)
        times.append(time.perf_counter() - started)
        assert isinstance(loaded, DatasetIndex) and isinstance(loaded.x, FileIndex)
    results.value(group, "load_index", "keras_npy", float(np.median(times)), "s",
                  min(times), max(times))
    results.value(group, "index in memory", "keras_npy", loaded.nbytes / 2**20, "MiB")
    results.value(group, "resident memory (anonymous) added", "keras_npy",
                  (rss_anon() - before) / 2**20, "MiB")
    results.value(group, "index file", "keras_npy", os.path.getsize(path) / 2**20, "MiB")


def _synthetic(n: int):
    """A `DatasetIndex` of `n` files `class_k/NNNNNNNN.npy` (1,000 folders) of
    (length, 16) float32 samples, inferred labels; no file exists."""
    from keras_npy import sources
    from keras_npy.index import DatasetIndex, FileIndex

    folders = np.arange(n) % 1000
    names = [f"class_{f:03d}/{i:08d}.npy".encode() for i, f in enumerate(folders.tolist())]
    buffer = b"".join(names)
    ends = np.concatenate([[0], np.cumsum([len(s) for s in names])]).astype(np.int64)
    table = sources.PathTable(["/nonexistent"], [sources.DIRECTORY],
                              np.zeros(n, np.int32), buffer, ends)
    lengths = np.random.default_rng(0).integers(8, 24, n)
    shapes = np.stack([lengths, np.full(n, 16)], axis=1).astype(np.int64)
    x = FileIndex(table, np.dtype("float32"), shapes, np.full(n, 128, np.uint32),
                  np.zeros(n, bool), np.zeros(n, np.uint32))
    x.folders = []
    return DatasetIndex(x, folders.astype(np.int32), [f"class_{f:03d}" for f in range(1000)])
