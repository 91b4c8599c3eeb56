"""The README's main job: generate a data set of `.npy` files and train on it.

Until the `NpyDataset` front end lands, batches are read here directly from
the index (one `np.fromfile` per sample at the offset its header gives).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from keras_npy.index import DatasetIndex, build_index


def write_demo_data(directory: str, num_samples: int = 2000, seed: int = 0) -> None:
    """Writes `num_samples` float32 samples of shape `(16,)` as one `.npy` file
    each, in class folders `low/` and `high/` whose means differ."""
    rng = np.random.default_rng(seed)
    for name, mean in (("high", 0.75), ("low", 0.0)):
        os.makedirs(os.path.join(directory, name), exist_ok=True)
        for i in range(num_samples // 2):
            sample = rng.normal(mean, 1.0, size=16).astype("float32")
            np.save(os.path.join(directory, name, f"{i:06d}.npy"), sample)


def make_batches(index: DatasetIndex, batch_size: int):
    """A `keras.utils.PyDataset` over `index`, in index order."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return -(-index.num_samples // batch_size)

        def __getitem__(self, i):
            ids = np.arange(i * batch_size, min((i + 1) * batch_size, index.num_samples))
            x = np.stack([_read_sample(index.x, j) for j in ids])
            return x, index.y[ids]

    return Batches()


def _read_sample(x_index, i: int) -> np.ndarray:
    shape = tuple(x_index.sample_shapes([i])[0])
    count = int(np.prod(shape))
    data = np.fromfile(x_index.paths[i], x_index.dtype, count,
                       offset=int(x_index.data_offsets[i]))
    return data.reshape(shape)


def run_demo(num_samples: int = 2000, epochs: int = 3, directory: str | None = None,
             verbose: int = 1) -> dict:
    """Generates a data set on disk, indexes it, and fits a model on it.

    Args:
        num_samples: samples to generate. Defaults to `2000`.
        epochs: training epochs. Defaults to `3`.
        directory: where to write the data; a temporary directory (removed
            afterwards) if `None`. Defaults to `None`.
        verbose: Keras verbosity for `fit`, `0` for silence. Defaults to `1`.

    Returns:
        A dict with `num_samples`, `class_names`, `index_seconds`,
        `fit_seconds` and the final training `accuracy`.
    """
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        directory = directory or tmp
        write_demo_data(directory, num_samples)
        started = time.perf_counter()
        index = build_index(directory, y="inferred", verbose=bool(verbose))
        index_seconds = time.perf_counter() - started
        model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(1, "sigmoid")])
        model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
        model.optimizer.learning_rate = 0.05
        started = time.perf_counter()
        history = model.fit(make_batches(index, 64), epochs=epochs, verbose=verbose)
        return {"num_samples": index.num_samples, "class_names": index.class_names,
                "index_seconds": index_seconds,
                "fit_seconds": time.perf_counter() - started,
                "accuracy": float(history.history["accuracy"][-1])}
