"""A strict reader of `.npy` headers, for files that are untrusted input.

The byte layout of a `.npy` file (NumPy Enhancement Proposal 1, `numpy.lib.format`):

```
offset  size  content
0       6     magic string b"\\x93NUMPY"
6       1     major version: 1, 2 or 3
7       1     minor version: 0
8       2|4   header length HLEN, little-endian unsigned: 2 bytes ("<H") in
              version 1.0, 4 bytes ("<I") in versions 2.0 and 3.0
10|12   HLEN  the header: an ASCII (1.0), latin-1 (2.0) or UTF-8 (3.0) Python
              literal of a dict with exactly the keys
                  'descr'          a dtype string such as '<f4', '>i8', '|b1'
                  'fortran_order'  True or False
                  'shape'          a tuple of non-negative Python ints
              padded with spaces and a final newline so that the data starts
              on a 64-byte boundary (16 in files written by old NumPy)
10+HLEN|12+HLEN  the data: prod(shape) * itemsize bytes, C or Fortran order
```

What this module refuses, and why:

- anything but the three versions above (the data offset depends on it);
- headers longer than `MAX_HEADER_SIZE` bytes: a hostile file must not make us
  parse megabytes of text (NumPy's own `np.load` has the same cap);
- a header that is not a plain literal: it is parsed without evaluating code
  (a fast exact pattern for what NumPy writes, else `ast.literal_eval`);
- missing, extra or mistyped keys, negative dimensions, or booleans used as
  dimensions (`True` is an `int` to Python, not to us);
- shapes NumPy cannot make: more than `MAX_DIMS` dimensions, a dimension
  past the largest array index, or nonzero dimensions whose product of bytes
  is past it (NumPy's own limits: an empty array may declare a huge shape,
  but not an impossible one);
- dtypes that are not numbers: object arrays (whose data is a pickle, which
  could run code), structured, string, void, datetime and subarray dtypes;
- a file whose size is not exactly the header plus the data its shape
  claims: a truncated file, or one whose header lies, is caught from its size
  alone, before any data is read or any memory is allocated for it.

Every refusal is a `ValueError` that starts with the file's path and says what
was expected and what was found. A header this reader accepts is one that
`np.load(path, allow_pickle=False)` reads to the same dtype, shape and order
(the tests check it against NumPy's reader on generated and mutated headers);
it refuses some that NumPy reads: non-numeric dtypes, Python 2 headers, and
files with bytes after the data.
"""

from __future__ import annotations

import ast
import functools
import math
import os
import re
import struct
import threading
import zlib
from typing import NamedTuple

import numpy as np

from keras_npy import npz

MAGIC = b"\x93NUMPY"
MAX_HEADER_SIZE = 10_000
#: NumPy's limits: dimensions of an array, and its largest index (and bytes).
MAX_DIMS = 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32
MAX_INDEX = int(np.iinfo(np.intp).max)
# Bytes read by the first (usually only) read of a file: NumPy pads its
# headers to 128 bytes, so one read covers the preamble and the header.
_FIRST_READ = 512
_PAGE = 4096
_PREAMBLE = {1: (struct.Struct("<H"), "latin1"), 2: (struct.Struct("<I"), "latin1"),
             3: (struct.Struct("<I"), "utf8")}
_KEYS = ("descr", "fortran_order", "shape")
# Exactly what `np.save` writes (NumPy 1.x and 2.x); anything else takes the
# slower, equally strict `ast.literal_eval` path.
_CANONICAL = re.compile(
    r"\{'descr': '([<>|=]?[a-zA-Z?][0-9]*)', 'fortran_order': (True|False), "
    r"'shape': \((|(?:0|[1-9][0-9]{0,19}),|(?:0|[1-9][0-9]{0,19})(?:, (?:0|[1-9][0-9]{0,19}))+)"
    r"\), \} *\n?\Z")
_NUMERIC_KINDS = "biufc"
# The descr strings NumPy writes for numeric dtypes, in both byte orders:
# a look-up is ~20x faster than np.dtype(descr) and needs no checks after it.
_NUMERIC_DTYPES = {
    dtype.str: dtype
    for code in "?bBhHiIlLqQefdgFDG"
    for dtype in (np.dtype(code), np.dtype(code).newbyteorder("S"))}


_PARSER_LOCK = threading.Lock()


class NpyHeader(NamedTuple):
    """What the header of one `.npy` file says, checked against the file.

    Attributes:
        path: the file's path, as given.
        version: the format version, `(1, 0)`, `(2, 0)` or `(3, 0)`.
        dtype: the dtype as stored, byte order included (e.g. `>f4`).
        shape: the array's shape, a tuple of non-negative ints.
        fortran_order: whether the data is in Fortran (column-major) order.
        data_offset: the byte offset at which the data starts.
        file_id: `(device, inode, size, modification time in ns)` of the file
            when the header was read: readers check that the file they open
            is still this one.
        header_crc32: the CRC-32 of the bytes before the data (magic string
            to the header's last byte): readers of per-sample files check
            that the header they read with the data is still this one.
        member: for a member of an `.npz` archive (`path` is
            `"archive.npz::name"`), its `npz.Member`; `data_offset` is then
            `member.start` plus the header's length, and `file_id` is the
            archive's. `None` for a `.npy` file.
    """

    path: str
    version: tuple[int, int]
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    data_offset: int
    file_id: tuple[int, int, int, int] = (0, 0, 0, 0)
    header_crc32: int = 0
    member: npz.Member | None = None

    @property
    def nbytes(self) -> int:
        """The number of data bytes the header claims."""
        return math.prod(self.shape) * self.dtype.itemsize  # exact: Python ints


def read_header(path: str | os.PathLike) -> NpyHeader:
    """Reads and checks the header of a `.npy` file without reading its data.

    Args:
        path: path to a `.npy` file.

    Returns:
        An `NpyHeader`.

    Raises:
        ValueError: the file is not a `.npy` file of a numeric dtype whose size
            matches its header, or cannot be opened. The message starts with
            the path.

    Example:

    >>> import tempfile, numpy as np
    >>> path = tempfile.mkdtemp() + "/x.npy"
    >>> np.save(path, np.zeros((3, 4), "float32"))
    >>> header = read_header(path)
    >>> header.dtype, header.shape, header.data_offset
    (dtype('float32'), (3, 4), 128)
    """
    path = os.fspath(path)
    if npz.is_archive(path):
        return read_member_header(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ValueError(f"{path}: cannot open the file: {e.strerror}.") from e
    try:
        stat = os.fstat(fd)
        file_size = stat.st_size
        version, dtype, fortran_order, shape, head = parse_head(
            path, os.pread(fd, _FIRST_READ, 0), file_size,
            lambda offset, nbytes: os.pread(fd, nbytes, offset))
    except OSError as e:
        raise ValueError(f"{path}: cannot read the file: {e.strerror}.") from e
    finally:
        os.close(fd)
    header = NpyHeader(path, version, dtype, shape, fortran_order, len(head),
                       (stat.st_dev, stat.st_ino, file_size, stat.st_mtime_ns),
                       zlib.crc32(head))
    check_size(header, file_size)
    return header


def parse_head(name: str, head: bytes, size: int, more=None,
               what: str = "file") -> tuple[tuple[int, int], np.dtype, bool, tuple, bytes]:
    """Checks and parses the header that `head` (the first bytes of a `.npy`
    stream of `size` bytes: a file, a remote object, an archive's member)
    starts with, as `read_header` does.

    Args:
        name: what messages start with (a path, URL or member).
        head: the stream's first bytes; `_FIRST_READ` cover NumPy's headers.
        size: the stream's size in bytes.
        more: `more(offset, nbytes)` reads what `head` lacks of a longer
            header; `None` when `head` holds all that can be read.
        what: the stream's kind in messages. Defaults to `"file"`.

    Returns:
        `(version, dtype, fortran_order, shape, header bytes)`; the data
        start right after the header bytes.

    Raises:
        ValueError: the header is not one this reader trusts.
    """
    version, header_len, header_start = _parse_preamble(name, head)
    end = header_start + header_len
    if more is not None and len(head) < end <= size:
        head += more(len(head), end - len(head))
    if len(head) < end:
        article = "an" if what[0] in "aeiou" else "a"
        raise ValueError(f"{name}: expected a header of {header_len} bytes, found {article} "
                         f"{what} of {size} bytes; the {what} is truncated.")
    text = _decode(name, head[header_start:end], _PREAMBLE[version[0]][1])
    return (version, *_parse_header(name, text), bytes(head[:end]))


def read_member_header(path: str, source=None) -> NpyHeader:
    """Reads and checks the header of an `.npz` archive's member.

    Args:
        path: `"archive.npz::name"`, or the archive's path if it holds one
            array.
        source: the archive open for ranged reads (see `npz.read_directory`);
            `None` to open the local file.

    Returns:
        An `NpyHeader` whose `member` says where the member lies. Stored
        members are checked as `.npy` files are (their size must be their
        header's data); deflated ones must declare that size inflated.

    Raises:
        ValueError: the archive or member is not one this reader trusts; the
            message starts with `path`.
    """
    archive, wanted = npz.split(path)
    if source is None:
        with npz.LocalFile(archive) as local:
            return read_member_header(path, local)
    member = npz.choose(archive, npz.read_directory(source), wanted)
    name = npz.member_path(archive, member.name) if wanted is not None else archive
    version, dtype, fortran_order, shape, head = parse_head(
        name, _member_head(name, source, member), member.size, what="member")
    header = NpyHeader(name, version, dtype, shape, fortran_order, member.start + len(head),
                       source.file_id, zlib.crc32(head), member)
    check_size(header, member.start + member.size, "member")
    return header


def _member_head(name: str, source, member: npz.Member) -> bytes:
    """A member's first bytes, enough for its header (inflated if need be)."""
    most = 12 + MAX_HEADER_SIZE
    if not member.compressed:
        head = source.read(member.start, min(member.size, _FIRST_READ))
        if len(head) >= 12 and head[:6] == MAGIC and head[6] in _PREAMBLE:
            length = _PREAMBLE[head[6]][0]
            end = min(member.size, 8 + length.size + length.unpack_from(head, 8)[0], most)
            if end > len(head):
                head += source.read(member.start + len(head), end - len(head))
        return head
    raw = source.read(member.start, min(member.compressed_size, most + 64))
    return npz.Inflater(name, member).inflate(raw, min(member.size, most))


class HeaderCache:
    """Reads the headers of many files as `read_header` does, checking each
    one as strictly, at a fraction of its cost: files of one data set share
    few distinct headers (one per shape), so the header bytes of each file
    are looked up among those already parsed, and only a new one is parsed
    (by `read_header`, which gives the errors). A file's size must still be
    exactly its header's data offset plus the data its shape holds.
    """

    def __init__(self):
        # header bytes -> (dtype, fortran_order, shape, data_offset, file size, crc32)
        self._known: dict[bytes, tuple] = {}
        #: path -> `npz.Member`, for each member of an `.npz` archive read.
        self.members: dict[str, npz.Member] = {}

    def read(self, path: str) -> tuple:
        """`(dtype, fortran_order, shape, data_offset, crc32)` of `path` (for a
        member of an archive, `data_offset` counts from its first byte, and
        `members` says where that is)."""
        if npz.is_archive(path):
            return self._parse(path, None)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return self._parse(path, None)
        try:
            # One read of a page: a shorter one ends at the end of the file,
            # and gives its size without an fstat (each system call costs a
            # hand-over of the GIL, which many threads in flight wait on).
            head = os.read(fd, _PAGE)
            size = len(head) if len(head) < _PAGE else os.fstat(fd).st_size
        except OSError:
            head, size = b"", -1
        finally:
            os.close(fd)
        # The preamble as `_parse_preamble` reads it; anything it would refuse,
        # or a header past the page, goes to `read_header` for its error.
        preamble = _PREAMBLE.get(head[6]) if len(head) >= 12 and (
            head[:6] == MAGIC and head[7] == 0) else None
        end = len(head) + 1
        if preamble is not None:
            length_field = preamble[0]
            end = 8 + length_field.size + length_field.unpack_from(head, 8)[0]
        key = head[:end] if end <= len(head) else None
        known = None if key is None else self._known.get(key)
        if known is None or known[4] != size:
            return self._parse(path, key)
        return known[:4] + known[5:]

    def _parse(self, path: str, key: bytes | None) -> tuple:
        header = read_header(path)  # raises what is wrong, naming the file
        offset = header.data_offset
        if header.member is not None:  # from the member's first byte, as in a file
            self.members[path] = header.member
            offset -= header.member.start
        facts = (header.dtype, header.fortran_order, header.shape, offset,
                 header.file_id[2], header.header_crc32)
        if key is not None and len(self._known) < 100_000:
            self._known[key] = facts
        return facts[:4] + facts[5:]


def _parse_preamble(path: str, head: bytes) -> tuple[tuple[int, int], int, int]:
    """Checks the magic string and version; returns them with HLEN and its end."""
    if head[:6] != MAGIC:
        raise ValueError(f"{path}: expected a .npy file starting with the magic string "
                         f"{MAGIC!r}, found {head[:6]!r}.")
    version = tuple(head[6:8])
    if len(version) < 2 or version[0] not in _PREAMBLE or version[1] != 0:
        raise ValueError(f"{path}: expected .npy format version 1.0, 2.0 or 3.0, found "
                         f"{'.'.join(map(str, version)) or 'end of file'}.")
    length_field = _PREAMBLE[version[0]][0]
    if len(head) < 8 + length_field.size:
        raise ValueError(f"{path}: expected a header length field, found end of file; "
                         "the file is truncated.")
    (header_len,) = length_field.unpack_from(head, 8)
    if header_len > MAX_HEADER_SIZE:
        raise ValueError(f"{path}: expected a header of at most {MAX_HEADER_SIZE} bytes, "
                         f"found one of {header_len} bytes.")
    return version, header_len, 8 + length_field.size


def _decode(path: str, raw: bytes, encoding: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: expected a header in {encoding}, found bytes that "
                         f"are not: {e.reason} at position {e.start}.") from e


def _parse_header(path: str, text: str) -> tuple[np.dtype, bool, tuple[int, ...]]:
    """Returns `(dtype, fortran_order, shape)` from the header text, checked."""
    parsed = _parse_canonical(text)
    if parsed is not None:
        descr, fortran_order, shape = parsed
        dtype = _check_descr(path, descr)
        return dtype, fortran_order, _check_size(path, dtype, shape)
    header = _literal(path, text)
    if not isinstance(header, dict):
        raise ValueError(f"{path}: expected the header to be a dict, found "
                         f"{type(header).__name__}: {_clip(text)}")
    if sorted(header) != sorted(_KEYS) or len(header) != 3:
        raise ValueError(f"{path}: expected the header keys {list(_KEYS)}, found "
                         f"{sorted(map(str, header))}.")
    dtype = _check_descr(path, header["descr"])
    fortran_order = _check_fortran_order(path, header["fortran_order"])
    return dtype, fortran_order, _check_size(path, dtype, _check_shape(path, header["shape"]))


@functools.lru_cache(maxsize=4096)
def _parse_canonical(text: str) -> tuple[str, bool, tuple[int, ...]] | None:
    """`(descr, fortran_order, shape)` if the header is exactly what `np.save`
    writes, else `None`. Memoized: files of one data set share few headers."""
    match = _CANONICAL.match(text)
    if match is None:
        return None
    descr, fortran, dims = match.groups()
    return descr, fortran == "True", tuple(int(d) for d in dims.split(",") if d.strip())


def _literal(path: str, text: str) -> object:
    """Parses a Python literal; no name is looked up and no code is run. The
    text is given as it is, as NumPy gives it (`literal_eval` drops leading
    spaces and tabs; other characters, a non-breaking space among them, are
    the parser's to refuse). One parse at a time: CPython 3.11's parser can
    fail with `SystemError` ("AST constructor recursion depth mismatch") when
    threads parse at once, which would refuse a good file."""
    try:
        with _PARSER_LOCK:
            return ast.literal_eval(text)
    except Exception as e:  # SyntaxError, ValueError, MemoryError, RecursionError, ...
        raise ValueError(f"{path}: expected the header to be a Python literal dict, "
                         f"found {_clip(text)} ({type(e).__name__}).") from e


def _check_descr(path: str, descr: object) -> np.dtype:
    if isinstance(descr, str) and descr in _NUMERIC_DTYPES:
        return _NUMERIC_DTYPES[descr]
    if not isinstance(descr, str):
        kind = "structured dtype" if isinstance(descr, list) else type(descr).__name__
        raise ValueError(f"{path}: expected a numeric dtype, found a {kind} "
                         f"(descr={descr!r}); only numeric arrays are read.")
    try:
        dtype = np.dtype(descr)
    except Exception as e:  # TypeError, ValueError, and for some strings SyntaxError
        raise ValueError(f"{path}: expected a numeric dtype, found descr={descr!r}, "
                         "which is not a dtype.") from e
    if dtype.kind not in _NUMERIC_KINDS or dtype.shape or dtype.names:
        what = "object (pickled) data" if dtype.kind == "O" else f"dtype {dtype}"
        raise ValueError(f"{path}: expected a numeric dtype (bool, integer, float or "
                         f"complex), found {what}; such files are refused.")
    return dtype


def _check_fortran_order(path: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{path}: expected 'fortran_order' to be True or False, found "
                         f"{value!r}.")
    return value


def _check_shape(path: str, shape: object) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ValueError(f"{path}: expected 'shape' to be a tuple of non-negative ints, "
                         f"found {shape!r}.")
    return shape


def _check_size(path: str, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy's limits on a shape, which hold for empty arrays too."""
    if len(shape) > MAX_DIMS:
        raise ValueError(f"{path}: expected at most {MAX_DIMS} dimensions, found "
                         f"{len(shape)}.")
    nonzero = math.prod(d for d in shape if d) * dtype.itemsize
    if max(shape, default=0) > MAX_INDEX or nonzero > MAX_INDEX:
        raise ValueError(f"{path}: expected a shape NumPy can make (each dimension, and the "
                         f"bytes of the nonzero ones, at most {MAX_INDEX}), found "
                         f"{_clip(str(shape))} of dtype {dtype}.")
    return shape


def check_size(header: NpyHeader, end: int, what: str = "file") -> None:
    """The data, from `header.data_offset` to `end` (the end of the file, or
    of the member), must be exactly as long as the shape says; nothing is read."""
    found = end - header.data_offset
    if found != header.nbytes:
        problem = f"the {what} is truncated" if found < header.nbytes else (
            f"the {what} has trailing bytes")
        raise ValueError(
            f"{header.path}: expected {header.nbytes} data bytes for shape "
            f"{header.shape} of dtype {header.dtype}, found {found}; {problem}.")


def _clip(text: str, limit: int = 80) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")
