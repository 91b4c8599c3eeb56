"""Per-sample files, fixed and variable length, in a shuffled order, from the page
cache: both front ends against plain loops of system calls, the recipes people use,
and Grain (in this process, and with worker processes as NpyDataset's)."""

from __future__ import annotations

import os

import numpy as np

from benchmarks import peers
from benchmarks.common import Results, consume, each, open_read_close, write_files

WORKERS = 2  # worker processes of the NpyDataset and Grain lines that use them


def run(results: Results, root: str, num_files: int, size: int, vary: bool, tf,
        with_workers: bool = False) -> None:
    import keras

    from keras_npy import NpyDataset, npy_dataset

    kind = "variable length, padded" if vary else "fixed length"
    folder = write_files(os.path.join(root, f"files_{size}_{vary}"), num_files, size, vary)
    pad = dict(pad_to="longest") if vary else {}
    ds = NpyDataset(folder, batch_size=256, shuffle=True, seed=0, verbose=False, **pad)
    files = ds.file_paths
    paths = [files[int(i)] for i in np.concatenate(
        [ds._source.order.batch(0, i) for i in range(len(ds))])]  # the epoch's order
    group = results.group(f"files of {size // 1024} KiB, {kind}: {num_files:,} files (lengths "
                          f"{'a half to 1.5x that' if vary else 'all equal'}), shuffled, batch "
                          "256; ratio to a plain open+read+close loop")
    results.rate(group, "Python open+read+close loop", "limit", num_files, "files/s",
                 lambda: each(open_read_close, paths), base=True)
    results.rate(group, "os.open + os.readv + os.close loop, one buffer", "baseline",
                 num_files, "files/s", _readv_loop(paths, size))

    class NpLoadPyDataset(keras.utils.PyDataset):  # np.load per sample, stacked
        def __len__(self):
            return -(-len(paths) // 256)

        def __getitem__(self, i):
            samples = [np.load(p) for p in paths[i * 256:(i + 1) * 256]]
            if not vary:
                return np.stack(samples)
            return keras.utils.pad_sequences(samples, padding="post", dtype="float32")

    hand = NpLoadPyDataset()
    results.rate(group, "hand-written PyDataset, np.load per sample", "baseline", num_files,
                 "files/s", lambda: each(hand.__getitem__, range(len(hand))))
    results.rate(group, "NpyDataset ds[i], shuffle=True", "keras_npy", num_files, "files/s",
                 lambda: each(ds.__getitem__, range(len(ds))))
    grain = peers.grain_files(paths, 256, 0) if not vary else None
    if grain is not None:
        results.rate(group, "Grain MapDataset, np.load a record", "baseline",
                     len(grain) * 256, "files/s",
                     lambda: each(grain.__getitem__, range(len(grain))))
    if with_workers:
        _with_workers(results, group, folder, paths, num_files)
    if tf is None:
        return

    def np_load(path):
        return np.load(path.decode())

    for parallel in (None, tf.data.AUTOTUNE):
        recipe = tf.data.Dataset.list_files(os.path.join(folder, "*", "*.npy"), shuffle=False)
        recipe = recipe.map(lambda p: tf.numpy_function(np_load, [p], tf.float32),
                            num_parallel_calls=parallel)
        if vary:  # numpy_function's output has no shape: people set it to pad
            recipe = recipe.map(lambda x: tf.ensure_shape(x, [None, 16])).padded_batch(256)
        else:
            recipe = recipe.batch(256)
        recipe = recipe.prefetch(tf.data.AUTOTUNE)
        name = "list_files + numpy_function(np.load)" + (", parallel" if parallel else "") + (
            " + padded_batch" if vary else "")
        results.rate(group, name, "baseline", num_files, "files/s", consume(tf, recipe))
    ours = npy_dataset(folder, batch_size=256, verbose=False, **pad)
    results.rate(group, "npy_dataset, in a tf.function", "keras_npy", num_files, "files/s",
                 consume(tf, ours))


def _readv_loop(paths: list[str], size: int):
    buffer = bytearray(size + 128)

    def loop():
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            os.readv(fd, [buffer])
            os.close(fd)

    return loop


def _with_workers(results: Results, group: str, folder: str, paths: list[str],
                  num_files: int) -> None:
    """NpyDataset and Grain with `WORKERS` worker processes each, in a steady state
    (the workers started and kept between passes, as over epochs)."""
    from keras_npy import NpyDataset

    ds = NpyDataset(folder, batch_size=256, shuffle=True, seed=0, verbose=False,
                    workers=WORKERS, use_multiprocessing=True)
    results.rate(group, f"NpyDataset ds[i], {WORKERS} worker processes", "keras_npy", num_files,
                 "files/s", lambda: each(ds.__getitem__, range(len(ds))))
    grain = peers.grain_files(paths, 256, WORKERS)
    if grain is not None:
        batches = num_files // 256
        iterator = iter(grain)

        def take():
            nonlocal iterator
            for _ in range(batches):
                try:
                    next(iterator)
                except StopIteration:
                    iterator = iter(grain)
                    next(iterator)

        results.rate(group, f"Grain, np.load a record, {WORKERS} worker processes",
                     "baseline", batches * 256, "files/s", take)
