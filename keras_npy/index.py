"""The sample index: where every sample is, built from headers alone.

Two layouts (see DESIGN.md):

- `FileIndex` ("files"): one sample per `.npy` file. Per sample it holds the
  file's path (in a compact `PathTable`), its data offset, its shape and its
  memory order, in flat numpy arrays: about 60 bytes a sample, not one Python
  object per sample.
- `RowIndex` ("rows"): samples are the rows (axis 0) of one or more files,
  concatenated into one virtual array. It holds a few numbers per *file*;
  the location of any row is computed, so its size does not grow with rows.

Both answer the same questions (`num_samples`, `sample_shapes(ids)`,
`locate(ids)`), so the stages after this one do not care which they hold.
`build_index` resolves `x` (one source, or a dict of them for multi-input
models) and `y` into a `DatasetIndex`. Nothing here reads sample data.
"""

from __future__ import annotations

import array
import dataclasses
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from keras_npy import _checks
from keras_npy import labels as labels_lib
from keras_npy import npz, sources
from keras_npy.header import HeaderCache, NpyHeader, read_header
from keras_npy.state import fingerprint

LAYOUTS = ("auto", "files", "rows")
# Headers are read in chunks. The first `_PROBE` files are read in this
# thread and timed: from the page cache a header costs ~7 us of system calls
# and Python work (each distinct header parsed once), which threads only slow
# down (the GIL); from a cold disk or a network file system it costs far
# more, waiting that 64 threads overlap.
_CHUNK = 1024
_PROBE = 128
_THREADED_ABOVE_SECONDS_PER_FILE = 60e-6
_MAX_THREADS = 64
_PROGRESS_AFTER_SECONDS = 2.0


class _SampleShapes:
    """The shape questions of an index that holds each sample's shape (`shapes`)."""

    @property
    def sample_ndim(self) -> int:
        return self.shapes.shape[1]

    @property
    def sample_shape(self) -> tuple[int | None, ...]:
        """The shape of a sample, `None` on axes where samples differ."""
        if not self.num_samples:
            return (None,) * self.sample_ndim
        fixed = (self.shapes == self.shapes[0]).all(axis=0)
        return tuple(int(d) if f else None for d, f in zip(self.shapes[0], fixed))

    def sample_shapes(self, ids: np.ndarray) -> np.ndarray:
        """`int64` array `(len(ids), sample_ndim)`: the shape of each sample."""
        return self.shapes[ids]


class FileIndex(_SampleShapes):
    """Layout "files": sample `i` is the whole of file `i`.

    Attributes:
        layout: `"files"`.
        paths: a `sources.PathTable`, one path per sample.
        dtype: the stored dtype, the same for every file.
        shapes: `int64` array of shape `(num_samples, sample_ndim)`.
        data_offsets: `uint32` array, where each file's data starts.
        fortran_order: `bool` array, whether each file is in Fortran order.
        header_crc32: `uint32` array, the checksum of each file's header
            bytes (readers check it: a file replaced by another array is an
            error, not garbage).
        members: `None`, or for samples that are members of `.npz` archives
            (paths `"archive.npz::name"`), an `npz.MemberTable` of where
            each lies; their `data_offsets` count from the member's first byte.
    """

    layout = "files"
    #: How URL paths are read (a `read.remote.Store`), or `None` for local files.
    store = None

    def __init__(self, paths: sources.PathTable, dtype: np.dtype, shapes: np.ndarray,
                 data_offsets: np.ndarray, fortran_order: np.ndarray,
                 header_crc32: np.ndarray):
        self.paths, self.dtype, self.shapes = paths, dtype, shapes
        self.data_offsets, self.fortran_order = data_offsets, fortran_order
        self.header_crc32 = header_crc32
        self.members = None
        #: `(root index, folder, mtime_ns)` of each folder walked, or `None`.
        self.folders = None

    @classmethod
    def from_headers(cls, paths: sources.PathTable,
                     headers: Iterable[NpyHeader]) -> "FileIndex":
        """Builds the index from the headers of `paths`, in order, checking that
        every file has the dtype and number of dimensions of the first."""
        headers, members = list(headers), {}
        for h in headers:
            if h.member is not None:
                members[h.path] = h.member
        index = cls._from_facts(paths, (
            (h.path, h.dtype, h.fortran_order, h.shape,
             h.data_offset - (h.member.start if h.member else 0), h.header_crc32)
            for h in headers))
        index.members = npz.MemberTable.of(paths, members)
        return index

    @classmethod
    def from_paths(cls, paths: sources.PathTable, *, verbose: bool = True) -> "FileIndex":
        """Builds the index from the headers of `paths`, read as `read_header`
        reads them (a `HeaderCache`: each distinct header parsed once), many
        files at a time where opening them is slow (see `iter_headers`)."""
        cache = HeaderCache()
        chunks = _chunks_read(paths.select(np.arange(len(paths))),
                              lambda c: [cache.read(p) for p in c], verbose)
        index = cls._from_facts(paths, ((path, *facts) for chunk in chunks
                                        for path, facts in chunk))
        index.members = npz.MemberTable.of(paths, cache.members)
        return index

    @classmethod
    def _from_facts(cls, paths: sources.PathTable, facts: Iterable[tuple]) -> "FileIndex":
        """The index of `(path, dtype, fortran_order, shape, data_offset,
        crc32)` of each file of `paths`, in order, checking that every file
        has the dtype and number of dimensions of the first."""
        shapes, offsets, fortran = array.array("q"), array.array("I"), bytearray()
        crcs = array.array("I")
        first = None
        for path, dtype, fortran_order, shape, offset, crc in facts:
            if first is None:
                first = (path, dtype, shape)
            if dtype != first[1] or len(shape) != len(first[2]):
                _check_like_first(path, dtype, shape, first)
            shapes.extend(shape)
            offsets.append(offset)
            fortran.append(fortran_order)
            crcs.append(crc)
        ndim = len(first[2])
        return cls(paths, first[1],
                   np.frombuffer(shapes, np.int64).reshape(len(paths), ndim).copy(),
                   np.frombuffer(offsets, np.uint32).copy(),
                   np.frombuffer(bytes(fortran), np.bool_),
                   np.frombuffer(crcs, np.uint32).copy())

    @property
    def num_samples(self) -> int:
        return len(self.paths)

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(file_ids, byte_offsets)` of the samples `ids`."""
        ids = np.asarray(ids, np.int64)
        return ids, self.data_offsets[ids].astype(np.int64)

    @property
    def nbytes(self) -> int:
        """Memory held by the index's arrays, in bytes."""
        return (self.paths.nbytes + self.shapes.nbytes + self.data_offsets.nbytes
                + self.fortran_order.nbytes + self.header_crc32.nbytes
                + (0 if self.members is None else self.members.nbytes))

    def __repr__(self) -> str:
        return (f"FileIndex({self.num_samples} samples of shape {self.sample_shape} "
                f"and dtype {self.dtype})")


class RowIndex:
    """Layout "rows": the files' rows, concatenated, are the samples.

    Attributes:
        layout: `"rows"`.
        paths: a `sources.PathTable`, one path per file.
        dtype: the stored dtype, the same for every file.
        row_shape: the shape of one row (a sample), the same for every file.
        data_offsets: `int64` array, where each file's data starts.
        row_starts: `int64` array of `num_files + 1`: file `f` holds samples
            `row_starts[f]` to `row_starts[f + 1] - 1`.
        fortran_order: `bool` array, whether each file is in Fortran order.
        file_ids: `int64` array of shape `(num_files, 4)`: each file's device,
            inode, size and modification time (ns) when indexed (readers
            check them when they open a file).
        row_nbytes: the bytes of one row.
    """

    layout = "rows"
    #: How URL paths are read (a `read.remote.Store`), or `None` for local files.
    store = None

    def __init__(self, paths: sources.PathTable, dtype: np.dtype, row_shape: tuple[int, ...],
                 data_offsets: np.ndarray, row_starts: np.ndarray, fortran_order: np.ndarray,
                 file_ids: np.ndarray):
        self.paths, self.dtype, self.row_shape = paths, dtype, row_shape
        self.data_offsets, self.row_starts = data_offsets, row_starts
        self.fortran_order, self.file_ids = fortran_order, file_ids
        self.row_nbytes = math.prod(row_shape) * dtype.itemsize
        #: `(root index, folder, mtime_ns)` of each folder walked, or `None`.
        self.folders = None

    @classmethod
    def from_headers(cls, paths: sources.PathTable,
                     headers: Iterable[NpyHeader]) -> "RowIndex":
        """Builds the index from the headers of `paths`, in order, checking that
        every file has rows of the dtype and shape of the first file's."""
        headers = list(headers)
        first = headers[0]
        for header in headers:
            if header.member is not None and header.member.compressed:
                raise ValueError(
                    f"{header.path}: the member is compressed (np.savez_compressed), and rows "
                    "of a deflated stream cannot be read in place: reading any row would "
                    "inflate every row before it. Save the array once uncompressed "
                    "(np.savez, or np.save of np.load(archive)[name]).")
            if not header.shape:
                raise ValueError(f"{header.path}: expected an array whose rows are samples, "
                                 "found a 0-dimensional array.")
            _check_same_dtype(header.path, header.dtype, first.path, first.dtype)
            if header.shape[1:] != first.shape[1:]:
                raise ValueError(
                    f"{header.path}: expected rows of shape {first.shape[1:]} like "
                    f"{first.path}, found rows of shape {header.shape[1:]}.")
            if header.shape[0] and not math.prod(header.shape[1:]):
                # Samples without data, as many as the header says: refused, for
                # an empty array may declare any number of them.
                raise ValueError(f"{header.path}: expected rows that hold data, found "
                                 f"{header.shape[0]} rows of shape {header.shape[1:]}.")
        rows = [h.shape[0] for h in headers]
        return cls(paths, first.dtype, first.shape[1:],
                   np.array([h.data_offset for h in headers], np.int64),
                   np.concatenate([[0], np.cumsum(rows, dtype=np.int64)]),
                   np.array([h.fortran_order for h in headers], np.bool_),
                   np.array([h.file_id for h in headers], np.int64).reshape(-1, 4))

    @property
    def num_samples(self) -> int:
        return int(self.row_starts[-1])

    @property
    def num_rows(self) -> np.ndarray:
        """`int64` array: the number of rows of each file."""
        return np.diff(self.row_starts)

    @property
    def sample_ndim(self) -> int:
        return len(self.row_shape)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.row_shape

    def sample_shapes(self, ids: np.ndarray) -> np.ndarray:
        """`int64` array `(len(ids), sample_ndim)`: the shape of each sample."""
        return np.broadcast_to(np.array(self.row_shape, np.int64),
                               (len(ids), self.sample_ndim))

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(file_ids, byte_offsets)` of the samples `ids` (row starts; for a
        Fortran-order file a row is not contiguous, see `fortran_order`)."""
        ids = np.asarray(ids, np.int64)
        file_ids = np.searchsorted(self.row_starts, ids, side="right") - 1
        rows = ids - self.row_starts[file_ids]
        return file_ids, self.data_offsets[file_ids] + rows * self.row_nbytes

    @property
    def nbytes(self) -> int:
        """Memory held by the index's arrays, in bytes."""
        return (self.paths.nbytes + self.data_offsets.nbytes + self.row_starts.nbytes
                + self.fortran_order.nbytes + self.file_ids.nbytes)

    def __repr__(self) -> str:
        files = len(self.paths)
        return (f"RowIndex({self.num_samples} rows of shape {self.row_shape} and dtype "
                f"{self.dtype} in {files} file{'s' * (files != 1)})")


class RaggedIndex(_SampleShapes):
    """Layout "ragged": samples of varying shapes, each one stretch of the
    bytes of a values file (what `keras-npy pack` writes for variable-length
    samples; see `keras_npy.pack`).

    A values file holds its samples one after the other: concatenated on
    their first axis (every other axis the same for all samples), or, where
    other axes vary too, flattened. The index holds a few numbers per sample
    (its shape and where its bytes start), about 8 * (ndim + 1) bytes.

    Attributes:
        layout: `"ragged"`.
        paths: a `sources.PathTable`, one path per values file.
        dtype: the stored dtype, the same for every file.
        shapes: `int64` array of shape `(num_samples, sample_ndim)`.
        byte_offsets: `int64` array, where each sample's bytes start in its
            file (from the file's first byte).
        sample_starts: `int64` array of `num_files + 1`: file `f` holds
            samples `sample_starts[f]` to `sample_starts[f + 1] - 1`.
        data_offsets: `int64` array, where each file's data start.
        file_shapes: the array shape each file's header declares.
        file_ids: `int64` array of shape `(num_files, 4)`: each file's
            device, inode, size and modification time (ns) when indexed.
    """

    layout = "ragged"

    def __init__(self, paths: sources.PathTable, dtype: np.dtype, shapes: np.ndarray,
                 byte_offsets: np.ndarray, sample_starts: np.ndarray, data_offsets: np.ndarray,
                 file_shapes: list[tuple[int, ...]], file_ids: np.ndarray):
        self.paths, self.dtype, self.shapes = paths, dtype, shapes
        self.byte_offsets, self.sample_starts = byte_offsets, sample_starts
        self.data_offsets, self.file_shapes, self.file_ids = data_offsets, file_shapes, file_ids
        #: Unused (no folder is walked), as `FileIndex.folders`.
        self.folders = None

    @classmethod
    def from_parts(cls, paths: sources.PathTable, headers: Sequence[NpyHeader],
                   offsets: Sequence[np.ndarray], shapes: Sequence[np.ndarray | None],
                   offsets_paths: Sequence[str]) -> "RaggedIndex":
        """The index of values files (`headers`, in order) cut into samples.

        Args:
            paths: the values files.
            headers: their headers.
            offsets: per file, `int64` `n + 1` increasing positions, from 0 to
                the file's first-axis length: sample `k` spans positions
                `offsets[k]` to `offsets[k + 1]` (rows of the file, or elements
                of a flat file).
            shapes: per file, `None` (samples are the spans of rows: their
                shape is `(rows, *inner shape of the file)`), or an `int64`
                array `(n, ndim)` of the samples' shapes (a flat file).
            offsets_paths: the files `offsets` came from, for errors.

        Raises:
            ValueError: the files disagree in dtype, or offsets or shapes do
                not fit their file (the message names it).
        """
        first = headers[0]
        all_shapes, all_offsets = [], []
        for header, cuts, given, where in zip(headers, offsets, shapes, offsets_paths):
            _check_same_dtype(header.path, header.dtype, first.path, first.dtype)
            if header.fortran_order or not header.shape:
                raise ValueError(f"{header.path}: expected a C-order array of samples, found "
                                 f"shape {header.shape} in "
                                 f"{'Fortran' if header.fortran_order else 'C'} order.")
            _check_cuts(where, cuts, header.shape[0])
            inner = math.prod(header.shape[1:])
            counts = np.diff(cuts)
            if given is None:
                file_shapes = np.empty((len(counts), len(header.shape)), np.int64)
                file_shapes[:, 0], file_shapes[:, 1:] = counts, header.shape[1:]
            else:
                file_shapes = _checked_shapes(where, given, counts, inner)
            all_shapes.append(file_shapes)
            all_offsets.append(header.data_offset + cuts[:-1] * inner * header.dtype.itemsize)
        ndims = {s.shape[1] for s in all_shapes}
        if len(ndims) > 1:
            raise ValueError(f"{paths[0]}: expected samples of one number of dimensions in "
                             f"every file, found {sorted(ndims)}.")
        counts = [len(s) for s in all_shapes]
        return cls(paths, first.dtype, np.concatenate(all_shapes).astype(np.int64),
                   np.concatenate(all_offsets).astype(np.int64),
                   np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]),
                   np.array([h.data_offset for h in headers], np.int64),
                   [tuple(h.shape) for h in headers],
                   np.array([h.file_id for h in headers], np.int64).reshape(-1, 4))

    @property
    def num_samples(self) -> int:
        return len(self.shapes)

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(file_ids, byte_offsets)` of the samples `ids`."""
        ids = np.asarray(ids, np.int64)
        files = np.searchsorted(self.sample_starts, ids, side="right") - 1
        return files, self.byte_offsets[ids]

    def describe(self, i: int) -> str:
        """Where sample `i` is, for messages: its values file and place there."""
        f = int(np.searchsorted(self.sample_starts, i, side="right") - 1)
        return f"{self.paths[f]} (sample {i - int(self.sample_starts[f])} of the file)"

    def fingerprint_facts(self) -> dict:
        """What identifies this input's data (see `state.input_facts`): the
        files' names, sizes and the samples' shapes and places."""
        from keras_npy.state import digest

        paths = self.paths
        names = digest(paths.roots, paths.root_ids, paths._buffer, paths._offsets)
        layout = digest("ragged", self.dtype.str, self.shapes, self.byte_offsets,
                        self.sample_starts, self.file_ids[:, 2])
        return {"layout": "ragged", "files": len(paths), "samples": self.num_samples,
                "names": names, "headers": layout}

    @property
    def nbytes(self) -> int:
        """Memory held by the index's arrays, in bytes."""
        return (self.paths.nbytes + self.shapes.nbytes + self.byte_offsets.nbytes
                + self.sample_starts.nbytes + self.data_offsets.nbytes + self.file_ids.nbytes)

    def __repr__(self) -> str:
        files = len(self.paths)
        return (f"RaggedIndex({self.num_samples} samples of shape {self.sample_shape} and "
                f"dtype {self.dtype} in {files} file{'s' * (files != 1)})")


def _check_cuts(path: str, cuts: np.ndarray, length: int) -> None:
    """Offsets of samples must rise from 0 to the length of their values file."""
    if cuts.ndim != 1 or len(cuts) < 1 or cuts[0] != 0 or cuts[-1] != length or (
            np.diff(cuts) < 0).any():
        found = cuts.tolist() if cuts.size <= 8 else f"{cuts.size} values"
        raise ValueError(f"{path}: expected offsets rising from 0 to {length} (the length of "
                         f"its values file), found {found}.")


def _checked_shapes(path: str, shapes: np.ndarray, counts: np.ndarray, inner: int) -> np.ndarray:
    """The shapes of a flat values file's samples must hold as many elements
    as their spans."""
    if shapes.ndim != 2 or len(shapes) != len(counts) or (shapes < 0).any():
        raise ValueError(f"{path}: expected {len(counts)} sample shapes, one per sample, found "
                         f"an array of shape {shapes.shape}.")
    sizes = np.prod(shapes, axis=1) * inner
    bad = np.flatnonzero(sizes != counts)
    if len(bad):
        k = int(bad[0])
        raise ValueError(f"{path}: sample {k} has shape {tuple(shapes[k].tolist())}, "
                         f"expected {int(counts[k])} elements as its offsets say.")
    return shapes


@dataclasses.dataclass(frozen=True)
class DatasetIndex:
    """Everything known about a data set before reading it.

    Attributes:
        x: a `FileIndex` or `RowIndex`, or a dict of them (multi-input), all
            with the same number of samples.
        y: `None`; an array with one label per sample (labels inferred from
            folders, or given); or a `FileIndex`/`RowIndex` of targets.
        class_names: the class names in label order, when labels are classes.
    """

    x: FileIndex | RowIndex | dict[str, FileIndex | RowIndex]
    y: np.ndarray | FileIndex | RowIndex | None = None
    class_names: list[str] | None = None

    @property
    def inputs(self) -> dict[str, FileIndex | RowIndex]:
        """`x` as a dict (a single input is named `"x"`)."""
        return self.x if isinstance(self.x, dict) else {"x": self.x}

    @property
    def num_samples(self) -> int:
        return next(iter(self.inputs.values())).num_samples

    @property
    def nbytes(self) -> int:
        """Memory held by the index's arrays, in bytes (labels included)."""
        return sum(i.nbytes for i in self.inputs.values()) + (
            0 if self.y is None else self.y.nbytes)


def build_index(x, y=None, *, layout: str = "auto", class_names: list[str] | None = None,
                label_mode: str | None = "int", follow_links: bool = False,
                verbose: bool = True, index_file: bool = True, storage_options: dict | None = None,
                cache_dir=None, cache_bytes: int | None = None) -> DatasetIndex:
    """Indexes `x` and `y` from their `.npy` headers, reading no sample data.

    Args:
        x: a directory, glob, `.npy` path, or list of these; or a dict from
            input name to such a source, for a multi-input model. A member of
            an `.npz` archive is `"archive.npz::name"` (`"folder::name"`: that
            member of every archive under the folder).
        y: `None`; `"inferred"` (the class is the folder under a directory
            of `x`, or the folder that holds a file named by a glob or path);
            an array-like of one label per sample; `.npy` path(s) whose rows
            are the labels; or a directory or glob of per-sample target files,
            matched to the files of `x` by path relative to their roots (with
            `x` in the rows layout, a directory or glob of `y` is read as rows).
            Defaults to `None`.
        layout: `"files"` (one sample per file), `"rows"` (the rows of the
            files, concatenated, are the samples) or `"auto"`: rows for a
            single file path, files otherwise. Defaults to `"auto"`.
        class_names: with `y="inferred"`, the class folders in label order;
            every folder must be listed. Defaults to the sorted folder names.
        label_mode: `"int"`, `"categorical"`, `"binary"` (exactly 2 classes)
            or `None`; checked here, applied when batches are read. Defaults
            to `"int"`.
        follow_links: whether directory walks enter links to folders.
            Defaults to `False`.
        verbose: whether a progress bar is shown while headers are read, when
            that takes more than two seconds. Defaults to `True`.
        index_file: whether the index file of a directory `x`
            (`x/keras_npy.index`, written by `keras-npy index`) is loaded
            instead of reading the headers, when it was written with these
            arguments and the data have not changed since (with `verbose`, a
            line says why one is not used). Defaults to `True`.
        storage_options: for sources named by URLs (`s3://`, `gs://`,
            `https://`, any fsspec URL), the filesystem's keyword arguments
            (as `fsspec.filesystem` takes them). Defaults to `None`.
        cache_dir: for URLs, a local folder where the bytes read are kept in
            blocks, for later reads (and epochs) to find. Defaults to `None`:
            no cache.
        cache_bytes: the most bytes the blocks in `cache_dir` may hold; the
            least recently used go first. Defaults to `None`: 1 GiB.

    Returns:
        A `DatasetIndex`.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument has a wrong value, or a file is malformed or
            disagrees with another (the message names both files).

    Example:

    >>> import tempfile, numpy as np
    >>> root = tempfile.mkdtemp()
    >>> np.save(f"{root}/x.npy", np.zeros((100, 8), "float32"))
    >>> index = build_index(f"{root}/x.npy", y=np.arange(100))
    >>> index.x.layout, index.num_samples, index.x.sample_shape
    ('rows', 100, (8,))
    """
    check_layout(layout)
    class_names = labels_lib.check_class_names(class_names)
    labels_lib.check_label_mode(label_mode, class_names)
    if class_names is not None and not _is_inferred(y):
        raise ValueError('You can only pass `class_names` if `y="inferred"`. '
                         f"Received: y={_short(y)}, and class_names={class_names}")
    _checks.check_storage(storage_options, cache_dir, cache_bytes)
    from keras_npy.read.remote import Store

    store = Store(storage_options, cache_dir, cache_bytes)
    index = None
    if index_file and (y is None or isinstance(y, (str, os.PathLike))):
        from keras_npy.index_file import index_of_directory

        index = index_of_directory(x, y, layout, class_names, follow_links, verbose)
    if index is None and layout == "auto":  # None unless x is a directory `keras-npy pack` wrote
        index = _index_of_pack(x, y, class_names, verbose)
    if index is None:
        options = dict(layout=layout, follow_links=follow_links, verbose=verbose, store=store)
        x_index = _index_inputs(x, options)
        y_index, class_names = _index_targets(y, x_index, class_names, options)
        index = DatasetIndex(x_index, y_index, class_names)
    labels_lib.check_label_mode(label_mode, index.class_names)
    fingerprint(index)  # now, while the headers cost far more, not when a state is restored
    return index


def _index_of_pack(x, y, class_names, verbose: bool) -> DatasetIndex | None:
    """The index of a pack directory `x` (`keras_npy.pack`): its shards as x,
    its labels as y unless `y` is given; `None` when `x` is not one."""
    from keras_npy.packing import index_of_pack, is_pack  # it imports this module

    if not is_pack(x):
        return None
    return index_of_pack(x, y, class_names, verbose=verbose)


def index_source(source, *, layout: str = "auto", follow_links: bool = False,
                 verbose: bool = True, name: str = "x", store=None) -> FileIndex | RowIndex:
    """Indexes one source (see `build_index`) in the given layout. The index
    keeps the folders the walk listed, with their times (`folders`), for an
    index file to check. URLs are listed and read through `store` (a
    `read.remote.Store`; see `read.remote.index_source`)."""
    from keras_npy.read import remote

    if remote.is_url_source(source, name):
        return remote.index_source(source, layout=layout, name=name, store=store,
                                   verbose=verbose)
    folders = []
    paths = sources.find_files(source, follow_links=follow_links, name=name, folders=folders)
    if resolve_layout(layout, source) == "rows":
        index = RowIndex.from_headers(paths, iter_headers(paths, verbose=verbose))
    else:
        index = FileIndex.from_paths(paths, verbose=verbose)
    index.folders = folders
    return index


def check_layout(layout) -> str:
    if layout not in LAYOUTS:
        raise ValueError('`layout` must be one of "auto", "files" or "rows". '
                         f"Received: layout={layout!r}")
    return layout


def resolve_layout(layout: str, source) -> str:
    """`"auto"` is "rows" for a single path to a file, "files" otherwise."""
    if layout != "auto":
        return layout
    single_file = isinstance(source, (str, os.PathLike)) and sources.is_file(os.fspath(source))
    return "rows" if single_file else "files"


def iter_headers(paths: Sequence[str], *, verbose: bool = True) -> Iterator[NpyHeader]:
    """Yields the header of each path, in order, reading many at once when the
    files are slow to open (a cold disk, a network file system)."""
    for chunk in _chunks_read(paths, lambda c: [read_header(p) for p in c], verbose):
        for _, header in chunk:
            yield header


def _chunks_read(paths: Sequence[str], read, verbose: bool) -> Iterator[list]:
    """`read(chunk of paths)` of each chunk of `paths`, in order, as lists of
    `(path, result)`. The first `_PROBE` files are read in this thread and
    timed; when a file took longer than `_THREADED_ABOVE_SECONDS_PER_FILE`
    (waiting on a disk, not Python work), the rest are read by `_MAX_THREADS`
    threads, as many reads in flight."""
    progress = Progress(len(paths), verbose)
    probe = min(_CHUNK, _PROBE)  # few files: a cold disk is found before it costs much
    chunks = [paths[:probe]] + [paths[i:i + _CHUNK] for i in range(probe, len(paths), _CHUNK)]

    def pairs(chunk):
        return list(zip(chunk, read(chunk)))

    started = time.perf_counter()
    for chunk in chunks[:1]:
        yield pairs(chunk)
        progress.add(len(chunk))
    per_file = (time.perf_counter() - started) / max(1, min(len(paths), probe))
    if per_file < _THREADED_ABOVE_SECONDS_PER_FILE or len(chunks) < 2:
        for chunk in chunks[1:]:
            yield pairs(chunk)
            progress.add(len(chunk))
        return
    # Small chunks, so that every thread has reads to wait on.
    step = max(1, _CHUNK // 16)
    small = [c[i:i + step] for c in chunks[1:] for i in range(0, len(c), step)]
    pool = ThreadPoolExecutor(min(_MAX_THREADS, len(small)))
    try:
        for done in pool.map(pairs, small):
            yield done
            progress.add(len(done))
    finally:  # on an error, do not wait for the chunks still queued
        pool.shutdown(wait=False, cancel_futures=True)


class Progress:
    """A progress line (done / total, rate) that appears only once the work
    has taken `_PROGRESS_AFTER_SECONDS`, and only on a terminal or in a
    notebook: in a pipe or a log file, its redrawing would be text. Plain
    text, so that a scan imports no Keras."""

    def __init__(self, total: int, verbose: bool, unit: str = "file"):
        interactive = "ipykernel" in sys.modules or (
            hasattr(sys.stdout, "isatty") and sys.stdout.isatty())
        self.total, self.verbose, self.done, self.unit = total, verbose and interactive, 0, unit
        self.started, self._drawn = time.perf_counter(), float("-inf")

    def add(self, count: int) -> None:
        self.done += count
        if not self.verbose:
            return
        now = time.perf_counter()
        finished = self.done >= self.total
        if now - self.started <= _PROGRESS_AFTER_SECONDS or (
                now - self._drawn < 0.1 and not finished):  # redrawn ten times a second
            return
        self._drawn = now
        stream = self._stream()
        stream.write("\r" + self._line(max(now - self.started, 1e-9))
                     + ("\n" if finished else ""))
        stream.flush()

    def _stream(self):
        return sys.stdout  # looked up when drawn: where stdout is then

    def _line(self, seconds: float) -> str:
        rate = self.done / seconds
        return f"{self.done:,}/{self.total:,} {self.unit}s, {rate:,.0f} {self.unit}s/s"


def _check_like_first(path: str, dtype: np.dtype, shape: tuple, first: tuple) -> None:
    """A file of a `FileIndex` must have the dtype and number of dimensions
    of the first, `(path, dtype, shape)`."""
    _check_same_dtype(path, dtype, first[0], first[1])
    if len(shape) != len(first[2]):
        raise ValueError(f"{path}: expected a sample of {len(first[2])} dimensions like "
                         f"{first[0]} (shape {first[2]}), found shape {shape}.")


def _check_same_dtype(path: str, dtype: np.dtype, first_path: str, first_dtype) -> None:
    if dtype != first_dtype:
        raise ValueError(f"{path}: expected dtype {first_dtype} like {first_path}, "
                         f"found {dtype}.")


def _index_inputs(x, options: dict) -> FileIndex | RowIndex | dict:
    if not isinstance(x, dict):
        return index_source(x, name="x", **options)
    if not x or not all(isinstance(k, str) for k in x):
        raise ValueError("A dict `x` must map input names (strings) to sources, and name "
                         f"at least one input. Received: x={_short(x)}")
    inputs = {k: index_source(v, name=f"x[{k!r}]", **options) for k, v in x.items()}
    names = list(inputs)
    for k in names[1:]:
        if inputs[k].num_samples != inputs[names[0]].num_samples:
            raise ValueError(
                f"Every input of `x` must have the same number of samples: expected "
                f"{inputs[names[0]].num_samples} like x[{names[0]!r}] "
                f"({inputs[names[0]].paths[0]}), found {inputs[k].num_samples} in "
                f"x[{k!r}] ({inputs[k].paths[0]}).")
    return inputs


def _index_targets(y, x_index, class_names, options: dict):
    """Returns `(y as labels or an index, class_names)`."""
    first = x_index if not isinstance(x_index, dict) else next(iter(x_index.values()))
    if y is None:
        return None, None
    if _is_inferred(y):
        return _infer_labels(x_index, class_names)
    if isinstance(y, (str, os.PathLike)) or (
            isinstance(y, (list, tuple)) and y and all(
                isinstance(e, (str, os.PathLike)) for e in y)):
        return _index_target_files(y, first, options), None
    if isinstance(y, dict):
        raise TypeError("`y` must be None, \"inferred\", labels, or .npy path(s); "
                        f"multi-output dicts are not supported. Received: y={_short(y)}")
    return labels_lib.check_label_array(y, first.num_samples), None


def _infer_labels(x_index, class_names):
    inputs = x_index if isinstance(x_index, dict) else {"x": x_index}
    results = {}
    for name, index in inputs.items():
        if index.layout != "files":
            raise ValueError('`y="inferred"` takes the class of each sample from its '
                             "folder, so `x` must be in the files layout; found layout "
                             f"\"rows\" for {name} ({index.paths[0]}).")
        results[name] = labels_lib.infer_classes(index.paths, class_names)
    (first_name, (labels, names)), *others = results.items()
    for name, (other_labels, other_names) in others:
        if other_names != names or not np.array_equal(other_labels, labels):
            raise ValueError(f"With a dict `x` and y=\"inferred\", every input must have the "
                             f"same classes in the same order; {name} disagrees with "
                             f"{first_name}.")
    return labels, names


def _index_target_files(y, first: FileIndex | RowIndex, options: dict):
    """Targets in `.npy` files: rows aligned with `x`, or one file per file of `x`."""
    from keras_npy.read import remote

    if remote.is_url_source(y, "y"):  # objects (not a prefix or glob) are rows aligned with x
        names_objects = remote.names_objects(y, "y", options["store"])
    else:
        names_objects = sources.is_file_list(y)
    per_sample = first.layout == "files" and not names_objects
    if per_sample:
        return _index_per_sample_targets(y, first, options)
    targets = index_source(y, name="y", **{**options, "layout": "rows"})
    _check_rows_align(first, targets)
    return targets


def _check_rows_align(x_index: FileIndex | RowIndex, y_index: RowIndex) -> None:
    if y_index.num_samples == x_index.num_samples:
        return
    if x_index.layout == "rows" and len(x_index.paths) == len(y_index.paths):
        for f, (nx, ny) in enumerate(zip(x_index.num_rows, y_index.num_rows)):
            if nx != ny:
                raise ValueError(f"{y_index.paths[f]}: expected {nx} rows, one per row of "
                                 f"{x_index.paths[f]}, found {ny}.")
    raise ValueError(
        f"`y` must have one row per sample of `x`: expected {x_index.num_samples} rows "
        f"(the samples of {_describe(x_index.paths)}), found {y_index.num_samples} "
        f"(in {_describe(y_index.paths)}).")


def _index_per_sample_targets(y, x_index: FileIndex, options: dict) -> FileIndex:
    from keras_npy.read import remote

    if remote.is_url_source(y, "y"):
        return remote.per_sample_targets(y, x_index, options["store"], options["verbose"])
    found = sources.find_files(y, follow_links=options["follow_links"], name="y")
    by_relpath = {}
    for i in range(len(found)):
        by_relpath.setdefault(found.relpath(i), i)
    order = np.empty(x_index.num_samples, np.int64)
    for i in range(x_index.num_samples):
        relpath = x_index.paths.relpath(i)
        match = by_relpath.get(relpath)
        if match is None:
            expected = os.path.join(found.roots[0], relpath)
            raise ValueError(f"{x_index.paths[i]}: expected a target file {expected} in "
                             "`y`, found none.")
        order[i] = match
    return FileIndex.from_paths(found.take(order), verbose=options["verbose"])


def _describe(paths: sources.PathTable) -> str:
    more = f" and {len(paths) - 1} more files" if len(paths) > 1 else ""
    return f"{paths[0]}{more}"


def _is_inferred(y) -> bool:
    return isinstance(y, str) and y == "inferred"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
