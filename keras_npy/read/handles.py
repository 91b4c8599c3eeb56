"""Open files and memory maps of rows files, one table per process.

A rows file is opened once per process and checked when it is: its device,
inode, size and modification time must be what the index recorded, or else
its header is read again and must say what it said then (a file rewritten
with the same header is read; one replaced by another array is an error that
names it). Its data is memory-mapped where the SIGBUS guard works (see
`guard`): copying rows from a map costs less than a system call per run of
rows, and a gather of scattered rows less than a system call per row.

The table is per process and shared by every reader in it, and bounded
(`MAX_OPEN_FILES`): a pipeline that TensorFlow keeps alive after its dataset
is dropped holds no descriptor or map of its own. A descriptor or map leaves
the table when it is evicted or poisoned and is closed once no read holds it.
Tables are inherited by forked processes, where `preadv` on a shared
descriptor and reads of a shared map are as correct as in the parent.
"""

from __future__ import annotations

import collections
import mmap
import os
import threading
from typing import NamedTuple

import numpy as np

from keras_npy import npz
from keras_npy.read import guard, local

#: Rows files held open (with their maps) per process: each holds a descriptor,
#: and its map another (Python's `mmap` keeps a duplicate).
MAX_OPEN_FILES = 64


class FileFacts(NamedTuple):
    """What the index knows of one rows file.

    Attributes:
        path: the file's path.
        data_offset: where its data starts.
        nbytes: its data bytes.
        identity: `(device, inode, size, modification time in ns)` when indexed.
        header: `(dtype, shape, fortran_order)` that its header said.
    """

    path: str
    data_offset: int
    nbytes: int
    identity: tuple
    header: tuple

    def key(self) -> str:
        """A key that names this file as indexed (a str hashes once)."""
        return f"{self.path}\0{self.data_offset}\0{self.identity}"


class MapFailed(ValueError):
    """A file could not be mapped (it may have changed since it was opened)."""


class Mapped:
    """A read-only, guarded memory map of a file's data bytes.

    Attributes:
        bytes: the data as a `uint8` array (read-only).
    """

    def __init__(self, fd: int, offset: int, nbytes: int):
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        self._mmap = mmap.mmap(fd, offset + nbytes - start, mmap.MAP_SHARED, mmap.PROT_READ,
                               offset=start)
        try:  # no 8 MiB read-around per fault: the read-ahead says what is needed
            self._mmap.madvise(mmap.MADV_RANDOM)
        except (AttributeError, OSError):
            pass
        whole = np.frombuffer(self._mmap, np.uint8)
        self.region = guard.register(whole.ctypes.data, whole.ctypes.data + whole.nbytes)
        self.bytes = whole[offset - start:]
        self._address = whole.ctypes.data + offset - start  # of the data's first byte
        self._views = {}

    def pages_missing(self, offset: int, nbytes: int) -> int | None:
        """The pages of data bytes `[offset, offset + nbytes)` that are not in
        the page cache (nothing is read to tell); `None` where the system
        cannot tell."""
        return local.pages_missing(self._address + offset, nbytes)

    @property
    def poisoned(self) -> bool:
        """Whether a read of this map faulted: what was read may be zeros."""
        return self.region.poisoned

    def rows(self, dtype: np.dtype, shape: tuple[int, ...], fortran: bool) -> np.ndarray:
        """The data as an array of `shape` (the file's) and `dtype` (as stored);
        made once."""
        key = (dtype.str, shape, fortran)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = self.bytes.view(dtype).reshape(
                shape, order="F" if fortran else "C")
        return view

    def __del__(self):
        if getattr(self, "region", None) is None:
            return  # never mapped
        try:
            guard.unregister(self.region)  # before the range is unmapped and reused
            self.bytes = self._views = None
            self._mmap.close()
        except (BufferError, AttributeError, TypeError):
            pass  # still exported (unmapped when collected), or the interpreter is ending


class _ProbeMap:
    """A map of a file's data that is never read, only asked (`mincore`) which
    of its pages are in the page cache: for files read with `preadv`."""

    def __init__(self, fd: int, offset: int, nbytes: int):
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        self._mmap = mmap.mmap(fd, offset + nbytes - start, mmap.MAP_SHARED, mmap.PROT_READ,
                               offset=start)
        self._address = np.frombuffer(self._mmap, np.uint8).ctypes.data + offset - start

    pages_missing = Mapped.pages_missing


class OpenFile:
    """A rows file, open and checked against its `FileFacts`; closed when dropped.

    Raises:
        ValueError: the file cannot be opened, or differs from what was indexed.
    """

    def __init__(self, facts: FileFacts):
        self.facts, self._mapped, self._lock = facts, None, threading.Lock()
        self._probe = None  # a map to ask which pages are cached, where reads have none
        try:
            self.fd = os.open(npz.physical(facts.path), os.O_RDONLY)
        except OSError as e:
            self.fd = None
            raise ValueError(f"{facts.path}: cannot open the file: {e.strerror}.") from e
        try:
            stat = os.fstat(self.fd)
            _check_identity(facts, stat)
            self._stamp = _stamp(stat)
            # Linux answers mincore truly only to a file's owner, a process that may
            # write it, or root; to others every page looks cached (a side channel
            # closed in 5.0), which would turn the read-ahead off.
            euid = os.geteuid() if hasattr(os, "geteuid") else None
            self._mincore_tells = euid is None or euid in (0, stat.st_uid) or os.access(
                npz.physical(facts.path), os.W_OK, effective_ids=os.access in os.supports_effective_ids)
        except BaseException:
            os.close(self.fd)
            self.fd = None
            raise

    def unchanged(self) -> bool:
        """Whether the file is as it was when opened: size, modification and
        change times. A copy from its map is kept only if this holds after the
        copy: a file cut short mid-page reads as zeros past its end (no fault
        there), and with multigrain timestamps (Linux 6.13 and later) any
        change after the file was opened changes its times. A file being
        closed (its last holder gone, while a weak reference of a reader
        still reaches it: CPython runs `__del__` before clearing those)
        counts as changed: the reader opens it anew."""
        fd = self.fd
        if fd is None:
            return False
        try:
            return _stamp(os.fstat(fd)) == self._stamp
        except OSError:
            return False

    def mapped(self) -> Mapped | None:
        """The guarded map of the data, made on first use; `None` where maps
        are not guarded (the caller reads with `preadv`)."""
        mapped = self._mapped
        if mapped is not None or not guard.available() or self.facts.nbytes == 0:
            return mapped
        with self._lock:
            if self._mapped is None:
                try:
                    self._mapped = Mapped(self.fd, self.facts.data_offset, self.facts.nbytes)
                except (OSError, ValueError) as e:  # e.g. the file is shorter than its map
                    raise MapFailed(f"{self.facts.path}: cannot map the file: {e}.") from e
            return self._mapped

    def pages_missing(self, offset: int, nbytes: int) -> int | None:
        """The pages of data bytes `[offset, offset + nbytes)` not in the page
        cache, asked of a map (the reads' own, or one made for this) so that
        nothing is read to tell; `None` where the system cannot tell."""
        if not self._mincore_tells:
            return None  # probed by reads instead
        try:
            probe = self.mapped() or self._probe
        except MapFailed:
            return None  # the read says why
        if probe is None:
            if self.facts.nbytes == 0:
                return None
            try:
                probe = self._probe = _ProbeMap(self.fd, self.facts.data_offset,
                                                self.facts.nbytes)
            except (OSError, ValueError):
                self._probe = False  # not mappable: probed by reads instead
        return probe.pages_missing(offset, nbytes) if probe else None

    def __del__(self):
        fd = getattr(self, "fd", None)
        if fd is not None:
            self.fd = None  # first: a reader reaching this object meanwhile sees it closed
            try:
                os.close(fd)
            except (OSError, AttributeError, TypeError):  # the interpreter is ending
                pass


class _Table:
    """The open rows files of this process, least recently opened first out."""

    def __init__(self):
        self._files: collections.OrderedDict[str, OpenFile] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, facts: FileFacts) -> OpenFile:
        found = self._files.get(key)  # lock-free: entries are replaced whole
        if found is not None:
            return found
        with self._lock:
            found = self._files.get(key)
            if found is None:
                found = self._files[key] = OpenFile(facts)
                while len(self._files) > MAX_OPEN_FILES:
                    self._files.popitem(last=False)  # closed once no read holds it
            return found

    def drop(self, key: str, found: OpenFile) -> None:
        """Forgets `found` (poisoned, or failed): the next `get` opens the file anew."""
        with self._lock:
            if self._files.get(key) is found:
                del self._files[key]

    def clear(self) -> None:
        """Forgets every open file (each is closed once no read holds it): what
        a process does before it measures reads of data not in memory, since
        the pages of a map stay in the page cache while it is mapped."""
        with self._lock:
            self._files.clear()

    def __len__(self) -> int:
        return len(self._files)


TABLE = _Table()


def _after_fork_in_child() -> None:
    # A thread of the parent may have held these locks when it forked.
    TABLE._lock = threading.Lock()
    for opened in list(TABLE._files.values()):
        opened._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _stamp(stat: os.stat_result) -> tuple:
    return (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def identity_of(stat: os.stat_result) -> tuple:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _check_identity(facts: FileFacts, stat: os.stat_result) -> None:
    """The file must be what was indexed; when its identity changed, its header
    and size must still say the same (a file rewritten alike is read)."""
    if identity_of(stat) == facts.identity:
        return
    from keras_npy.header import read_header  # the index stage's reader

    expected_size = facts.identity[2]  # the data's end, or an archive's size
    try:
        header = read_header(facts.path)
    except ValueError as e:
        raise ValueError(f"{e} (The file changed after the dataset was built.)") from e
    found = (header.dtype, header.shape, header.fortran_order)
    if found != facts.header or header.data_offset != facts.data_offset:
        dtype, shape, _ = facts.header
        raise ValueError(f"{facts.path}: expected an array of dtype {dtype} and shape {shape} "
                         f"as when the dataset was built, found dtype {header.dtype} and shape "
                         f"{header.shape}; the file changed after the dataset was built.")
    if stat.st_size != expected_size:
        raise ValueError(f"{facts.path}: expected a file of {expected_size} bytes, found "
                         f"{stat.st_size}; the file changed after the dataset was built.")
