"""Members of `.npz` archives, located in place: a strict reader of zip directories.

`np.savez` writes a zip archive of `.npy` files, one per array (member
`"x.npy"` for `x=`); `np.savez_compressed` deflates each. keras_npy names a
member as `"archive.npz::x"` (the member's name without `.npy`), and an
archive with one member by its path alone. A member stored uncompressed is
a `.npy` file at an offset of the archive: it is read in place, mapped or
`preadv`ed like a `.npy` file. A deflated one is inflated per sample.

The byte layout this reader trusts (PKWARE's APPNOTE 6.3, the parts that
`zipfile` writes), read from the end:

```
end of central directory   "PK\\x05\\x06", 22 bytes + comment: entry count,
                           central directory size and offset (0xFFFF/0xFFFFFFFF:
                           see the zip64 record, found by the locator
                           "PK\\x06\\x07" just before it)
central directory entry    "PK\\x01\\x02", 46 bytes + name + extra + comment:
                           flags, method, CRC-32, sizes, local header offset
                           (0xFFFFFFFF: in the zip64 extra field, id 0x0001)
local header               "PK\\x03\\x04", 30 bytes + name + extra, then the data
```

What it refuses, each an error that names the archive (and the member):
a directory that does not end the file or points outside it, disk
spanning, encrypted members, methods other than stored and deflated,
member names that are absolute or hold `..`, `\\` or NUL, duplicated
names, a local header that disagrees with its directory entry (name,
method, flags, sizes, CRC), members whose bytes overlap each other or the
directory, stored members whose sizes differ, and deflated members that
declare more bytes than deflate can make of theirs (1032 to 1).
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import NamedTuple

import numpy as np

#: What separates an archive's path from a member's name.
SEPARATOR = "::"
STORED, DEFLATED = 0, 8
#: Deflate's largest expansion: 258 bytes from a 2-bit code (~1032 to 1).
MAX_DEFLATE_RATIO = 1032
_EOCD = struct.Struct("<4s4H2LH")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_LOCATOR = struct.Struct("<4sLQL")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_LOCAL = struct.Struct("<4s5H3L2H")
_MAX_COMMENT = 0xFFFF
_ENCRYPTED, _DESCRIPTOR, _UTF8 = 0x1, 0x8, 0x800
_DESCRIPTOR_BYTES = 12  # its CRC and sizes, at the least


class Member(NamedTuple):
    """Where one member's bytes lie in its archive.

    Attributes:
        name: the member's name in the archive (e.g. `"x.npy"`).
        start: the offset of its first data byte (after its local header).
        compressed_size: the bytes it takes in the archive.
        size: its bytes once inflated (equal to `compressed_size` if stored).
        method: `STORED` (0) or `DEFLATED` (8).
        crc32: the CRC-32 of its inflated bytes, as the directory says.
        header_offset: where its local header starts.
        end: where its bytes end (its data descriptor's, if it has one).
    """

    name: str
    start: int
    compressed_size: int
    size: int
    method: int
    crc32: int
    header_offset: int = -1
    end: int = -1

    @property
    def compressed(self) -> bool:
        return self.method != STORED


class MemberTable(NamedTuple):
    """Where the samples of a files-layout index that are archive members lie,
    one entry per sample (`start` -1 for a `.npy` file)."""

    starts: np.ndarray  # int64
    compressed_sizes: np.ndarray  # int64
    sizes: np.ndarray  # int64
    methods: np.ndarray  # uint8
    crcs: np.ndarray  # uint32

    @classmethod
    def of(cls, paths, members: dict) -> "MemberTable | None":
        """The table for `paths` (a `PathTable`) from `{path: Member}`; `None`
        when no path is a member."""
        if not members:
            return None
        rows = [members.get(p) for p in paths.select(np.arange(len(paths)))]
        column = lambda field, dtype, missing: np.array(  # noqa: E731
            [missing if m is None else getattr(m, field) for m in rows], dtype)
        return cls(column("start", np.int64, -1), column("compressed_size", np.int64, 0),
                   column("size", np.int64, 0), column("method", np.uint8, 0),
                   column("crc32", np.uint32, 0))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self)


def split(path: str) -> tuple[str, str | None]:
    """`(archive, member)` of `"archive.npz::member"`; `(path, None)` for a
    path that names no member."""
    head, sep, tail = path.rpartition(SEPARATOR)
    if sep and head.lower().endswith(".npz") and tail:
        return head, tail
    return path, None


def is_archive(path: str) -> bool:
    """Whether `path` names an `.npz` archive or a member of one."""
    return split(path)[1] is not None or path.lower().endswith(".npz")


def physical(path: str) -> str:
    """The file to open for `path` (the archive of a member)."""
    return split(path)[0] if SEPARATOR in path else path


def member_path(archive: str, member: str) -> str:
    """The name keras_npy gives a member: `"archive.npz::x"` for `"x.npy"`."""
    return f"{archive}{SEPARATOR}{member[:-4] if member.endswith('.npy') else member}"


class LocalFile:
    """Ranged reads of a local file: `name`, `size`, `read(offset, nbytes)`, and
    `file_id`, `(device, inode, size, modification time in ns)`."""

    def __init__(self, path: str):
        self.name = path
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise ValueError(f"{path}: cannot open the file: {e.strerror}.") from e
        stat = os.fstat(self._fd)
        self.size = stat.st_size
        self.file_id = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def read(self, offset: int, nbytes: int) -> bytes:
        """Exactly `nbytes` from `offset`, or the `ValueError` that names the file."""
        try:
            data = os.pread(self._fd, nbytes, offset)
        except OSError as e:
            raise ValueError(f"{self.name}: cannot read the file: {e.strerror}.") from e
        if len(data) != nbytes:
            raise ValueError(f"{self.name}: expected {nbytes} bytes at offset {offset}, found "
                             f"{len(data)}; the file is truncated.")
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_directory(source) -> dict[str, Member]:
    """The members of an archive, checked, by name.

    Args:
        source: the archive, open for ranged reads (`LocalFile`, or a remote
            file with the same `name`, `size`, `file_id` and
            `read(offset, nbytes)`).

    Returns:
        A dict from member name to `Member`, in directory order.

    Raises:
        ValueError: the archive is not a zip file this reader trusts (see
            the module's docstring); the message starts with its name.
    """
    name, size = source.name, source.size
    source = _Tail(source)  # small archives: every read from the one read of the end
    count, cd_size, cd_offset, end = _end_of_directory(source)
    if cd_offset + cd_size > end:
        raise ValueError(f"{name}: expected the central directory ({cd_size} bytes at offset "
                         f"{cd_offset}) to end before byte {end}, where its end record is; "
                         f"the archive is corrupt.")
    raw = source.read(cd_offset, cd_size) if cd_size else b""
    members, pos = {}, 0
    for _ in range(count):
        entry, pos = _central_entry(name, raw, pos)
        if entry[0] in members:
            raise ValueError(f"{name}: member {entry[0]!r} appears twice in the archive.")
        members[entry[0]] = entry
    if pos != len(raw):
        raise ValueError(f"{name}: expected {count} directory entries in {cd_size} bytes, "
                         f"found {len(raw) - pos} bytes more; the archive is corrupt.")
    located = {n: _locate(source, *entry) for n, entry in members.items()}
    _check_no_overlap(name, located, cd_offset)
    return located


class _Tail:
    """An archive whose last 64 KiB (read once) serve the reads that fall in
    them: the whole directory of a small archive in one request."""

    def __init__(self, source):
        self.name, self.size, self._source = source.name, source.size, source
        self._start = max(0, source.size - _EOCD.size - _MAX_COMMENT)
        self._tail = source.read(self._start, source.size - self._start) if source.size else b""

    def read(self, offset: int, nbytes: int) -> bytes:
        if offset >= self._start and offset + nbytes <= self.size:
            return self._tail[offset - self._start:offset - self._start + nbytes]
        return self._source.read(offset, nbytes)


def _end_of_directory(source) -> tuple[int, int, int, int]:
    """`(entry count, directory size, directory offset, end record offset)`."""
    name, size = source.name, source.size
    if size < _EOCD.size:
        raise ValueError(f"{name}: expected a zip archive (.npz), found a file of {size} "
                         "bytes, too short for one.")
    tail_start = max(0, size - _EOCD.size - _MAX_COMMENT)
    tail = source.read(tail_start, size - tail_start)
    at = tail.rfind(b"PK\x05\x06")
    while at >= 0 and (at + _EOCD.size > len(tail)
                       or at + _EOCD.size + _EOCD.unpack_from(tail, at)[7] != len(tail)):
        at = tail.rfind(b"PK\x05\x06", 0, at)  # a signature inside the comment
    if at < 0:
        raise ValueError(f"{name}: expected a zip archive (.npz) ending with its central "
                         "directory, found no end record; the file is not a zip archive or "
                         "is truncated.")
    _, disk, cd_disk, on_disk, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
    end = tail_start + at
    if disk or cd_disk or on_disk != count:
        raise ValueError(f"{name}: expected a single-file zip archive, found one spanning "
                         "disks; such archives are refused.")
    if 0xFFFF in (count, on_disk) or 0xFFFFFFFF in (cd_size, cd_offset):
        return _zip64_end(source, end)
    return count, cd_size, cd_offset, end


def _zip64_end(source, end: int) -> tuple[int, int, int, int]:
    name = source.name
    if end < _LOCATOR.size:
        raise ValueError(f"{name}: expected a zip64 end locator before the end record, found "
                         "the start of the file; the archive is corrupt.")
    sig, disk, record, disks = _LOCATOR.unpack(source.read(end - _LOCATOR.size, _LOCATOR.size))
    if sig != b"PK\x06\x07" or disk or disks != 1:
        raise ValueError(f"{name}: expected a zip64 end locator before the end record, found "
                         f"{sig!r}; the archive is corrupt.")
    if record + _EOCD64.size > end - _LOCATOR.size:
        raise ValueError(f"{name}: expected the zip64 end record before byte "
                         f"{end - _LOCATOR.size}, found it said to be at {record}.")
    fields = _EOCD64.unpack(source.read(record, _EOCD64.size))
    sig, _, _, _, disk, cd_disk, on_disk, count, cd_size, cd_offset = fields
    if sig != b"PK\x06\x06" or disk or cd_disk or on_disk != count:
        raise ValueError(f"{name}: expected a zip64 end record at offset {record}, found "
                         f"{sig!r} or disk spanning; the archive is corrupt.")
    return count, cd_size, cd_offset, record


def _central_entry(name: str, raw: bytes, pos: int) -> tuple[tuple, int]:
    if pos + _CENTRAL.size > len(raw):
        raise ValueError(f"{name}: expected a directory entry at byte {pos} of the central "
                         "directory, found its end; the archive is corrupt.")
    (sig, _, _, flags, method, _, _, crc, csize, usize, nlen, elen, clen, disk, _, _,
     offset) = _CENTRAL.unpack_from(raw, pos)
    if sig != b"PK\x01\x02":
        raise ValueError(f"{name}: expected a directory entry at byte {pos} of the central "
                         f"directory, found {sig!r}; the archive is corrupt.")
    body = pos + _CENTRAL.size
    if body + nlen + elen + clen > len(raw):
        raise ValueError(f"{name}: a directory entry runs past the central directory; the "
                         "archive is corrupt.")
    member = _member_name(name, raw[body:body + nlen], flags)
    if disk:
        raise ValueError(f"{name}: member {member!r} starts on disk {disk}; archives that "
                         "span disks are refused.")
    extra = raw[body + nlen:body + nlen + elen]
    usize, csize, offset = _zip64_fields(name, member, extra, usize, csize, offset)
    _check_entry(name, member, flags, method, csize, usize)
    return (member, flags, method, crc, csize, usize, offset), body + nlen + elen + clen


def _member_name(name: str, raw: bytes, flags: int) -> str:
    try:
        member = raw.decode("utf-8" if flags & _UTF8 else "cp437")
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: a member name is not valid UTF-8: {raw!r}.") from e
    parts = member.split("/")
    if (not member or member.startswith("/") or "\\" in member or "\0" in member
            or ".." in parts or (len(member) > 1 and member[1] == ":")):
        raise ValueError(f"{name}: member {member!r} has a name that points outside the "
                         "archive (absolute, '..', '\\' or NUL); such archives are refused.")
    return member


def _zip64_fields(name: str, member: str, extra: bytes, usize: int, csize: int,
                  offset: int | None) -> tuple[int, int, int | None]:
    """The sizes (and offset) that are 0xFFFFFFFF, from the zip64 extra field,
    in APPNOTE's order."""
    wanted = [usize == 0xFFFFFFFF, csize == 0xFFFFFFFF, offset == 0xFFFFFFFF]
    if not any(wanted):
        return usize, csize, offset
    data = _extra_field(name, member, extra, 0x0001)
    values, pos = [], 0
    for need in wanted:
        if need:
            if pos + 8 > len(data):
                raise ValueError(f"{name}: member {member!r} needs zip64 sizes that its extra "
                                 "field does not hold; the archive is corrupt.")
            values.append(struct.unpack_from("<Q", data, pos)[0])
            pos += 8
        else:
            values.append(None)
    return (values[0] if wanted[0] else usize, values[1] if wanted[1] else csize,
            values[2] if wanted[2] else offset)


def _extra_field(name: str, member: str, extra: bytes, wanted_id: int) -> bytes:
    pos = 0
    while pos + 4 <= len(extra):
        field_id, length = struct.unpack_from("<2H", extra, pos)
        if pos + 4 + length > len(extra):
            break
        if field_id == wanted_id:
            return extra[pos + 4:pos + 4 + length]
        pos += 4 + length
    raise ValueError(f"{name}: member {member!r} declares zip64 sizes but has no zip64 extra "
                     "field; the archive is corrupt.")


def _check_entry(name: str, member: str, flags: int, method: int, csize: int,
                 usize: int) -> None:
    if flags & _ENCRYPTED:
        raise ValueError(f"{name}: member {member!r} is encrypted; encrypted archives are "
                         "refused.")
    if method not in (STORED, DEFLATED):
        raise ValueError(f"{name}: member {member!r} is compressed with method {method}; "
                         "expected stored (0) or deflated (8), as np.savez and "
                         "np.savez_compressed write.")
    if method == STORED and csize != usize:
        raise ValueError(f"{name}: member {member!r} is stored uncompressed but declares "
                         f"{csize} bytes in the archive and {usize} bytes of data; the "
                         "archive is corrupt.")
    if method == DEFLATED and usize > max(csize, 1) * MAX_DEFLATE_RATIO:
        raise ValueError(f"{name}: member {member!r} declares {usize} bytes inflated from "
                         f"{csize} compressed, more than deflate can make "
                         f"({MAX_DEFLATE_RATIO} to 1); such archives are refused.")


def _locate(source, member: str, flags: int, method: int, crc: int, csize: int, usize: int,
            offset: int) -> Member:
    """Checks the member's local header against its directory entry."""
    name = source.name
    if offset + _LOCAL.size > source.size:
        raise ValueError(f"{name}: member {member!r} starts at offset {offset}, past the end "
                         f"of the archive ({source.size} bytes); the archive is corrupt.")
    fixed = source.read(offset, _LOCAL.size)
    (sig, _, lflags, lmethod, _, _, lcrc, lcsize, lusize, nlen, elen) = _LOCAL.unpack(fixed)
    start = offset + _LOCAL.size + nlen + elen
    if sig != b"PK\x03\x04" or start > source.size:
        raise ValueError(f"{name}: member {member!r}: expected a local header at offset "
                         f"{offset}, found {sig!r}; the archive is corrupt.")
    rest = source.read(offset + _LOCAL.size, nlen + elen)
    lname = _member_name(name, rest[:nlen], lflags)
    if not flags & _DESCRIPTOR:
        lusize, lcsize, _ = _zip64_fields(name, member, rest[nlen:], lusize, lcsize, None)
    else:  # the sizes and CRC follow the data; the directory's are the ones
        lcrc, lcsize, lusize = crc, csize, usize
    if (lname, lflags, lmethod, lcrc, lcsize, lusize) != (member, flags, method, crc, csize,
                                                          usize):
        raise ValueError(
            f"{name}: member {member!r}: its local header (name {lname!r}, method {lmethod}, "
            f"{lcsize} bytes, CRC {lcrc:#010x}) disagrees with the central directory (method "
            f"{method}, {csize} bytes, CRC {crc:#010x}); the archive is corrupt or crafted.")
    end = start + csize + (_DESCRIPTOR_BYTES if flags & _DESCRIPTOR else 0)
    return Member(member, start, csize, usize, method, crc, offset, end)


def _check_no_overlap(name: str, members: dict[str, Member], cd_offset: int) -> None:
    """Each member's bytes, local header to data (descriptor) end, apart from
    every other's and before the directory."""
    spans = sorted((m.header_offset, m.end, m.name) for m in members.values())
    for (a_start, a_end, a), nxt in zip(spans, spans[1:] + [(cd_offset, cd_offset, None)]):
        if a_end > nxt[0]:
            other = (f"member {nxt[2]!r}" if nxt[2] is not None
                     else f"the central directory (offset {cd_offset})")
            raise ValueError(f"{name}: member {a!r} (bytes {a_start} to {a_end}) overlaps "
                             f"{other}; the archive is corrupt or crafted.")


def choose(archive: str, members: dict[str, Member], wanted: str | None) -> Member:
    """The member `wanted` names (with or without `.npy`), or the only one."""
    if wanted is None:
        if len(members) == 1:
            return next(iter(members.values()))
        names = ", ".join(repr(n[:-4] if n.endswith(".npy") else n) for n in members)
        raise ValueError(f"{archive}: the archive holds {len(members)} arrays ({names or 'none'}); "
                         f"name one as '{archive}{SEPARATOR}<name>', e.g. "
                         f"'{member_path(archive, next(iter(members), 'x'))}'.")
    for candidate in (wanted + ".npy", wanted):
        if candidate in members:
            return members[candidate]
    names = ", ".join(repr(n[:-4] if n.endswith(".npy") else n) for n in members)
    raise ValueError(f"{archive}: expected a member named {wanted!r}, found only "
                     f"{names or 'no members'}.")


class Inflater:
    """Inflates a deflated member's bytes, bounded by the size it declares."""

    def __init__(self, path: str, member: Member):
        self.path, self.member = path, member

    def inflate(self, raw: bytes, limit: int | None = None) -> bytes:
        """The first `limit` inflated bytes (all of them: `None`), checked
        against the declared size and CRC when all are asked for."""
        member, wanted = self.member, self.member.size if limit is None else limit
        inflater = zlib.decompressobj(-15)
        try:  # max_length 0 means no limit to zlib: one byte, to see there is more
            data = inflater.decompress(raw, max(wanted, 1))
        except zlib.error as e:
            raise ValueError(f"{self.path}: cannot inflate the member: {e}; the archive is "
                             "corrupt.") from e
        if limit is not None:
            return data[:limit]
        if (len(data) != member.size or inflater.unconsumed_tail or not inflater.eof
                or inflater.unused_data or zlib.crc32(data) != member.crc32):
            raise ValueError(f"{self.path}: expected {member.size} inflated bytes with CRC "
                             f"{member.crc32:#010x}, found "
                             f"{len(data)}{'+' * bool(inflater.unconsumed_tail)} bytes with "
                             f"CRC {zlib.crc32(data):#010x}; the archive is corrupt or changed.")
        return data
