"""`npy_timeseries_dataset`: `keras.utils.timeseries_dataset_from_array` for
series stored as `.npy` files, read lazily.

It checks its arguments as Keras does, indexes the series (headers only),
works out where every window starts (a `WindowTable`, not a list of
windows), and hands the windows, as the samples of an `Order`, to either
front end: the same `BatchSource` machinery as `NpyDataset`, with a
`WindowReader` in place of a sample reader.
"""

from __future__ import annotations

import dataclasses
import numbers
import os

import numpy as np

from keras_npy import _checks, order as order_lib, state as state_lib
from keras_npy.batches import BLOCK_BYTES, SHUFFLE_WINDOW, BatchSource
from keras_npy.index import RowIndex, build_index
from keras_npy.read.windows import TargetReader, WindowReader, WindowTable
from keras_npy.spec import READ_AHEAD_BYTES, BatchSpec

FORMATS = ("tf", "pydataset")


def npy_timeseries_dataset(data, targets, sequence_length, sequence_stride=1, sampling_rate=1,
                           batch_size=128, shuffle=False, seed=None, start_index=None,
                           end_index=None, format="tf", *, dtype=None, drop_remainder=False,
                           num_shards=None, shard_index=None, shuffle_block_size=None,
                           shuffle_window=None, read_ahead_bytes=READ_AHEAD_BYTES,
                           verbose=True, workers=1, use_multiprocessing=False,
                           max_queue_size=10):
    """Batches of sliding windows over series stored as `.npy` files, like
    `keras.utils.timeseries_dataset_from_array`, read from disk.

    The arguments before `format` are Keras' own, with its defaults, checks
    and messages, and the batches are those of Keras' function on the same
    array: with `shuffle=False` batch for batch, with `shuffle=True` the same
    windows every epoch, in an order drawn from `(seed, epoch)`. Only the
    rows of the batch being read (and those read ahead) are in memory.

    Window `i` of a series is rows `start_index + i * sequence_stride + j *
    sampling_rate` for `j` in `range(sequence_length)`; its target is row
    `start_index + i * sequence_stride` of the targets. A window is one copy
    of its rows from the file's memory map (or one `preadv`), subsampled
    after the read.

    Args:
        data: a `.npy` path whose rows (axis 0) are the time steps; a list of
            paths, a directory or a glob: several series (files sorted by
            name), whose windows never cross from one file into the next; or
            an array, as Keras takes (a list of numpy arrays is several
            series, not the rows of one; a Python list of numbers becomes an
            array as `np.asarray` makes it, float64 or int64).
        targets: `None`; an array (a list of arrays for several series) or
            `.npy` path(s), one file per series, row-aligned with it:
            `targets[i]` is the target of the window that starts at row `i`.
        sequence_length: rows per window.
        sequence_stride: rows between the starts of consecutive windows.
            Defaults to `1`.
        sampling_rate: rows between the rows of a window. Defaults to `1`.
        batch_size: windows per batch; `None` for single windows (with
            `format="tf"`). With shards, the global batch. Defaults to `128`.
        shuffle: `True` for a new permutation of every window each epoch,
            from `(seed, epoch)`; `"block"` for the block shuffle of
            `NpyDataset` (blocks of consecutive windows). Defaults to `False`.
        seed: seed of the shuffle; drawn at random when `None`. Defaults to
            `None`.
        start_index: rows before it (of each series) are not used, for a
            validation split by time. Defaults to `None` (`0`).
        end_index: rows from it on (of each series) are not used. Defaults
            to `None` (the end of each series).
        format: `"tf"` for a `tf.data.Dataset`, `"pydataset"` for a
            `keras.utils.PyDataset` (an `NpyDataset`, for any backend).
            Defaults to `"tf"`.
        dtype: the dtype of the windows; `None` for data as stored. Defaults
            to `None`.
        drop_remainder: whether a last, smaller batch is dropped. Defaults
            to `False`.
        num_shards, shard_index, shuffle_block_size, shuffle_window,
        read_ahead_bytes, verbose, workers, use_multiprocessing,
        max_queue_size: as for `NpyDataset` (the last three with
            `format="pydataset"` only).

    Returns:
        A `tf.data.Dataset` or an `NpyDataset` of `(windows, targets)`
        batches, or of windows without `targets`: windows of shape `(batch,
        sequence_length, *row shape)`, targets of `(batch, *target row
        shape)`. Both have `file_paths` (the series' files) and, unless
        `batch_size=None`, `get_state()` / `set_state(state)`.

    Raises:
        TypeError: `sequence_length`, `sequence_stride`, `sampling_rate`,
            `start_index` or `end_index` is not an integer (or `None`, for
            the last two).
        ValueError: arguments Keras refuses (with Keras' message, after the
            file it is about), a window longer than a series, targets
            shorter than the windows need, series that differ in dtype or
            row shape.

    Example:

    >>> import tempfile, numpy as np
    >>> path = tempfile.mkdtemp() + "/series.npy"
    >>> np.save(path, np.arange(100, dtype="float32").reshape(50, 2))
    >>> ds = npy_timeseries_dataset(path, None, sequence_length=10, sequence_stride=5,
    ...                             batch_size=4, format="pydataset")
    >>> len(ds), ds[0].shape, ds[0][1, 0].tolist()
    (3, (4, 10, 2), [10.0, 11.0])
    """
    if format not in FORMATS:
        raise ValueError('`format` should be either "tf" or "pydataset". '
                         f"Received: format={format}")
    _check_window_arguments(sequence_length, sequence_stride, sampling_rate, start_index,
                            end_index)
    if batch_size is None and format == "pydataset":
        raise ValueError('An NpyDataset (format="pydataset") yields batches: `batch_size` '
                         'must be an integer. Received: batch_size=None')
    if batch_size is None and drop_remainder:
        raise ValueError("`drop_remainder` drops a last, smaller batch; with batch_size=None "
                         "windows come one by one. Received: batch_size=None, "
                         "drop_remainder=True")
    _checks.check_workers(workers, use_multiprocessing, max_queue_size)
    if format == "tf" and (workers, use_multiprocessing, max_queue_size) != (1, False, 10):
        raise ValueError('`workers`, `use_multiprocessing` and `max_queue_size` set the reading '
                         'workers of an NpyDataset (format="pydataset"); tf.data reads in '
                         'parallel itself. Received: format="tf"')
    spec = BatchSpec(batch_size=128 if batch_size is None else batch_size, shuffle=shuffle,
                     seed=seed, label_mode=None, drop_remainder=drop_remainder, dtype=dtype,
                     num_shards=num_shards, shard_index=shard_index,
                     shuffle_block_size=shuffle_block_size, shuffle_window=shuffle_window,
                     read_ahead_bytes=read_ahead_bytes)
    source = _window_source(data, targets, sequence_length, sequence_stride, sampling_rate,
                            start_index, end_index, spec, verbose)
    if format == "pydataset":
        from keras_npy.dataset import NpyDataset

        return NpyDataset._from_source(source, workers=workers,
                                       use_multiprocessing=use_multiprocessing,
                                       max_queue_size=max_queue_size)
    from keras_npy.tf_pipeline import public_dataset

    dataset = public_dataset(source)
    if batch_size is None:
        unbatched = dataset.unbatch()
        unbatched.file_paths = dataset.file_paths
        return unbatched
    return dataset


def _check_window_arguments(sequence_length, sequence_stride, sampling_rate, start_index,
                            end_index) -> None:
    """The types Keras assumes, checked (its own checks of values come with the data)."""
    for name, value in (("sequence_length", sequence_length),
                        ("sequence_stride", sequence_stride), ("sampling_rate", sampling_rate)):
        if not _is_int(value):
            raise TypeError(f"`{name}` must be an integer. Received: {name}={value!r}")
    if sequence_length <= 0:
        raise ValueError("`sequence_length` must be higher than 0. Received: "
                         f"sequence_length={sequence_length}")
    for name, value in (("start_index", start_index), ("end_index", end_index)):
        if value is not None and not _is_int(value):
            raise TypeError(f"`{name}` must be an integer or None. Received: {name}={value!r}")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


@dataclasses.dataclass(frozen=True)
class _Series:
    """The series of `data` or `targets`: a `RowIndex` of files, or arrays."""

    values: RowIndex | list[np.ndarray]
    names: list[str]  # for messages: a path, or "data"/"targets"
    lengths: list[int]

    @property
    def in_files(self) -> bool:
        return isinstance(self.values, RowIndex)


def _series_of(value, name: str, verbose: bool) -> _Series:
    """The series of `data` (or `targets`): paths are indexed from their
    headers, as the rows layout indexes them; arrays are taken as they are."""
    if _is_paths(value):
        from keras_npy.read.remote import is_url_source

        if is_url_source(value, name):
            raise ValueError(f"`{name}` names URLs, which windows are not read from: copy the "
                             f"series to local files first. Received: {name}={value!r}")
        index = build_index(value, None, layout="rows", verbose=verbose).x
        return _Series(index, list(index.paths), np.diff(index.row_starts).tolist())
    arrays = list(value) if isinstance(value, (list, tuple)) and value and all(
        isinstance(a, np.ndarray) for a in value) else [np.asarray(value)]
    for a in arrays:
        if a.ndim == 0:
            raise ValueError(f"`{name}` must have a time axis (axis 0); it is a scalar.")
        if a.dtype.hasobject:
            raise ValueError(f"`{name}` must be a numeric array; it has dtype {a.dtype}.")
    for a in arrays[1:]:
        if (a.dtype, a.shape[1:]) != (arrays[0].dtype, arrays[0].shape[1:]):
            raise ValueError(f"The series of `{name}` must agree in dtype and row shape: the "
                             f"first has dtype {arrays[0].dtype} and rows of shape "
                             f"{arrays[0].shape[1:]}, another dtype {a.dtype} and rows of shape "
                             f"{a.shape[1:]}.")
    names = [name] if len(arrays) == 1 else [f"{name}[{k}]" for k in range(len(arrays))]
    return _Series(arrays, names, [len(a) for a in arrays])


def _is_paths(value) -> bool:
    if isinstance(value, (str, os.PathLike)):
        return True
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(v, (str, os.PathLike)) for v in value)


def _window_source(data, targets, sequence_length, stride, rate, start_index, end_index,
                   spec: BatchSpec, verbose: bool) -> "WindowSource":
    series = _series_of(data, "data", verbose)
    target_series = None if targets is None else _series_of(targets, "targets", verbose)
    if target_series is not None and len(target_series.lengths) != len(series.lengths):
        raise ValueError(f"`targets` must hold one series per series of `data`: `data` has "
                         f"{len(series.lengths)} ({_first(series.names)}), `targets` "
                         f"{len(target_series.lengths)} ({_first(target_series.names)}).")
    first_rows, counts = [], []
    for k, (name, length) in enumerate(zip(series.names, series.lengths)):
        named = series.in_files or len(series.names) > 1
        start, end = _keras_checks(name if named else None, length, start_index, end_index,
                                   rate, stride)
        num_seqs = end - start - (sequence_length - 1) * rate
        if num_seqs <= 0:
            raise ValueError(
                f"{name}: a window of sequence_length={sequence_length} with "
                f"sampling_rate={rate} spans {(sequence_length - 1) * rate + 1} rows, but the "
                f"series has {end - start} rows from start_index={start} to end_index={end}. "
                "Pass a shorter `sequence_length` (or `sampling_rate`), or leave this series "
                "out.")
        if target_series is not None:
            num_seqs = min(num_seqs, target_series.lengths[k])  # as Keras does
            _check_targets(target_series, k, name, start, (num_seqs - 1) // stride * stride)
        first_rows.append(start)
        counts.append(-(-num_seqs // stride))
    table = WindowTable(np.asarray(first_rows, np.int64), np.asarray(counts, np.int64), stride)
    reader = WindowReader(series.values, table, sequence_length, rate, spec.dtype)
    target_reader = None if target_series is None else TargetReader(target_series.values, table)
    row_bytes = max(1, reader.row_nbytes * stride)
    order = order_lib.Order(table.num_windows, spec,
                            block_size=spec.shuffle_block_size or max(1, BLOCK_BYTES // row_bytes),
                            window=spec.shuffle_window or SHUFFLE_WINDOW)
    windows = {"sequence_length": sequence_length, "sequence_stride": stride,
               "sampling_rate": rate, "start_index": start_index, "end_index": end_index}
    index = WindowIndex(series, target_series, windows, table.num_windows)
    return WindowSource(index, spec, {"x": reader}, _Targets(target_reader), order)


def _keras_checks(path, length: int, start_index, end_index, rate: int,
                  stride: int) -> tuple[int, int]:
    """Keras' checks of one series of `length` rows (its messages, after the
    file's path), and the rows `[start, end)` used."""
    where = "" if path is None else f"{path}: "

    def fail(message):
        raise ValueError(where + message)

    if start_index:
        if start_index < 0:
            fail(f"`start_index` must be 0 or greater. Received: start_index={start_index}")
        if start_index >= length:
            fail("`start_index` must be lower than the length of the data. Received: "
                 f"start_index={start_index}, for data of length {length}")
    if end_index:
        if start_index and end_index <= start_index:
            fail("`end_index` must be higher than `start_index`. Received: "
                 f"start_index={start_index}, and end_index={end_index} ")
        if end_index >= length:
            fail("`end_index` must be lower than the length of the data. Received: "
                 f"end_index={end_index}, for data of length {length}")
        if end_index <= 0:
            fail(f"`end_index` must be higher than 0. Received: end_index={end_index}")
    if rate <= 0:
        fail(f"`sampling_rate` must be higher than 0. Received: sampling_rate={rate}")
    if rate >= length:
        fail("`sampling_rate` must be lower than the length of the data. Received: "
             f"sampling_rate={rate}, for data of length {length}")
    if stride <= 0:
        fail(f"`sequence_stride` must be higher than 0. Received: sequence_stride={stride}")
    if stride >= length:
        fail("`sequence_stride` must be lower than the length of the data. Received: "
             f"sequence_stride={stride}, for data of length {length}")
    if end_index is not None and end_index <= 0:  # end_index=0: Keras' check skips it
        fail(f"`end_index` must be higher than 0. Received: end_index={end_index}")
    return start_index or 0, length if end_index is None else end_index


def _check_targets(targets: _Series, k: int, name: str, start: int, last: int) -> None:
    """Targets of series `k` have the row the last window needs (Keras fails
    while iterating, when it gathers past the end)."""
    needed = start + last
    if needed >= targets.lengths[k]:
        raise ValueError(
            f"{targets.names[k]}: the targets of {name} have {targets.lengths[k]} rows, but its "
            f"last window starts at row {needed} and needs targets[{needed}]: targets[i] is "
            "the target of the window that starts at row i.")


def _first(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]}, ..."


class WindowIndex:
    """What `BatchSource` and the states know of a windowed data set: the
    series (files or arrays), the targets, the window arguments."""

    class_names = None

    def __init__(self, series: _Series, targets: _Series | None, windows: dict,
                 num_samples: int):
        self.series, self.targets, self.windows = series, targets, windows
        self.num_samples = num_samples
        self.x = series.names[0] if len(series.names) == 1 else list(series.names)
        self.y = None
        self._fingerprint = None

    def fingerprint(self) -> dict:
        """The facts that decide which rows each window is: the series (file
        names, sizes and headers; or arrays' dtype, shape and bytes), the
        targets, and the window arguments."""
        if self._fingerprint is None:
            self._fingerprint = {"samples": self.num_samples, "windows": dict(self.windows),
                                 "series": _series_facts(self.series),
                                 "targets": None if self.targets is None else _series_facts(
                                     self.targets)}
        return self._fingerprint


def _series_facts(series: _Series) -> dict:
    if series.in_files:
        return state_lib.input_facts(series.values)
    return {"arrays": len(series.values), "rows": int(sum(series.lengths)),
            "headers": state_lib.digest(*series.values)}


class _Targets:
    """The targets of the batches, as `BatchSource` reads `Labels`."""

    def __init__(self, reader: TargetReader | None):
        self.reader, self.none = reader, reader is None

    def read(self, ids, advise: bool = False):
        return self.reader.read(ids, advise)

    def element_spec(self):
        return None if self.reader is None else (self.reader.element_shape(), self.reader.dtype)


class WindowSource(BatchSource):
    """The `BatchSource` of windows: batches of windows (and their targets)."""

    def file_paths(self) -> list[str]:
        """The files of the series, in order (none for arrays)."""
        series = self.index.series
        return list(series.values.paths) if series.in_files else []
