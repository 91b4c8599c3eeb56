"""Finding the `.npy` files a user names: directories, globs, paths and lists.

A source is what the user passes as `x` or `y`: a directory (walked
recursively in sorted order), a glob pattern, a path to one `.npy` file, or a
list of these. The result is a `PathTable`: the files in a fixed order, each
with the root it was found under, held compactly (one bytes buffer and offset
arrays, not one Python string per file) so that a million files cost tens of
megabytes, not hundreds.
"""

from __future__ import annotations

import array
import glob
import os
import sys
from collections.abc import Iterator, Sequence

import numpy as np

from keras_npy import npz

# How each file was named: under a directory, matched by a glob, or given.
DIRECTORY, GLOB, FILE = "directory", "glob", "file"


class PathTable(Sequence):
    """An immutable, compact sequence of file paths.

    Each path is `os.path.join(roots[root_ids[i]], relpath(i))`; relative
    paths are stored as file-system bytes in one `bytes` buffer, with their
    end offsets in an `int64` array.

    Attributes:
        roots: the roots, one per source entry (a directory, a glob's fixed
            prefix, or a file's folder).
        kinds: for each root, `"directory"`, `"glob"` or `"file"`.
        root_ids: `int32` array, the root of each path.
    """

    def __init__(self, roots: list[str], kinds: list[str], root_ids: np.ndarray,
                 buffer: bytes, offsets: np.ndarray):
        self.roots, self.kinds = roots, kinds
        self.root_ids, self._buffer, self._offsets = root_ids, buffer, offsets
        self._prefixes = [os.path.join(root, "") for root in roots]

    def __len__(self) -> int:
        return len(self.root_ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._prefixes[self.root_ids[i]] + self.relpath(i)

    def select(self, indices: np.ndarray) -> list[str]:
        """The paths at `indices`, decoded in one pass (for a batch of files)."""
        starts, stops = self._offsets[indices].tolist(), self._offsets[indices + 1].tolist()
        prefixes = [self._prefixes[r] for r in self.root_ids[indices].tolist()]
        buffer, encoding = self._buffer, sys.getfilesystemencoding()
        return [prefix + buffer[a:b].decode(encoding, "surrogateescape")  # os.fsdecode's rule
                for prefix, a, b in zip(prefixes, starts, stops)]

    def relpath(self, i: int) -> str:
        """The path of file `i` relative to its root."""
        start, stop = self._offsets[i], self._offsets[i + 1]
        return os.fsdecode(self._buffer[start:stop])

    def take(self, indices: np.ndarray) -> "PathTable":
        """A table of the paths at `indices`, in that order."""
        builder = PathTableBuilder(self.roots, self.kinds)
        for i in indices:
            builder.append(int(self.root_ids[i]), self.relpath(i))
        return builder.build()

    @property
    def nbytes(self) -> int:
        """Memory held by the table's arrays, in bytes."""
        return self.root_ids.nbytes + len(self._buffer) + self._offsets.nbytes

    def __repr__(self) -> str:
        return f"PathTable({len(self)} files under {len(self.roots)} roots)"


class PathTableBuilder:
    """Accumulates paths in compact arrays; `build()` returns a `PathTable`."""

    def __init__(self, roots: list[str] | None = None, kinds: list[str] | None = None):
        self.roots, self.kinds = list(roots or []), list(kinds or [])
        self._root_ids = array.array("i")
        self._buffer = bytearray()
        self._offsets = array.array("q", [0])

    def add_root(self, root: str, kind: str) -> int:
        self.roots.append(root)
        self.kinds.append(kind)
        return len(self.roots) - 1

    def append(self, root_id: int, relpath: str) -> None:
        self._root_ids.append(root_id)
        self._buffer += os.fsencode(relpath)
        self._offsets.append(len(self._buffer))

    def __len__(self) -> int:
        return len(self._root_ids)

    def build(self) -> PathTable:
        return PathTable(self.roots, self.kinds,
                         np.frombuffer(self._root_ids, np.int32).copy(),
                         bytes(self._buffer),
                         np.frombuffer(self._offsets, np.int64).copy())


def find_files(source, *, follow_links: bool = False, name: str = "x",
               problems: list | None = None, folders: list | None = None) -> PathTable:
    """Lists the files of a source in a fixed, sorted order.

    Args:
        source: a directory, a glob pattern, a path to a file, or a list of
            these. Directories are walked recursively; their `.npy` files
            (any letter case) are listed sorted by path components (so
            `a/0.npy` comes before `a.npy`), skipping hidden
            folders (names starting with "."). A glob lists every file it
            matches, sorted. List entries keep their order. A member of an
            `.npz` archive is `"archive.npz::name"`; `"dir::name"` or
            `"glob.npz::name"` names that member of each archive found.
        follow_links: whether the walk of a directory enters symbolic links to
            folders. Defaults to `False`. Link cycles are entered once.
        name: the argument's name, for error messages. Defaults to `"x"`.
        problems: `None`, for a folder entry that cannot be read (a link
            that loops, a folder without permission) to raise the error that
            names it; or a list, to which `(path, reason)` is appended for
            each, the walk going on. Defaults to `None`.
        folders: `None`, or a list to which `(root index, folder relative to
            the root, its modification time in ns)` is appended for each
            folder a walk lists (the time taken before the listing), and for
            a glob each folder of its matches up to its root: what an index
            file checks to know the listing is still the same.
            Defaults to `None`.

    Returns:
        A `PathTable`.

    Raises:
        TypeError: `source` is not a path or a list of paths.
        ValueError: a path does not exist, a directory or glob has no file,
            or an entry of a directory cannot be read.
    """
    builder = PathTableBuilder()
    for entry in _entries(source, name):
        root_id = len(builder.roots)
        seen = None if folders is None else (
            lambda relpath, mtime, r=root_id: folders.append((r, relpath, mtime)))
        kind, root, relpaths = _resolve(entry, follow_links, name, problems, seen)
        builder.add_root(root, kind)
        count = len(builder)
        for relpath in relpaths:
            builder.append(root_id, relpath)
        if len(builder) == count:
            what = "no files" if kind != DIRECTORY else (
                "no .npz archives" if _split_member(entry)[1] else "no .npy files")
            raise ValueError(f"`{name}` names {entry!r}, which has {what}.")
    return builder.build()


def is_file_list(source) -> bool:
    """Whether a source names files only (one path, or a list of paths), no
    directory or glob."""
    entries = source if isinstance(source, (list, tuple)) else [source]
    return all(isinstance(e, (str, os.PathLike)) and is_file(os.fspath(e)) for e in entries)


def is_file(entry: str) -> bool:
    """Whether `entry` names one file: a path, or a member of an `.npz` archive."""
    return os.path.isfile(_split_member(entry)[0])


def _split_member(entry: str) -> tuple[str, str | None]:
    """`(source, member)` of `"source::member"`, where the source is an `.npz`
    path or glob, or a directory of `.npz` archives; `(entry, None)` else."""
    head, sep, tail = entry.rpartition(npz.SEPARATOR)
    if sep and tail and "/" not in tail and (head.lower().endswith(".npz")
                                             or os.path.isdir(head)):
        return head, tail
    return entry, None


def _entries(source, name: str) -> list[str]:
    entries = list(source) if isinstance(source, (list, tuple)) else [source]
    if not entries:
        raise ValueError(f"`{name}` must name at least one file, directory or glob. "
                         f"Received: {name}={source!r}")
    for entry in entries:
        if not isinstance(entry, (str, os.PathLike)):
            raise TypeError(f"`{name}` must be a path, a glob, or a list of these. "
                            f"Received: {name}={source!r} (an entry of type "
                            f"{type(entry).__name__})")
    return [os.fspath(e) for e in entries]


def _resolve(entry: str, follow_links: bool, name: str, problems: list | None,
             seen=None, suffix: str = ".npy") -> tuple[str, str, Iterator[str]]:
    """Returns `(kind, root, relative paths)` for one entry. `"source::name"`
    names member `name` of each `.npz` archive the source names (a directory's
    archives, not its `.npy` files)."""
    source, member = _split_member(entry)
    if member is not None:
        kind, root, relpaths = _resolve(source, follow_links, name, problems, seen, ".npz")
        return kind, root, (npz.member_path(p, member) for p in relpaths)
    if os.path.isdir(entry):
        return DIRECTORY, entry, _walk(entry, follow_links, problems, seen, suffix)
    if os.path.isfile(entry):
        return FILE, os.path.dirname(entry), iter([os.path.basename(entry)])
    if glob.has_magic(entry):
        root = _glob_root(entry)
        matches = sorted(p for p in glob.glob(entry, recursive=True) if os.path.isfile(p))
        if seen is not None:  # the folders of the matches and those above them
            _seen_folders(root, matches, seen)
        return GLOB, root, (os.path.relpath(p, root) for p in matches)
    raise ValueError(f"`{name}` must name existing files, directories or globs; "
                     f"{entry!r} does not exist.")


def _seen_folders(root: str, matches: list[str], seen) -> None:
    """`seen(folder, mtime_ns)` for each folder that holds a match, and each
    folder between it and `root`: a file added where the glob would match it
    changes one of their times (or adds a folder to one of them)."""
    folders = {""}
    for path in matches:
        folder = os.path.dirname(os.path.relpath(path, root))
        while folder and folder + os.sep not in folders:
            folders.add(folder + os.sep)
            folder = os.path.dirname(folder)
    for folder in sorted(folders):
        seen(folder, os.stat(os.path.join(root, folder)).st_mtime_ns)


def _glob_root(pattern: str) -> str:
    """The longest leading folder of a pattern that has no wildcard."""
    parts = pattern.split(os.sep)
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return os.sep.join(fixed) or ("/" if pattern.startswith(os.sep) else ".")


def is_dir(entry: os.DirEntry) -> bool:
    """Whether a directory entry is a folder or a link to one (as
    `os.path.isdir` says: an entry that cannot be read is not)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _walk(root: str, follow_links: bool, problems: list | None,
          seen_folder=None, suffix: str = ".npy") -> Iterator[str]:
    """Yields the `.npy` files (`suffix` files) under `root` as relative paths,
    in sorted order.

    Entries of a folder are sorted by name and visited in that order, files
    yielded and folders entered as they come: the order of the relative paths
    sorted as tuples of components, with one folder's listing held at a time.
    An entry that cannot be read raises the error that names it, or is
    appended to `problems` and skipped. `seen_folder(relpath, mtime_ns)` is
    called for each folder listed.
    """
    seen = set()

    def unreadable(path: str, error: OSError) -> None:
        reason = f"cannot read the directory entry: {error.strerror}"
        if problems is None:
            raise ValueError(f"{path}: {reason}.") from error
        problems.append((path, reason))

    def listing(folder_path: str, prefix: str):
        try:
            stat = os.stat(folder_path)
            if (stat.st_dev, stat.st_ino) in seen:  # a link cycle
                return iter(())
            seen.add((stat.st_dev, stat.st_ino))
            if seen_folder is not None:
                seen_folder(prefix, stat.st_mtime_ns)
            with os.scandir(folder_path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            unreadable(folder_path, e)
            return iter(())
        return ((prefix, e) for e in entries)

    stack = [listing(root, "")]
    while stack:
        for prefix, entry in stack[-1]:
            relpath = prefix + entry.name
            try:
                folder = entry.is_dir(follow_symlinks=follow_links)
                npy = not folder and entry.name.lower().endswith(suffix) and entry.is_file()
            except OSError as e:  # a link that loops, or points where we may not look
                unreadable(entry.path, e)
                continue
            if folder:
                if not entry.name.startswith("."):
                    stack.append(listing(entry.path, relpath + os.sep))
                    break
            elif npy:
                yield relpath
        else:
            stack.pop()
