"""`BatchReader`: the samples of a batch in, one array out.

For the rows layout, a batch is planned (`plan`) into parts, one per file;
each part is copied from the file's guarded memory map (`handles`, `guard`),
or read with `preadv` where maps are not guarded. A map whose read faulted
(the file was cut short meanwhile) is dropped, and the part is read again
from the file opened anew, whose check names a file that is now too short.
Per-sample files are read whole, each with one `preadv` of its header, its
data and one byte more, which checks its size and header against the index.

`prefetch(ids)` asks the kernel to read a batch's bytes into the page cache
in the background (`local.advise`), unless a probe finds them there already:
the read-ahead (`prefetch.ReadAhead`) calls it for the batches that come
next, and `read(ids, advise=True)` for a batch that nothing read ahead, so
that the reads of one batch are in flight together.

Data that cannot go straight into its slot (non-native byte order, Fortran
order, padding on other axes than the first) is read into a scratch array
first and copied in with numpy's conversion; padding is filled with
`pad_value` (see `padding`).
"""

from __future__ import annotations

import math
import os
import weakref

import numpy as np

from keras_npy import npz
from keras_npy.index import FileIndex, RaggedIndex, RowIndex
from keras_npy.read import copies, guard, local, plan, regions, remote
from keras_npy.read.buffers import POOL
from keras_npy.read.handles import TABLE, FileFacts, MapFailed
from keras_npy.read.padding import Padding, check_pad_value

#: Times a part is read again after its map faulted, before giving up.
_ATTEMPTS = 3
#: Stretches of bytes probed one by one before a batch is read ahead (the
#: blocks of a window of the block shuffle); more are probed by a sample.
_PROBES, _SAMPLE = 64, 8
#: Reads between checks that the SIGBUS handler is still ours.
_GUARD_CHECK_EVERY = 256
_PAGE = 4096
#: Per-sample files held open at once while their regions are read.
_OPEN_AT_ONCE = 64


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
                 name: str = "x", pad_argument: str = "pad_to",
                 crop: regions.Crop | None = None):
        self.index, self.padding, self.name = index, padding, name
        self._pad_argument = pad_argument
        if isinstance(index, RaggedIndex) and crop is not None:
            raise ValueError(f"`crop_to` reads regions of per-sample files and rows files; the "
                             f"variable-length samples of a pack ({index.paths[0]}) are read "
                             "whole: pad or truncate them with `pad_to` instead. "
                             f"Received: crop_to={crop.crop_to!r}")
        #: The values files of a pack's variable-length samples, or `None`.
        self._ragged = RaggedFiles(index) if isinstance(index, RaggedIndex) else None
        self.stored = index.dtype
        self.native = index.dtype.newbyteorder("=")
        self.dtype = np.dtype(dtype) if dtype is not None else self.native
        self.axes = padding.axes(index.sample_shape, name)
        self._crop = crop
        self._crop_sizes = None if crop is None else crop.sizes(index.sample_ndim, name)
        self._check_kept_axes()
        self._crop_shape = None if crop is None else self._check_crop()
        self.pad_value = check_pad_value(padding.pad_value, self.native)
        #: `remote.RemoteRows` or `remote.RemoteFiles` for URLs; `None` for local files.
        self._remote = remote.reader_of(index)
        if self._remote is not None and crop is not None:
            raise ValueError(f"{index.paths[0]}: `crop_to` is not supported for data read "
                             f"from URLs. Received: crop_to={crop.crop_to!r}")
        self._rows = None
        if isinstance(index, RowIndex):  # over URLs, the same questions by ranged requests
            self._rows = self._remote if self._remote is not None else RowFiles(index)
        if self._rows is not None:
            self._row_target = padding.target_shape(
                self.axes, np.array([index.row_shape], np.int64).reshape(1, -1))
            self._direct = self.stored == self.native and self._row_target == index.row_shape
            #: Rows go out as stored: the next batch of an unshuffled epoch may be
            #: copied straight from the map the last one came from.
            self._plain = self._direct and self.dtype == self.native

    def limit_read_ahead(self, nbytes: int) -> None:
        """Reads ahead no whole file larger than `nbytes` (a share of the
        read-ahead's budget)."""
        for files in (self._rows, self._ragged):
            if files is not None:
                files.whole_file_bytes = min(plan.SMALL_FILE_BYTES, nbytes)

    def reseed(self, seed: int) -> None:
        """Takes another seed (a restored state's), for random crops."""
        if self._crop is not None:
            self._crop = regions.Crop(self._crop.crop_to, self._crop.position, seed)

    @property
    def reads_files(self) -> bool:
        """Whether samples are per-sample files (read whole, one after another)."""
        return isinstance(self.index, FileIndex)

    def element_shape(self) -> tuple[int | None, ...]:
        """The shape of one sample of a batch, `None` where batches vary."""
        if self._crop_shape is not None:
            return self._crop_shape
        return tuple(known if spec is None or spec == "longest" else spec
                     for spec, known in zip(self.axes, self.index.sample_shape))

    def read(self, ids, advise: bool = False, epoch: int = 0) -> np.ndarray:
        """The samples `ids` (an `int64` array, or a `range` of consecutive
        samples), stacked in that order: shape `(len(ids), ...)`. With
        `advise`, the batch's reads are started together first when its bytes
        are not in the page cache (a batch that nothing read ahead). `epoch`
        places random crops."""
        if self._crop is not None:
            out = self._read_crops(_ids_array(ids), advise, epoch)
        elif self._rows is not None:
            if self._plain and type(ids) is range:
                out = self._rows.read_range(ids, self.native)
                if out is not None:
                    return out
            out = self._read_rows(ids, advise)
        elif self._ragged is not None:
            out = self._read_ragged(_ids_array(ids), advise)
        else:
            out = self._read_files(np.asarray(ids, np.int64), advise)
        return out if self.dtype == self.native else out.astype(self.dtype)

    def prefetch(self, ids, epoch: int = 0) -> int:
        """Starts reading the bytes of samples `ids` (of `epoch`, for random
        crops) into the page cache in the background, unless probes find them
        there; returns the pages asked for (0 when cached, or where the
        system takes no such hint)."""
        if not local.can_advise() or len(ids) == 0 or self._remote is not None:
            return 0
        if self._crop is not None:
            return self._prefetch_crops(_ids_array(ids), epoch)
        if self._rows is not None:
            return self._rows.prefetch(plan.plan_rows(self._rows.starts, ids))
        if self._ragged is not None:
            return self._ragged.prefetch(_ids_array(ids))
        return _prefetch_files(self.index, np.asarray(ids, np.int64))

    def nbytes(self, ids) -> int:
        """The data bytes of samples `ids`, as stored (of their regions, cropped)."""
        if self._crop_shape is not None:
            return len(ids) * int(np.prod(self._crop_shape)) * self.stored.itemsize
        if self._rows is not None:
            return len(ids) * self.index.row_nbytes
        shapes = self.index.shapes[np.asarray(ids, np.int64)]
        return int(np.prod(shapes, axis=1).sum()) * self.stored.itemsize

    def _allocate(self, n: int, target: tuple[int, ...], fill: bool) -> np.ndarray:
        out = POOL.empty((n, *target), self.native)
        if fill:
            out.fill(self.pad_value)
        return out

    def _check_kept_axes(self) -> None:
        for axis, (spec, size) in enumerate(zip(self.axes, self.index.sample_shape)):
            if self._crop_sizes is not None and self._crop_sizes[axis] is not None:
                continue  # cut to one size
            if spec is None and size is None:
                shapes = self.index.shapes[:, axis]
                a, b = int(np.argmin(shapes)), int(np.argmax(shapes))
                where = _sample_place(self.index)
                found = (f"Samples of {self.name} differ in shape on axis {axis}: "
                         f"{where(a)} has shape {tuple(self.index.shapes[a].tolist())}, "
                         f"{where(b)} has shape {tuple(self.index.shapes[b].tolist())}.")
                if self._pad_argument == "pad_targets":  # targets keep their own shape
                    raise ValueError(f"{found} Targets keep their own shape unless "
                                     "`pad_targets=True` pads them as x is padded (`pad_to`, "
                                     "`padding`, `truncating`, `pad_value`). "
                                     "Received: pad_targets=False")
                if self._crop is not None:
                    raise ValueError(f"{found} `crop_to` keeps axis {axis} whole; give it a "
                                     "size there too, to cut every sample to one shape. "
                                     f"Received: crop_to={self._crop.crop_to!r}")
                raise ValueError(
                    f"{found} Pass `pad_to` to pad them to one shape per batch: "
                    f"pad_to=\"longest\", an int, or a tuple. "
                    f"Received: pad_to={self.padding.pad_to!r}")

    def _check_crop(self) -> tuple[int, ...]:
        """The shape of a cropped sample; a crop larger than a sample is an
        error that names the sample's file."""
        index, sizes = self.index, self._crop_sizes
        if isinstance(index, RowIndex):
            shapes = np.array([index.row_shape], np.int64)
        else:
            shapes = index.shapes
        crop = np.array([-1 if c is None else c for c in sizes], np.int64)
        short = (shapes < crop).any(axis=1)
        if short.any():
            k = int(np.argmax(short))
            path = index.paths[k if isinstance(index, FileIndex) else 0]
            shape = tuple(shapes[k].tolist())
            raise ValueError(
                f"{path}: `crop_to` cuts samples of {self.name} to {_shape_text(sizes)}, larger "
                f"than this sample, of shape {shape}: a crop must fit in every sample (pad "
                f"the files first, or crop less). Received: crop_to={self._crop.crop_to!r}")
        return tuple(int(c) if c is not None else int(shapes[0, j]) for j, c in enumerate(sizes))

    # Crops.

    def _read_crops(self, ids: np.ndarray, advise: bool, epoch: int) -> np.ndarray:
        n = len(ids)
        out = POOL.empty((n, *self._crop_shape), self.stored)
        if n == 0 or out.size == 0:
            return out if self.stored == self.native else out.astype(self.native)
        shapes = self.index.sample_shapes(ids)
        offsets = self._crop.offsets(ids, shapes, self._crop_sizes, epoch)
        if self._rows is not None:
            parts = plan.plan_regions(self._rows.starts, ids, offsets, self._crop_sizes)
            if advise:
                self._rows.prefetch(parts)
            for part in parts:
                self._rows.read(part, out)
        else:
            _FileRegions(self.index, self._crop_sizes).read(ids, shapes, offsets, out, advise)
        return out if self.stored == self.native else out.astype(self.native)

    def _prefetch_crops(self, ids: np.ndarray, epoch: int) -> int:
        shapes = self.index.sample_shapes(ids)
        offsets = self._crop.offsets(ids, shapes, self._crop_sizes, epoch)
        if self._rows is not None:
            return self._rows.prefetch(
                plan.plan_regions(self._rows.starts, ids, offsets, self._crop_sizes))
        return _FileRegions(self.index, self._crop_sizes).prefetch(ids, shapes, offsets)

    # Rows.

    def _read_rows(self, ids, advise: bool) -> np.ndarray:
        n, rows = len(ids), self._rows
        target = self._row_target
        out = self._allocate(n, target, target != self.index.row_shape)
        if n == 0 or rows.row_nbytes == 0:
            return out
        into = out if self._direct else np.empty((n, *self.index.row_shape), self.stored)
        parts = plan.plan_rows(rows.starts, ids)
        if self._remote is not None:
            self._remote.read_parts(parts, into)  # every part's ranges in flight together
            parts = []
        if advise:
            rows.prefetch(parts)
        for part in parts:
            rows.read(part, into)
        if not self._direct:
            source, destination = self.padding.placement(self.index.row_shape, target)
            out[(slice(None), *destination)] = into[(slice(None), *source)]
        return out

    # Variable-length samples of a pack (`RaggedIndex`).

    def _read_ragged(self, ids: np.ndarray, advise: bool) -> np.ndarray:
        n, shapes = len(ids), self.index.shapes[ids]
        target = self.padding.target_shape(self.axes, shapes)
        fill = n > 0 and bool((shapes != np.array(target, np.int64)).any())
        out = self._allocate(n, target, fill)
        if n == 0:
            return out
        if advise:
            self._ragged.prefetch(ids)
        self._ragged.read(ids, shapes, target, self.padding, out,
                          direct=self.stored == self.native)
        return out

    # Per-sample files.

    def _read_files(self, ids: np.ndarray, advise: bool) -> np.ndarray:
        index, n = self.index, len(ids)
        shapes = index.sample_shapes(ids)
        target = self.padding.target_shape(self.axes, shapes)
        fill = n > 0 and bool((shapes != np.array(target, np.int64)).any())
        out = self._allocate(n, target, fill)
        if n == 0:
            return out
        if advise and self._remote is None:
            _prefetch_files(index, ids)
        itemsize = self.stored.itemsize
        nbytes = np.prod(shapes, axis=1) * itemsize
        # A sample goes straight into its slot when it needs no conversion and is
        # padded (if at all) on its first axis only: its place is one stretch of
        # the slot's bytes (at the start, or at the end with padding="pre").
        direct = (~index.fortran_order[ids]) & (shapes[:, 1:] == target[1:]).all(axis=1) & (
            shapes[:, 0] <= target[0] if shapes.shape[1] else True)
        direct &= self.stored == self.native
        slots = out.reshape(n, -1).view(np.uint8)
        row = slots.shape[1]
        starts = (row - nbytes) if self.padding.padding == "pre" else np.zeros(n, np.int64)
        buffers = [slots[k, a:a + b] if d else np.empty(b, np.uint8) for k, (d, a, b) in
                   enumerate(zip(direct.tolist(), starts.tolist(), nbytes.tolist()))]
        paths, sizes = index.paths.select(ids), nbytes.tolist()
        if self._remote is not None:  # every sample's request in flight together
            self._remote.read_samples(ids, buffers, sizes)
        elif index.members is None:
            _read_plain(index, ids, paths, buffers, sizes)
        else:  # members of .npz archives: stored ones in place, deflated ones inflated
            starts, methods = index.members.starts[ids], index.members.methods[ids]
            files = np.flatnonzero(starts < 0).tolist()
            stored = np.flatnonzero((starts >= 0) & (methods == npz.STORED)).tolist()
            for chosen, at in ((files, None), (stored, starts[stored].tolist())):
                _read_plain(index, ids[chosen], [paths[k] for k in chosen],
                            [buffers[k] for k in chosen], [sizes[k] for k in chosen], at)
            for k in np.flatnonzero(methods == npz.DEFLATED).tolist():
                _read_member(index, int(ids[k]), paths[k], buffers[k], sizes[k])
        _place(out, buffers, np.flatnonzero(~direct), shapes, self.stored, self.padding,
               target, index.fortran_order[ids])
        return out


class RowFiles:
    """The files of a `RowIndex` as a reader reads them: their facts, keys in
    the table of open files, and the rows each holds."""

    #: Files of at most this many data bytes are read ahead whole when rows
    #: are scattered over them (`plan.whole_if_small`); the read-ahead's budget
    #: lowers it.
    whole_file_bytes = plan.SMALL_FILE_BYTES

    def __init__(self, index: RowIndex):
        self.index, self.row_nbytes = index, index.row_nbytes
        self.starts = index.row_starts.tolist()
        self.fortran = index.fortran_order.tolist()
        rows = np.diff(index.row_starts).tolist()
        self.facts = [
            FileFacts(index.paths[f], int(index.data_offsets[f]), rows[f] * index.row_nbytes,
                      tuple(index.file_ids[f].tolist()),
                      (index.dtype, (rows[f], *index.row_shape), self.fortran[f]))
            for f in range(len(index.paths))]
        self.keys = [facts.key() for facts in self.facts]
        # (first row, end row, weak references to the map's rows and to the open
        # file, guard region) of the file of the last run copied: weak, so that
        # a reader kept alive holds no map or descriptor.
        self._last, self._reads = None, 0

    def __getstate__(self):
        return {**self.__dict__, "_last": None}

    def read(self, part, into: np.ndarray) -> None:
        """Fills the slots of `part` in `into` (rows as stored). A copy from a
        map that faulted, or from a file that changed meanwhile, and a short
        read, are done again from the file opened anew, whose check raises the
        error that names a file that is now too short."""
        f = part.file
        for attempt in range(_ATTEMPTS):
            opened = TABLE.get(self.keys[f], self.facts[f])
            try:
                mapped = opened.mapped()
            except MapFailed:
                if attempt == _ATTEMPTS - 1:
                    raise
                TABLE.drop(self.keys[f], opened)
                continue
            if mapped is None or not self._guarded():
                try:
                    return self._pread(opened.fd, part, into)
                except local.ShortRead:
                    if attempt == _ATTEMPTS - 1:
                        raise
            else:
                self._copy(mapped, part, into)
                if not mapped.poisoned and opened.unchanged():
                    if isinstance(part, plan.Run) and not self.fortran[f]:
                        self._remember(f, opened, mapped)
                    return None
            TABLE.drop(self.keys[f], opened)
        raise ValueError(f"{self.facts[f].path}: the file changed while its rows were read, "
                         f"{_ATTEMPTS} times in a row; it changed after the dataset was built.")

    def _remember(self, f: int, opened, mapped) -> None:
        rows = mapped.rows(self.index.dtype, self.facts[f].header[1], False)
        self._last = (self.starts[f], self.starts[f + 1], weakref.ref(rows),
                      weakref.ref(opened), mapped.region)

    def read_range(self, ids: range, dtype: np.dtype) -> np.ndarray | None:
        """Rows `ids` as a new batch when they lie in the file whose map the
        last run was copied from (the next batch of an unshuffled epoch),
        else `None`: one copy, no plan, the same checks."""
        last = self._last
        if last is None or not (last[0] <= ids.start and ids.stop <= last[1]) or not ids:
            return None
        rows, opened = last[2](), last[3]()  # alive while the map and file are
        if rows is None or opened is None or not self._guarded():
            return None
        out = POOL.empty((len(ids), *self.index.row_shape), dtype)
        source = rows[ids.start - last[0]:ids.stop - last[0]]
        if rows.flags.aligned:
            copies.copy(out, source)
        else:  # see `_copy`
            ndim = self.index.sample_ndim
            copies.copy(_blocks(out, ndim), _blocks(source, ndim))
        return None if last[4].poisoned or not opened.unchanged() else out

    def _guarded(self) -> bool:
        """Whether the SIGBUS handler is still ours (looked at every
        `_GUARD_CHECK_EVERY` reads: another library may replace it)."""
        self._reads += 1
        if self._reads % _GUARD_CHECK_EVERY:
            return True
        return guard.installed()

    def _copy(self, mapped, part, into: np.ndarray) -> None:
        """Copies the rows of `part` from the file's map into their slots."""
        f = part.file
        rows = mapped.rows(self.index.dtype, self.facts[f].header[1], self.fortran[f])
        if not rows.flags.aligned and not isinstance(part, plan.Regions):
            # Data at an odd offset (a member of an .npz archive): numpy copies
            # and gathers misaligned items one by one, 80x slower; rows of
            # bytes are copied whole.
            ndim = self.index.sample_ndim
            rows, into = _blocks(rows, ndim), _blocks(into, ndim)
        if isinstance(part, plan.Run):
            copies.copy(into[part.slot:part.slot + part.count],
                        rows[part.row:part.row + part.count])
        elif isinstance(part, plan.Windows):
            copy_windows(rows, part, into)
        elif isinstance(part, plan.Regions):
            shape = rows.shape[1:]
            for slot, row, offsets in zip(part.slots.tolist(), part.rows.tolist(), part.offsets):
                into[slot] = rows[row][regions.region(offsets, part.sizes, shape)]
        elif part.slots is None:
            # The rows lie in the file (planned so): mode="clip" spares numpy the
            # copy through a temporary that the default mode makes with `out`.
            rows.take(part.rows, axis=0, out=into, mode="clip")
        else:
            into[part.slots] = rows.take(part.rows, axis=0, mode="clip")

    def _pread(self, fd: int, part, into: np.ndarray) -> None:
        """Reads the rows of `part` with `preadv`: one call per run of adjacent
        rows, scattering them to their slots."""
        f, n = part.file, len(into)
        facts = self.facts[f]
        if self.fortran[f]:
            raise ValueError(f"{facts.path}: rows of a Fortran-order file are strided and are "
                             "read from a memory map, which this platform cannot guard; save "
                             "the array in C order (np.ascontiguousarray).")
        target = into.reshape(n, -1).view(np.uint8)
        if isinstance(part, plan.Run):
            local.pread_into(facts.path, fd, [target[part.slot:part.slot + part.count]],
                             facts.data_offset + part.row * self.row_nbytes)
            return
        if isinstance(part, plan.Windows):
            return self._pread_windows(facts, fd, part, into)
        if isinstance(part, plan.Regions):
            for slot, row, offsets in zip(part.slots.tolist(), part.rows.tolist(), part.offsets):
                starts, length = regions.runs(self.index.row_shape, part.sizes, offsets,
                                              self.index.dtype.itemsize)
                local.pread_runs(facts.path, fd, target[slot],
                                 facts.data_offset + row * self.row_nbytes + starts, length)
            return None
        slots = _slots(part)
        order, run_starts, lengths = plan.adjacent_runs(part.rows)
        ordered = part.rows[order]
        for a, length in zip(run_starts.tolist(), lengths.tolist()):
            buffers = _slot_buffers(target, slots[order[a:a + length]])
            local.pread_into(facts.path, fd, buffers,
                             facts.data_offset + int(ordered[a]) * self.row_nbytes)

    def _pread_windows(self, facts, fd: int, part, into: np.ndarray) -> None:
        """Reads each window of `part` with one `preadv` of its span of rows:
        into its slot when its rows are consecutive (`rate` 1), else into a
        scratch buffer whose every `rate`-th row is kept."""
        slots = _slots(part).tolist()
        span_bytes = part.span * self.row_nbytes
        scratch = None if part.rate == 1 else np.empty(span_bytes, np.uint8)
        target = into.reshape(len(into), -1).view(np.uint8)
        for slot, row in zip(slots, part.rows.tolist()):
            offset = facts.data_offset + row * self.row_nbytes
            if scratch is None:
                local.pread_into(facts.path, fd, [target[slot]], offset)
                continue
            local.pread_into(facts.path, fd, [scratch], offset)
            into[slot] = scratch.view(into.dtype).reshape(part.span, *into.shape[2:])[::part.rate]

    def _extents(self, part) -> tuple[np.ndarray, np.ndarray]:
        """`(offsets, lengths)` of a part's bytes from the file's first data
        byte, sorted and merged (see `plan.row_extents`)."""
        if not isinstance(part, plan.Regions):
            return plan.row_extents(part, self.row_nbytes)
        itemsize, shape = self.index.dtype.itemsize, self.index.row_shape
        starts = []
        for row, offsets in zip(part.rows.tolist(), part.offsets):
            runs, length = regions.runs(shape, part.sizes, offsets, itemsize)
            starts.append(row * self.row_nbytes + runs)
        starts = np.sort(np.concatenate(starts))
        return plan.merge_extents(starts, np.full(len(starts), length, np.int64))

    def prefetch(self, parts: list) -> int:
        """Advises the kernel of the stretches of bytes of `parts` that are not
        all in the page cache; returns the pages asked for that were not."""
        pages = 0
        for part in parts:
            f = part.file
            if self.fortran[f]:
                continue  # strided rows: a stretch per element is not worth asking for
            pages += _advise_extents(TABLE.get(self.keys[f], self.facts[f]),
                                     *self._extents(part), self.whole_file_bytes)
        return pages


def _advise_extents(opened, offsets: np.ndarray, lengths: np.ndarray,
                    whole_file_bytes: int) -> int:
    """Advises the kernel of the stretches of a file's data bytes (sorted,
    merged extents; the whole file if small, see `plan.whole_if_small`) that
    are not all in the page cache; returns the pages asked for."""
    facts, pages = opened.facts, 0
    offsets, lengths = plan.whole_if_small(offsets, lengths, facts.nbytes, whole_file_bytes)
    for offset, length, missing in _not_cached(opened, offsets.tolist(), lengths.tolist()):
        local.advise(opened.fd, facts.data_offset + offset, length)
        pages += missing
    return pages


def _place(out: np.ndarray, buffers: list, scattered: np.ndarray, shapes: np.ndarray,
           dtype: np.dtype, padding: Padding, target: tuple, fortran=None) -> None:
    """Places the samples `scattered` (converted, or padded inside), read as
    stored into scratch `buffers`, into their slots of `out`."""
    for k in scattered.tolist():
        shape = tuple(shapes[k].tolist())
        order = "F" if fortran is not None and fortran[k] else "C"
        scratch = buffers[k].view(dtype).reshape(shape, order=order)
        source, destination = padding.placement(shape, target)
        out[(k, *destination)] = scratch[source]


def _blocks(rows: np.ndarray, row_ndim: int) -> np.ndarray:
    """C-order `rows` (each of `row_ndim` axes) as rows of bytes: a view whose
    copies and gathers are `memcpy`s of whole rows, aligned or not."""
    if rows.size == 0 or not rows.flags.c_contiguous:
        return rows
    return rows.reshape(rows.shape[:rows.ndim - row_ndim] + (-1,)).view(np.uint8)


class RaggedFiles:
    """The values files of a `RaggedIndex` as a reader reads them: each
    sample is one stretch of bytes of its file. A batch's stretches are read
    with `preadv`, sorted by place, neighbours (the samples of an unshuffled
    batch) in one call, each into its slot where it needs no conversion and
    is padded or truncated (if at all) on its first axis only; the others
    into scratch buffers, placed with numpy. Files are opened through the
    table of open files (`handles`): checked against the index when opened."""

    whole_file_bytes = plan.SMALL_FILE_BYTES  # as `RowFiles`'

    def __init__(self, index: RaggedIndex):
        self.index, self.itemsize = index, index.dtype.itemsize
        self.facts = [
            FileFacts(index.paths[f], int(index.data_offsets[f]),
                      math.prod(index.file_shapes[f]) * self.itemsize,
                      tuple(index.file_ids[f].tolist()),
                      (index.dtype, index.file_shapes[f], False))
            for f in range(len(index.paths))]
        self.keys = [facts.key() for facts in self.facts]

    def read(self, ids: np.ndarray, shapes: np.ndarray, target: tuple, padding: Padding,
             out: np.ndarray, direct: bool) -> None:
        """Fills `out` (allocated, padding filled) with samples `ids`."""
        n = len(ids)
        files, offsets = self.index.locate(ids)
        # Bytes of one step of each sample's first axis: samples cut there go
        # straight into their slots.
        step = (np.prod(shapes[:, 1:], axis=1) * self.itemsize).astype(np.int64)
        whole = shapes[:, 0] * step
        straight = (shapes[:, 1:] == np.array(target[1:], np.int64)).all(axis=1) & direct
        length, size = shapes[:, 0], np.int64(target[0])
        kept = np.minimum(length, size)
        source = np.where(length > size, length - size, 0) if padding.truncating == "pre" \
            else np.zeros(n, np.int64)
        place = np.where(length < size, size - length, 0) if padding.padding == "pre" \
            else np.zeros(n, np.int64)
        starts = np.where(straight, offsets + source * step, offsets)
        counts = np.where(straight, kept * step, whole)
        slots = out.reshape(n, -1).view(np.uint8)
        buffers = [slots[k, p * s:p * s + c] if d else np.empty(c, np.uint8) for k, (d, p, s, c)
                   in enumerate(zip(straight.tolist(), place.tolist(), step.tolist(),
                                    counts.tolist()))]
        self._read_stretches(files, starts, counts, buffers)
        _place(out, buffers, np.flatnonzero(~straight), shapes, self.index.dtype, padding,
               target)

    def _read_stretches(self, files: np.ndarray, starts: np.ndarray, counts: np.ndarray,
                        buffers: list) -> None:
        """Reads stretch `k` (`counts[k]` bytes from `starts[k]` of file
        `files[k]`) into `buffers[k]`: copied from the file's guarded memory
        map (as rows are), or, where maps are not guarded or the copy faulted
        (the file was cut short meanwhile), with one `preadv` per run of
        stretches that follow each other in the file."""
        order = np.lexsort((starts, files))
        files, starts, counts = files[order], starts[order], counts[order]
        bounds = np.flatnonzero(np.diff(files)) + 1
        order = order.tolist()
        for a, b in zip([0, *bounds.tolist()], [*bounds.tolist(), len(order)]):
            f = int(files[a])
            if not self._copy_mapped(f, order[a:b], starts[a:b], buffers):
                self._pread(f, order[a:b], starts[a:b], counts[a:b], buffers)

    def _copy_mapped(self, f: int, slots: list, starts: np.ndarray, buffers: list) -> bool:
        """Copies the stretches of file `f` from its guarded map; whether it
        could (no guarded map here, or a copy that faulted: `False`)."""
        opened = TABLE.get(self.keys[f], self.facts[f])
        try:
            mapped = opened.mapped()
        except MapFailed:
            mapped = None
        if mapped is None or not guard.installed():
            return False
        data, offset = mapped.bytes, self.facts[f].data_offset
        for k, start in zip(slots, (starts - offset).tolist()):
            target = buffers[k]
            target[:] = data[start:start + len(target)]
        if not mapped.poisoned and opened.unchanged():
            return True
        TABLE.drop(self.keys[f], opened)  # opened anew (and checked) for the preadv
        return False

    def _pread(self, f: int, slots: list, starts: np.ndarray, counts: np.ndarray,
               buffers: list) -> None:
        """Reads the stretches of file `f` (sorted by place) with `preadv`, one
        call per run of stretches that follow each other."""
        new = np.ones(len(slots), bool)
        new[1:] = starts[1:] != starts[:-1] + counts[:-1]
        runs = np.flatnonzero(new).tolist() + [len(slots)]
        opened = TABLE.get(self.keys[f], self.facts[f])
        for a, b in zip(runs, runs[1:]):
            chunk = [buffers[k] for k in slots[a:b] if buffers[k].nbytes]
            if chunk:
                local.pread_into(self.facts[f].path, opened.fd, chunk, int(starts[a]))

    def prefetch(self, ids: np.ndarray) -> int:
        """Advises the kernel of the samples' stretches (merged where close)
        that are not all in the page cache; returns the pages asked for."""
        files, offsets = self.index.locate(ids)
        nbytes = np.prod(self.index.shapes[ids], axis=1) * self.itemsize
        pages = 0
        for f in np.unique(files[nbytes > 0]).tolist():
            mine = (files == f) & (nbytes > 0)
            facts = self.facts[f]
            order = np.argsort(offsets[mine], kind="stable")
            extents = plan.merge_extents(offsets[mine][order] - facts.data_offset,
                                         nbytes[mine][order].astype(np.int64))
            pages += _advise_extents(TABLE.get(self.keys[f], facts), *extents,
                                     self.whole_file_bytes)
        return pages


def _sample_place(index):
    """Names sample `i` of an index in messages: its file, or its place in a
    pack's values file."""
    if isinstance(index, RaggedIndex):
        return index.describe
    return lambda i: index.paths[i]


def _ids_array(ids) -> np.ndarray:
    if isinstance(ids, range):
        return np.arange(ids.start, ids.stop, dtype=np.int64)
    return np.asarray(ids, np.int64)


def _shape_text(sizes: tuple) -> str:
    return "(" + ", ".join("any" if c is None else str(c) for c in sizes) + (
        ",)" if len(sizes) == 1 else ")")


class _FileRegions:
    """Regions of per-sample files: each file opened once, its header checked
    against the index (the one read of bytes outside the region), and its
    region's runs read into the batch (`regions.runs`); Fortran-order files
    are read whole and cut in memory."""

    def __init__(self, index: FileIndex, sizes: tuple):
        self.index, self.sizes, self.itemsize = index, sizes, index.dtype.itemsize

    def _runs(self, shape, offsets):
        return regions.runs(shape, self.sizes, offsets, self.itemsize)

    def read(self, ids: np.ndarray, shapes: np.ndarray, offsets: np.ndarray, out: np.ndarray,
             advise: bool) -> None:
        index, target = self.index, out.reshape(len(out), -1).view(np.uint8)
        paths = index.paths.select(ids)
        for first in range(0, len(ids), _OPEN_AT_ONCE):
            chunk = range(first, min(len(ids), first + _OPEN_AT_ONCE))
            fds = []
            try:
                for k in chunk:
                    fds.append(_open(paths[k]))
                if advise:
                    for fd, k in zip(fds, chunk):
                        self._advise(fd, int(ids[k]), shapes[k], offsets[k])
                for fd, k in zip(fds, chunk):
                    self._read_one(fd, paths[k], int(ids[k]), shapes[k], offsets[k], out, target[k])
            finally:
                for fd in fds:
                    os.close(fd)

    def _read_one(self, fd: int, path: str, i: int, shape, offsets, out, target) -> None:
        index = self.index
        base, method = _member_place(index, i)
        head, shape = int(index.data_offsets[i]), tuple(shape.tolist())
        nbytes = math.prod(shape) * self.itemsize
        if method == npz.DEFLATED:  # inflated whole, cut in memory
            whole = np.empty(nbytes, np.uint8)
            _read_member(index, i, path, whole, nbytes)
            return self._cut(whole, i, shape, offsets, out, target)
        wanted = head + nbytes
        try:  # an archive's size is not its member's
            header = os.pread(fd, head, base)
            size = wanted if method is not None else os.fstat(fd).st_size
        except OSError as e:
            raise ValueError(f"{path}: cannot read the file: {e.strerror}.") from e
        if local.header_crc32(header) != int(index.header_crc32[i]) or size != wanted:
            _check_changed(index, i)  # raises unless the header means the same
            if size != wanted:
                raise local.ShortRead(f"{path}: expected {wanted} bytes, found {size}; the file "
                                      "changed after the dataset was built.")
        if index.fortran_order[i]:  # strided on disk: read whole, cut in memory
            whole = np.empty(nbytes, np.uint8)
            local.pread_into(path, fd, [whole], base + head)
            return self._cut(whole, i, shape, offsets, out, target)
        starts, length = self._runs(shape, offsets)
        local.pread_runs(path, fd, target, base + head + starts, length)

    def _cut(self, whole: np.ndarray, i: int, shape, offsets, out, target) -> None:
        order = "F" if self.index.fortran_order[i] else "C"
        sample = whole.view(self.index.dtype).reshape(shape, order=order)
        slot = target.view(self.index.dtype).reshape(out.shape[1:])
        slot[...] = sample[regions.region(offsets, self.sizes, shape)]

    def _advise(self, fd: int, i: int, shape, offsets) -> int:
        base, method = _member_place(self.index, i)
        if method == npz.DEFLATED:
            size = int(self.index.members.compressed_sizes[i])
            local.advise(fd, base, size)
            return _pages(base, size)
        head = base + int(self.index.data_offsets[i])
        if self.index.fortran_order[i]:
            size = math.prod(shape.tolist()) * self.itemsize
            local.advise(fd, head, size)
            return _pages(head, size)
        starts, length = self._runs(tuple(shape.tolist()), offsets)
        merged, lengths = plan.merge_extents(starts, np.full(len(starts), length, np.int64))
        pages = 0
        for offset, nbytes in zip(merged.tolist(), lengths.tolist()):
            local.advise(fd, head + offset, nbytes)
            pages += _pages(head + offset, nbytes)
        return pages

    def prefetch(self, ids: np.ndarray, shapes: np.ndarray, offsets: np.ndarray) -> int:
        """Advises the kernel of the regions' pages (open, advise, close),
        unless a probe finds the first region cached; returns the pages asked for."""
        paths = self.index.paths.select(ids)
        pages = 0
        for k, path in enumerate(paths):
            try:
                fd = os.open(npz.physical(path), os.O_RDONLY)
            except OSError:
                continue  # the read reports it, with the file's name
            try:
                if k == 0:
                    starts, _ = self._runs(tuple(shapes[0].tolist()), offsets[0])
                    first = _member_place(self.index, int(ids[0]))[0] + int(
                        self.index.data_offsets[ids[0]]) + int(starts[0])
                    if local.cached(fd, first):
                        return 0
                pages += self._advise(fd, int(ids[k]), shapes[k], offsets[k])
            finally:
                os.close(fd)
        return pages


def _open(path: str) -> int:
    """Opens a file (the archive of a member), or raises the error naming `path`."""
    try:
        return os.open(npz.physical(path), os.O_RDONLY)
    except OSError as e:
        raise ValueError(f"{path}: cannot open the file: {e.strerror}.") from e


def _member_place(index: FileIndex, i: int) -> tuple[int, int | None]:
    """`(first byte, method)` of sample `i` in its archive; `(0, None)` for a file."""
    table = index.members
    if table is None or table.starts[i] < 0:
        return 0, None
    return int(table.starts[i]), int(table.methods[i])


def _same_place(index: FileIndex, i: int, member) -> bool:
    """Whether a sample's member (or file) lies where the index says."""
    table = index.members
    if table is None or table.starts[i] < 0:
        return member is None
    return member is not None and (member.start, member.method, member.compressed_size) == (
        int(table.starts[i]), int(table.methods[i]), int(table.compressed_sizes[i]))


def copy_windows(rows: np.ndarray, part, into: np.ndarray) -> None:
    """Copies the windows of `part` (a `plan.Windows`) from `rows` (a file's
    rows, mapped, or an array) into their slots of `into`: one gather of each
    window's rows, subsampled by `rate` on the way. (A `take` from a strided
    view of every window would first copy all of them: numpy makes its
    input contiguous.)"""
    steps = part.rows[:, None] + np.arange(part.length, dtype=np.int64) * part.rate
    if part.slots is None:
        rows.take(steps, axis=0, out=into, mode="clip")  # planned within the file
    else:
        into[part.slots] = rows.take(steps, axis=0, mode="clip")


def _not_cached(opened, offsets: list, lengths: list):
    """`(offset, length, pages missing)` of the stretches of data bytes to ask
    for: those not all in the page cache, by `mincore` on a map of the file
    (nothing is read), or else by a `RWF_NOWAIT` probe of each
    stretch's middle byte (its first and last pages may be shared with its
    neighbours, read for them). More than `_PROBES` stretches (scattered rows)
    are probed by a sample of `_SAMPLE`: all of them are asked for unless the
    sample is all in the page cache."""

    def missing(k):
        offset, length = offsets[k], lengths[k]
        found = opened.pages_missing(offset, length)
        if found is None:
            start = opened.facts.data_offset + offset
            found = 0 if local.cached(opened.fd, start + length // 2) else _pages(start, length)
        return found

    if len(offsets) <= _PROBES:
        for k in range(len(offsets)):
            found = missing(k)
            if found:
                yield offsets[k], lengths[k], found
        return
    sample = np.linspace(0, len(offsets) - 1, _SAMPLE).astype(int).tolist()
    if any(missing(k) for k in sample):
        for offset, length in zip(offsets, lengths):
            yield offset, length, _pages(opened.facts.data_offset + offset, length)


def _pages(offset: int, length: int) -> int:
    return -(-(offset % _PAGE + length) // _PAGE)


def _slots(part) -> np.ndarray:
    if isinstance(part, plan.Run):
        return np.arange(part.slot, part.slot + part.count)
    return np.arange(len(part.rows)) if part.slots is None else part.slots


def _slot_buffers(target: np.ndarray, slots: np.ndarray) -> list:
    """Writable buffers for batch slots, merging slots that are adjacent."""
    breaks = np.flatnonzero(np.diff(slots) != 1) + 1
    return [target[group[0]:group[-1] + 1] for group in np.split(slots, breaks) if len(group)]


def _prefetch_files(index: FileIndex, ids: np.ndarray) -> int:
    """Advises the kernel of per-sample files (open, advise, close: the pages
    stay in the page cache), unless a probe of the first and last finds them
    cached; returns the pages asked for."""
    paths = index.paths.select(ids)
    shapes = index.shapes[ids]
    nbytes = np.prod(shapes, axis=1) * index.dtype.itemsize + index.data_offsets[ids]
    starts = np.zeros(len(ids), np.int64)
    if index.members is not None:  # members: their bytes in their archives
        starts = np.maximum(index.members.starts[ids], 0)
        deflated = index.members.methods[ids] == npz.DEFLATED
        nbytes = np.where(deflated, index.members.compressed_sizes[ids], nbytes)
    if _files_cached(paths[:1] + paths[-1:], starts[[0, -1]].tolist()):
        return 0
    pages = 0
    for path, start, size in zip(paths, starts.tolist(), nbytes.tolist()):
        try:
            fd = os.open(npz.physical(path), os.O_RDONLY)
        except OSError:
            continue  # the read reports it, with the file's name
        try:
            local.advise(fd, start, size)
        finally:
            os.close(fd)
        pages += _pages(start, size)
    return pages


def _files_cached(paths: list[str], starts: list[int]) -> bool:
    for path, start in zip(paths, starts):
        try:
            fd = os.open(npz.physical(path), os.O_RDONLY)
        except OSError:
            return False
        try:
            if not local.cached(fd, start):
                return False
        finally:
            os.close(fd)
    return True


def _read_plain(index: FileIndex, ids: np.ndarray, paths: list, buffers: list,
                sizes: list, starts: list | None = None) -> None:
    """Reads per-sample `.npy` files (`local.read_samples`), or members stored
    in archives at `starts`, checking any that was not read as indexed."""
    heads, crcs = index.data_offsets[ids].tolist(), index.header_crc32[ids].tolist()
    if starts is not None:
        paths = [npz.physical(p) for p in paths]
    done = 0
    while done < len(ids):
        bad = local.read_samples(paths[done:], heads[done:], buffers[done:], sizes[done:],
                                 crcs[done:], None if starts is None else starts[done:])
        if bad < 0:
            break
        _check_changed(index, int(ids[done + bad]))  # raises unless the data read are right
        done += bad + 1


def _read_member(index: FileIndex, i: int, path: str, buffer: np.ndarray, nbytes: int) -> None:
    """Reads sample `i`, a member of an `.npz` archive, into `buffer`: a stored
    member in one `preadv` of its header and data, in place; a deflated one
    read whole and inflated (its size and CRC-32 checked)."""
    table, head = index.members, int(index.data_offsets[i])
    start, method = int(table.starts[i]), int(table.methods[i])
    fd = _open(path)
    try:
        if method == npz.STORED:
            header = np.empty(head, np.uint8)
            local.pread_into(path, fd, [header, buffer], start)
        else:
            raw = np.empty(int(table.compressed_sizes[i]), np.uint8)
            local.pread_into(path, fd, [raw], start)
            member = npz.Member(path, start, len(raw), int(table.sizes[i]), method,
                                int(table.crcs[i]))
            data = npz.Inflater(path, member).inflate(raw)
            header = np.frombuffer(data, np.uint8, head)
            buffer[:] = np.frombuffer(data, np.uint8, nbytes, head)
    except (ValueError, local.ShortRead):
        _check_changed(index, i)  # names what the member holds now, if it changed
        raise
    finally:
        os.close(fd)
    if local.header_crc32(header) != int(index.header_crc32[i]):
        _check_changed(index, i)


def _check_changed(index: FileIndex, i: int) -> None:
    """Per-sample file `i` was not read as indexed (its size, or its header's
    bytes, differ): raises the error that says what it holds now, unless its
    header, read again, says what the index says (the bytes of a header can
    change without its meaning: the data read are then right)."""
    from keras_npy.header import read_header

    path = index.paths[i]
    shape, fortran = tuple(index.shapes[i].tolist()), bool(index.fortran_order[i])
    expected = f"dtype {index.dtype} and shape {shape}"
    try:
        now = read_header(path)
    except ValueError as e:
        raise ValueError(f"{e} (Indexed with {expected}; the file changed after the dataset "
                         "was built.)") from e
    offset = now.data_offset - (now.member.start if now.member is not None else 0)
    if ((now.dtype, now.shape, now.fortran_order) == (index.dtype, shape, fortran)
            and offset == int(index.data_offsets[i]) and _same_place(index, i, now.member)):
        return
    raise ValueError(f"{path}: expected {expected} as when the dataset was built, found "
                     f"dtype {now.dtype} and shape {now.shape}; the file changed after the "
                     "dataset was built.")
