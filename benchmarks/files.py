"""Per-sample files, fixed and variable length: both front ends against an
open+read+close loop and the recipes people use."""

from __future__ import annotations

import os

import numpy as np

from benchmarks.common import Results, consume, each, open_read_close, write_files


def run(results: Results, root: str, num_files: int, size: int, vary: bool, tf) -> None:
    import keras

    from keras_npy import NpyDataset, npy_dataset

    kind = "variable length, padded" if vary else "fixed length"
    folder = write_files(os.path.join(root, f"files_{size}_{vary}"), num_files, size, vary)
    pad = dict(pad_to="longest") if vary else {}
    ds = NpyDataset(folder, batch_size=256, verbose=False, **pad)
    paths = ds.file_paths
    group = results.group(f"files of {size // 1024} KiB, {kind}: {num_files:,} files (lengths "
                          f"{'a half to 1.5x that' if vary else 'all equal'}), batch 256; ratio "
                          "to a plain open+read+close loop")
    results.rate(group, "Python open+read+close loop", "limit", num_files, "files/s",
                 lambda: each(open_read_close, paths), base=True)

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
    results.rate(group, "NpyDataset ds[i]", "keras_npy", num_files, "files/s",
                 lambda: each(ds.__getitem__, range(len(ds))))
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
