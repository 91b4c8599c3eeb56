"""Planning a batch's reads: which rows of which files go to which slots, and which bytes.

A batch of the rows layout is a list of parts, one per file it touches:

- `Run`: consecutive rows of one file into consecutive slots (an unshuffled
  epoch: one run per batch, two where a batch crosses a file boundary);
- `Gather`: scattered rows of one file, in the order of their slots;
- `Windows`: windows of rows of one file (`npy_timeseries_dataset`), each
  one stretch of the file, subsampled after the read.

The engine copies each part from the file's memory map or reads it with
`preadv`; the read-ahead turns parts into byte `extents`, sorted and merged
where the gap between them is small, so that the kernel reads each stretch of
the disk once, with many stretches in flight.
"""

from __future__ import annotations

import bisect
from typing import NamedTuple

import numpy as np

#: Rows closer than this many bytes are read ahead as one stretch: reading the
#: gap costs less than a request of its own (a shard's every k-th row).
MERGE_GAP_BYTES = 16 * 2**10
#: Scattered rows of a file of at most this many data bytes are read ahead as
#: the whole file: an epoch in a shuffled order needs all of it, and a whole
#: 20 MB file arrived 15x sooner than its rows asked for page by page.
SMALL_FILE_BYTES = 64 * 2**20


class Run(NamedTuple):
    """Rows `row` to `row + count - 1` of file `file`, into slots `slot` on."""

    file: int
    row: int
    count: int
    slot: int


class Gather(NamedTuple):
    """Rows `rows` (numbers within file `file`) into `slots` (`None`: slots
    `0 .. len(rows) - 1`, the whole batch)."""

    file: int
    rows: np.ndarray
    slots: np.ndarray | None


class Windows(NamedTuple):
    """Windows of `length` rows, `rate` rows apart, starting at rows `rows`
    (numbers within file `file`), into `slots` (`None`: slots `0 ..
    len(rows) - 1`). Window `k` spans rows `rows[k]` to `rows[k] + span - 1`."""

    file: int
    rows: np.ndarray
    slots: np.ndarray | None
    length: int
    rate: int

    @property
    def span(self) -> int:
        return (self.length - 1) * self.rate + 1


def plan_windows(starts: list[int], ids: np.ndarray, length: int, rate: int) -> list[Windows]:
    """The parts of a batch of windows whose first rows are `ids` (row
    numbers of the concatenated files, `int64`); no window crosses the end of
    its file (the caller made them so)."""
    if len(ids) == 0:
        return []
    f = bisect.bisect_right(starts, int(ids.min())) - 1
    if int(ids.max()) < starts[f + 1]:  # one file: the common case
        return [Windows(f, ids - starts[f] if starts[f] else ids, None, length, rate)]
    files = np.searchsorted(np.asarray(starts), ids, side="right") - 1
    return [Windows(f, ids[slots] - starts[f], slots, length, rate)
            for f in np.unique(files).tolist() for slots in [np.flatnonzero(files == f)]]


class Regions(NamedTuple):
    """A region of each of rows `rows` (numbers within file `file`), into
    `slots`: region `k` starts at `offsets[k]` (one index per axis of a row)
    and has `sizes` (`None`: the axis whole); see `regions`."""

    file: int
    rows: np.ndarray
    slots: np.ndarray
    offsets: np.ndarray
    sizes: tuple


def plan_regions(starts: list[int], ids, offsets: np.ndarray, sizes: tuple) -> list[Regions]:
    """The parts of a batch of cropped rows: those of `plan_rows`, each row
    with the offsets of its region."""
    parts = []
    for part in plan_rows(starts, ids):
        if isinstance(part, Run):
            rows = np.arange(part.row, part.row + part.count)
            slots = np.arange(part.slot, part.slot + part.count)
        else:
            rows = part.rows
            slots = np.arange(len(rows)) if part.slots is None else part.slots
        parts.append(Regions(part.file, rows, slots, offsets[slots], sizes))
    return parts


def plan_rows(starts: list[int], ids) -> list:
    """The parts of a batch of rows.

    Args:
        starts: the first row of each file, and the total, as a list (file `f`
            holds rows `starts[f]` to `starts[f + 1] - 1`).
        ids: the batch's rows: a `range` (consecutive rows) or an `int64` array.
    """
    if isinstance(ids, range):
        return _runs(starts, ids.start, len(ids), 0)
    n = len(ids)
    if n == 0:
        return []
    if len(starts) == 2 and n > 1 and ids[1] != ids[0] + 1:
        return [Gather(0, ids, None)]  # one file, a shuffled batch: nothing to look up
    low, high = int(ids.min()), int(ids.max())
    if high - low == n - 1 and (n == 1 or bool((ids[1:] - ids[:-1] == 1).all())):
        return _runs(starts, low, n, 0)
    f = bisect.bisect_right(starts, low) - 1
    if high < starts[f + 1]:  # one file: the common case of a shuffle
        return [Gather(f, ids - starts[f] if starts[f] else ids, None)]
    files = np.searchsorted(np.asarray(starts), ids, side="right") - 1
    parts = []
    for f in np.unique(files).tolist():
        slots = np.flatnonzero(files == f)
        parts.append(Gather(f, ids[slots] - starts[f], slots))
    return parts


def _runs(starts: list[int], first: int, count: int, slot: int) -> list[Run]:
    """Consecutive rows `first` on, split at file boundaries."""
    parts = []
    f = bisect.bisect_right(starts, first) - 1
    while count > 0:
        while first >= starts[f + 1]:  # files of no rows
            f += 1
        take = min(count, starts[f + 1] - first)
        parts.append(Run(f, first - starts[f], take, slot))
        first, count, slot = first + take, count - take, slot + take
    return parts


def adjacent_runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For scattered rows: `(order, starts, lengths)`: `rows[order]` sorted, cut
    into runs of adjacent rows (`starts` index into the sorted rows)."""
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    new = np.ones(len(ordered), bool)
    new[1:] = np.diff(ordered) != 1
    run_starts = np.flatnonzero(new)
    return order, run_starts, np.diff(np.append(run_starts, len(ordered)))


def row_extents(part, row_nbytes: int) -> tuple[np.ndarray, np.ndarray]:
    """`(offsets, lengths)` in bytes from a file's row 0, sorted and merged
    (gaps under `MERGE_GAP_BYTES`), of the rows of one part."""
    if isinstance(part, Run):
        return (np.array([part.row * row_nbytes], np.int64),
                np.array([part.count * row_nbytes], np.int64))
    rows = np.unique(part.rows)
    span = part.span if isinstance(part, Windows) else 1
    return merge_extents(rows * row_nbytes, np.full(len(rows), span * row_nbytes, np.int64))


def whole_if_small(offsets: np.ndarray, lengths: np.ndarray, file_nbytes: int,
                   most: int = SMALL_FILE_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """The extents, or the whole file's data (`most` bytes at most) in their
    place when they are scattered over it."""
    if len(offsets) > 1 and file_nbytes <= most:
        return np.zeros(1, np.int64), np.array([file_nbytes], np.int64)
    return offsets, lengths


def merge_extents(offsets: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted extents with gaps under `MERGE_GAP_BYTES` (or overlaps) merged
    into one."""
    if len(offsets) <= 1:
        return offsets, lengths
    ends = offsets + lengths
    new = np.ones(len(offsets), bool)
    new[1:] = offsets[1:] - np.maximum.accumulate(ends)[:-1] >= MERGE_GAP_BYTES
    first = np.flatnonzero(new)
    merged_ends = np.maximum.reduceat(ends, first)
    return offsets[first], merged_ends - offsets[first]
