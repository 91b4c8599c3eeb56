"""`model.fit` of a one-layer model through each way of feeding it, against the no-data
ceiling (one constant batch repeated)."""

from __future__ import annotations

import os

import numpy as np

from benchmarks.common import ROW, Results, written


def run(results: Results, root: str, rows: int, tf) -> None:
    import keras

    from keras_npy import BackupAndRestore, NpyDataset, npy_dataset

    path = os.path.join(root, "fit.npy")
    x = np.random.default_rng(1).random((rows, ROW), dtype="float32")
    y = x[:, :1].copy()
    np.save(path, x)
    written()
    batch = 256
    batches = rows // batch
    samples = batches * batch
    model = keras.Sequential([keras.Input((ROW,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")

    def fit(data, shuffle=False, **kwargs):
        return lambda: model.fit(data, epochs=1, verbose=0, shuffle=shuffle, **kwargs)

    class Constant(keras.utils.PyDataset):
        def __len__(self):
            return batches

        def __getitem__(self, i):
            return x[:batch], y[:batch]

    # A fit's rate swings by up to 2x between passes here (passes of ~2.5 ms a
    # step hit every pipeline, the constant batch too, now and then): more rounds.
    group = results.group(f"model.fit: Dense(1) on ({rows:,}, {ROW}) float32, batch {batch}, "
                          "one epoch; ratio to one constant batch repeated (no data)",
                          rounds=2 * results.repeats + 1)
    constant = Constant() if tf is None else tf.data.Dataset.from_tensors(
        (x[:batch], y[:batch])).repeat(batches)
    results.rate(group, "one constant batch repeated (no data)", "limit", samples, "samples/s",
                 fit(constant), base=True)
    results.rate(group, "in-memory numpy arrays", "baseline", samples, "samples/s",
                 fit(x[:samples], y=y[:samples], batch_size=batch))
    ds = NpyDataset(path, y=y, batch_size=batch, drop_remainder=True)
    results.rate(group, "NpyDataset", "keras_npy", samples, "samples/s", fit(ds))
    # A backup writes the weights (~18 ms for this model here): the cost of the
    # data's state is the gap between keras_npy's callback and Keras' own.
    backup = BackupAndRestore(os.path.join(root, "fit_backup"), save_freq=100)
    results.rate(group, "NpyDataset, keras_npy.BackupAndRestore(save_freq=100)", "keras_npy",
                 samples, "samples/s", fit(ds, callbacks=[backup]))
    keras_backup = keras.callbacks.BackupAndRestore(os.path.join(root, "fit_keras_backup"),
                                                    save_freq=100)
    results.rate(group, "NpyDataset, Keras' BackupAndRestore(save_freq=100)", "baseline",
                 samples, "samples/s", fit(ds, callbacks=[keras_backup]))

    class AnyPyDataset(keras.utils.PyDataset):
        """The same batches as Keras reads any PyDataset (on TensorFlow,
        from_generator: a Python call per batch)."""

        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            return ds[i]

    results.rate(group, "NpyDataset's batches through Keras' PyDataset path", "keras_npy",
                 samples, "samples/s", fit(AnyPyDataset()))
    if tf is None:  # the base is the constant PyDataset
        return
    results.rate(group, "PyDataset bound: one constant batch, no read", "limit", samples,
                 "samples/s", fit(Constant()))
    mapped = np.load(path, mmap_mode="r")

    def memmap_batch(i):
        return np.asarray(mapped[i * batch:(i + 1) * batch]), y[i * batch:(i + 1) * batch]

    recipe = tf.data.Dataset.range(batches).map(
        lambda i: tf.numpy_function(memmap_batch, [i], (tf.float32, tf.float32)),
        num_parallel_calls=tf.data.AUTOTUNE).map(
        lambda a, b: (tf.ensure_shape(a, [batch, ROW]), tf.ensure_shape(b, [batch, 1]))
    ).prefetch(tf.data.AUTOTUNE)
    results.rate(group, "tf.data range().map(numpy_function(memmap))", "baseline", samples,
                 "samples/s", fit(recipe))
    results.rate(group, "npy_dataset", "keras_npy", samples, "samples/s",
                 fit(npy_dataset(path, y=y, batch_size=batch, drop_remainder=True)))
