"""Local file I/O: reads that fill their buffers or name the file, and hints to the kernel.

Every read is `os.preadv` (positionless, so threads and forked processes may
share a descriptor), resumed after a short read, and checked: fewer bytes than
asked means the file was cut short after it was indexed, and the error says
which file and where. Hints tell the kernel which bytes come next
(`posix_fadvise(POSIX_FADV_WILLNEED)`: it starts reading them in the
background and returns, so that many reads are in flight without a thread
each) and ask whether bytes are in the page cache already: `mincore` on a
map, which reads nothing, or else `preadv` with `RWF_NOWAIT`, which fails
instead of waiting for the disk but starts the kernel's own read-ahead from a
byte it misses (up to the device's `read_ahead_kb`, 8 MiB on some disks).
"""

from __future__ import annotations

import ctypes
import os
import zlib

import numpy as np

_IOV_MAX = 1024  # Linux's limit on buffers per preadv call
_WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)
#: Runs of a region shorter than this are read as one stretch (see `pread_runs`).
SHORT_RUN = 64
#: The most bytes asked for in one `posix_fadvise(WILLNEED)` call (see `advise`).
ADVISE_BYTES = 8 * 2**20
_NOWAIT = getattr(os, "RWF_NOWAIT", None)
_PROBE = bytearray(1)  # what probes read into; its content is never used


class ShortRead(ValueError):
    """Fewer bytes than asked: the file was cut short after it was indexed."""


def byte_view(array: np.ndarray) -> memoryview:
    """A writable byte view of a C-contiguous array, whatever its dtype (numpy
    exposes no buffer for some dtypes, e.g. non-native long doubles)."""
    return memoryview(array.reshape(-1).view(np.uint8))


def pread_into(path: str, fd: int, buffers: list, offset: int) -> None:
    """Fills `buffers` (byte memoryviews) from `offset` of the open file `fd`,
    or raises the `ValueError` that names `path`."""
    for start in range(0, len(buffers), _IOV_MAX):
        chunk = buffers[start:start + _IOV_MAX]
        wanted = sum(b.nbytes for b in chunk)
        found = _preadv_fully(path, fd, chunk, offset, wanted)
        if found != wanted:
            raise _short(path, wanted, offset, found)
        offset += wanted


def pread_runs(path: str, fd: int, target: np.ndarray, offsets: np.ndarray,
               length: int) -> None:
    """Fills `target` (bytes) with runs of `length` bytes from `offsets` of the
    open file `fd`, one after the other: a region of a sample (`regions`).
    Runs under `SHORT_RUN` bytes are cut from one read of the stretch that
    holds them all: a system call per element of a crop of a last axis cost
    500x the read of the whole file."""
    if length < SHORT_RUN and len(offsets) > 1:
        first = int(offsets[0])
        span = np.empty(int(offsets[-1]) - first + length, np.uint8)
        pread_into(path, fd, [span], first)
        target[:] = span[(offsets - first)[:, None] + np.arange(length)].reshape(-1)
        return
    for k, offset in enumerate(offsets.tolist()):
        pread_into(path, fd, [target[k * length:(k + 1) * length]], offset)


def read_samples(paths: list[str], heads: list[int], buffers: list, nbytes: list[int],
                 crcs: list[int], starts: list[int] | None = None) -> int:
    """Reads per-sample files, each in one `preadv` from byte 0: its header
    (`heads[k]` bytes) into a scratch buffer, `nbytes[k]` of data into
    `buffers[k]`, and one byte more, so that a file that grew shows as one
    that shrank does. Returns -1, or the position of the first file whose size
    or header (`crcs[k]`, the CRC-32 recorded at indexing) is not as indexed.
    One function for the whole batch: this loop is most of the cost of
    reading small files. With `starts`, file `k` is an archive whose member
    starts at byte `starts[k]` (no byte more is read: the archive goes on)."""
    extra, scratch = bytearray(1), {}
    tail = [] if starts is not None else [extra]
    open_, preadv, close, crc32, flags = os.open, os.preadv, os.close, zlib.crc32, os.O_RDONLY
    for k, path in enumerate(paths):
        size = heads[k]
        head = scratch.get(size)
        if head is None:
            head = scratch[size] = bytearray(size)
        try:
            fd = open_(path, flags)
        except OSError as e:
            raise ValueError(f"{path}: cannot open the file: {e.strerror}.") from e
        try:
            wanted, start = size + nbytes[k], 0 if starts is None else starts[k]
            found = preadv(fd, [head, buffers[k], *tail], start)
            if found < wanted:  # a short read is legal; resume where it stopped
                found += _preadv_fully(path, fd, _rest([head, buffers[k]], found),
                                       start + found, wanted - found)
        except OSError as e:
            raise ValueError(f"{path}: cannot read the file: {e.strerror}.") from e
        finally:
            close(fd)
        if found != wanted or crc32(head) != crcs[k]:
            return k
    return -1


def header_crc32(head: bytes | bytearray) -> int:
    """The checksum of a header's bytes, as the index records it."""
    return zlib.crc32(head)


def advise(fd: int, offset: int, nbytes: int) -> None:
    """Asks the kernel to start reading bytes `offset` to `offset + nbytes` into
    the page cache, without waiting for them."""
    if _WILLNEED is None:
        return
    end = offset + nbytes
    # Linux starts at most the device's read-ahead size (8 MiB here) per call
    # and drops the rest: a 256 MiB stretch advised at once arrived at 86
    # MiB/s, in 8 MiB pieces at 3,800 MiB/s.
    while offset < end:
        piece = min(end - offset, ADVISE_BYTES)
        try:
            os.posix_fadvise(fd, offset, piece, _WILLNEED)
        except OSError:  # a hint: a file system that refuses it reads on demand
            return
        offset += piece


def cached(fd: int, offset: int) -> bool | None:
    """Whether the byte at `offset` is in the page cache: `None` where the
    system cannot tell without reading it."""
    if _NOWAIT is None:
        return None
    try:
        os.preadv(fd, [_PROBE], offset, _NOWAIT)
    except BlockingIOError:
        return False
    except OSError:  # not supported by this file system
        return None
    return True


def _load_mincore():
    try:
        mincore = ctypes.CDLL(None, use_errno=True).mincore
    except (AttributeError, OSError):  # not a system with mincore
        return None
    mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    mincore.restype = ctypes.c_int
    return mincore


_MINCORE = _load_mincore()
_OS_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def pages_missing(address: int, nbytes: int) -> int | None:
    """The pages of the mapped bytes `[address, address + nbytes)` that are
    not in the page cache, by `mincore` (nothing is read); `None` where the
    system cannot tell."""
    if _MINCORE is None or nbytes <= 0:
        return None if _MINCORE is None else 0
    start = address - address % _OS_PAGE
    pages = -(-(address + nbytes - start) // _OS_PAGE)
    vec = ctypes.create_string_buffer(pages)
    if _MINCORE(start, address + nbytes - start, vec) != 0:
        return None
    resident = vec.raw
    return pages - sum(b & 1 for b in resident) if pages < 64 else (
        pages - int(np.count_nonzero(np.frombuffer(resident, np.uint8) & 1)))


def can_advise() -> bool:
    return _WILLNEED is not None


def _preadv_fully(path: str, fd: int, buffers: list, offset: int, wanted: int) -> int:
    """`preadv` until `wanted` bytes are read or the file ends; the bytes read."""
    try:
        found = os.preadv(fd, buffers, offset)
        while found < wanted:  # a short read is legal; resume where it stopped
            more = os.preadv(fd, _rest(buffers, found), offset + found)
            if more == 0:
                break
            found += more
    except OSError as e:
        raise ValueError(f"{path}: cannot read the file: {e.strerror}.") from e
    return found


def _rest(buffers: list, done: int) -> list:
    rest, skip = [], done
    for b in buffers:
        size = memoryview(b).nbytes
        if skip >= size:
            skip -= size
            continue
        rest.append(memoryview(b).cast("B")[skip:])
        skip = 0
    return rest


def _short(path: str, expected: int, offset: int, found: int) -> ValueError:
    return ShortRead(f"{path}: expected {expected} bytes at offset {offset}, found {found}; "
                      "the file changed after the dataset was built.")

