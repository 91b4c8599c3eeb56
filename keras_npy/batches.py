"""Batch `i` of epoch `e`, composed from the index, order and read stages.

Both front ends (`NpyDataset` and `npy_dataset`) validate their arguments and
build a `BatchSource` here; they never order or read themselves. A source is
small and picklable (paths and compact arrays), so worker processes get a
copy and open their own files.
"""

from __future__ import annotations

import numpy as np

from keras_npy import labels as labels_lib, order as order_lib
from keras_npy.index import DatasetIndex, build_index
from keras_npy.read import BatchReader, Padding, ReadAhead
from keras_npy.spec import BatchSpec

#: With `shuffle="block"`: a block's bytes, for the rows layout (at least one
#: row), and its files, for the files layout; blocks mixed in a window.
BLOCK_BYTES = 2**20
BLOCK_FILES = 64
SHUFFLE_WINDOW = 32
#: What `build_index` takes of a front end's keywords; the rest make the spec.
INDEX_KEYWORDS = ("layout", "class_names", "follow_links", "verbose", "storage_options",
                  "cache_dir", "cache_bytes")


def source_of_keywords(caller: str, x, y, kwargs: dict) -> "BatchSource":
    """The `BatchSource` of a front end called as `caller(x, y, **kwargs)`
    with `NpyDataset`'s keywords (index and batch keywords, no workers)."""
    index_keywords = {k: kwargs.pop(k) for k in INDEX_KEYWORDS if k in kwargs}
    return source_of(x, y, BatchSpec.from_keywords(caller, **kwargs), **index_keywords)


def source_of(x, y, spec: BatchSpec, **index_keywords) -> "BatchSource":
    """Indexes `x` and `y` from their headers (`INDEX_KEYWORDS`, as
    `build_index` takes them) and returns the `BatchSource` of `spec`."""
    return build_batch_source(build_index(x, y, **index_keywords), spec)


def build_batch_source(index: DatasetIndex, spec: BatchSpec) -> "BatchSource":
    """The `BatchSource` of `spec`'s batches of an index."""
    labels_lib.check_label_mode(spec.label_mode, index.class_names)
    padding = spec.padding_spec
    readers = {name: BatchReader(ix, padding, spec.dtype, name, crop=spec.crop_spec)
               for name, ix in index.inputs.items()}
    order = order_lib.Order(
        index.num_samples, spec, lengths=_bucket_lengths(index, spec.bucket_boundaries),
        block_size=spec.shuffle_block_size or _default_block_size(index),
        window=spec.shuffle_window or SHUFFLE_WINDOW)
    labels = Labels(index, spec.label_mode, padding if spec.pad_targets else None)
    return BatchSource(index, spec, readers, labels, order)


class BatchSource:
    """Everything needed to make batch `i` of an epoch: small, picklable, and
    the same in every worker.

    Attributes:
        index: the `DatasetIndex`.
        spec: the `BatchSpec`.
        readers: a `BatchReader` per input name (`"x"` for a single input).
        labels: the `Labels` of the batches.
        order: the `Order` of the samples.
        read_ahead: the `ReadAhead` window of this process.
    """

    def __init__(self, index: DatasetIndex, spec: BatchSpec, readers: dict, labels: "Labels",
                 order: order_lib.Order):
        self.index, self.spec, self.readers, self.labels = index, spec, readers, labels
        self.order, self.seed = order, spec.seed
        self.multi_input = isinstance(index.x, dict)
        self.read_ahead = ReadAhead(spec.read_ahead_bytes)
        self._all_readers = [*readers.values(), *([labels.reader] if labels.reader else [])]
        for reader in self._all_readers:  # whole small files read ahead share the budget
            if hasattr(reader, "limit_read_ahead"):
                reader.limit_read_ahead(spec.read_ahead_bytes // len(self._all_readers))
        self._single = None if self.multi_input else readers["x"]
        self._blocks = order.shuffle == "block"

    def reseed(self, seed: int) -> None:
        """Takes another seed (that of a restored state): the order changes,
        in place, for every pipeline that reads this source."""
        if seed != self.seed:
            self.spec = self.spec.with_seed(seed)
            self.order, self.seed = self.order.with_spec(self.spec), self.spec.seed
            for reader in self.readers.values():
                reader.reseed(self.seed)  # random crops are drawn from the seed too

    def file_paths(self) -> list[str]:
        """The files in unshuffled order: one per sample of this subset and
        shard (layout "files"), or the row files (layout "rows"); for a dict
        `x`, those of its first input."""
        first = next(iter(self.index.inputs.values()))
        if first.layout in ("rows", "ragged"):  # ragged: a pack's values files
            return list(first.paths)
        return [first.paths[int(i)] for i in self.order.sample_ids]

    def batch(self, epoch: int, i: int):
        """Batch `i` of `epoch`: `x`, `(x, y)` or `(dict of x, y)`."""
        return self.batches(epoch, i, 1)

    def batches(self, epoch: int, first: int, count: int):
        """Batches `first` to `first + count - 1` of `epoch` read as one, their
        samples one after the other: what stacking them would give, when every
        sample of them has one shape (no `"longest"` padding). Reads the
        batches after them ahead while they are asked for in order."""
        covered = self.advise_ahead(epoch, first, count)
        return self.read(epoch, first, count, advise=not covered)

    def advise_ahead(self, epoch: int, first: int, count: int) -> bool:
        """Moves the read-ahead window past batches `first` to `first + count
        - 1` (being read, here or by a worker) and fills it; returns whether
        they were in it already."""
        return self.read_ahead.after(epoch, first, count, self.order.num_batches,
                                     self._ahead_ids, self._all_readers)

    def read(self, epoch: int, first: int, count: int, advise: bool = True):
        """Batches `first` to `first + count - 1` of `epoch`, without moving the
        read-ahead window. With `advise`, their reads are started together
        first when their bytes are not in the page cache."""
        ids = self.order.batches(epoch, first, count)
        if advise and self._blocks:
            window = self.order.window_ids(epoch, first)
            if window is not None:  # a block shuffle: its window's blocks, whole
                for reader in self._all_readers:
                    reader.prefetch(window, epoch)
                advise = False
        if self._single is not None:
            x = self._single.read(ids, advise, epoch)
        else:
            x = {name: reader.read(ids, advise, epoch) for name, reader in self.readers.items()}
        if self.labels.none:
            return x
        return x, self.labels.read(ids, advise)

    def _ahead_ids(self, epoch: int, i: int, fresh: bool):
        """What reading batch `i` ahead reads: its samples, or with the block
        shuffle the blocks of the windows that start in it (`fresh`: of every
        window it draws from)."""
        window = self.order.window_ids(epoch, i, new_only=not fresh)
        return self.order.batch(epoch, i) if window is None else window


class Labels:
    """Labels of a batch: class labels converted per `label_mode`, or targets
    read from files like `x`, padded with `padding` (`None`: they keep their
    own shape, which must then be one shape)."""

    def __init__(self, index: DatasetIndex, label_mode, padding: Padding | None = None):
        self.label_mode, self.values, self.reader = label_mode, None, None
        self.num_classes = None if index.class_names is None else len(index.class_names)
        #: Whether batches have no labels.
        self.none = index.y is None or label_mode is None
        if padding is not None and (self.none or isinstance(index.y, np.ndarray)):
            found = ("there are no targets." if index.y is None else
                     "label_mode=None yields no targets." if self.none else
                     "these labels are held in memory, one per sample.")
            raise ValueError("`pad_targets=True` pads targets read from .npy files as x is "
                             f"padded; {found} Received: pad_targets=True")
        if self.none:
            return
        if isinstance(index.y, np.ndarray):
            self.values = index.y
            self._check_array_labels()
        elif label_mode != "int":
            raise ValueError(f"`label_mode={label_mode!r}` converts class labels held in "
                             "memory; labels read from .npy files come as stored. Use "
                             'label_mode="int", or pass `y` as an array.')
        else:
            self.reader = BatchReader(index.y, padding or Padding(), None, "y",
                                      pad_argument="pad_targets" if padding is None else "pad_to")

    def _check_array_labels(self) -> None:
        if self.label_mode != "categorical":
            return
        if self.values.dtype.kind not in "iub" or self.values.ndim != 1:
            raise ValueError('label_mode="categorical" one-hot encodes integer class ids; '
                             f"`y` has dtype {self.values.dtype} and shape "
                             f"{self.values.shape}.")
        if self.num_classes is None:
            self.num_classes = int(self.values.max()) + 1 if len(self.values) else 0
        bad = np.flatnonzero((self.values < 0) | (self.values >= self.num_classes))
        if len(bad):  # a one-hot row of a class that does not exist
            raise ValueError(f'label_mode="categorical" one-hot encodes class ids from 0 to '
                             f"{self.num_classes - 1}; `y` holds {self.values[bad[0]]} for "
                             f"sample {bad[0]}.")

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

    def read(self, ids, advise: bool = False):
        """The labels of samples `ids` (an `int64` array or a `range`)."""
        if self.reader is not None:
            return self.reader.read(ids, advise)
        if self.values is None:
            return None
        if isinstance(ids, range):  # a copy: a batch's labels are its own
            return self._convert(self.values[ids.start:ids.stop].copy())
        return self._convert(self.values[ids])

    def _convert(self, labels: np.ndarray) -> np.ndarray:
        if self.label_mode == "categorical":
            return np.eye(self.num_classes, dtype="float32")[labels]
        if self.label_mode == "binary":
            return labels.astype("float32").reshape(-1, 1)
        return labels


def _default_block_size(index: DatasetIndex) -> int:
    """Samples per block of the block shuffle: `BLOCK_BYTES` of rows of the
    first input (at least one), or `BLOCK_FILES` files."""
    first = next(iter(index.inputs.values()))
    if first.layout == "files":
        return BLOCK_FILES
    if first.layout == "ragged":  # a pack's variable-length samples: their mean size
        mean = first.dtype.itemsize * int(np.prod(first.shapes, axis=1).sum()) // max(
            1, first.num_samples)
        return max(1, BLOCK_BYTES // max(1, mean))
    return max(1, BLOCK_BYTES // max(1, first.row_nbytes))


def _bucket_lengths(index: DatasetIndex, bucket_boundaries) -> np.ndarray | None:
    """The first-axis length of each sample, the first input's, for buckets."""
    if bucket_boundaries is None:
        return None
    first = next(iter(index.inputs.values()))
    if first.sample_ndim == 0:
        raise ValueError("`bucket_boundaries` groups samples by the length of their first "
                         "axis, but the samples of x are scalars.")
    return first.sample_shapes(np.arange(first.num_samples))[:, 0]
