"""The README's main job: generate `.npy` data on disk, train on it through both
front ends, export the model with its preprocessing, and serve raw arrays."""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time

import numpy as np

from keras_npy.dataset import NpyDataset
from keras_npy.index import build_index
from keras_npy.layers import PadOrTrim, normalization_layer

MAX_STEPS = 40


def write_demo_data(directory: str, num_samples: int = 2000, seed: int = 0) -> None:
    """Writes `num_samples` float32 sequences of 8 features and 12 to 40 steps,
    one `.npy` file each, in class folders `low/` and `high/` whose means
    differ by a fifth of a standard deviation, in raw units (around 100, spread 10)
    that a model must normalize."""
    rng = np.random.default_rng(seed)
    for name, mean in (("high", 0.2), ("low", 0.0)):
        os.makedirs(os.path.join(directory, name), exist_ok=True)
        for i in range(num_samples // 2):
            steps = int(rng.integers(12, 41))
            sample = (100 + 10 * rng.normal(mean, 1.0, size=(steps, 8))).astype("float32")
            np.save(os.path.join(directory, name, f"{i:06d}.npy"), sample)


def run_demo(num_samples: int = 2000, epochs: int = 3, directory: str | None = None,
             verbose: int = 1) -> dict:
    """Generates variable-length samples on disk and trains a model on them.

    The model starts with its preprocessing: `PadOrTrim(40, mask=True)` and
    `normalization_layer` (training-set statistics, padding excluded). It is
    fitted for `epochs` epochs through `NpyDataset` (validation split, global
    shuffle, padding to 40 steps), and a second model from the same initial
    weights through the same batches as a `tf.data.Dataset`; then the last
    one is exported as a SavedModel, reloaded,
    and asked to classify the raw, unpadded validation files.

    Args:
        num_samples: samples to generate. Defaults to `2000`.
        epochs: training epochs per front end. Defaults to `3`.
        directory: where to write the data and the exported model; a
            temporary directory (removed afterwards) if `None`. Defaults to
            `None`.
        verbose: Keras verbosity for `fit`, `0` for silence. Defaults to `1`.

    Returns:
        A dict with `num_samples`, `class_names`, `index_seconds`, per front end
        (`"NpyDataset"`, `"npy_dataset"`, each training a model from the same
        initial weights) the `fit_seconds`, `first_epoch_seconds`,
        `samples_per_second` (of the epochs after the first; validation
        included), `accuracy` and `val_accuracy` of its last epoch; `served_accuracy` (of
        the reloaded SavedModel on the raw validation files, `None` where the
        backend cannot export one), `served_samples`, and
        `served_max_difference` (from the Keras model's outputs).
    """
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        directory = directory or tmp
        data = os.path.join(directory, "data")
        write_demo_data(data, num_samples)
        started = time.perf_counter()
        # The headers are read once; both subsets and the statistics use that index.
        index = build_index(data, "inferred", label_mode="binary", verbose=bool(verbose))
        # The same shuffle and seed for both subsets: they split one permutation.
        batches = dict(label_mode="binary", batch_size=64, pad_to=MAX_STEPS,
                       validation_split=0.2, seed=0, shuffle=True)
        train = NpyDataset.from_index(index, subset="training", **batches)
        val = NpyDataset.from_index(index, subset="validation", **batches)
        normalization = normalization_layer(train)  # training samples only, unpadded
        result = {"num_samples": train.num_samples + val.num_samples,
                  "class_names": train.class_names,
                  "index_seconds": time.perf_counter() - started}
        # Each front end trains a model of its own from the same initial weights.
        model = _model(keras, normalization)
        result["NpyDataset"] = _fit(model, train, val, epochs, verbose)
        if _has_tensorflow():
            model = _model(keras, normalization)
            result["npy_dataset"] = _fit(model, train.to_tf_dataset(), val.to_tf_dataset(),
                                         epochs, verbose, num_samples=train.num_samples)
        result.update(_serve(model, os.path.join(directory, "served"), val))
        return result


def format_demo(result: dict) -> str:
    """What `keras-npy demo` prints."""
    lines = [f"Indexed {result['num_samples']} .npy files of 12 to {MAX_STEPS} steps in "
             f"{result['class_names']} in {result['index_seconds']:.2f} s (headers and "
             "training-set statistics)."]
    for name in ("NpyDataset", "npy_dataset"):
        if name in result:
            fit = result[name]
            epochs = f"{fit['epochs']} epoch{'s' if fit['epochs'] != 1 else ''}"
            rate = (f"{fit['samples_per_second']:,.0f} samples/s after the first epoch, which "
                    f"took {fit['first_epoch_seconds']:.2f} s with Keras' tracing"
                    if fit["epochs"] > 1 else "a first epoch: mostly Keras' tracing")
            lines.append(f"{name}: {epochs} in {fit['fit_seconds']:.2f} s ({rate}); accuracy "
                         f"{fit['accuracy']:.3f}, validation accuracy {fit['val_accuracy']:.3f}.")
    if result["served_accuracy"] is None:
        lines.append("Export skipped: this Keras backend cannot write a TensorFlow SavedModel.")
    else:
        lines.append(f"Exported with PadOrTrim and Normalization inside, reloaded with "
                     f"tf.saved_model.load: {result['served_samples']} raw, unpadded validation "
                     f"files classified with accuracy {result['served_accuracy']:.3f}; "
                     "largest difference from the Keras model's probability "
                     f"{result['served_max_difference']:.1e}.")
    return "\n".join(lines)


def _model(keras, normalization):
    """Raw steps in; the loader's and the layer's padding masked, then normalized.
    The same initial weights every time."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, 8))
    x = PadOrTrim(MAX_STEPS, mask=True)(inputs)
    x = normalization(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile(keras.optimizers.Adam(0.05), "binary_crossentropy", metrics=["accuracy"])
    return model


def _fit(model, train, val, epochs: int, verbose: int, num_samples: int | None = None) -> dict:
    """Fits `model`; the rate is that of the epochs after the first, whose time
    is mostly Keras tracing the training step."""
    import keras

    ends = []
    clock = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: ends.append(time.perf_counter()))
    started = time.perf_counter()
    history = model.fit(train, validation_data=val, epochs=epochs, shuffle=False,
                        verbose=verbose, callbacks=[clock])
    seconds = time.perf_counter() - started
    per_epoch = num_samples or train.num_samples
    steady = (ends[-1] - ends[0]) / (epochs - 1) if epochs > 1 else seconds
    return {"epochs": epochs, "fit_seconds": seconds, "first_epoch_seconds": ends[0] - started,
            "samples_per_second": per_epoch / steady,
            "accuracy": float(history.history["accuracy"][-1]),
            "val_accuracy": float(history.history["val_accuracy"][-1])}


def _serve(model, path: str, val: NpyDataset) -> dict:
    """Exports `model`, reloads it, and classifies the raw validation files,
    one call per file, each of its own length."""
    import keras

    if keras.backend.backend() not in ("tensorflow", "jax") or not _has_tensorflow():
        return {"served_accuracy": None, "served_samples": 0, "served_max_difference": None}
    import tensorflow as tf

    model.export(path, format="tf_saved_model", verbose=False)
    served = tf.saved_model.load(path)
    paths = val.file_paths  # the validation files, in index order
    labels = np.asarray(val.index.y)[val._source.order.sample_ids]  # the class of each
    correct, difference = 0, 0.0
    for path, label in zip(paths, labels):
        raw = np.load(path, allow_pickle=False)[None]  # (1, steps, 8), not padded
        probability = served.serve(raw).numpy()[0, 0]
        correct += int((probability > 0.5) == bool(label))
        expected = keras.ops.convert_to_numpy(model(raw))[0, 0]
        difference = max(difference, abs(float(probability) - float(expected)))
    return {"served_accuracy": correct / len(paths), "served_samples": len(paths),
            "served_max_difference": difference}


def _has_tensorflow() -> bool:
    return importlib.util.find_spec("tensorflow") is not None
