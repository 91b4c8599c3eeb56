"""`WindowReader`: batches of windows of series, for `npy_timeseries_dataset`.

A series is one `.npy` file (its rows are its time steps; several files are
several series, indexed together as a `RowIndex`) or one array in memory.
Window `w` is `length` rows, `rate` rows apart, from its first row on; the
`WindowTable` says which series and row each window starts at. A batch is
planned into one `plan.Windows` part per series it touches, and each window
is one copy of its rows from the file's guarded memory map (or one `preadv`
of its span where maps are not guarded), subsampled by `rate` on the way: no
window is read twice, and nothing but the batch's windows is held.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_npy.index import RowIndex
from keras_npy.read import local, plan
from keras_npy.read.buffers import POOL
from keras_npy.read.engine import BatchReader, RowFiles, copy_windows
from keras_npy.read.padding import Padding


@dataclasses.dataclass(frozen=True)
class WindowTable:
    """Where each window starts, without an array of one entry per window.

    Attributes:
        first_rows: `int64`, per series: the row its first window starts at
            (`start_index`), counted within the series.
        counts: `int64`, per series: its windows.
        stride: rows between the starts of consecutive windows of a series.
        first_ids: `int64` of `len(counts) + 1`: the id of each series' first
            window, and the number of windows.
    """

    first_rows: np.ndarray
    counts: np.ndarray
    stride: int
    first_ids: np.ndarray = dataclasses.field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "first_ids", np.concatenate([[0], np.cumsum(self.counts)]))

    @property
    def num_windows(self) -> int:
        return int(self.first_ids[-1])

    def locate(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """`(series, row)` of windows `ids`: the series each starts in, and
        its first row, counted within that series."""
        ids = np.asarray(ids, np.int64)
        series = np.searchsorted(self.first_ids, ids, side="right") - 1
        return series, self.first_rows[series] + (ids - self.first_ids[series]) * self.stride


class WindowReader:
    """Reads batches of windows of `series`: a `RowIndex` (files) or a list of
    arrays, one per series.

    Args:
        series: the series.
        table: the `WindowTable` of their windows.
        length: rows per window (`sequence_length`).
        rate: rows between the rows of a window (`sampling_rate`).
        dtype: the dtype of the batches; `None` for the stored dtype, in
            native byte order.
    """

    reads_files = False

    def __init__(self, series: RowIndex | list[np.ndarray], table: WindowTable, length: int,
                 rate: int, dtype=None):
        self.table, self.length, self.rate = table, length, rate
        self._files = RowFiles(series) if isinstance(series, RowIndex) else None
        self._arrays = None if self._files is not None else list(series)
        first = series if self._files is not None else series[0]
        self.stored = first.dtype
        self.native = self.stored.newbyteorder("=")
        self.dtype = np.dtype(dtype) if dtype is not None else self.native
        self.row_shape = tuple(first.row_shape if self._files is not None else first.shape[1:])
        self.row_nbytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.stored.itemsize
        self._starts = None if self._files is None else np.asarray(self._files.starts, np.int64)
        self._starts_list = None if self._files is None else self._files.starts

    def reseed(self, seed: int) -> None:
        """Nothing: windows are not drawn from the seed (their order is)."""

    def element_shape(self) -> tuple[int, ...]:
        """The shape of one window: `(length, *row shape)`."""
        return (self.length, *self.row_shape)

    def read(self, ids, advise: bool = False, epoch: int = 0) -> np.ndarray:
        """Windows `ids` (an `int64` array or a `range`), stacked in that
        order: shape `(len(ids), length, *row shape)`."""
        series, rows = self.table.locate(_array(ids))
        out = POOL.empty((len(series), *self.element_shape()), self.stored)
        if len(series) == 0 or out.size == 0:
            return out.astype(self.dtype)
        if self._arrays is not None:
            for part in _array_parts(series, rows, self.length, self.rate):
                copy_windows(self._arrays[part.file], part, out)
        else:
            parts = plan.plan_windows(self._starts_list, self._starts[series] + rows,
                                      self.length, self.rate)
            if advise:
                self._files.prefetch(parts)
            for part in parts:
                self._files.read(part, out)
        return out if self.dtype == out.dtype else out.astype(self.dtype)

    def prefetch(self, ids, epoch: int = 0) -> int:
        """Starts reading the rows of windows `ids` into the page cache (see
        `BatchReader.prefetch`); returns the pages asked for."""
        if self._files is None or not local.can_advise() or len(ids) == 0:
            return 0
        series, rows = self.table.locate(_array(ids))
        return self._files.prefetch(plan.plan_windows(
            self._starts_list, self._starts[series] + rows, self.length, self.rate))

    def nbytes(self, ids) -> int:
        """The bytes of the rows windows `ids` span, as stored (counted once
        where windows overlap, as the read-ahead reads them)."""
        series, rows = self.table.locate(_array(ids))
        if len(rows) == 0:
            return 0
        span = (self.length - 1) * self.rate + 1
        spans = [int(np.ptp(rows[series == s])) + span for s in np.unique(series).tolist()]
        return min(len(rows) * span, sum(spans)) * self.row_nbytes


class TargetReader:
    """Reads the target of each window: row `first row` of the targets of its
    series (a `RowIndex` of files row-aligned with the series, or a list of
    arrays), as `keras.utils.timeseries_dataset_from_array` pairs them."""

    reads_files = False

    def __init__(self, targets: RowIndex | list[np.ndarray], table: WindowTable, dtype=None):
        self.table = table
        if isinstance(targets, RowIndex):
            self._rows = BatchReader(targets, Padding(), dtype, "targets")
            self._starts, self._arrays = targets.row_starts, None
            self.dtype, shape = self._rows.dtype, targets.row_shape
        else:
            self._rows, self._arrays = None, list(targets)
            self.dtype, shape = self._arrays[0].dtype.newbyteorder("="), self._arrays[0].shape[1:]
        self.row_shape = tuple(shape)

    def element_shape(self) -> tuple[int, ...]:
        return self.row_shape

    def _rows_of(self, ids) -> tuple[np.ndarray, np.ndarray]:
        return self.table.locate(_array(ids))

    def read(self, ids, advise: bool = False) -> np.ndarray:
        series, rows = self._rows_of(ids)
        if self._rows is not None:
            return self._rows.read(self._starts[series] + rows, advise)
        out = np.empty((len(series), *self.row_shape), self.dtype)
        for s in np.unique(series).tolist():
            slots = np.flatnonzero(series == s)
            out[slots] = self._arrays[s][rows[slots]]
        return out

    def prefetch(self, ids, epoch: int = 0) -> int:
        if self._rows is None or len(ids) == 0:
            return 0
        series, rows = self._rows_of(ids)
        return self._rows.prefetch(self._starts[series] + rows)

    def nbytes(self, ids) -> int:
        return 0 if self._rows is None else len(ids) * self._rows.index.row_nbytes


def _array(ids) -> np.ndarray:
    if isinstance(ids, range):
        return np.arange(ids.start, ids.stop, dtype=np.int64)
    return np.asarray(ids, np.int64)


def _array_parts(series: np.ndarray, rows: np.ndarray, length: int, rate: int) -> list:
    """The `plan.Windows` parts of windows of arrays held in memory, one per series."""
    if len(series) and series[0] == series[-1] and (series == series[0]).all():
        return [plan.Windows(int(series[0]), rows, None, length, rate)]
    return [plan.Windows(s, rows[slots], slots, length, rate)
            for s in np.unique(series).tolist() for slots in [np.flatnonzero(series == s)]]
