"""Reading one batch into numpy: few system calls, one buffer, then padding.

Rows of a batch (layout "rows") are sorted by position and each run of
adjacent rows is read by a single `os.preadv` straight into the batch
buffer, scattering the rows to their places in batch order (so a sequential
batch is one system call), or copied from the file's memory map where that
map is kept (see `_RowMaps`). Per-sample files are read whole, each
with one `preadv` into its slot. Data that cannot go straight into its slot
(non-native byte order, Fortran order, a shape that is padded or truncated)
is read into a scratch array first and copied in with numpy's conversion.

Padding (see `Padding`) makes samples of different shapes stack: every
padded position holds `pad_value`, and data keep their dtype.
"""

from __future__ import annotations

import bisect
import math
import numbers
import os
import sys
import threading

import numpy as np

from keras_npy import _checks
from keras_npy.index import FileIndex, RowIndex

_IOV_MAX = 1024  # Linux's limit on buffers per preadv call
# Runs of adjacent rows at least this long are read with preadv; shorter ones
# are gathered from a memory map (a system call per row costs ~2 us in Python,
# a gathered row ~0.3 us).
_MIN_RUN_ROWS = 8
_UNMAP_AFTER_BYTES = 256 * 2**20
# A reader keeps the maps of files no larger than that, up to this many bytes of them.
_KEEP_MAPS_BYTES = 2**30
# Batch buffers from this size up are reused (see `_BatchBuffers`), up to
# this many and this many bytes per reader.
_REUSE_MIN_BYTES = 64 * 2**10
_REUSE_MAX_BUFFERS = 8
_REUSE_MAX_BYTES = 64 * 2**20
_ALIGN = 64


class Padding:
    """How samples of one input are brought to one shape per batch.

    Args:
        pad_to: `None` (samples must agree in shape), `"longest"` (every axis
            whose size varies between samples to the batch's largest), an int
            (the first axis to that length, padded or truncated), or a tuple
            of the whole sample shape with `None` for an axis left as it is.
        pad_to_multiple_of: with `"longest"`, round padded lengths up to a
            multiple of this. `None` for no rounding.
        padding: `"pre"` or `"post"`: pad before or after the data.
        truncating: `"pre"` or `"post"`: drop from the start or the end.
        pad_value: the value of padded positions.
    """

    def __init__(self, pad_to=None, pad_to_multiple_of=None, padding="post",
                 truncating="post", pad_value=0):
        check_padding(pad_to, pad_to_multiple_of, padding, truncating, pad_value)
        self.pad_to, self.pad_to_multiple_of = pad_to, pad_to_multiple_of
        self.padding, self.truncating, self.pad_value = padding, truncating, pad_value

    def axes(self, sample_shape: tuple[int | None, ...], name: str) -> list:
        """Per axis: `None` (kept), `"longest"`, or a fixed length."""
        ndim = len(sample_shape)
        if self.pad_to is None:
            return [None] * ndim
        if self.pad_to == "longest":  # axes of one size everywhere are not padded
            return ["longest" if size is None else None for size in sample_shape]
        if isinstance(self.pad_to, numbers.Integral):
            if ndim == 0:
                raise ValueError(f"`pad_to` is an int, so samples need a first axis to pad; "
                                 f"{name} has scalar samples. Received: pad_to={self.pad_to}")
            return [int(self.pad_to)] + [None] * (ndim - 1)
        if len(self.pad_to) != ndim:
            raise ValueError(f"`pad_to` must have one entry per axis of a sample of {name}, "
                             f"which has {ndim}. Received: pad_to={self.pad_to}")
        return list(self.pad_to)

    def target_shape(self, axes: list, shapes: np.ndarray) -> tuple[int, ...]:
        """The shape every sample of a batch is brought to."""
        target = []
        for axis, spec in enumerate(axes):
            if spec is None:
                target.append(int(shapes[0, axis]) if len(shapes) else 0)
            elif spec == "longest":
                longest = int(shapes[:, axis].max()) if len(shapes) else 0
                multiple = self.pad_to_multiple_of or 1
                target.append(-(-longest // multiple) * multiple)
            else:
                target.append(spec)
        return tuple(target)

    def placement(self, shape: tuple[int, ...], target: tuple[int, ...]):
        """`(source slices, destination slices)` that put a sample of `shape`
        into a slot of `target`, truncating and padding as asked."""
        source, destination = [], []
        for length, size in zip(shape, target):
            if length >= size:
                start = length - size if self.truncating == "pre" else 0
                source.append(slice(start, start + size))
                destination.append(slice(0, size))
            else:
                start = size - length if self.padding == "pre" else 0
                source.append(slice(0, length))
                destination.append(slice(start, start + length))
        return tuple(source), tuple(destination)


def check_padding(pad_to, pad_to_multiple_of, padding, truncating, pad_value) -> None:
    """Checks the padding arguments (shared by both front ends)."""
    fixed = isinstance(pad_to, numbers.Integral) and not isinstance(pad_to, bool) and pad_to >= 0
    shape = isinstance(pad_to, tuple) and all(
        d is None or (isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 0)
        for d in pad_to)
    if not (pad_to is None or pad_to == "longest" or fixed or shape):
        raise ValueError('`pad_to` must be None, "longest", a non-negative int, or a tuple of '
                         f"non-negative ints and None. Received: pad_to={pad_to!r}")
    if pad_to_multiple_of is not None and (
            isinstance(pad_to_multiple_of, bool)
            or not isinstance(pad_to_multiple_of, numbers.Integral) or pad_to_multiple_of < 1):
        raise ValueError("`pad_to_multiple_of` must be None or a positive integer. "
                         f"Received: pad_to_multiple_of={pad_to_multiple_of!r}")
    if pad_to_multiple_of is not None and pad_to != "longest":
        raise ValueError('`pad_to_multiple_of` rounds up lengths padded with pad_to="longest"; '
                         f"pass both. Received: pad_to={pad_to!r}")
    _checks.check_padding_side("padding", padding)
    _checks.check_padding_side("truncating", truncating)
    if isinstance(pad_value, bool) or not isinstance(pad_value, numbers.Number):
        raise TypeError(f"`pad_value` must be a number. Received: pad_value={pad_value!r}")


class BatchReader:
    """Reads batches of one index (an input of `x`, or targets in files).

    Args:
        index: a `FileIndex` or `RowIndex`.
        padding: a `Padding`.
        dtype: the dtype of the batches; `None` for the stored dtype, in
            native byte order.
        name: the input's name, for error messages.

    Raises:
        ValueError: `dtype` cannot hold `pad_value`, or samples differ in
            shape on an axis that `pad_to` leaves as it is.
    """

    def __init__(self, index: FileIndex | RowIndex, padding: Padding, dtype=None,
                 name: str = "x"):
        self.index, self.padding, self.name = index, padding, name
        self.stored = index.dtype
        self.native = index.dtype.newbyteorder("=")
        self.dtype = np.dtype(dtype) if dtype is not None else self.native
        self.axes = padding.axes(index.sample_shape, name)
        self._check_kept_axes()
        self.pad_value = _check_pad_value(padding.pad_value, self.native)
        if isinstance(index, RowIndex):
            # A few files: their paths and row starts as Python objects, once.
            self._row_paths, self._row_starts = list(index.paths), index.row_starts.tolist()
            self._row_offsets = index.data_offsets.tolist()
            # Where each file's data end: a map is read only while its file is that long.
            self._row_ends = (index.data_offsets + index.num_rows * index.row_nbytes).tolist()
            self._row_fortran = index.fortran_order.tolist()
            self._row_target = padding.target_shape(
                self.axes, np.array([index.row_shape], np.int64).reshape(1, -1))
            #: Rows are read as stored, with nothing to convert or pad: `read_run` applies.
            self.plain_rows = (self.stored == self.native == self.dtype
                               and tuple(self._row_target) == index.row_shape)
        else:
            self.plain_rows = False
        self._fds = _FileDescriptors()
        self._maps = _RowMaps()
        self._buffers = _BatchBuffers()

    def element_shape(self) -> tuple[int | None, ...]:
        """The shape of one sample of a batch, `None` where batches vary."""
        return tuple(known if spec is None or spec == "longest" else spec
                     for spec, known in zip(self.axes, self.index.sample_shape))

    def read(self, ids: np.ndarray, consecutive: bool = False,
             view: bool = False) -> np.ndarray:
        """The samples `ids`, stacked in that order: shape `(len(ids), ...)`.

        `consecutive` says that the caller knows `ids` to be `a, a + 1, ...`.
        With `view`, consecutive rows that need no conversion come back as a
        read-only view of the file's memory map, copied by no one but the
        caller (a tensor made from it copies it or keeps it alive)."""
        ids = np.asarray(ids, np.int64)
        if view and isinstance(self.index, RowIndex):
            rows = self._view_rows(ids, consecutive)
            if rows is not None:
                return rows
        if isinstance(self.index, RowIndex):  # one shape for every row
            target = self._row_target
            out = self._allocate(len(ids), target, target != self.index.row_shape)
            self._read_rows(ids, out, target, consecutive)
        else:
            shapes = self.index.sample_shapes(ids)
            target = self.padding.target_shape(self.axes, shapes)
            fill = len(ids) > 0 and bool((shapes != np.array(target, np.int64)).any())
            out = self._allocate(len(ids), target, fill)
            self._read_files(ids, shapes, out, target)
        return out if self.dtype == self.native else out.astype(self.dtype)

    def _allocate(self, n: int, target: tuple[int, ...], fill: bool) -> np.ndarray:
        out = self._buffers.empty((n, *target), self.native)
        if fill:
            out.fill(self.pad_value)
        return out

    def _check_kept_axes(self) -> None:
        for axis, (spec, size) in enumerate(zip(self.axes, self.index.sample_shape)):
            if spec is None and size is None:
                shapes = self.index.shapes[:, axis]
                a, b = int(np.argmin(shapes)), int(np.argmax(shapes))
                paths = self.index.paths
                raise ValueError(
                    f"Samples of {self.name} differ in shape on axis {axis}: "
                    f"{paths[a]} has shape {tuple(self.index.shapes[a].tolist())}, {paths[b]} "
                    f"has shape {tuple(self.index.shapes[b].tolist())}. Pass `pad_to` to pad "
                    "them to one shape per batch: pad_to=\"longest\", an int, or a tuple. "
                    f"Received: pad_to={self.padding.pad_to!r}")

    def _read_files(self, ids, shapes, out, target) -> None:
        index = self.index
        direct = self.stored == self.native
        # Python lists, not numpy scalars, in the per-file loop: it is most of the cost.
        paths, offsets = index.paths.select(ids), index.data_offsets[ids].tolist()
        fortran, shapes = index.fortran_order[ids].tolist(), list(map(tuple, shapes.tolist()))
        target = tuple(target)
        pre = self.padding.padding == "pre"
        for k, (path, offset, shape) in enumerate(zip(paths, offsets, shapes)):
            if direct and not fortran[k] and shape[1:] == target[1:] and (
                    shape[:1] <= target[:1]):
                # Padded (if at all) on the first axis only: the sample's place in the slot
                # is contiguous, so it is read straight there.
                if not shape:  # a 0-d sample: its slot, as a writable 1-element view
                    slot = out[k:k + 1]
                else:
                    slot = out[k][target[0] - shape[0]:] if pre else out[k][:shape[0]]
                _pread_into(path, None, [slot], offset)  # a C-contiguous view is a buffer
                continue
            scratch = np.empty(shape, self.stored, order="F" if fortran[k] else "C")
            _pread_into(path, None, [_bytes_of(scratch.reshape(-1, order="A"))], offset)
            source, destination = self.padding.placement(shape, target)
            out[k][destination] = scratch[source]

    def _read_rows(self, ids, out, target, consecutive: bool) -> None:
        index = self.index
        direct = self.stored == self.native and tuple(target) == index.row_shape
        into = out if direct else np.empty((len(ids), *index.row_shape), self.stored)
        if len(ids) and not (self._read_sequential(ids, into, consecutive)
                             or self._gather_in_batch_order(ids, into)):
            self._read_runs_and_gather(ids, into)
        if not direct:
            source, destination = self.padding.placement(index.row_shape, target)
            out[(slice(None), *destination)] = into[(slice(None), *source)]

    def _read_sequential(self, ids: np.ndarray, into: np.ndarray, consecutive: bool) -> bool:
        """A batch of consecutive rows of one C-order file (an unshuffled
        epoch) is one preadv into the batch; returns whether it was one."""
        found = self._one_run(ids, consecutive)
        if found is None:
            return False
        self._fill_rows(*found, into)
        return True

    def _view_rows(self, ids: np.ndarray, consecutive: bool) -> np.ndarray | None:
        """A view of consecutive rows of one C-order file in native byte order
        and the output dtype, unpadded; `None` when that is not what is asked."""
        if not self.plain_rows:
            return None
        found = self._one_run(ids, consecutive)
        return None if found is None else self._mapped_rows(*found, len(ids))

    def _mapped_rows(self, f: int, row: int, count: int) -> np.ndarray:
        """Rows `row` to `row + count - 1` of file `f`, as a view of its map."""
        return self._map(f, count * self.index.row_nbytes)[row:row + count]

    def read_run(self, first: int, count: int, view: bool = False) -> np.ndarray | None:
        """Rows `first` to `first + count - 1`, in one copy from the file's
        kept map or one preadv (with `view`, a read-only view of the file's
        map), when they lie in one C-order file and `plain_rows`; `None`
        otherwise (use `read`).

        The same read as `read(ids, consecutive=True, view=view)` takes for
        such a batch, without its checks: an unshuffled epoch of one big array
        spends most of its Python here."""
        run = self._maps.run
        if (view or run is None or run[0] != _forks or not run[1] <= first
                or first + count > run[2] or count < _MIN_RUN_ROWS):
            # Not rows of the file read last (the next batch of an unshuffled
            # epoch is): find the file.
            found = self._locate_run(first, count)
            if found is None:
                return None
            if view:
                return self._mapped_rows(*found, count)
            run = self._run_of(found[0])
        out = self._buffers.empty((count, *self.index.row_shape), self.native)
        self._read_in_run(run, first, out)
        return out

    def _fill_rows(self, f: int, row: int, into: np.ndarray) -> None:
        """Fills the C-contiguous `into` with the rows of file `f` from `row` on."""
        self._read_in_run(self._run_of(f), self._row_starts[f] + row, into)

    def _run_of(self, f: int) -> tuple:
        """How the rows of file `f` are read: `(forks, first row, end row,
        kept map or None, fd, end byte, offset of row 0, f)`. They are copied
        from the file's map when it is kept (see `_RowMaps`), else read by
        preadv."""
        fd = self._fds.get(self._row_paths[f])
        mapped = self._maps.kept_here(f)  # checked against the file's size where it is read
        if mapped is None and _size(fd) >= self._row_ends[f]:
            mapped = self._maps.kept(self.index, f)  # made only of a file as long as it was
        start = self._row_starts[f]
        return (_forks, start, self._row_starts[f + 1], mapped, fd, self._row_ends[f],
                self._row_offsets[f] - start * self.index.row_nbytes, f)

    def _read_in_run(self, run: tuple, first: int, into: np.ndarray) -> None:
        """Fills `into` with rows `first` on, of the file of `run` (see
        `_run_of`): one copy from its kept map or one preadv. `read_run` looks
        at the run read last first."""
        mapped, fd = run[3], run[4]
        if mapped is None:
            try:
                if os.preadv(fd, [into], run[6] + first * self.index.row_nbytes) == into.nbytes:
                    self._maps.run = run
                    return
            except OSError:
                pass
        elif _size(fd) >= run[5]:  # a map is read only while its file is as long as it was
            into[...] = mapped[first - run[1]:first - run[1] + len(into)]
            self._maps.run = run
            return
        self._pread_rows(run[7], first - run[1], into)  # what to retry, or which error to give

    def _map(self, f: int, nbytes: int) -> np.ndarray:
        """The memory map of file `f`, from which `nbytes` are about to be
        read, once the file is seen to be as long as when it was indexed."""
        path = self._row_paths[f]
        size = _size(self._fds.get(path))
        if size < self._row_ends[f]:
            raise ValueError(f"{path}: expected a file of {self._row_ends[f]} bytes, found "
                             f"{size}; the file changed after the dataset was built.")
        return self._maps.get(self.index, f, nbytes)

    def _pread_rows(self, f: int, row: int, into: np.ndarray) -> None:
        """Fills `into` with the rows of file `f` from `row` on, in one preadv."""
        path = self._row_paths[f]
        _pread_into(path, self._fds.get(path), [into],
                    self._row_offsets[f] + row * self.index.row_nbytes)

    def _locate_run(self, first: int, count: int) -> tuple[int, int] | None:
        """`(file, first row in it)` when rows `first` to `first + count - 1`
        are at least `_MIN_RUN_ROWS` rows of one C-order file, else `None`."""
        starts = self._row_starts
        f = bisect.bisect_right(starts, first) - 1
        if count < _MIN_RUN_ROWS or first + count > starts[f + 1] or self._row_fortran[f]:
            return None
        return f, first - starts[f]

    def _one_run(self, ids: np.ndarray, consecutive: bool) -> tuple[int, int] | None:
        """`(file, first row in it)` when `ids` are at least `_MIN_RUN_ROWS`
        consecutive rows of one C-order file, else `None`."""
        n = len(ids)
        if n < _MIN_RUN_ROWS:
            return None
        first, last = int(ids[0]), int(ids[-1])
        # n strictly increasing ids spanning n - 1 are consecutive.
        if last - first != n - 1 or not (consecutive or (ids[1:] > ids[:-1]).all()):
            return None
        return self._locate_run(first, n)

    def _gather_in_batch_order(self, ids: np.ndarray, into: np.ndarray) -> bool:
        """A shuffled batch from one file (few adjacent rows to coalesce) is
        one `np.take` from the file's memory map, straight into the batch;
        returns whether it was."""
        starts, index = self._row_starts, self.index
        if len(ids) < _MIN_RUN_ROWS:
            return False
        if len(starts) == 2 and self._maps.kept(index, 0) is not None:
            f = 0  # every id is in the one file, and copying a run from a kept map costs
            # no more than a preadv of it: no bounds, no density to look at
        else:
            low, high = int(ids.min()), int(ids.max())
            f = bisect.bisect_right(starts, low) - 1
            if high >= starts[f + 1]:
                return False
            if high - low + 1 < 4 * len(ids) and not self._row_fortran[f]:
                return False  # dense enough that runs may be worth a preadv each
        mapped = self._map(f, len(ids) * index.row_nbytes)
        # The ids are in the file (checked above): mode="clip" spares the copy
        # through a temporary buffer that the default mode makes with `out`.
        np.take(mapped, ids - starts[f] if f else ids, axis=0, out=into, mode="clip")
        return True

    def _read_runs_and_gather(self, ids: np.ndarray, into: np.ndarray) -> None:
        """The general case: rows sorted by position, long runs of adjacent
        rows read by preadv, the rest gathered from memory maps."""
        index = self.index
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        file_ids, offsets = index.locate(sorted_ids)
        starts, lengths = _runs(sorted_ids, file_ids)
        long = (lengths >= _MIN_RUN_ROWS) & ~index.fortran_order[file_ids[starts]]
        for a, n in zip(starts[long].tolist(), lengths[long].tolist()):
            self._read_run(int(file_ids[a]), int(offsets[a]), into, order[a:a + n])
        if not long.all():
            scattered = np.flatnonzero(np.repeat(~long, lengths))
            self._gather(scattered, sorted_ids, file_ids, order, into)

    def _read_run(self, f: int, offset: int, into: np.ndarray, slots: np.ndarray) -> None:
        """One preadv per run of adjacent rows, scattering them into `slots`."""
        path = self._row_paths[f]
        fd = self._fds.get(path)
        buffers = _slot_buffers(into, slots)
        for start in range(0, len(buffers), _IOV_MAX):
            chunk = buffers[start:start + _IOV_MAX]
            _pread_into(path, fd, chunk, offset)
            offset += sum(b.nbytes for b in chunk)

    def _gather(self, positions, sorted_ids, file_ids, order, into) -> None:
        """Scattered rows, and rows of Fortran-order files (which are strided),
        are copied from a memory map of their file by numpy, in C: one system
        call per row would cost more than the copy."""
        index = self.index
        for f in np.unique(file_ids[positions]).tolist():
            mine = positions[file_ids[positions] == f]
            rows = sorted_ids[mine] - index.row_starts[f]
            mapped = self._map(f, len(rows) * index.row_nbytes)
            into[order[mine]] = mapped[rows]


class _BatchBuffers:
    """Batch arrays handed out again once nothing holds them.

    A new batch-sized array is new pages from the kernel whenever the C
    allocator has given freed memory back to the system, as it did with
    TensorFlow loaded (measured: 64 page faults per new 256 KiB batch, none
    without TensorFlow; ~3 us a fault here, slower than reading the data;
    shuffled rows ran 3.7x slower). A buffer is reused only when reference
    counts say that no batch, view, memoryview or tensor made from it is
    alive (numpy views, buffer exports, `tf.convert_to_tensor` and
    `torch.from_numpy` all hold a reference to the array whose memory they
    use, and numpy views of views refer to the buffer itself).

    The last batch array made on a buffer is handed out again, the same
    object, when it is still what was asked for (shape, dtype, writable,
    C order: a caller may have changed those in place): a new array over the
    same memory cost 2.4-3.8 us more per 256 KiB batch here, a tenth of a
    sequential batch. The entry handed out last is looked at first, before
    any size is computed: it is the one that a loop which drops each batch
    asks for again. Per process: a pickled copy starts empty.
    """

    def __init__(self):
        # Entries `[buffer, batch]`: the owner of the memory, and the last
        # batch array made on its 64-byte-aligned part (TensorFlow and JAX
        # take aligned arrays as they are, without copying them).
        self._entries, self._lock = [], threading.Lock()
        self._last: list | None = None  # the entry handed out last

    def __reduce__(self):
        return (_BatchBuffers, ())

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialized C-order array, like `np.empty(shape, dtype)`."""
        with self._lock:
            # The common case first: the last batch asked for again, dropped by now.
            last = self._last
            if last is not None and last[1].shape == shape and _holders(last) == _UNHELD:
                batch = last[1]
                if batch.dtype == dtype and _intact(batch):
                    return batch
        nbytes = math.prod(shape) * dtype.itemsize
        if not _REUSE_MIN_BYTES <= nbytes <= _REUSE_MAX_BYTES // 2:
            return np.empty(shape, dtype)
        with self._lock:
            for entry in self._entries:
                if entry[1].nbytes == nbytes and _holders(entry) == _UNHELD:
                    batch = entry[1]
                    self._last = entry
                    if batch.shape == shape and batch.dtype == dtype and _intact(batch):
                        return batch
                    entry[1] = _batch_on(entry[0], shape, dtype)
                    return entry[1]
            entry = self._last = _new_entry(shape, dtype)
            self._entries.append(entry)
            while (len(self._entries) > _REUSE_MAX_BUFFERS
                   or sum(e[0].nbytes for e in self._entries) > _REUSE_MAX_BYTES):
                del self._entries[0]  # forgotten, not freed, while in use
            return entry[1]


def _new_entry(shape: tuple[int, ...], dtype: np.dtype) -> list:
    buffer = np.empty(math.prod(shape) * dtype.itemsize + _ALIGN, np.uint8)
    return [buffer, _batch_on(buffer, shape, dtype)]


def _batch_on(buffer: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The batch array over the 64-byte-aligned part of `buffer`."""
    return np.ndarray(shape, dtype, buffer, -buffer.ctypes.data % _ALIGN)


def _holders(entry: list) -> tuple[int, int]:
    """The reference counts of an entry's buffer and batch array."""
    return sys.getrefcount(entry[0]), sys.getrefcount(entry[1])


def _intact(batch: np.ndarray) -> bool:
    flags = batch.flags
    return flags.writeable and flags.c_contiguous


#: What `_holders` counts for an entry that nothing else holds (measured, not
#: assumed: how a call counts its references differs between Pythons).
_UNHELD = _holders(_new_entry((1,), np.dtype("uint8")))


#: How many forks this process is from the one that imported keras_npy:
#: open files and maps are per process, and comparing this number costs less
#: than a getpid() system call on every batch.
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_count_fork)


class _RowMaps:
    """Read-only memory maps of rows files, per process (made again after a
    fork, never pickled). Mapped pages are page cache, not anonymous memory
    (the kernel reclaims them as it does the rest of the page cache), but
    they count in this process' resident set (RssFile) while mapped, so:

    - A file of at most `_UNMAP_AFTER_BYTES` keeps its map, up to
      `_KEEP_MAPS_BYTES` of such files (those mapped first): it can never
      hold more than the file, and a new map faults every page in again (a
      pass over a 256 MiB file through a new map took 130 instead of 94 ms
      here). Sequential batches copy from these maps only, so an unshuffled
      epoch maps at most `_KEEP_MAPS_BYTES`.
    - The maps of other files are all dropped once `_UNMAP_AFTER_BYTES` have
      been gathered from them in all, and made anew when next used. That
      does not bound what a shuffle maps: a page fault maps the 64 KiB
      around a row, so gathering 256 MiB of random 1 KiB rows can map all of
      several GiB of files (measured: 5 GiB as twenty 256 MiB files, peak
      RssFile +3.6 GiB; RssAnon +0). Counting those 64 KiB instead would make
      every gathered row a page fault again.

    Every read from a map checks first that its file is still as long as it
    was (see `_size`)."""

    def __init__(self):
        self._forks, self._maps, self._lock = _forks, {}, threading.Lock()
        self._kept: dict[int, np.ndarray] = {}  # the maps of the smaller files
        self._kept_bytes = 0
        self._gathered = 0  # from the maps that are not kept, since they were made
        #: How `BatchReader` read rows last (see `BatchReader._run_of`).
        self.run = None

    def __reduce__(self):
        return (_RowMaps, ())

    def kept_here(self, f: int) -> np.ndarray | None:
        """File `f`'s kept map if this process made it: the common case, with
        no lock (kept maps are never replaced)."""
        return self._kept.get(f) if self._forks == _forks else None

    def get(self, index: RowIndex, f: int, nbytes: int) -> np.ndarray:
        """The map of file `f`, from which `nbytes` are about to be gathered."""
        mapped = self.kept_here(f)
        if mapped is not None:
            return mapped
        with self._lock:
            if self._forks != _forks:  # a forked worker: the parent's are not ours
                self._forks, self._maps, self._kept = _forks, {}, {}
                self._kept_bytes = self._gathered = 0
            if f in self._kept:
                return self._kept[f]
            if self._may_keep(index, f):
                mapped = self._maps[f] = self._kept[f] = self._map(index, f)
                self._kept_bytes += _file_bytes(index, f)
                return mapped
            self._gathered += nbytes
            if self._gathered > _UNMAP_AFTER_BYTES:
                self._maps = dict(self._kept)
                self._gathered = nbytes
            mapped = self._maps.get(f)
            if mapped is None:
                mapped = self._maps[f] = self._map(index, f)
            return mapped

    def _may_keep(self, index: RowIndex, f: int) -> bool:
        """Whether file `f`'s map would be kept: the file is no larger than
        `_UNMAP_AFTER_BYTES`, and the maps kept so far leave room for it
        within `_KEEP_MAPS_BYTES` (the files mapped first keep theirs)."""
        size = _file_bytes(index, f)
        return size <= _UNMAP_AFTER_BYTES and self._kept_bytes + size <= _KEEP_MAPS_BYTES

    def kept(self, index: RowIndex, f: int) -> np.ndarray | None:
        """The map of file `f` if it is one that is kept (made now if need
        be), else `None`. Copying rows from a kept map costs less than a
        preadv of them once its pages are mapped (a pass over a 256 MiB file
        in batches of 256 rows: 22 ms instead of 28; the first pass through a
        new map, 37 ms); a map made anew every `_UNMAP_AFTER_BYTES` would
        always be new."""
        mapped = self.kept_here(f)
        if mapped is not None:
            return mapped
        if not self._may_keep(index, f):
            return None
        return self.get(index, f, 0)

    @staticmethod
    def _map(index: RowIndex, f: int) -> np.ndarray:
        path = index.paths[f]
        shape = (int(index.num_rows[f]), *index.row_shape)
        try:
            mapped = np.memmap(path, index.dtype, "r", int(index.data_offsets[f]), shape,
                               order="F" if index.fortran_order[f] else "C")
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot map the file: {e}.") from e
        return mapped.view(np.ndarray)  # indexing a plain array skips memmap's Python code


def _file_bytes(index: RowIndex, f: int) -> int:
    """The data bytes of file `f` (`index.num_rows` makes an array each time)."""
    return int(index.row_starts[f + 1] - index.row_starts[f]) * index.row_nbytes


def _size(fd: int) -> int:
    """The size of an open file now: a memory map is read only while its file
    is as long as when it was indexed, for reading a map past the end of its
    file kills the process (SIGBUS), where a preadv finds fewer bytes and
    says which file changed."""
    try:
        return os.lseek(fd, 0, os.SEEK_END)  # a quarter of what fstat costs; every
    except OSError:  # read of the file is a preadv, which ignores the position
        return -1


def _check_pad_value(pad_value, native: np.dtype):
    """The pad value as the data's dtype; it must be exactly representable."""
    try:
        converted = np.array(pad_value).astype(native)
    except OverflowError:
        converted = None
    is_nan = isinstance(pad_value, float) and np.isnan(pad_value)
    if converted is None or (converted != pad_value and not is_nan):
        raise ValueError(f"`pad_value` must be representable in the data's dtype {native}. "
                         f"Received: pad_value={pad_value!r}")
    return converted


def _bytes_of(array: np.ndarray) -> memoryview:
    return memoryview(array).cast("B")


def _runs(sorted_ids: np.ndarray, file_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of the runs of consecutive ids within one file."""
    new = np.ones(len(sorted_ids), bool)
    new[1:] = (np.diff(sorted_ids) != 1) | (np.diff(file_ids) != 0)
    starts = np.flatnonzero(new)
    return starts, np.diff(np.append(starts, len(sorted_ids)))


def _slot_buffers(into: np.ndarray, slots: np.ndarray) -> list[memoryview]:
    """Writable buffers for batch slots, merging slots that are adjacent."""
    breaks = np.flatnonzero(np.diff(slots) != 1) + 1
    return [_bytes_of(into[group[0]:group[-1] + 1]) for group in np.split(slots, breaks)
            if len(group)]


def _pread_into(path: str, fd: int | None, buffers: list, offset: int) -> None:
    """Fills `buffers` (memoryviews or C-contiguous arrays) from `offset` of the file,
    or says which file changed."""
    expected = buffers[0].nbytes if len(buffers) == 1 else sum(b.nbytes for b in buffers)
    if expected == 0:
        return
    own = fd is None
    try:
        fd = os.open(path, os.O_RDONLY) if own else fd
        try:
            found = os.preadv(fd, buffers, offset)
            while found < expected:  # a short read is legal; retry from where it stopped
                more = _pread_rest(fd, buffers, offset, found)
                if more == 0:
                    break
                found += more
        finally:
            if own:
                os.close(fd)
    except OSError as e:
        raise ValueError(f"{path}: cannot read the file: {e.strerror}.") from e
    if found != expected:
        raise ValueError(f"{path}: expected {expected} bytes at offset {offset}, found "
                         f"{found}; the file changed after the dataset was built.")


def _pread_rest(fd: int, buffers: list, offset: int, done: int) -> int:
    rest, skip = [], done
    for b in buffers:
        if skip >= b.nbytes:
            skip -= b.nbytes
            continue
        rest.append(_bytes_of(b)[skip:])  # bytes, whatever the buffer's item type
        skip = 0
    return os.preadv(fd, rest, offset + done)


class _FileDescriptors:
    """Open files of the rows layout, per process (reopened after a fork)."""

    def __init__(self):
        self._forks, self._fds, self._lock = _forks, {}, threading.Lock()

    def __reduce__(self):
        return (_FileDescriptors, ())  # a copy in another process opens its own

    def get(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is not None and self._forks == _forks:
            return fd  # the common case needs no lock: entries are never replaced
        with self._lock:
            if self._forks != _forks:  # a forked worker: the parent's are not ours
                self._forks, self._fds = _forks, {}
            fd = self._fds.get(path)
            if fd is None:
                try:
                    fd = self._fds[path] = os.open(path, os.O_RDONLY)
                except OSError as e:
                    raise ValueError(f"{path}: cannot open the file: {e.strerror}.") from e
            return fd

    def __del__(self):
        if self._forks == _forks:
            for fd in self._fds.values():
                os.close(fd)
