"""`npy_dataset_from_directory`: `keras.utils.image_dataset_from_directory`'s
twin for folders of `.npy` files. It indexes the folder once, whatever the
`subset`, and hands that index to either front end (`format`).
"""

from __future__ import annotations

import numpy as np

from keras_npy import _checks
from keras_npy.batches import build_batch_source
from keras_npy.dataset import NpyDataset
from keras_npy.index import build_index
from keras_npy.spec import BatchSpec
from keras_npy.tf_pipeline import public_dataset

FORMATS = ("tf", "pydataset")
#: Arguments of `NpyDataset` that the tf.data format has no use for.
_WORKER_ARGUMENTS = ("workers", "use_multiprocessing", "max_queue_size")


def npy_dataset_from_directory(directory, labels="inferred", label_mode="int",
                               class_names=None, batch_size=32, shuffle=True, seed=None,
                               validation_split=None, subset=None, follow_links=False,
                               format="tf", verbose=True, storage_options=None, **kwargs):
    """Batches of `.npy` files in class folders, like
    `keras.utils.image_dataset_from_directory`.

    Arguments, defaults, checks and messages are those of
    `image_dataset_from_directory`, so that a tutorial changes one call:

    ```
    main_directory/
    ...class_a/
    ......a_sample_1.npy
    ......a_sample_2.npy
    ...class_b/
    ......b_sample_1.npy
    ```

    Args:
        directory: the folder holding one sub-folder per class (with
            `labels="inferred"`), walked recursively.
        labels: `"inferred"` (from the sub-folders), `None` (no labels), or a
            list/tuple of one label per file, in the sorted order of the files.
            Defaults to `"inferred"`.
        label_mode: `"int"`, `"categorical"`, `"binary"` or `None`. Defaults
            to `"int"`.
        class_names: with `labels="inferred"`, the sub-folders in label order.
            Defaults to their sorted names.
        batch_size: samples per batch; with shards (see `NpyDataset`), the
            global batch, of which each process reads an equal part. Defaults
            to `32`.
        shuffle: a global sample shuffle, redrawn every epoch. Defaults to
            `True`.
        seed: seed of the shuffle and the split. Defaults to `None`.
        validation_split: fraction held out for validation. Defaults to `None`.
        subset: `"training"`, `"validation"` or `"both"` (returns a tuple).
            Defaults to `None`.
        follow_links: whether the walk enters links to folders. Defaults to
            `False`.
        format: `"tf"` for `tf.data.Dataset`s, `"pydataset"` for
            `NpyDataset`s. Defaults to `"tf"`.
        verbose: whether to print what was found. Defaults to `True`.
        storage_options: for a `directory` named by a URL (`s3://bucket/data`,
            any fsspec URL), the filesystem's keyword arguments. Defaults to
            `None`.
        **kwargs: the padding and ordering arguments of `NpyDataset`
            (`pad_to`, `pad_to_multiple_of`, `padding`, `truncating`,
            `pad_value`, `bucket_boundaries`, `drop_remainder`, `dtype`,
            `num_shards`, `shard_index`, `shuffle_block_size`,
            `shuffle_window`, `read_ahead_bytes`), and its block cache of
            URLs' bytes (`cache_dir`, `cache_bytes`).

    Returns:
        A dataset, or a `(training, validation)` tuple with `subset="both"`;
        each has `.class_names` and `.file_paths`.
    """
    _check_labels(labels, class_names)
    if format not in FORMATS:
        raise ValueError('`format` should be either "tf" or "pydataset". '
                         f"Received: format={format}")
    if subset not in ("training", "validation", "both", None):
        raise ValueError('`subset` must be either "training", "validation" or "both", '
                         f"received: {subset}")
    workers = {name: kwargs.pop(name) for name in _WORKER_ARGUMENTS if name in kwargs}
    if workers and format == "tf":
        raise ValueError(f"`{next(iter(workers))}` sets the reading workers of an NpyDataset "
                         '(format="pydataset"); tf.data reads in parallel itself. '
                         'Received: format="tf"')
    workers = {"workers": 1, "use_multiprocessing": False, "max_queue_size": 10, **workers}
    _checks.check_workers(**workers)
    if labels is None or label_mode is None:
        labels, label_mode = None, None
    spec = BatchSpec.from_keywords(
        "npy_dataset_from_directory", label_mode=label_mode, batch_size=batch_size,
        shuffle=shuffle, seed=seed, validation_split=validation_split,
        subset="training" if subset == "both" else subset, **kwargs)
    y = np.asarray(labels) if isinstance(labels, (list, tuple)) else labels
    storage = {k: kwargs.pop(k) for k in ("cache_dir", "cache_bytes") if k in kwargs}
    index = build_index(directory, y, layout="files", class_names=class_names,
                        follow_links=follow_links, verbose=verbose,
                        storage_options=storage_options, **storage)
    if verbose:
        _print_found(index)
    specs = [spec, spec.for_subset("validation")] if subset == "both" else [spec]
    datasets = [_make(format, index, s, workers, verbose) for s in specs]
    return tuple(datasets) if subset == "both" else datasets[0]


def _check_labels(labels, class_names) -> None:
    """Keras' checks of `labels` and `class_names`, with Keras' messages."""
    if labels not in ("inferred", None):
        if not isinstance(labels, (list, tuple)):
            raise ValueError(
                "`labels` argument should be a list/tuple of integer labels, of the same size "
                "as the number of .npy files in the target directory. If you wish to infer "
                "the labels from the subdirectory names in the target directory, pass "
                '`labels="inferred"`. If you wish to get a dataset that only contains samples '
                f"(no labels), pass `labels=None`. Received: labels={labels}")
        if class_names:
            raise ValueError('You can only pass `class_names` if `labels="inferred"`. '
                             f"Received: labels={labels}, and class_names={class_names}")


def _print_found(index) -> None:
    if index.class_names is not None:
        print(f"Found {index.num_samples} files belonging to {len(index.class_names)} "
              "classes.")
    else:
        print(f"Found {index.num_samples} files.")


def _make(format, index, spec, workers, verbose):
    """One dataset of `npy_dataset_from_directory`, from the index built once."""
    source = build_batch_source(index, spec)
    if format == "pydataset":
        dataset = NpyDataset._from_source(source, **workers)
    else:
        dataset = public_dataset(source)
    if verbose and spec.subset is not None:
        print(f"Using {source.order.num_samples} files for {spec.subset}.")
    return dataset
