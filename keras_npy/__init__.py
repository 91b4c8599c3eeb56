"""keras_npy: stream training data stored as `.npy` files into Keras.

`import keras_npy` imports Keras and registers keras_npy's layers with it, so
that `keras.saving.load_model` finds them. The `keras-npy` command is the one
exception: it imports what each command needs when it runs, so that `--help`,
`inspect` and `stats` start without Keras or TensorFlow; the names below are
then imported on first use.
"""

import importlib
import os
import sys

__version__ = "0.1.0"

# Where each public name lives.
_NAMES = {
    "BackupAndRestore": "keras_npy.callbacks",
    "NpyDataset": "keras_npy.dataset",
    "NpyHeader": "keras_npy.header",
    "read_header": "keras_npy.header",
    "DatasetIndex": "keras_npy.index",
    "FileIndex": "keras_npy.index",
    "RowIndex": "keras_npy.index",
    "build_index": "keras_npy.index",
    "write_index": "keras_npy.index_file",
    "load_index": "keras_npy.index_file",
    "normalization_layer": "keras_npy.layers",
    "pack": "keras_npy.packing",
    "npy_dataset_from_directory": "keras_npy.from_directory",
    "npy_dataset": "keras_npy.tf_dataset",
    "npy_timeseries_dataset": "keras_npy.timeseries",
}

__all__ = sorted([*_NAMES, "__version__", "layers"])


def __getattr__(name):
    if name == "layers":
        return importlib.import_module("keras_npy.layers")
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_npy' has no attribute {name!r}")


def _started_as_the_command() -> bool:
    """Whether this process is the `keras-npy` console script or `python -m
    keras_npy` (never a program that imports keras_npy)."""
    if os.path.basename(sys.argv[0] if sys.argv else "") in ("keras-npy", "keras-npy.exe"):
        return True
    # `python -m keras_npy` imports this package while sys.argv[0] is "-m".
    command = getattr(sys, "orig_argv", [])
    return sys.argv[:1] == ["-m"] and any(
        flag == "-m" and module in ("keras_npy", "keras_npy.__main__")
        for flag, module in zip(command, command[1:]))


if not _started_as_the_command():
    from keras_npy import layers  # noqa: E402  (registers the layers with Keras)
    for _name in _NAMES:
        __getattr__(_name)
    del _name
