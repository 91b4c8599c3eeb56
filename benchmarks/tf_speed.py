"""npy_dataset (tf.data) speed against the recipes people use and the limits,
each measured in the same run.

    python -m benchmarks.tf_speed            # ~2 minutes here
    python -m benchmarks.tf_speed --quick

Figures are medians over --repeats with [min-max], from the page cache:

- rows, sequential, (N, 256) float32, consumed inside a `tf.function`, at batch
  256 and 1024: npy_dataset vs the `range().map(numpy_function(memmap slice))`
  recipe, `FixedLengthRecordDataset` (one record per batch, the alternative
  that stays in the graph), and the raw `os.preadv` rate (ratio base);
- files of 1 KiB and 12 KiB: npy_dataset vs a plain Python open+read+close loop
  (ratio base) and the `list_files` + `numpy_function(np.load)` recipe;
- `model.fit` of a one-layer model for one epoch: npy_dataset vs one constant
  batch repeated (ratio base) and in-memory numpy arrays.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from benchmarks.read_speed import (ROW, each, open_read_close, preadv_loop, report, timed,
                                   write_files)


def consume(tf, dataset):
    """Iterates a dataset inside a graph, as a training step would."""

    @tf.function
    def run():
        total = tf.constant(0.0)
        for batch in dataset:
            total += tf.cast(tf.reshape(batch, [-1])[0], tf.float32)
        return total

    return lambda: run()


def bench_rows(tf, root: str, rows: int, repeats: int) -> None:
    from keras_npy import npy_dataset

    path = os.path.join(root, "rows.npy")
    np.save(path, np.random.default_rng(0).random((rows, ROW), dtype="float32"))
    mapped = np.load(path, mmap_mode="r")
    for batch in (256, 1024):
        batches = rows // batch
        samples = batches * batch
        print(f"rows: ({rows}, {ROW}) float32, batch {batch}, consumed in a tf.function "
              "(samples/s; ratio to the raw preadv loop)")
        raw = report("raw os.preadv loop (no tf.data)", samples, "samples/s",
                     timed(lambda: preadv_loop(path, 128, rows, batch, False), repeats))

        def memmap_slice(i, batch=batch):
            return np.asarray(mapped[i * batch:(i + 1) * batch])

        recipe = tf.data.Dataset.range(batches).map(
            lambda i: tf.numpy_function(memmap_slice, [i], tf.float32),
            num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
        report("recipe: range().map(numpy_function(memmap))", samples, "samples/s",
               timed(consume(tf, recipe), repeats), raw)
        records = tf.data.FixedLengthRecordDataset(
            path, batch * ROW * 4, header_bytes=128).take(batches).map(
            lambda r: tf.reshape(tf.io.decode_raw(r, tf.float32), [batch, ROW]),
            num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
        report("FixedLengthRecordDataset, a record a batch", samples, "samples/s",
               timed(consume(tf, records), repeats), raw)
        ours = npy_dataset(path, batch_size=batch, drop_remainder=True)
        report("npy_dataset", samples, "samples/s", timed(consume(tf, ours), repeats), raw)


def bench_files(tf, root: str, num_files: int, size: int, repeats: int) -> None:
    from keras_npy import npy_dataset

    folder = write_files(root, num_files, size)
    ours = npy_dataset(folder, batch_size=256, verbose=False)
    paths = ours.file_paths
    print(f"files: {num_files} files of {size // 1024} KiB, batch 256 "
          "(files/s; ratio to the open+read+close loop)")
    raw = report("Python open+read+close loop", num_files, "files/s",
                 timed(lambda: each(open_read_close, paths), repeats))
    recipe = tf.data.Dataset.list_files(os.path.join(folder, "*.npy"), shuffle=False).map(
        lambda p: tf.numpy_function(lambda p: np.load(p.decode()), [p], tf.float32),
        num_parallel_calls=tf.data.AUTOTUNE).batch(256).prefetch(tf.data.AUTOTUNE)
    report("recipe: list_files + numpy_function(np.load)", num_files, "files/s",
           timed(consume(tf, recipe), repeats), raw)
    report("npy_dataset", num_files, "files/s", timed(consume(tf, ours), repeats), raw)


def bench_fit(tf, root: str, rows: int, repeats: int) -> None:
    import keras

    from keras_npy import npy_dataset

    path = os.path.join(root, "fit.npy")
    x = np.random.default_rng(1).random((rows, ROW), dtype="float32")
    y = x[:, :1]
    np.save(path, x)
    batch = 256
    ours = npy_dataset(path, y=y, batch_size=batch, drop_remainder=True)
    batches = rows // batch
    constant = tf.data.Dataset.from_tensors((x[:batch], y[:batch])).repeat(batches)
    model = keras.Sequential([keras.Input((ROW,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    samples = batches * batch
    fit = lambda data, **kw: (lambda: model.fit(data, epochs=1, verbose=0, **kw))
    print(f"model.fit, Dense(1), ({rows}, {ROW}) float32, batch {batch}, one epoch "
          "(samples/s; ratio to the constant batch)")
    ceiling = report("one constant batch repeated (no data)", samples, "samples/s",
                     timed(fit(constant), repeats))
    report("in-memory numpy arrays", samples, "samples/s",
           timed(fit(x[:samples], y=y[:samples], batch_size=batch, shuffle=False), repeats),
           ceiling)
    report("npy_dataset", samples, "samples/s", timed(fit(ours), repeats), ceiling)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import tensorflow as tf

    repeats = 1 if args.quick else args.repeats
    rows = 65_536 if args.quick else 262_144
    files = 5_000 if args.quick else 20_000
    with tempfile.TemporaryDirectory() as root:
        bench_rows(tf, root, rows, repeats)
        for size in (1024, 12 * 1024):
            bench_files(tf, root, files, size, repeats)
        bench_fit(tf, root, rows, repeats)


if __name__ == "__main__":
    main()
