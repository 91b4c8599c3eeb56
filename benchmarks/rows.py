"""Rows of a large array, from the page cache: sequential and globally shuffled
batches, both front ends, against a plain preadv reader, the recipes people use, and
the peers they would pick instead (a memory map, torch, Grain)."""

from __future__ import annotations

import os

import numpy as np

from benchmarks import peers
from benchmarks.common import ROW, Results, consume, each, preadv_loop, write_rows


def run(results: Results, root: str, rows: int, tf) -> None:
    from keras_npy import NpyDataset, npy_dataset

    path = write_rows(os.path.join(root, "rows.npy"), rows)
    for batch in (256, 1024):
        _sequential(results, path, rows, batch, tf)
    mapped = np.load(path, mmap_mode="r")
    batch = 256
    samples = rows - rows % batch
    group = results.group("rows, global shuffle, batch 256: the same file; ratio to the "
                          "sequential preadv rate")
    results.rate(group, "os.preadv, a new array per batch (sequential)", "limit", samples,
                 "samples/s", lambda: preadv_loop(path, 128, rows, batch, False), base=True)
    shuffled = NpyDataset(path, batch_size=batch, drop_remainder=True, shuffle=True, seed=0)
    ids = [np.sort(shuffled._source.order.batch(0, i)) for i in range(len(shuffled))]
    results.rate(group, "np.load(mmap_mode='r') fancy indexing", "baseline", samples,
                 "samples/s", lambda: each(mapped.__getitem__, ids))
    results.rate(group, "NpyDataset ds[i], shuffle=True", "keras_npy", samples, "samples/s",
                 lambda: each(shuffled.__getitem__, range(len(shuffled))))
    _peers(results, group, path, samples, batch, ids, shuffle=True)
    if tf is not None:
        ours = npy_dataset(path, batch_size=batch, drop_remainder=True, shuffle=True, seed=0)
        results.rate(group, "npy_dataset, shuffle=True, in a tf.function", "keras_npy",
                     samples, "samples/s", consume(tf, ours))


def _sequential(results: Results, path: str, rows: int, batch: int, tf) -> None:
    import keras

    from keras_npy import NpyDataset, npy_dataset

    mapped = np.load(path, mmap_mode="r")
    samples = rows - rows % batch
    group = results.group(f"rows, sequential, batch {batch}: ({rows:,}, {ROW}) float32; ratio "
                          "to a plain preadv per batch")
    results.rate(group, "os.preadv, a new array per batch", "limit", samples, "samples/s",
                 lambda: preadv_loop(path, 128, rows, batch, False), base=True)
    results.rate(group, "memmap slicing", "baseline", samples, "samples/s",
                 lambda: each(lambda s: np.array(mapped[s:s + batch]),
                              range(0, samples, batch)))

    class NpLoadPyDataset(keras.utils.PyDataset):  # what people hand-write today
        def __len__(self):
            return samples // batch

        def __getitem__(self, i):
            return np.load(path, mmap_mode="r")[i * batch:(i + 1) * batch].copy()

    hand = NpLoadPyDataset()
    results.rate(group, "hand-written PyDataset, np.load(mmap) per batch", "baseline", samples,
                 "samples/s", lambda: each(hand.__getitem__, range(len(hand))))
    ds = NpyDataset(path, batch_size=batch, drop_remainder=True)
    results.rate(group, "NpyDataset ds[i]", "keras_npy", samples, "samples/s",
                 lambda: each(ds.__getitem__, range(len(ds))))
    _peers(results, group, path, samples, batch,
           [np.arange(start, start + batch) for start in range(0, samples, batch)],
           shuffle=False)
    if tf is None:
        return

    def memmap_slice(i):
        return np.asarray(mapped[i * batch:(i + 1) * batch])

    recipe = tf.data.Dataset.range(samples // batch).map(
        lambda i: tf.numpy_function(memmap_slice, [i], tf.float32),
        num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    results.rate(group, "tf.data range().map(numpy_function(memmap))", "baseline", samples,
                 "samples/s", consume(tf, recipe))
    # The alternative that stays in the graph: one fixed-length record per batch.
    records = tf.data.FixedLengthRecordDataset(path, batch * ROW * 4, header_bytes=128).take(
        samples // batch).map(lambda r: tf.reshape(tf.io.decode_raw(r, tf.float32),
                                                   [batch, ROW]),
                              num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    results.rate(group, "tf.data FixedLengthRecordDataset, a record a batch", "baseline",
                 samples, "samples/s", consume(tf, records))
    ours = npy_dataset(path, batch_size=batch, drop_remainder=True)
    results.rate(group, "npy_dataset, in a tf.function", "keras_npy", samples, "samples/s",
                 consume(tf, ours))
    # The bound of any pipeline that hands TensorFlow one numpy array per batch:
    # the same batch, already in memory, every time (no reading at all), and
    # 64-byte aligned so that TensorFlow takes it without a copy.
    raw = np.empty(batch * ROW * 4 + 64, np.uint8)
    start = -raw.ctypes.data % 64
    ready = raw[start:start + batch * ROW * 4].view(np.float32).reshape(batch, ROW)
    ready[:] = mapped[:batch]

    def ready_batch(i):
        return ready

    bound = tf.data.Dataset.range(samples // batch).map(
        lambda i: tf.numpy_function(ready_batch, [i], tf.float32)).prefetch(tf.data.AUTOTUNE)
    results.rate(group, "tf.data bound: numpy_function of a batch in memory", "limit",
                 samples, "samples/s", consume(tf, bound))

    # The floor under that: a batch made by the graph itself, no reading and no
    # Python at all. No pipeline of one batch per element, read however it is,
    # is faster than this where a graph consumes it.
    def made_in_graph(i):
        return tf.fill([batch, ROW], tf.cast(i, tf.float32))

    floor = tf.data.Dataset.range(samples // batch).map(made_in_graph).prefetch(
        tf.data.AUTOTUNE)
    results.rate(group, "tf.data floor: a batch made in the graph, no read", "limit",
                 samples, "samples/s", consume(tf, floor))


def _peers(results: Results, group: str, path: str, samples: int, batch: int,
           ids: list[np.ndarray], shuffle: bool) -> None:
    """torch's DataLoader over a memory map (0 workers, a sampler of each batch's
    ids) and Grain's MapDataset over a memory-mapped source, where installed."""
    loader = peers.torch_rows_loader(path, batch, ids)
    if loader is not None:
        results.rate(group, "torch DataLoader over a memmap, index-array sampler",
                     "baseline", samples, "samples/s", lambda: each(lambda b: b, loader))
    dataset = peers.grain_rows(path, batch, shuffle)
    if dataset is not None:
        count = min(len(dataset), max(1, len(dataset) // 16))  # a row a call: a part
        results.rate(group, "Grain MapDataset over a memmap source", "baseline",
                     count * batch, "samples/s",
                     lambda: each(dataset.__getitem__, range(count)))
