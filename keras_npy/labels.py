"""Labels held in memory: classes inferred from folder names, and label arrays.

Labels that live in `.npy` files (row-aligned arrays, or one target file per
sample) are indexed like `x` itself, by `keras_npy.index`.
"""

from __future__ import annotations

import os

import numpy as np

from keras_npy import sources

LABEL_MODES = ("int", "categorical", "binary", None)


def check_class_names(class_names) -> list[str] | None:
    """Validates `class_names`: `None`, or a list of distinct strings."""
    if class_names is None:
        return None
    if isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names):
        raise TypeError("`class_names` must be a list of strings. "
                        f"Received: class_names={class_names!r}")
    class_names = list(class_names)
    if len(set(class_names)) != len(class_names):
        raise ValueError("`class_names` must not repeat a name. "
                         f"Received: class_names={class_names}")
    return class_names


def check_label_mode(label_mode, class_names: list[str] | None) -> None:
    """Checks `label_mode` (and, for `"binary"`, the number of classes)."""
    if label_mode not in LABEL_MODES:
        raise ValueError('`label_mode` argument must be one of "int", "categorical", '
                         f'"binary", or None. Received: label_mode={label_mode!r}')
    if label_mode == "binary" and class_names is not None and len(class_names) != 2:
        raise ValueError('When passing `label_mode="binary"`, there must be exactly 2 '
                         f"class_names. Received: class_names={class_names}")


def class_folder(paths: sources.PathTable, i: int) -> str:
    """The class of file `i`: its first folder under a directory root, else the
    name of the folder that holds it."""
    if paths.kinds[paths.root_ids[i]] == sources.DIRECTORY:
        relpath = paths.relpath(i)
        head, sep, _ = relpath.partition(os.sep)
        if not sep:
            root = paths.roots[paths.root_ids[i]]
            raise ValueError(f"{paths[i]}: with y=\"inferred\", expected every file to be "
                             f"in a class folder of {root}, found it directly in {root}.")
        return head
    return os.path.basename(os.path.dirname(os.path.abspath(paths[i])))


def infer_classes(paths: sources.PathTable,
                  class_names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Labels each file with the index of its class folder.

    Args:
        paths: the files of `x`.
        class_names: the classes in label order, or `None` for the sorted names
            of the class folders: those that hold files, and, as Keras'
            `image_dataset_from_directory` counts them, every other folder
            (not hidden) directly under a directory of `x`, empty or not.

    Returns:
        `(labels, class_names)`: an `int32` array of one label per file, and the
        class names in label order.

    Raises:
        ValueError: a file is not in a class folder, a folder is not in
            `class_names`, or a name in `class_names` has no folder.
    """
    found: dict[str, int] = {}  # folder name -> provisional label
    first_files = []  # the first file of each folder, for error messages
    provisional = np.empty(len(paths), np.int32)
    for i in range(len(paths)):
        folder = class_folder(paths, i)
        label = found.get(folder)
        if label is None:
            label = found[folder] = len(found)
            first_files.append(paths[i])
        provisional[i] = label
    folders = set(found) | _subfolders(paths)
    if class_names is None:
        class_names = sorted(folders)
    _check_folders_listed(found, first_files, class_names, folders)
    remap = np.array([class_names.index(n) for n in found], np.int32)
    return remap[provisional], class_names


def _subfolders(paths: sources.PathTable) -> set[str]:
    """The folders (not hidden) directly under the directories of `x`: empty
    class folders are classes too, as in Keras."""
    folders = set()
    for root, kind in zip(paths.roots, paths.kinds):
        if kind != sources.DIRECTORY or "://" in root:
            continue  # a URL's prefixes hold objects: its class folders are those found
        with os.scandir(root) as entries:
            for entry in entries:
                if not entry.name.startswith(".") and sources.is_dir(entry):
                    folders.add(entry.name)
    return folders


def _check_folders_listed(found: dict[str, int], first_files: list[str],
                          class_names: list[str], folders: set[str]) -> None:
    for folder, label in found.items():
        if folder not in class_names:
            raise ValueError(f"`class_names` must list every class folder; found folder "
                             f"{folder!r} ({first_files[label]}), which is not in "
                             f"class_names={class_names}.")
    for name in class_names:
        if name not in folders:
            raise ValueError(f"`class_names` lists {name!r}, but there is no folder of that "
                             f"name. Found folders: {sorted(folders)}.")


def check_label_array(y, num_samples: int, x_name: str = "x") -> np.ndarray:
    """Validates labels given as an array-like: numbers, one row per sample."""
    labels = np.asarray(y)
    if labels.dtype.kind not in "biufc":
        raise TypeError("`y` must be numeric labels (bool, integer, float or complex). "
                        f"Received: y with dtype {labels.dtype}")
    if labels.ndim == 0 or len(labels) != num_samples:
        found = "a scalar" if labels.ndim == 0 else f"{len(labels)}"
        raise ValueError(f"`y` must have one label per sample of `{x_name}`: expected "
                         f"{num_samples}, found {found}.")
    return labels
