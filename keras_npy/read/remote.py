"""Ranged reads of objects named by fsspec URLs (`s3://`, `gs://`, `https://`, ...).

One job: bytes of remote objects, never a whole object unless asked for.

- `is_url(path)`: whether a path is a URL (`scheme://...`) rather than a
  local path.
- `Store`: how URLs are opened: fsspec's `storage_options`, and an optional
  local block cache (`cache_dir`, `cache_bytes`; see `cache`). Small and picklable:
  filesystem objects (with their live connections) are made lazily in the
  process that reads, and dropped when pickled (fsspec caches one instance
  per process and makes new ones after a fork).
- `RangeFile`: one object: `.url`, `.size`, `.identity` (size and ETag,
  version or modification time, as the filesystem's `info` gives them) and
  `.read(offset, nbytes)`, exactly `nbytes` bytes or a `ValueError` naming the
  URL. Public for other readers of URLs (a zip directory of an `.npz`).
- `read_ranges(store, urls, offsets, buffers)`: many ranges read at once
  (`fs.cat_ranges`, which async filesystems such as s3fs run concurrently;
  a thread pool for the others), straight into numpy buffers.
- `read_header(file)`: a `.npy` header from one ranged request (a second one
  only for a header longer than `HEADER_BYTES`), checked by `header.py`'s
  strict parser.
- `index_source`: a `RowIndex` or `FileIndex` of URLs, from one listing and
  one ranged request per object.
- `RemoteRows` and `RemoteFiles`: what `BatchReader` reads batches through:
  a batch's rows merged into ranges (`plan`), or one range per sample, all
  in flight together.

fsspec is imported only when a URL is read: `import keras_npy` never imports
it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from keras_npy import header as header_lib
from keras_npy import npz, sources
from keras_npy.read import plan

#: Bytes of the one ranged request that reads a header (and its preamble).
HEADER_BYTES = 4096
#: Ranges in flight at once.
MAX_IN_FLIGHT = 64
#: Bytes of gaps between a batch's rows that its ranges may read, as a fraction
#: of the rows' bytes: the smallest gaps are merged first, within this budget.
GAP_BUDGET = 0.1
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_INSTALL = 'pip install "keras-npy[s3]"'


def is_url(path) -> bool:
    """Whether `path` is a URL (`scheme://...`), read through fsspec."""
    return isinstance(path, str) and _URL.match(path) is not None


def is_url_source(source, name: str = "x") -> bool:
    """Whether a source (a path or a list of paths) names URLs. A list must
    not mix URLs and local paths."""
    entries = list(source) if isinstance(source, (list, tuple)) else [source]
    urls = [is_url(e) for e in entries]
    if any(urls) and not all(urls):
        raise ValueError(f"`{name}` must name local paths or URLs, not both. "
                         f"Received: {name}={source!r}")
    return bool(entries) and all(urls)


def _fsspec():
    try:
        import fsspec
    except ImportError as e:
        raise ImportError(f"Reading URLs needs fsspec (and s3fs for s3://): {_INSTALL}") from e
    return fsspec


class Store:
    """How URLs are opened and read.

    Args:
        storage_options: keyword arguments of the filesystem
            (`fsspec.filesystem`), such as `{"anon": True}` or
            `{"key": ..., "secret": ..., "client_kwargs": {"endpoint_url": ...}}`.
            Defaults to `None`.
        cache_dir: a local folder for a cache of the objects' bytes, in blocks
            of `cache.BLOCK_BYTES` (1 MiB), or `None` for no cache. Defaults to `None`.
        cache_bytes: the cache's limit in bytes (least recently used blocks
            go first). Defaults to `None`: 1 GiB.
    """

    def __init__(self, storage_options: dict | None = None, cache_dir=None,
                 cache_bytes: int | None = None):
        self.storage_options = dict(storage_options or {})
        self.cache_dir = None if cache_dir is None else os.fspath(cache_dir)
        self.cache_bytes = 2**30 if cache_bytes is None else int(cache_bytes)
        self._filesystems, self._cache, self._lock = {}, None, threading.Lock()

    def __getstate__(self):
        # Live connections and the cache's bookkeeping stay in their process.
        return {**self.__dict__, "_filesystems": {}, "_cache": None, "_lock": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def filesystem(self, url: str):
        """`(filesystem, path within it)` of a URL."""
        protocol = url.split("://", 1)[0]
        with self._lock:
            fs = self._filesystems.get((protocol, os.getpid()))
            if fs is None:
                fsspec = _fsspec()
                try:
                    fs = fsspec.filesystem(protocol, **self.storage_options)
                except (ImportError, ValueError) as e:
                    raise ImportError(f"{url}: cannot read this URL's protocol {protocol!r} "
                                      f"({e}); for s3://: {_INSTALL}") from e
                self._filesystems[(protocol, os.getpid())] = fs
        return fs, fs._strip_protocol(url)

    @property
    def cache(self):
        """This process's `cache.BlockCache` of `cache_dir`, or `None`."""
        if self.cache_dir is None:
            return None
        from keras_npy.read.cache import BlockCache

        with self._lock:
            if self._cache is None:
                self._cache = BlockCache(self.cache_dir, self.cache_bytes)
            return self._cache


def error_of(url: str, error: BaseException) -> ValueError:
    """The `ValueError` that names `url` for an error of its filesystem."""
    text = str(error).strip() or type(error).__name__
    if isinstance(error, FileNotFoundError):
        reason = f"not found ({text})"
    elif isinstance(error, PermissionError):
        reason = f"access denied ({text})"
    else:
        reason = f"{type(error).__name__}: {text}"
    return ValueError(f"{url}: cannot read the object: {reason}.")


def identity_of(info: dict) -> tuple[int, str]:
    """`(size, tag)` of an object from its `info`: the tag is its ETag or
    version when the filesystem gives one, else its modification time."""
    tag = info.get("ETag") or info.get("etag") or info.get("VersionId") or info.get(
        "generation") or info.get("mtime") or info.get("LastModified") or info.get("created")
    return int(info["size"]), "" if tag is None else str(tag)


def file_id_of(identity: tuple[int, str]) -> tuple[int, int, int, int]:
    """An identity as the four numbers an index records per file: `(-1, a
    64-bit hash of the tag, size, 0)` (local files: device, inode, size,
    modification time)."""
    digest = hashlib.blake2b(identity[1].encode(), digest_size=8).digest()
    return -1, int.from_bytes(digest, "little", signed=True), identity[0], 0


class RangeFile:
    """One object named by a URL, read by ranges.

    Args:
        url: the object's URL.
        store: the `Store` it is opened with. Defaults to `Store()`.
        info: its `info` from a listing, or `None` to ask for it (one request).

    Attributes:
        url: the URL, as given.
        size: the object's size in bytes.
        identity: `(size, ETag or version or modification time)`.

    Raises:
        ValueError: the object cannot be found or read (the message names the URL).

    Example (fsspec's in-memory filesystem; `s3://` URLs read the same way):

    >>> import io, fsspec, numpy as np
    >>> buffer = io.BytesIO()
    >>> np.save(buffer, np.arange(4, dtype="<i4"))
    >>> with fsspec.open("memory://keras-npy-doc/x.npy", "wb") as f:
    ...     _ = f.write(buffer.getvalue())
    >>> file = RangeFile("memory://keras-npy-doc/x.npy")
    >>> file.size, np.frombuffer(file.read(128 + 4, 8), "<i4").tolist()
    (144, [1, 2])
    """

    def __init__(self, url: str, store: Store | None = None, info: dict | None = None):
        self.url, self.store = url, store or Store()
        if info is None:
            fs, path = self.store.filesystem(url)
            try:
                info = fs.info(path)
            except OSError as e:
                raise error_of(url, e) from e
            if info.get("type", "file") != "file":
                raise ValueError(f"{url}: expected an object, found a {info['type']}.")
        self.identity = identity_of(info)
        self.size = self.identity[0]
        self.name, self.file_id = url, file_id_of(self.identity)  # as `npz.LocalFile`'s

    def read(self, offset: int, nbytes: int) -> bytes:
        """Exactly `nbytes` bytes from `offset` (one ranged request).

        Raises:
            ValueError: the object is shorter, or cannot be read (the message
                names the URL).
        """
        buffer = np.empty(nbytes, np.uint8)
        _fetch(self.store, [self.url], [offset], [nbytes], [buffer])  # never through the cache
        return buffer.tobytes()


def read_ranges(store: Store, urls: list[str], offsets: list[int], buffers: list,
                identities: list | None = None) -> int:
    """Fills each of `buffers` (writable `uint8` arrays) with the bytes of
    `urls[k]` from `offsets[k]`, all ranges in flight together
    (`MAX_IN_FLIGHT` at a time), through the block cache when the store has
    one (`identities[k]` keys the object's blocks). Returns the bytes asked of
    the filesystem.

    Raises:
        ValueError: an object is shorter than a range, or cannot be read (the
            message names its URL).
    """
    cache = store.cache if identities is not None else None
    if cache is not None:
        return cache.read(lambda *ranges: _fetch(store, *ranges), urls, offsets, buffers,
                          identities)
    return _fetch(store, urls, offsets, [len(b) for b in buffers], buffers)


def _fetch(store: Store, urls, offsets, lengths, buffers) -> int:
    """Reads ranges from the filesystems (see `read_ranges`)."""
    results = _cat(store, urls, offsets, [o + n for o, n in zip(offsets, lengths)])
    for k, result in enumerate(results):
        if len(result) != lengths[k]:
            raise ValueError(f"{urls[k]}: expected {lengths[k]} bytes from byte {offsets[k]}, "
                             f"found {len(result)}; the object is shorter than its header "
                             "says, or changed after the dataset was built.")
        buffers[k][...] = np.frombuffer(result, np.uint8)
    return int(sum(lengths))


def _cat(store: Store, urls: list[str], starts: list[int], ends: list[int]) -> list[bytes]:
    """The bytes `starts[k]` to `ends[k]` (exclusive; fewer where an object
    ends first) of each of `urls`, `MAX_IN_FLIGHT` requests in flight:
    `cat_ranges` of an async filesystem (s3fs runs them on its event loop),
    else a thread pool. An error raises the `ValueError` naming its URL."""
    empty = [k for k in range(len(urls)) if ends[k] <= starts[k]]
    if empty:  # no request for no bytes (S3 refuses an empty range)
        wanted = [k for k in range(len(urls)) if ends[k] > starts[k]]
        found = iter(_cat(store, [urls[k] for k in wanted], [starts[k] for k in wanted],
                          [ends[k] for k in wanted]))
        return [b"" if ends[k] <= starts[k] else next(found) for k in range(len(urls))]
    if not urls:
        return []
    located = [store.filesystem(url) for url in urls]
    fs = located[0][0]
    if getattr(fs, "async_impl", False) and all(f is fs for f, _ in located):
        results = fs.cat_ranges([p for _, p in located], list(starts), list(ends),
                                on_error="return", batch_size=MAX_IN_FLIGHT)
    else:
        def one(k):
            try:
                return located[k][0].cat_file(located[k][1], start=starts[k], end=ends[k])
            except Exception as e:  # handed back, raised below naming the URL
                return e

        with ThreadPoolExecutor(min(MAX_IN_FLIGHT, len(urls))) as pool:
            results = list(pool.map(one, range(len(urls))))
    for url, result in zip(urls, results):
        if isinstance(result, BaseException):
            raise error_of(url, result) from result
    return results


def read_header(file: RangeFile) -> header_lib.NpyHeader:
    """The header of a `.npy` object, from one ranged request (two for a
    header past `HEADER_BYTES`), checked as `header.read_header` checks a
    file's: `header.py`'s parser, and the object's size against its shape.

    Raises:
        ValueError: the object is not a `.npy` array of a numeric dtype whose
            size matches its header, or cannot be read (the message starts
            with the URL).
    """
    url = file.url
    version, dtype, fortran_order, shape, head = header_lib.parse_head(
        url, file.read(0, min(HEADER_BYTES, file.size)), file.size, file.read, "object")
    header = header_lib.NpyHeader(url, version, dtype, shape, fortran_order, len(head),
                                  file_id_of(file.identity), zlib.crc32(head))
    header_lib.check_size(header, file.size)
    return header


# Listing.


def find_objects(source, name: str, store: Store) -> tuple[sources.PathTable, list[dict]]:
    """The objects a source of URLs names, as `sources.find_files` lists
    files: a "directory" prefix (every `.npy` under it, sorted by path
    components, hidden folders skipped), a glob (every object it matches,
    sorted) or an object; with their `info` (size and ETag) from the listing.

    Raises:
        ValueError: a URL names nothing, or a prefix or glob no object.
    """
    entries = list(source) if isinstance(source, (list, tuple)) else [source]
    if not entries:
        raise ValueError(f"`{name}` must name at least one file, directory or glob. "
                         f"Received: {name}={source!r}")
    builder, infos = sources.PathTableBuilder(), []
    for entry in entries:
        kind, root, found = _resolve(entry, name, store)
        root_id = builder.add_root(root, kind)
        for relpath, info in found:
            builder.append(root_id, relpath)
            infos.append(info)
        if not found:
            what = "no .npy files" if kind == sources.DIRECTORY else "no files"
            raise ValueError(f"`{name}` names {entry!r}, which has {what}.")
    return builder.build(), infos


def _resolve(url: str, name: str, store: Store) -> tuple[str, str, list]:
    """`(kind, root URL, [(relative path, info)])` of one URL; for
    `"archive.npz::name"` (or a glob of archives), that member of each."""
    archive, member = npz.split(url)
    if member is not None:
        kind, root, found = _resolve(archive, name, store)
        return kind, root, [(npz.member_path(p, member), info) for p, info in found]
    fs, path = store.filesystem(url)
    prefix = url[:len(url) - len(url.split("://", 1)[1])]
    try:
        if glob.has_magic(path):
            matches = fs.glob(path, detail=True)
            root = sources._glob_root(path)  # keeps a leading "/" (file://, memory://)
            return sources.GLOB, prefix + root, _relative(matches, root, lambda p: True)
        try:
            info = fs.info(path)
        except FileNotFoundError:
            info = None
        if info is not None and info.get("type") == "file":
            return sources.FILE, prefix + path.rsplit("/", 1)[0], [(path.rsplit("/", 1)[1], info)]
        root = path.rstrip("/")
        found = fs.find(root, detail=True)
        if info is None and not found:
            raise ValueError(f"`{name}` must name existing files, directories or globs; "
                             f"{url!r} does not exist.")
        return sources.DIRECTORY, prefix + root, _relative(found, root, _npy_not_hidden)
    except OSError as e:
        raise error_of(url, e) from e


def _npy_not_hidden(relpath: str) -> bool:
    parts = relpath.split("/")
    return parts[-1].lower().endswith(".npy") and not any(p.startswith(".") for p in parts[:-1])


def _relative(found: dict, root: str, keep) -> list[tuple[str, dict]]:
    """Files of a listing below `root`, relative to it, sorted by components."""
    start = len(root.rstrip("/")) + 1
    files = [(p[start:], info) for p, info in found.items()
             if info.get("type", "file") == "file" and p.startswith(root.rstrip("/") + "/")]
    return sorted(((r, i) for r, i in files if keep(r)), key=lambda item: item[0].split("/"))


# Indexing.


def index_source(source, *, layout: str, name: str, store: Store | None, verbose: bool = True):
    """A `RowIndex` or `FileIndex` of the objects a source of URLs names
    (`layout="auto"`: rows for one object, files otherwise), from one listing
    and one ranged request per object for its header. The index's `store`
    is how its readers open the URLs."""
    from keras_npy.index import FileIndex, RowIndex, _chunks_read

    store = store or Store()
    paths, infos = find_objects(source, name, store)
    if layout == "auto":
        single = isinstance(source, str) and paths.kinds == [sources.FILE]
        layout = "rows" if single else "files"
    urls = paths.select(np.arange(len(paths)))
    files = dict(zip(urls, infos))
    chunks = _chunks_read(urls, lambda chunk: _headers(chunk, files, store), verbose)
    headers = [h for chunk in chunks for _, h in chunk]
    cls = RowIndex if layout == "rows" else FileIndex
    index = cls.from_headers(paths, headers)
    index.store = store
    return index


def names_objects(source, name: str, store: Store | None) -> bool:
    """Whether a source of URLs names objects only (no prefix or glob)."""
    store = store or Store()
    entries = list(source) if isinstance(source, (list, tuple)) else [source]
    for url in entries:
        fs, path = store.filesystem(npz.physical(url))  # an archive, for a member
        if glob.has_magic(path):
            return False
        try:
            if fs.info(path).get("type") != "file":
                return False
        except FileNotFoundError:
            return False  # listed as a prefix, whose error names it
        except OSError as e:
            raise error_of(url, e) from e
    return True


def per_sample_targets(y, x_index, store: Store | None, verbose: bool):
    """A `FileIndex` of the target objects `y` names, one per file of
    `x_index`, matched by path relative to their roots."""
    from keras_npy.index import FileIndex, _chunks_read

    store = store or Store()
    found, infos = find_objects(y, "y", store)
    by_relpath = {}
    for i in range(len(found)):
        by_relpath.setdefault(found.relpath(i), i)
    order = np.empty(x_index.num_samples, np.int64)
    for i in range(x_index.num_samples):
        match = by_relpath.get(x_index.paths.relpath(i))
        if match is None:
            expected = found.roots[0].rstrip("/") + "/" + x_index.paths.relpath(i)
            raise ValueError(f"{x_index.paths[i]}: expected a target file {expected} in "
                             "`y`, found none.")
        order[i] = match
    paths = found.take(order)
    urls = paths.select(np.arange(len(paths)))
    files = {url: infos[int(k)] for url, k in zip(urls, order.tolist())}
    chunks = _chunks_read(urls, lambda chunk: _headers(chunk, files, store), verbose)
    index = FileIndex.from_headers(paths, [h for chunk in chunks for _, h in chunk])
    index.store = store
    return index


def _headers(urls: list[str], infos: dict, store: Store) -> list:
    """The headers of `urls`, many requests in flight."""
    def one(url):
        if npz.is_archive(url):  # its directory, then the member's header
            source = RangeFile(npz.physical(url), store, infos.get(url))
            return header_lib.read_member_header(url, source)
        return read_header(RangeFile(url, store, infos.get(url)))

    if len(urls) == 1:
        return [one(urls[0])]
    with ThreadPoolExecutor(min(MAX_IN_FLIGHT, len(urls))) as pool:
        return list(pool.map(one, urls))


# Reading batches.


#: `(url, identity)` of the objects this process has checked (per process:
#: the set is new after a fork). Guarded by `_CHECKED_LOCK`.
_CHECKED: dict[int, set] = {}
_CHECKED_LOCK = threading.Lock()


def check_unchanged(store: Store, url: str, file_id: tuple) -> None:
    """Raises the error naming `url` unless the object has the identity it
    was indexed with; asks once per object per process."""
    key = (url, tuple(file_id))
    with _CHECKED_LOCK:
        checked = _CHECKED.setdefault(os.getpid(), set())
        if key in checked:
            return
    now = RangeFile(url, store)
    if file_id_of(now.identity) != tuple(file_id):
        raise ValueError(f"{url}: expected the object as indexed ({file_id[2]} bytes), found "
                         f"{now.size} bytes with ETag or version {now.identity[1]!r} that "
                         "differ; the object changed after the dataset was built.")
    with _CHECKED_LOCK:
        _CHECKED.setdefault(os.getpid(), set()).add(key)


def row_ranges(part, row_nbytes: int) -> tuple[np.ndarray, np.ndarray]:
    """`(offsets, lengths)` from a file's row 0 of the ranges that read the
    rows of a part: a run is one range; scattered rows are sorted, adjacent
    rows merged, and then the smallest gaps between ranges, as long as the
    gaps read stay within `GAP_BUDGET` of the rows' bytes (a request costs
    more than a few bytes; a whole object is never read for a few rows)."""
    if isinstance(part, plan.Run):
        return plan.row_extents(part, row_nbytes)
    rows = np.unique(np.asarray(part.rows, np.int64))
    if len(rows) <= 1:
        return rows * row_nbytes, np.full(len(rows), row_nbytes, np.int64)
    gaps = (np.diff(rows) - 1) * row_nbytes
    order = np.argsort(gaps, kind="stable")
    merged = np.zeros(len(gaps), bool)
    merged[order] = np.cumsum(gaps[order]) <= GAP_BUDGET * len(rows) * row_nbytes
    first = np.flatnonzero(np.concatenate([[True], ~merged]))
    last = np.concatenate([first[1:] - 1, [len(rows) - 1]])
    return rows[first] * row_nbytes, (rows[last] - rows[first] + 1) * row_nbytes


class RemoteRows:
    """The objects of a `RowIndex` of URLs, read as `engine.RowFiles` reads
    files: a batch's parts (`plan.plan_rows`) become ranges, adjacent and
    near rows merged (`row_ranges`), all read at once."""

    def __init__(self, index):
        self.index, self.store, self.row_nbytes = index, index.store, index.row_nbytes
        self.starts = index.row_starts.tolist()
        self.urls = [index.paths[f] for f in range(len(index.paths))]
        self._objects = [npz.physical(u) for u in self.urls]  # an archive, for a member
        # What keys an object's blocks in the cache: its size and tag, as indexed.
        self._identities = {url: (int(i[2]), str(int(i[1])))
                            for url, i in zip(self._objects, index.file_ids.tolist())}
        for f, fortran in enumerate(index.fortran_order.tolist()):
            if fortran:
                raise ValueError(f"{self.urls[f]}: rows of a Fortran-order array are strided "
                                 "and are not read over URLs; save the array in C order "
                                 "(np.ascontiguousarray).")

    def read_range(self, ids, dtype):
        return None  # no map to copy from: the plan reads it

    def prefetch(self, parts) -> int:
        return 0  # batches are read with all their ranges in flight

    def read_parts(self, parts: list, into: np.ndarray) -> None:
        """Fills the slots of `parts` (`plan.Run` and `plan.Gather`) in `into`."""
        urls, offsets, buffers, scatters = [], [], [], []
        target = into.reshape(len(into), -1).view(np.uint8)
        for part in parts:
            if not isinstance(part, (plan.Run, plan.Gather)):
                raise ValueError(f"{self.urls[part.file]}: windows and crops are not read "
                                 "over URLs.")
            url, first = self._objects[part.file], int(self.index.data_offsets[part.file])
            check_unchanged(self.store, url, self.index.file_ids[part.file].tolist())
            if isinstance(part, plan.Run):
                urls.append(url)
                offsets.append(first + part.row * self.row_nbytes)
                buffers.append(target[part.slot:part.slot + part.count].reshape(-1))
                continue
            starts, lengths = row_ranges(part, self.row_nbytes)
            for start, length in zip(starts.tolist(), lengths.tolist()):
                urls.append(url)
                offsets.append(first + start)
                buffers.append(np.empty(length, np.uint8))
                scatters.append((part, start, buffers[-1]))
        read_ranges(self.store, urls, offsets, buffers, [self._identities[u] for u in urls])
        for part, start, buffer in scatters:
            self._scatter(part, start, buffer, target)

    def _scatter(self, part, start: int, buffer: np.ndarray, target: np.ndarray) -> None:
        """Copies the rows of a gather that lie in one range into their slots."""
        rows = np.asarray(part.rows, np.int64)
        slots = np.arange(len(rows)) if part.slots is None else part.slots
        first, count = start // self.row_nbytes, len(buffer) // self.row_nbytes
        inside = (rows >= first) & (rows < first + count)
        stretch = buffer.reshape(count, self.row_nbytes)
        target[slots[inside]] = stretch[rows[inside] - first]


class RemoteFiles:
    """The objects of a `FileIndex` of URLs: each sample read with one ranged
    request of its header and data and one byte more (the header checked
    against the index by its CRC-32, the size by the byte more, as
    `local.read_samples` checks files), all of a batch's in flight. With a
    block cache, the objects as indexed (header and data) are read through it,
    keyed by their size and header CRC-32."""

    def __init__(self, index):
        self.index, self.store = index, index.store

    def read_samples(self, ids: np.ndarray, buffers: list, nbytes: list) -> int:
        """Fills `buffers[k]` with the data of sample `ids[k]`; returns the
        number of samples read (all of them)."""
        index = self.index
        urls = index.paths.select(ids)
        heads = index.data_offsets[ids].tolist()
        crcs = index.header_crc32[ids].tolist()
        lengths = [h + n for h, n in zip(heads, nbytes)]
        if self.store.cache_dir is not None and index.members is None:  # as indexed, in blocks
            reads = [np.empty(n, np.uint8) for n in lengths]
            identities = [(n, f"crc32 {c}") for n, c in zip(lengths, crcs)]
            read_ranges(self.store, urls, [0] * len(urls), reads, identities)
        else:
            reads = self._fetch(ids, urls, lengths)
        for k, url in enumerate(urls):
            found = len(reads[k])
            if found != lengths[k] or zlib.crc32(reads[k][:heads[k]]) != crcs[k]:
                raise ValueError(
                    f"{url}: expected {lengths[k]} bytes with the header read when the dataset "
                    f"was built, found {found if found <= lengths[k] else 'more'} bytes"
                    f"{'' if found != lengths[k] else ' and another header'}; the object "
                    "changed after the dataset was built.")
            buffers[k][...] = reads[k][heads[k]:lengths[k]]
        return len(ids)

    def _fetch(self, ids: np.ndarray, urls: list, lengths: list) -> list:
        """Each sample's header and data (`lengths[k]` bytes) as its object
        holds them, one request each, all in flight: a `.npy` object's from
        byte 0 and one byte more (an object that grew shows as one that shrank
        does); an `.npz` member's from its first byte, inflated if deflated
        (its size and CRC-32 checked)."""
        table, count = self.index.members, len(urls)
        starts, asks, deflated = [0] * count, [n + 1 for n in lengths], [False] * count
        if table is not None:
            inside = (table.starts[ids] >= 0).tolist()
            starts = np.maximum(table.starts[ids], 0).tolist()
            deflated = (table.methods[ids] == npz.DEFLATED).tolist()
            asks = [int(table.compressed_sizes[i]) if d else n + (not m) for i, d, m, n in
                    zip(ids.tolist(), deflated, inside, lengths)]
        results = _cat(self.store, [npz.physical(u) for u in urls], starts,
                       [a + n for a, n in zip(starts, asks)])
        reads = []
        for k, raw in enumerate(results):
            if deflated[k] and len(raw) == asks[k]:
                i = int(ids[k])
                member = npz.Member(urls[k], starts[k], asks[k], int(table.sizes[i]),
                                    npz.DEFLATED, int(table.crcs[i]))
                raw = npz.Inflater(urls[k], member).inflate(raw)
            reads.append(np.frombuffer(raw, np.uint8))
        return reads


def reader_of(index):
    """`RemoteRows` or `RemoteFiles` of an index of URLs; `None` for local files."""
    if getattr(index, "store", None) is None:
        return None
    return RemoteRows(index) if index.layout == "rows" else RemoteFiles(index)
