"""Index files: a `DatasetIndex` written once, loaded by every process.

With 10^6 per-sample files, reading every header takes tens of seconds, and
every process of a multi-process run would do it before its first batch.
`write_index` (the command `keras-npy index DATA`) does it once and writes the
index, a few tens of bytes a sample, to one file, by default
`DATA/keras_npy.index`; `load_index` reads it back in a fraction of a second
(an uncompressed NumPy `.npz`: one read per array, `allow_pickle=False`).
`build_index`, and so every dataset, uses the index file of a directory `x`
when it was made with the same arguments.

An index file is checked against the data before it is used, cheaply:

- every folder the walk listed (for a glob: the folders of its matches, up
  to the glob's fixed root) must have its modification time of then (a
  folder's time changes when a file in it is added, removed or renamed); the
  folder that holds the index file has the file's own time, which is set to
  the folder's once the file is in it;
- every file named directly (not found by a walk), and every file of the
  rows layout, must have its size and modification time of then.

A file rewritten in place under the same name changes none of the folders:
readers find it (each per-sample file's header is checked against its
CRC-32, each rows file against its size and time). A stale index is an error
from `load_index`; `build_index` says so in one line and reads the headers.

Paths are kept relative to the folder of the index file where they are under
it, so a data set copied elsewhere with its index (times kept, as `cp -a` and
`rsync -a` do) still loads.
"""

from __future__ import annotations

import json
import os
import time
import zipfile

import numpy as np

from keras_npy import npz, sources
from keras_npy.index import DatasetIndex, FileIndex, RowIndex, build_index, resolve_layout

#: The name of an index file in the data's folder.
NAME = "keras_npy.index"
FORMAT, VERSION = "keras_npy.index", 1
_ARRAYS = {"files": ("shapes", "data_offsets", "fortran_order", "header_crc32"),
           "rows": ("data_offsets", "row_starts", "fortran_order", "file_ids")}


def write_index(x, y=None, path=None, *, layout: str = "auto", class_names=None,
                follow_links: bool = False, verbose: bool = True) -> str:
    """Indexes `x` (and `y`) as `build_index` does and writes the index to a
    file that `load_index` (and every dataset of a directory `x` made with
    the same arguments) loads in milliseconds.

    Args:
        x: a directory, glob, `.npy` path, or list of these; or a dict of
            them (see `build_index`).
        y: `None`, `"inferred"`, or `.npy` path(s) or a directory or glob of
            targets (labels given as an array are passed to the dataset, not
            kept here). Defaults to `None`.
        path: where to write it. Defaults to `None`: `keras_npy.index` in
            the directory `x`.
        layout, class_names, follow_links, verbose: as for `build_index`.

    Returns:
        The path written.

    Raises:
        ValueError: as `build_index`; or no `path` and `x` is not a directory.

    Example:

    >>> import tempfile, numpy as np
    >>> root = tempfile.mkdtemp()
    >>> for i in range(3):
    ...     np.save(f"{root}/{i}.npy", np.zeros((i + 1, 2), "float32"))
    >>> path = write_index(root)
    >>> load_index(path).x.shapes.tolist()
    [[1, 2], [2, 2], [3, 2]]
    """
    if not (y is None or isinstance(y, (str, os.PathLike, list, tuple))):
        raise TypeError("write_index() keeps the labels it finds: `y` must be None, "
                        '"inferred", or paths of targets; pass an array of labels to the '
                        f"dataset instead. Received: y of type {type(y).__name__}")
    _refuse_pack(x, layout)
    index = build_index(x, y, layout=layout, class_names=class_names,
                        follow_links=follow_links, verbose=verbose, index_file=False)
    if path is None:
        if not (isinstance(x, (str, os.PathLike)) and os.path.isdir(x)):
            raise ValueError("write_index() writes beside the data when `x` is a directory; "
                             f"pass `path` for other sources. Received: x={x!r}")
        path = os.path.join(os.fspath(x), NAME)
    path = os.fspath(path)
    here = os.path.dirname(os.path.abspath(path))
    return write_index_of(index, path,
                          _arguments(x, y, layout, class_names, follow_links, here))


def write_index_of(index: DatasetIndex, path, arguments: dict | None = None, *,
                   check: bool = True) -> str:
    """Writes `index` (with the `arguments` it was built from, which datasets
    match) to `path` atomically; with `check`, the data must still be as the
    index says. Returns `path`."""
    path = os.fspath(path)
    arrays = {"meta": None}
    meta = {"format": FORMAT, "version": VERSION, "written": time.time(),
            "arguments": arguments, "class_names": index.class_names,
            "inputs": {name: _put(arrays, f"x.{name}", ix, path)
                       for name, ix in index.inputs.items()},
            "multi_input": isinstance(index.x, dict), "y": _put_y(arrays, index.y, path)}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    for ix in _indexes(index) if check else []:
        problem = _stale(ix)
        if problem:
            raise ValueError(f"{problem} while it was indexed: run write_index again when "
                             "the data are complete.")
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "wb") as f:
            np.savez(f, **arrays)
        os.replace(temporary, path)  # readers see the old file or the whole new one
        # Putting the file there changed its folder's time: the file keeps that
        # time as its own (copies keep it; chmod or a rename do not change it),
        # and a later change of the folder differs from it.
        folder_time = os.stat(os.path.dirname(os.path.abspath(path))).st_mtime_ns
        os.utime(path, ns=(folder_time, folder_time))
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def load_index(path, *, check: bool = True) -> DatasetIndex:
    """The `DatasetIndex` in an index file written by `write_index`.

    Args:
        path: the index file.
        check: whether the data are checked against the index (see the
            module's docstring): a few `stat` calls, one per folder walked
            and per file named directly. Defaults to `True`.

    Raises:
        ValueError: the file is not an index file, or the data changed since
            it was written (the message names what changed).
    """
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(archive["meta"].tobytes())
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise ValueError(f"expected format {FORMAT!r} version {VERSION}")
            inputs = {name: _get(archive, f"x.{name}", facts, path)
                      for name, facts in meta["inputs"].items()}
            y = _get_y(archive, meta["y"], path)
    except (OSError, KeyError, ValueError, TypeError, AttributeError,
            zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: expected an index file written by keras_npy."
                         f"write_index (keras-npy index), found one that cannot be read "
                         f"({error}).") from error
    written = os.stat(path).st_mtime_ns
    for ix in _indexes(DatasetIndex(inputs, y)) if check else []:
        problem = _stale(ix, os.path.dirname(os.path.abspath(path)), written)
        if problem:
            raise ValueError(f"{path}: the index file is stale: {problem} since it was "
                             "written. Run `keras-npy index` again (or keras_npy."
                             "write_index).")
    x = inputs if meta["multi_input"] else inputs["x"]
    return DatasetIndex(x, y, meta["class_names"])


def _refuse_pack(x, layout: str) -> None:
    """A pack directory (`keras-npy pack`) is indexed by its manifest."""
    from keras_npy.packing import MANIFEST, is_pack

    if layout == "auto" and is_pack(x):
        raise ValueError(f"{x}: a pack directory ({MANIFEST}) needs no index file: its "
                         f"manifest is its index, and NpyDataset({os.fspath(x)!r}) loads it.")


def index_of_directory(x, y, layout, class_names, follow_links, verbose: bool = True):
    """The index in `x/keras_npy.index` when it was written with these
    arguments and is not stale; `None` otherwise (with `verbose`, a line
    says why, when the file is there)."""
    if not (isinstance(x, (str, os.PathLike)) and os.path.isdir(x)):
        return None
    path = os.path.join(os.fspath(x), NAME)
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            written = json.loads(archive["meta"].tobytes()).get("arguments")
    except (OSError, KeyError, ValueError, AttributeError, zipfile.BadZipFile):
        written = None
    wanted = _arguments(x, y, layout, class_names, follow_links,
                        os.path.abspath(os.fspath(x)))
    if written != wanted:
        if written is not None and verbose:
            changed = sorted(k for k in wanted if written.get(k) != wanted[k])
            print(f"keras_npy: {path} was written with other arguments ({', '.join(changed)}"
                  "): reading the headers instead.")
        return None
    try:
        return load_index(path)
    except ValueError as error:
        if verbose:
            print(f"keras_npy: {error} Reading the headers instead.")
        return None


def _arguments(x, y, layout, class_names, follow_links, here: str) -> dict:
    """What an index was built from, as JSON: paths relative to the folder
    `here` of the index file where they are under it (a copied tree matches),
    and the layout that `"auto"` means for `x`."""
    def norm(source):
        if isinstance(source, dict):
            return {k: norm(v) for k, v in source.items()}
        if isinstance(source, (list, tuple)):
            return [norm(s) for s in source]
        if isinstance(source, (str, os.PathLike)) and source != "inferred":
            return _relative(os.fspath(source), here)
        return source
    if not isinstance(x, dict):
        layout = resolve_layout(layout, x)
    return {"x": norm(x), "y": norm(y), "layout": layout,
            "class_names": None if class_names is None else list(class_names),
            "follow_links": bool(follow_links)}


def _put(arrays: dict, key: str, ix, path: str) -> dict:
    """Adds the arrays of an input's index to `arrays`; returns its facts."""
    table = ix.paths
    arrays[f"{key}.root_ids"], arrays[f"{key}.names"] = table.root_ids, np.frombuffer(
        table._buffer, np.uint8)
    arrays[f"{key}.name_ends"] = table._offsets
    for name in _ARRAYS[ix.layout]:
        arrays[f"{key}.{name}"] = getattr(ix, name)
    here = os.path.dirname(os.path.abspath(path))
    folders = ix.folders or []
    arrays[f"{key}.folder_times"] = np.array([t for _, _, t in folders], np.int64)
    facts = {"layout": ix.layout, "dtype": ix.dtype.str, "roots": [
        _relative(root, here) for root in table.roots], "kinds": table.kinds,
        "folders": [[r, f] for r, f, _ in folders]}
    if ix.layout == "rows":
        facts["row_shape"] = list(ix.row_shape)
    else:  # files named without a walk: their sizes and times
        direct = np.flatnonzero(np.isin(table.root_ids, [
            r for r, kind in enumerate(table.kinds) if kind != sources.DIRECTORY]))
        ix.direct = (direct, _stats(table, direct)[:, 2:])
        arrays[f"{key}.direct"], arrays[f"{key}.direct_stats"] = ix.direct
        if ix.members is not None:  # where members of .npz archives lie
            facts["members"] = True
            for name, values in ix.members._asdict().items():
                arrays[f"{key}.members.{name}"] = values
    return facts


def _get(archive, key: str, facts: dict, path: str):
    here = os.path.dirname(os.path.abspath(path))
    roots = [os.path.normpath(os.path.join(here, root)) for root in facts["roots"]]
    table = sources.PathTable(roots, facts["kinds"], archive[f"{key}.root_ids"],
                              archive[f"{key}.names"].tobytes(), archive[f"{key}.name_ends"])
    values = [archive[f"{key}.{name}"] for name in _ARRAYS[facts["layout"]]]
    dtype = np.dtype(facts["dtype"])
    if facts["layout"] == "rows":
        ix = RowIndex(table, dtype, tuple(facts["row_shape"]), *values)
    else:
        ix = FileIndex(table, dtype, *values)
        ix.direct = (archive[f"{key}.direct"], archive[f"{key}.direct_stats"])
        if facts.get("members"):
            ix.members = npz.MemberTable(*(archive[f"{key}.members.{name}"]
                                           for name in npz.MemberTable._fields))
    ix.folders = [(r, f, int(t)) for (r, f), t in zip(facts["folders"],
                                                       archive[f"{key}.folder_times"])]
    return ix


def _put_y(arrays: dict, y, path: str):
    if y is None:
        return None
    if isinstance(y, np.ndarray):
        arrays["y.labels"] = y
        return {"labels": True}
    return {"index": _put(arrays, "y.index", y, path)}


def _get_y(archive, facts, path: str):
    if facts is None:
        return None
    if facts.get("labels"):
        return archive["y.labels"]
    return _get(archive, "y.index", facts["index"], path)


def _indexes(index: DatasetIndex) -> list:
    """The file and row indexes of `index`: its inputs, and its targets."""
    y = [index.y] if isinstance(index.y, (FileIndex, RowIndex)) else []
    return [*index.inputs.values(), *y]


def _stale(ix, home: str | None = None, written: int = 0) -> str | None:
    """What changed in the data of an index since it was written, or `None`.
    The folder `home` holds the index file, whose time `written` is the
    folder's time once the file was put there: it may have that time."""
    table = ix.paths
    for root_id, folder, mtime in ix.folders or []:
        where = os.path.join(table.roots[root_id], folder)
        try:
            now = os.stat(where).st_mtime_ns
        except OSError:
            return f"the folder {where} is gone"
        if now != mtime and not (home is not None and os.path.abspath(where) == home
                                 and now == written):
            return f"the files in {where} changed"
    if ix.layout == "rows":
        files, expected = np.arange(len(table)), ix.file_ids[:, 2:]
    else:
        files, expected = ix.direct
    if len(files):
        found = _stats(table, files)
        changed = np.flatnonzero((found[:, 2:] != expected).any(axis=1))
        if len(changed):
            return f"the file {table[int(files[changed[0]])]} changed"
        if ix.layout == "rows":  # the same files, maybe copied: these devices and inodes
            ix.file_ids = found
    return None


def _stats(table, files) -> np.ndarray:
    """`(device, inode, size, mtime_ns)` of each file, as `NpyHeader.file_id`
    (-1 where it is gone)."""
    out = np.full((len(files), 4), -1, np.int64)
    for k, f in enumerate(files.tolist()):
        try:
            stat = os.stat(npz.physical(table[f]))
        except OSError:
            continue
        out[k] = stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns
    return out


def _relative(root: str, here: str) -> str:
    """`root` relative to `here` where it is under it; absolute otherwise."""
    absolute = os.path.abspath(root)
    relative = os.path.relpath(absolute, here)
    return absolute if relative.startswith(os.pardir) else relative
