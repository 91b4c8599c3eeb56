"""Batch `i` of epoch `e`, composed from the index, order and read stages.

Both front ends (`NpyDataset` and `npy_dataset`) validate their arguments and
build a `BatchSource` here; they never order or read themselves. A source is
small and picklable (paths and compact arrays), so worker processes get a
copy and open their own files.
"""

from __future__ import annotations

import numpy as np

from keras_npy import order as order_lib
from keras_npy.index import DatasetIndex, build_index
from keras_npy.read import BatchReader, Padding, check_padding


def build_batch_source(x=None, y=None, *, index=None, layout="auto", batch_size=32,
                       shuffle=False, seed=None,
                       label_mode="int", class_names=None, validation_split=None,
                       subset=None, pad_to=None, pad_to_multiple_of=None, padding="post",
                       truncating="post", pad_value=0, bucket_boundaries=None,
                       drop_remainder=False, dtype=None, num_shards=1, shard_index=0,
                       follow_links=False, verbose=True) -> "BatchSource":
    """Validates the arguments (see `NpyDataset`), indexes the data from its
    headers (unless `index`, a `DatasetIndex` built with the same arguments, is
    given), and returns the `BatchSource` of its batches."""
    order_lib.check_order_arguments(batch_size, shuffle, seed, validation_split, subset,
                                    num_shards, shard_index, drop_remainder, bucket_boundaries)
    check_padding(pad_to, pad_to_multiple_of, padding, truncating, pad_value)
    if index is None:
        index = build_index(x, y, layout=layout, class_names=class_names,
                            label_mode=label_mode, follow_links=follow_links, verbose=verbose)
    seed = int(np.random.SeedSequence().entropy % 2**32) if seed is None else seed
    padding_spec = Padding(pad_to, pad_to_multiple_of, padding, truncating, pad_value)
    readers = {name: BatchReader(ix, padding_spec, dtype, name)
               for name, ix in index.inputs.items()}
    order = order_lib.Order(
        index.num_samples, batch_size=batch_size, shuffle=shuffle, seed=seed,
        validation_split=validation_split, subset=subset, num_shards=num_shards,
        shard_index=shard_index, drop_remainder=drop_remainder,
        lengths=_bucket_lengths(index, bucket_boundaries),
        bucket_boundaries=bucket_boundaries)
    return BatchSource(index, readers, Labels(index, label_mode, padding_spec), order, seed)


class BatchSource:
    """Everything needed to make batch `i` of an epoch: small, picklable, and
    the same in every worker.

    Attributes:
        index: the `DatasetIndex`.
        readers: a `BatchReader` per input name (`"x"` for a single input).
        labels: the `Labels` of the batches.
        order: the `Order` of the samples.
        seed: the seed of the order (drawn when the user gave none).
    """

    def __init__(self, index: DatasetIndex, readers: dict, labels: "Labels",
                 order: order_lib.Order, seed: int):
        self.index, self.readers, self.labels = index, readers, labels
        self.order, self.seed = order, seed
        self.multi_input = isinstance(index.x, dict)
        # One input of rows read as stored ...
        only = next(iter(readers.values()))
        self._plain_rows = only if not self.multi_input and only.plain_rows else None
        # ... and when every batch is the next run of sample ids, batch `i` is
        # rows `first + i * batch_size` on: no plan to look up.
        self._first_id = int(order.sample_ids[0]) if (
            self._plain_rows is not None and order.consecutive and order.num_samples) else None
        # ... read by `_read_run` when labels come from memory too (with the
        # numbers it needs as plain attributes: it is most of such an epoch's Python).
        self._runs = self._first_id is not None and labels.in_memory
        self._batch_size, self._num_samples = order.batch_size, order.num_samples

    def file_paths(self) -> list[str]:
        """The files in unshuffled order: one per sample of this subset and
        shard (layout "files"), or the row files (layout "rows"); for a dict
        `x`, those of its first input."""
        first = next(iter(self.index.inputs.values()))
        if first.layout == "rows":
            return list(first.paths)
        return [first.paths[int(i)] for i in self.order.sample_ids]

    def batch(self, epoch: int, i: int, view: bool = False):
        """Batch `i` of `epoch`: `x`, `(x, y)` or `(dict of x, y)`. With
        `view`, unconverted consecutive rows may be read-only views of memory
        maps (see `BatchReader.read`)."""
        return self.batches(epoch, i, 1, view)

    def batches(self, epoch: int, first: int, count: int, view: bool = False):
        """Batches `first` to `first + count - 1` of `epoch` read as one, their
        samples one after the other: what stacking them would give, when every
        sample of them has one shape (no `"longest"` padding)."""
        if self._runs:
            return self._read_run(first, count, view)
        return self._read_ids(self.order.batches(epoch, first, count), view)

    def _read_run(self, first: int, count: int, view: bool):
        """Batches `first` to `first + count - 1` of consecutive plain rows."""
        start = first * self._batch_size
        size = min(count * self._batch_size, self._num_samples - start)
        x = self._plain_rows.read_run(self._first_id + start, size, view)
        if x is None:  # rows across two files
            x = self._plain_rows.read(np.arange(start, start + size) + self._first_id, True,
                                      view)
        if self.labels.values is None:
            return x
        return x, self.labels.read_run(self._first_id + start, size)

    def _read_ids(self, ids: np.ndarray, view: bool):
        consecutive = self.order.consecutive
        x = {name: reader.read(ids, consecutive, view) for name, reader in self.readers.items()}
        x = x if self.multi_input else x["x"]
        y = self.labels.read(ids, consecutive, view)
        return x if y is None else (x, y)


class Labels:
    """Labels of a batch: class labels converted per `label_mode`, or targets
    read from files like `x`."""

    def __init__(self, index: DatasetIndex, label_mode, padding: Padding):
        self.label_mode, self.values, self.reader = label_mode, None, None
        self.num_classes = None if index.class_names is None else len(index.class_names)
        if index.y is None or label_mode is None:
            return
        if isinstance(index.y, np.ndarray):
            self.values = index.y
            self._check_array_labels()
        elif label_mode != "int":
            raise ValueError(f"`label_mode={label_mode!r}` converts class labels held in "
                             "memory; labels read from .npy files come as stored. Use "
                             'label_mode="int", or pass `y` as an array.')
        else:
            self.reader = BatchReader(index.y, padding, None, "y")

    def _check_array_labels(self) -> None:
        if self.label_mode == "categorical" and self.num_classes is None:
            if self.values.dtype.kind not in "iub" or self.values.ndim != 1:
                raise ValueError('label_mode="categorical" one-hot encodes integer class ids; '
                                 f"`y` has dtype {self.values.dtype} and shape "
                                 f"{self.values.shape}.")
            self.num_classes = int(self.values.max()) + 1 if len(self.values) else 0

    def element_spec(self) -> tuple[tuple[int | None, ...], np.dtype] | None:
        """`(shape of one label, dtype)`, or `None` when batches have no labels."""
        if self.reader is not None:
            return self.reader.element_shape(), self.reader.dtype
        if self.values is None:
            return None
        if self.label_mode == "categorical":
            return (self.num_classes,), np.dtype("float32")
        if self.label_mode == "binary":
            return (1,), np.dtype("float32")
        return self.values.shape[1:], self.values.dtype

    @property
    def in_memory(self) -> bool:
        """Whether labels come from memory (or there are none), not from files."""
        return self.reader is None

    def read_run(self, first: int, count: int):
        """The labels of samples `first` to `first + count - 1` (`in_memory` only)."""
        if self.values is None:
            return None
        return self._convert(self.values[first:first + count].copy())

    def read(self, ids: np.ndarray, consecutive: bool = False, view: bool = False):
        if self.reader is not None:
            return self.reader.read(ids, consecutive, view)
        if self.values is None:
            return None
        return self._convert(self.values[ids])

    def _convert(self, labels: np.ndarray) -> np.ndarray:
        if self.label_mode == "categorical":
            return np.eye(self.num_classes, dtype="float32")[labels]
        if self.label_mode == "binary":
            return labels.astype("float32").reshape(-1, 1)
        return labels


def _bucket_lengths(index: DatasetIndex, bucket_boundaries) -> np.ndarray | None:
    """The first-axis length of each sample, the first input's, for buckets."""
    if bucket_boundaries is None:
        return None
    first = next(iter(index.inputs.values()))
    if first.sample_ndim == 0:
        raise ValueError("`bucket_boundaries` groups samples by the length of their first "
                         "axis, but the samples of x are scalars.")
    return first.sample_shapes(np.arange(first.num_samples))[:, 0]
