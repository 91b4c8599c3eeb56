"""The README's main job: generate a data set of `.npy` files and train on it."""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from keras_npy.dataset import NpyDataset


def write_demo_data(directory: str, num_samples: int = 2000, seed: int = 0) -> None:
    """Writes `num_samples` float32 sequences of 8 features and 12 to 40 steps,
    one `.npy` file each, in class folders `low/` and `high/` whose means
    differ."""
    rng = np.random.default_rng(seed)
    for name, mean in (("high", 0.5), ("low", 0.0)):
        os.makedirs(os.path.join(directory, name), exist_ok=True)
        for i in range(num_samples // 2):
            steps = int(rng.integers(12, 41))
            sample = rng.normal(mean, 1.0, size=(steps, 8)).astype("float32")
            np.save(os.path.join(directory, name, f"{i:06d}.npy"), sample)


def run_demo(num_samples: int = 2000, epochs: int = 3, directory: str | None = None,
             verbose: int = 1) -> dict:
    """Generates variable-length samples on disk and fits a model on them
    through `NpyDataset`: a validation split, a global shuffle, and padding
    to 40 steps.

    Args:
        num_samples: samples to generate. Defaults to `2000`.
        epochs: training epochs. Defaults to `3`.
        directory: where to write the data; a temporary directory (removed
            afterwards) if `None`. Defaults to `None`.
        verbose: Keras verbosity for `fit`, `0` for silence. Defaults to `1`.

    Returns:
        A dict with `num_samples`, `class_names`, `index_seconds`,
        `fit_seconds`, and the last epoch's `accuracy` and `val_accuracy`.
    """
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        directory = directory or tmp
        write_demo_data(directory, num_samples)
        started = time.perf_counter()
        common = dict(y="inferred", label_mode="binary", batch_size=64, pad_to=40,
                      validation_split=0.2, seed=0, verbose=bool(verbose))
        train = NpyDataset(directory, subset="training", shuffle=True, **common)
        val = NpyDataset(directory, subset="validation", **common)
        index_seconds = time.perf_counter() - started
        model = keras.Sequential([
            keras.Input((None, 8)),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1, activation="sigmoid")])
        model.compile(keras.optimizers.Adam(0.05), "binary_crossentropy",
                      metrics=["accuracy"])
        started = time.perf_counter()
        history = model.fit(train, validation_data=val, epochs=epochs, shuffle=False,
                            verbose=verbose)
        return {"num_samples": train.index.num_samples, "class_names": train.class_names,
                "index_seconds": index_seconds,
                "fit_seconds": time.perf_counter() - started,
                "accuracy": float(history.history["accuracy"][-1]),
                "val_accuracy": float(history.history["val_accuracy"][-1])}
