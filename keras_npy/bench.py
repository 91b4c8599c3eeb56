"""`keras-npy bench`: how fast your own data reads through each front end.

The same batches are read three ways, from the page cache (each reader makes
one untimed pass first): the raw bytes with plain system calls (`open`+`read`+`close` per file,
or `preadv` of consecutive rows), `NpyDataset[i]`, and `npy_dataset`
consumed inside TensorFlow. Each rate is a median over repeats and is shown
next to the raw one, so the ratio says what the pipeline costs on this
machine and this data.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time

import numpy as np

from keras_npy.dataset import NpyDataset
from keras_npy.index import FileIndex


def bench_source(source: str, *, batch_size: int = 32, max_batches: int = 200,
                 repeats: int = 3, layout: str = "auto", follow_links: bool = False) -> dict:
    """Measures the read rates of up to `max_batches` batches of `source`.

    Args:
        source: a directory, glob or `.npy` path, as `NpyDataset`'s `x`.
        batch_size: samples per batch. Defaults to `32`.
        max_batches: batches read per pass (the first ones of an unshuffled
            epoch). Defaults to `200`.
        repeats: timed passes per reader; the median is kept. Defaults to `3`.
        layout: as `NpyDataset`'s. Defaults to `"auto"`.
        follow_links: as `NpyDataset`'s. Defaults to `False`.

    Returns:
        A dict with `num_batches`, `num_samples`, `nbytes` (data bytes per
        pass) and `rates`: for each reader, `seconds` (median) per pass;
        `npy_dataset` is missing when TensorFlow is not installed, and
        `npy_dataset_start_seconds` is then the median time of a one-batch pass.
    """
    # "longest" pads only the axes whose size varies: none, for fixed shapes.
    # One process measures every sample, whatever run it is part of.
    dataset = NpyDataset(source, layout=layout, batch_size=batch_size, num_shards=1,
                         follow_links=follow_links, pad_to="longest", verbose=False)
    num_batches = min(len(dataset), max_batches)
    num_samples = min(dataset.num_samples, num_batches * batch_size)
    index = dataset.index.x
    raw = _raw_reader(index, num_samples, batch_size)
    readers = {"raw": raw, "NpyDataset": lambda: [dataset[i] for i in range(num_batches)]}
    if importlib.util.find_spec("tensorflow") is not None:
        readers["npy_dataset"] = _tf_reader(dataset, num_batches)
    seconds = {}
    for name, read in readers.items():
        read()  # warms the page cache, and traces the tf.data pipeline
        seconds[name] = statistics.median(_timed(read) for _ in range(repeats))
    result = {"num_batches": num_batches, "num_samples": num_samples,
              "nbytes": _data_bytes(index, num_samples), "seconds": seconds}
    if "npy_dataset" in readers:  # what a pass of one batch costs: starting the pipeline
        one = _tf_reader(dataset, 1)
        one()
        result["npy_dataset_start_seconds"] = statistics.median(_timed(one) for _ in range(3))
    return result


def format_bench(result: dict, source: str) -> str:
    """The table `keras-npy bench` prints."""
    nbytes, samples = result["nbytes"], result["num_samples"]
    raw = result["seconds"]["raw"]
    names = {"raw": "raw read (system calls)", "NpyDataset": "NpyDataset[i]",
             "npy_dataset": "npy_dataset (in a tf graph)"}
    lines = [f"{source}: {result['num_batches']} batches, {samples:,} samples, "
             f"{nbytes / 1e6:,.1f} MB of data per pass, from the page cache (median of passes)",
             f"{'reader':<30}{'samples/s':>12}{'MB/s':>10}{'vs raw':>8}"]
    for name, seconds in result["seconds"].items():
        lines.append(f"{names[name]:<30}{samples / seconds:>12,.0f}"
                     f"{nbytes / 1e6 / seconds:>10,.1f}{raw / seconds:>7.2f}x")
    if "npy_dataset_start_seconds" in result:
        lines.append(f"Each npy_dataset pass (and each epoch of fit) starts its pipeline: a pass of "
                     f"one batch takes {result['npy_dataset_start_seconds'] * 1e3:.0f} ms.")
    return "\n".join(lines)


def _raw_reader(index, num_samples: int, batch_size: int):
    """The same data bytes, read with plain system calls: every file whole,
    or consecutive rows one batch per `preadv` into a new buffer (a reader
    that hands batches out cannot reuse one)."""
    paths = [index.paths[i] for i in range(len(index.paths))]
    if isinstance(index, FileIndex):
        chosen = paths[:num_samples]

        def read_files():
            for path in chosen:
                with open(path, "rb", buffering=0) as f:
                    f.read()
        return read_files

    if index.layout == "ragged":  # a pack's variable-length samples
        return _raw_ragged_reader(index, num_samples, batch_size)
    row_bytes = index.row_nbytes

    def read_rows():
        left = num_samples
        for path, offset, rows in zip(paths, index.data_offsets, index.num_rows):
            fd = os.open(path, os.O_RDONLY)
            try:
                for start in range(0, min(int(rows), left), batch_size):
                    count = min(batch_size, int(rows) - start, left - start)
                    os.preadv(fd, [bytearray(count * row_bytes)], int(offset) + start * row_bytes)
            finally:
                os.close(fd)
            left -= min(int(rows), left)
            if not left:
                break
    return read_rows


def _raw_ragged_reader(index, num_samples: int, batch_size: int):
    """The bytes of a pack's first samples, a batch of consecutive samples
    (one stretch of a values file) per `preadv` into a new buffer."""
    files, offsets = index.locate(np.arange(num_samples))
    ends = offsets + np.prod(index.shapes[:num_samples], axis=1) * index.dtype.itemsize
    stretches = []
    for start in range(0, num_samples, batch_size):
        batch = slice(start, min(start + batch_size, num_samples))
        for f in np.unique(files[batch]).tolist():
            mine = files[batch] == f
            first, last = int(offsets[batch][mine].min()), int(ends[batch][mine].max())
            stretches.append((index.paths[f], first, last - first))

    def read_ragged():
        for path, offset, nbytes in stretches:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.preadv(fd, [bytearray(nbytes)], offset)
            finally:
                os.close(fd)
    return read_ragged


def _tf_reader(dataset: NpyDataset, num_batches: int):
    import tensorflow as tf

    tf_dataset = dataset.to_tf_dataset().take(num_batches)
    count = tf.function(lambda: tf_dataset.reduce(np.int64(0), lambda n, *_: n + 1))
    return count


def _data_bytes(index, num_samples: int) -> int:
    if isinstance(index, FileIndex) or index.layout == "ragged":
        return int(np.prod(index.shapes[:num_samples], axis=1).sum()) * index.dtype.itemsize
    return num_samples * index.row_nbytes


def _timed(read) -> float:
    started = time.perf_counter()
    read()
    return time.perf_counter() - started
