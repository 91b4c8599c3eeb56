"""Packing: a directory of per-sample `.npy` files rewritten as a few row files.

Opening, reading and closing a file per sample costs far more than its bytes
when samples are small (a cold disk seeks for each; a network file system
waits for each). `pack(src, dst)` (the command `keras-npy pack SRC DST`)
writes the samples of `src`, in the order the files layout reads them, into
shards of about `shard_size` bytes:

- samples of one shape ("fixed"): `x-00000.npy` holds the samples of shard 0
  as rows, `(n, *sample_shape)`; `NpyDataset` reads them as the rows layout;
- samples of varying shapes ("ragged"): `values-00000.npy` holds them one
  after the other, concatenated on the first axis when only that axis varies
  (`(total rows, *inner shape)`), flattened otherwise (`(total elements,)`,
  with `shapes-00000.npy`, `int64` `(n, ndim)`, the shape of each); and
  `offsets-00000.npy`, `int64` `n + 1` positions (rows, or elements of a
  flattened file): sample `k` spans `offsets[k]` to `offsets[k + 1]`;
- with labels inferred from class folders, `y-00000.npy` holds the `int32`
  label of each sample of the shard, row-aligned.

The manifest `dst/keras_npy_pack.json` (format, version, layout, dtype, sample
shape, class names, the shards with their files, sample counts, sizes and
CRC-32s, the source and its fingerprint) is written last: `NpyDataset(dst)`
recognises a directory that holds one, reads its shards as `x` and its labels
as `y`, and gives exactly the batches of `NpyDataset(src, "inferred")` for
the same arguments (same samples in the same order, padding alike).

Writing is atomic and resumable: shards are written under hidden temporary
names (`.x-00000.npy.part`), each recorded, once whole, in a progress file
(`dst/.keras_npy_pack.progress.json`, written by atomic replace) with its
sizes and CRC-32s; final names appear only once every shard is written. The
same call after an interruption checks the recorded shards and writes the
others; the result is byte for byte that of an uninterrupted pack. Then every
sample of the pack is compared with its source file (`verify`).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import zlib

import numpy as np

from keras_npy import index as index_lib
from keras_npy import sources
from keras_npy.header import read_header

#: The manifest of a pack directory: what `NpyDataset(dst)` looks for.
MANIFEST = "keras_npy_pack.json"
FORMAT, VERSION = "keras_npy.pack", 1
#: The record of a pack being written: its source, options and finished shards.
PROGRESS = ".keras_npy_pack.progress.json"
DEFAULT_SHARD_SIZE = "256MiB"
#: Bytes of samples read from the source, or compared, per step.
_CHUNK_BYTES = 16 * 2**20
_CHUNK_SAMPLES = 4096
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_ROLES = ("x", "values", "offsets", "shapes", "y")
_PACK_FILE = re.compile(r"^\.?(x|y|values|offsets|shapes)-\d{5,}\.npy(\.part)?$")


def pack(src, dst, *, shard_size=DEFAULT_SHARD_SIZE, labels: str | None = "inferred",
         class_names: list[str] | None = None, force: bool = False, verify: bool = True,
         follow_links: bool = False, verbose: bool = True) -> dict:
    """Packs a directory of per-sample `.npy` files into a few row files.

    Samples of one shape become the rows of `x-NNNNN.npy` shards; samples of
    varying shapes the ragged rows of `values-NNNNN.npy` with
    `offsets-NNNNN.npy` (see the module docstring for the format). With
    labels, `y-NNNNN.npy` holds the class of each sample. `NpyDataset(dst)`
    and `npy_dataset(dst)` then load the pack in one call, with its labels
    and `class_names`, giving the batches the source gives.

    Args:
        src: a directory of `.npy` files, one sample per file (in class
            folders, with `labels="inferred"`).
        dst: the directory to write: absent, empty, or an unfinished pack of
            the same `src` with the same options (the pack resumes: shards
            already written are checked and kept).
        shard_size: the bytes of samples per shard, an int or a string such
            as `"256MiB"` or `"1GB"`; a shard holds at least one sample.
            Defaults to `"256MiB"`.
        labels: `"inferred"` (the class of each sample is its folder under
            `src`, as `y="inferred"`) or `None`. Defaults to `"inferred"`.
        class_names: with `labels="inferred"`, the class folders in label
            order. Defaults to the sorted folder names.
        force: whether a `dst` that holds something else (another pack, or
            other files) is overwritten: its pack files are removed (other
            files are left). Defaults to `False`.
        verify: whether every sample and label of the pack is compared with
            its source file once it is written. Defaults to `True`.
        follow_links: whether the walk of `src` enters links to folders.
            Defaults to `False`.
        verbose: whether a progress bar (on stderr, when it is a terminal)
            shows packing and verifying that take more than two seconds.
            Defaults to `True`.

    Returns:
        The manifest, as a dict (what `dst/keras_npy_pack.json` holds).

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument has a wrong value; `dst` holds something
            else (without `force`); a source file disagrees with the first
            (dtype, number of dimensions: the message names it); or a packed
            sample differs from its source file (the message names it).

    Example:

    >>> import os, tempfile, numpy as np
    >>> src, dst = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> for c in ("cat", "dog"):
    ...     os.makedirs(f"{src}/{c}")
    ...     for i in range(3):
    ...         np.save(f"{src}/{c}/{i}.npy", np.full((i + 1, 2), i, "float32"))
    >>> manifest = pack(src, dst, verbose=False)
    >>> manifest["layout"], manifest["num_samples"], manifest["class_names"]
    ('ragged', 6, ['cat', 'dog'])
    >>> sorted(os.listdir(dst))
    ['keras_npy_pack.json', 'offsets-00000.npy', 'values-00000.npy', 'y-00000.npy']
    """
    src, dst, size = _check_pack_arguments(src, dst, shard_size, labels, force, verify)
    from keras_npy.index import build_index
    from keras_npy.state import digest, fingerprint

    index = build_index(src, "inferred" if labels else None, layout="files",
                        class_names=class_names, follow_links=follow_links, verbose=verbose)
    plan = _Plan(index, size)
    # The source's files (names, sizes, headers), and what else decides the pack.
    files = fingerprint(index)["inputs"]
    identity = {"source": src, "fingerprint": digest(json.dumps(files, sort_keys=True)),
                "num_samples": index.num_samples,
                "options": {"shard_size": size, "labels": labels,
                            "class_names": index.class_names,
                            "follow_links": bool(follow_links)}}
    done = _prepare(dst, src, identity, force)
    if isinstance(done, dict):  # a finished pack of this source
        manifest = done
    else:
        manifest = _write_shards(index, plan, dst, identity, done, verbose)
    if verify:
        verify_pack(index, dst, manifest, verbose=verbose)
    if isinstance(done, dict):
        return manifest
    _write_json(os.path.join(dst, MANIFEST), manifest)  # last: now it is a pack
    os.remove(os.path.join(dst, PROGRESS))
    return manifest


def parse_size(shard_size) -> int:
    """Bytes from an int or a string such as `"256MiB"`, `"1.5GB"` or `"4096"`."""
    value = None
    if isinstance(shard_size, (int, np.integer)) and not isinstance(shard_size, bool):
        value = int(shard_size)
    elif isinstance(shard_size, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", shard_size)
        if match and match.group(2).lower() in _UNITS:
            value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value is None or value < 1:
        raise ValueError('`shard_size` must be a positive number of bytes, as an int or a '
                         'string such as "256MiB" or "1GB". '
                         f"Received: shard_size={shard_size!r}")
    return value


def is_pack(path) -> bool:
    """Whether `path` is a directory that holds a pack's manifest."""
    return isinstance(path, (str, os.PathLike)) and os.path.isfile(
        os.path.join(os.fspath(path), MANIFEST))


def _check_pack_arguments(src, dst, shard_size, labels, force, verify):
    for name, value in (("src", src), ("dst", dst)):
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"`{name}` must be a path to a directory. "
                            f"Received: {name}={value!r}")
    if not os.path.isdir(src):
        raise ValueError(f"`src` must be a directory of .npy files; {src} "
                         f"{'is not a directory' if os.path.exists(src) else 'does not exist'}."
                         f" Received: src={os.fspath(src)!r}")
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise ValueError(f"`dst` must be a directory to write the pack into; {dst} is a file. "
                         f"Received: dst={os.fspath(dst)!r}")
    if labels not in ("inferred", None):
        raise ValueError('`labels` must be "inferred" or None. '
                         f"Received: labels={labels!r}")
    for name, value in (("force", force), ("verify", verify)):
        if not isinstance(value, bool):
            raise TypeError(f"`{name}` must be True or False. Received: {name}={value!r}")
    src, dst = os.path.abspath(os.fspath(src)), os.path.abspath(os.fspath(dst))
    if dst == src or dst.startswith(os.path.join(src, "")):
        raise ValueError(f"`dst` must not be inside `src`: its shards would be read as samples "
                         f"the next time. Received: src={src!r}, dst={dst!r}")
    return src, dst, parse_size(shard_size)


class _Plan:
    """What a pack of an index will be: its layout, and its shards, each a
    range of samples of about `shard_size` bytes (at least one sample)."""

    def __init__(self, index, shard_size: int):
        x = index.x
        self.index, self.dtype = index, x.dtype.newbyteorder("=")
        self.sample_shape = x.sample_shape
        self.shapes = x.shapes
        self.nbytes = np.prod(x.shapes, axis=1) * x.dtype.itemsize
        varying = [axis for axis, size in enumerate(self.sample_shape) if size is None]
        self.layout = "ragged" if varying else "fixed"
        #: Ragged samples that vary on other axes than the first are flattened.
        self.flat = any(axis > 0 for axis in varying)
        if self.layout == "fixed" and x.num_samples and not math.prod(self.sample_shape):
            raise ValueError(f"{x.paths[0]}: expected samples that hold data, found shape "
                             f"{self.sample_shape}; there is nothing to pack.")
        self.ranges = _shard_ranges(self.nbytes.tolist(), shard_size)

    def names(self, k: int) -> dict[str, str]:
        """The files of shard `k`, by role."""
        roles = ["x"] if self.layout == "fixed" else (
            ["values", "offsets", "shapes"] if self.flat else ["values", "offsets"])
        if self.index.y is not None:
            roles.append("y")
        return {role: f"{role}-{k:05d}.npy" for role in roles}


def _shard_ranges(nbytes: list[int], shard_size: int) -> list[tuple[int, int]]:
    """Consecutive sample ranges of at most `shard_size` bytes (a larger
    sample alone in its shard)."""
    ranges, start, total = [], 0, 0
    for i, size in enumerate(nbytes):
        if total and total + size > shard_size:
            ranges.append((start, i))
            start, total = i, 0
        total += size
    if start < len(nbytes) or not ranges:
        ranges.append((start, len(nbytes)))
    return ranges


def _prepare(dst: str, src: str, identity: dict, force: bool):
    """Makes `dst` ready: the finished manifest of the same pack (a dict),
    or the list of shards recorded as written (empty for a new pack; with
    `force`, the pack files in `dst`, whatever they are, are removed)."""
    os.makedirs(dst, exist_ok=True)
    manifest, progress = (_read_json(os.path.join(dst, name)) for name in (MANIFEST, PROGRESS))
    if manifest is not None and _same(manifest, identity) and not force:
        return manifest
    if manifest is None and progress is not None and _same(progress, identity) and not force:
        return progress.get("shards", [])
    entries = sorted(os.listdir(dst))
    if entries and not force:
        found = (f"a pack ({MANIFEST}) {_difference(manifest, identity)}"
                 if manifest is not None else
                 f"an unfinished pack {_difference(progress, identity)}"
                 if progress is not None else
                 f"{len(entries)} other entr{'ies' if len(entries) != 1 else 'y'} "
                 f"({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''})")
        raise ValueError(f"{dst}: expected an empty directory or an unfinished pack of {src}, "
                         f"found {found}. Pass force=True (--force) to overwrite it.")
    for name in entries:
        if name in (MANIFEST, PROGRESS) or _PACK_FILE.match(name):
            os.remove(os.path.join(dst, name))
    _write_json(os.path.join(dst, PROGRESS), {**identity, "shards": []})
    return []


def _difference(record: dict, identity: dict) -> str:
    """What makes a pack in `dst` another than the one asked for, in words."""
    if record.get("source") != identity["source"]:
        return f"of another source, {record.get('source')}"
    if record.get("fingerprint") != identity["fingerprint"]:
        return "of this source as it was before its files changed"
    options = record.get("options") or {}
    changed = [f"{key}={options.get(key)!r}, not {value!r}"
               for key, value in identity["options"].items() if options.get(key) != value]
    return f"of this source with other options ({', '.join(changed)})"


def _same(record: dict, identity: dict) -> bool:
    return all(record.get(key) == value for key, value in identity.items())


def _write_shards(index, plan: _Plan, dst: str, identity: dict, recorded: list,
                  verbose: bool) -> dict:
    """Writes the shards not yet written (checking those recorded), under
    temporary names, then gives every file its final name; returns the
    manifest."""
    progress = _Progress(int(plan.nbytes.sum()), verbose, "packing")
    shards = []
    record = {shard["index"]: shard for shard in recorded if isinstance(shard, dict)}
    for k, (start, stop) in enumerate(plan.ranges):
        shard = record.get(k)
        if shard is None or not _shard_intact(dst, shard, plan.names(k)):
            shard = record[k] = _write_shard(index, plan, dst, k, start, stop)
            _write_json(os.path.join(dst, PROGRESS),
                        {**identity, "shards": [record[j] for j in sorted(record)]})
        shards.append(shard)
        progress.add(int(plan.nbytes[start:stop].sum()))
    for shard in shards:
        for name in shard["files"]:
            temporary = os.path.join(dst, f".{name}.part")
            if os.path.exists(temporary):  # else renamed by a run cut short since
                os.replace(temporary, os.path.join(dst, name))
    return _manifest(index, plan, identity, shards)


def _manifest(index, plan: _Plan, identity: dict, shards: list) -> dict:
    return {"format": FORMAT, "version": VERSION, "layout": plan.layout,
            "flat": plan.flat, "dtype": plan.dtype.str,
            "sample_shape": list(plan.sample_shape), "num_samples": index.num_samples,
            "class_names": index.class_names, **identity, "shards": shards}


def _shard_intact(dst: str, shard: dict, names: dict) -> bool:
    """Whether the files of a recorded shard are there (under their temporary
    or final names) with the sizes and CRC-32s recorded."""
    if sorted(shard.get("files", {})) != sorted(names.values()):
        return False
    for name, (size, crc) in shard["files"].items():
        path = os.path.join(dst, f".{name}.part")
        if not os.path.exists(path):
            path = os.path.join(dst, name)
        try:
            if os.path.getsize(path) != size or _crc32_of(path) != crc:
                return False
        except OSError:
            return False
    return True


def _crc32_of(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(_CHUNK_BYTES):
            crc = zlib.crc32(block, crc)
    return crc


def _write_shard(index, plan: _Plan, dst: str, k: int, start: int, stop: int) -> dict:
    """Writes shard `k` (samples `start` to `stop - 1`) under temporary
    names; returns its record: files with sizes and CRC-32s, sample count."""
    names, n = plan.names(k), stop - start
    shapes = plan.shapes[start:stop]
    files = {}
    if plan.layout == "fixed":
        shape = (n, *plan.sample_shape)
    else:
        cuts = np.prod(shapes, axis=1) if plan.flat else shapes[:, 0]
        offsets = np.concatenate([[0], np.cumsum(cuts, dtype=np.int64)]).astype(np.int64)
        shape = (int(offsets[-1]),) if plan.flat else (int(offsets[-1]), *plan.sample_shape[1:])
        files[names["offsets"]] = _write_array(dst, names["offsets"], offsets)
        if plan.flat:
            files[names["shapes"]] = _write_array(dst, names["shapes"],
                                                  np.ascontiguousarray(shapes, np.int64))
    data = names["x" if plan.layout == "fixed" else "values"]
    files[data] = _write_samples(index.x, dst, data, plan.dtype, shape, start, stop)
    if "y" in names:
        files[names["y"]] = _write_array(dst, names["y"], np.asarray(index.y[start:stop]))
    return {"index": k, "num_samples": n, "files": dict(sorted(files.items()))}


def _write_array(dst: str, name: str, array: np.ndarray) -> list[int]:
    """Writes a small array to the temporary name of `name`; `[size, crc]`."""
    return _write_file(dst, name, array.dtype, array.shape, [memoryview(array).cast("B")])


def _write_samples(x, dst: str, name: str, dtype: np.dtype, shape: tuple, start: int,
                   stop: int) -> list[int]:
    """Writes samples `start` to `stop - 1` of the files index `x`, as C-order
    `dtype`, into one array of `shape`; `[size, crc]`."""
    chunks = (_sample_bytes(x, np.arange(a, min(a + step, stop)))
              for a, step in _steps(x, start, stop))
    return _write_file(dst, name, dtype, shape, (b for chunk in chunks for b in chunk))


def _steps(x, start: int, stop: int):
    """`(first sample, count)` of reads of about `_CHUNK_BYTES` from `start` to `stop`."""
    per = max(1, min(_CHUNK_SAMPLES, _CHUNK_BYTES // max(
        1, int(np.prod(x.shapes[start:stop], axis=1).mean() * x.dtype.itemsize)
        if stop > start else 1)))
    return ((a, per) for a in range(start, stop, per))


def _write_file(dst: str, name: str, dtype: np.dtype, shape: tuple, buffers) -> list[int]:
    """Writes a `.npy` header for `(dtype, shape)` then `buffers` to
    `dst/.name.part`, flushed to disk; returns `[size, crc32]`."""
    header = _npy_header(dtype, shape)
    path = os.path.join(dst, f".{name}.part")
    crc, size = zlib.crc32(header), len(header)
    with open(path, "wb") as f:
        f.write(header)
        for buffer in buffers:
            f.write(buffer)
            crc, size = zlib.crc32(buffer, crc), size + memoryview(buffer).nbytes
        f.flush()
        os.fsync(f.fileno())
    expected = len(header) + math.prod(shape) * dtype.itemsize
    if size != expected:  # a source file changed while it was read
        raise ValueError(f"{path}: expected {expected} bytes for an array of shape {shape}, "
                         f"wrote {size}; a source file changed while it was packed.")
    return [size, crc]


def _npy_header(dtype: np.dtype, shape: tuple) -> bytes:
    """The header `np.save` writes for a C-order array of `dtype` and `shape`."""
    import io

    out = io.BytesIO()
    fields = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": tuple(int(d) for d in shape)}
    try:
        np.lib.format.write_array_header_1_0(out, fields)
    except ValueError:  # a header over 64 KiB: version 2
        out = io.BytesIO()
        np.lib.format.write_array_header_2_0(out, fields)
    return out.getvalue()


def _sample_bytes(x, ids: np.ndarray) -> list:
    """The data of per-sample files `ids` of the files index `x`, each as
    C-order bytes in native byte order (read as the files layout reads
    them: each file checked against its header's CRC-32 and size)."""
    from keras_npy.read import local
    from keras_npy.read.engine import _check_changed

    shapes = x.shapes[ids]
    nbytes = (np.prod(shapes, axis=1) * x.dtype.itemsize).tolist()
    buffers = [bytearray(b) for b in nbytes]
    paths, heads = x.paths.select(ids), x.data_offsets[ids].tolist()
    crcs = x.header_crc32[ids].tolist()
    done = 0
    while done < len(ids):
        bad = local.read_samples(paths[done:], heads[done:], buffers[done:], nbytes[done:],
                                 crcs[done:])
        if bad < 0:
            break
        _check_changed(x, int(ids[done + bad]))  # raises unless the data read are right
        done += bad + 1
    native = x.dtype.newbyteorder("=")
    convert = np.flatnonzero(x.fortran_order[ids] | (x.dtype != native))
    for k in convert.tolist():
        sample = np.frombuffer(buffers[k], x.dtype).reshape(
            tuple(shapes[k].tolist()), order="F" if x.fortran_order[ids[k]] else "C")
        buffers[k] = np.ascontiguousarray(sample, native).tobytes()
    return buffers


# Loading.


def read_manifest(directory) -> dict:
    """The manifest of a pack directory, checked.

    Raises:
        ValueError: the manifest is not one this version reads (named).
    """
    path = os.path.join(os.fspath(directory), MANIFEST)
    expected = f"{path}: expected a keras_npy pack manifest (format {FORMAT!r}, version {VERSION})"
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{expected}; cannot read it: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{expected}, found another file.")
    if manifest.get("version") != VERSION:
        raise ValueError(f"{expected}, found version {manifest.get('version')!r}; a newer "
                         "keras_npy wrote it.")
    keys = ("layout", "flat", "dtype", "sample_shape", "num_samples", "class_names", "shards")
    missing = [key for key in keys if key not in manifest]
    if missing or manifest["layout"] not in ("fixed", "ragged"):
        raise ValueError(f"{expected}; found one without {missing} or with layout "
                         f"{manifest.get('layout')!r}.")
    return manifest


def index_of_pack(directory, y=None, class_names=None, *, verbose: bool = True,
                  manifest: dict | None = None):
    """The `DatasetIndex` of a pack directory: its shards as `x` (a
    `RowIndex` of fixed-shape samples, or a `RaggedIndex`), and, unless `y`
    is given (an array of labels, or `.npy` targets row-aligned with the
    samples), its labels as `y`, with its class names.

    Raises:
        ValueError: the pack is malformed (the message names the file), or
            `class_names` differ from the pack's.
    """

    directory = os.path.abspath(os.fspath(directory))
    manifest = manifest or read_manifest(directory)
    shards = manifest["shards"]
    x = _x_index(directory, manifest)
    if y is None or (isinstance(y, str) and y == "inferred"):
        labelled = all("y" in _roles(s) for s in shards)
        labels = _pack_labels(directory, shards) if labelled else None
        if labels is None and y is not None:
            raise ValueError(f"{directory}: y=\"inferred\" takes the labels of the pack, but "
                             "it was packed without labels (labels=None).")
        names = manifest["class_names"] if labels is not None else None
        if class_names is not None and list(class_names) != names:
            raise ValueError(f"`class_names` must be the pack's class names, {names}, in that "
                             f"order (they are fixed when packing). "
                             f"Received: class_names={class_names}")
        return index_lib.DatasetIndex(x, labels, names)
    options = dict(layout="rows", follow_links=False, verbose=verbose)
    targets, _ = index_lib._index_targets(y, x, None, options)
    return index_lib.DatasetIndex(x, targets, None)


def _roles(shard: dict) -> dict[str, str]:
    """The files of a shard by role (`x`, `values`, `offsets`, `shapes`, `y`)."""
    return {name.split("-", 1)[0]: name for name in shard.get("files", {})}


def _x_index(directory: str, manifest: dict):
    from keras_npy.index import RaggedIndex, RowIndex

    shards = manifest["shards"]
    if not shards:
        raise ValueError(f"{os.path.join(directory, MANIFEST)}: expected at least one shard, "
                         "found none.")
    role = "x" if manifest["layout"] == "fixed" else "values"
    paths = _path_table(directory, [_roles(s)[role] for s in shards])
    headers = [read_header(p) for p in paths]
    if manifest["layout"] == "fixed":
        x = RowIndex.from_headers(paths, headers)
    else:
        offsets = [_load(directory, _roles(s)["offsets"], np.int64, 1) for s in shards]
        shapes = [_load(directory, _roles(s)["shapes"], np.int64, 2) if manifest["flat"]
                  else None for s in shards]
        where = [os.path.join(directory, _roles(s)["offsets"]) for s in shards]
        x = RaggedIndex.from_parts(paths, headers, offsets, shapes, where)
    _check_counts(directory, manifest, x, headers)
    return x


def _check_counts(directory: str, manifest: dict, x, headers) -> None:
    """Every shard must hold the samples the manifest says, of its dtype."""
    starts = x.row_starts if x.layout == "rows" else x.sample_starts
    for shard, header, a, b in zip(manifest["shards"], headers, starts[:-1], starts[1:]):
        if int(b - a) != shard.get("num_samples"):
            raise ValueError(f"{header.path}: expected {shard.get('num_samples')} samples as "
                             f"{os.path.join(directory, MANIFEST)} says, found {int(b - a)}.")
    if x.dtype.str != manifest["dtype"]:
        raise ValueError(f"{x.paths[0]}: expected dtype {np.dtype(manifest['dtype'])} as "
                         f"{os.path.join(directory, MANIFEST)} says, found {x.dtype}.")


def _path_table(directory: str, names: list[str]) -> sources.PathTable:
    builder = sources.PathTableBuilder([directory], [sources.DIRECTORY])
    for name in names:
        if os.sep in name or name.startswith("."):  # the manifest names files of the pack
            raise ValueError(f"{os.path.join(directory, MANIFEST)}: expected file names in "
                             f"the pack directory, found {name!r}.")
        builder.append(0, name)
    return builder.build()


def _load(directory: str, name: str, kind, ndim: int) -> np.ndarray:
    """A small array of a pack (offsets, shapes, labels), its header checked first."""
    path = os.path.join(directory, name)
    header = read_header(path)
    if header.dtype.kind not in "iu" or len(header.shape) != ndim:
        raise ValueError(f"{path}: expected an integer array of {ndim} dimension"
                         f"{'s' * (ndim != 1)}, found dtype {header.dtype} and shape "
                         f"{header.shape}.")
    array = np.load(path, allow_pickle=False)
    return array.astype(kind) if kind is not None else array


def _pack_labels(directory: str, shards: list) -> np.ndarray:
    return np.concatenate([_load(directory, _roles(s)["y"], None, 1) for s in shards])


# Verifying.


def verify_pack(index, dst: str, manifest: dict, *, verbose: bool = True) -> None:
    """Compares every sample and label of the pack in `dst` (read as
    `NpyDataset(dst)` reads it) with its source file in `index` (the source's
    `DatasetIndex`).

    Raises:
        ValueError: a packed sample or label differs from its source; the
            message names the first such source file.
    """
    from keras_npy.read import BatchReader, Padding

    packed = index_of_pack(dst, manifest=manifest, verbose=verbose)
    source = index.x
    if packed.num_samples != source.num_samples:
        raise ValueError(f"{dst}: expected {source.num_samples} samples, one per file of "
                         f"{source.paths.roots[0]}, found {packed.num_samples}.")
    ragged = packed.x.layout == "ragged"
    if ragged and not np.array_equal(packed.x.shapes, source.shapes):
        i = int(np.flatnonzero((packed.x.shapes != source.shapes).any(axis=1))[0])
        _mismatch(source, packed.x, i, f"has shape {tuple(source.shapes[i].tolist())}, "
                  f"packed as {tuple(packed.x.shapes[i].tolist())}")
    reader = BatchReader(packed.x, Padding("longest" if ragged else None))
    progress = _Progress(int(np.prod(source.shapes, axis=1).sum()) * source.dtype.itemsize,
                         verbose, "verifying")
    for start, step in _steps(source, 0, source.num_samples):
        ids = np.arange(start, min(start + step, source.num_samples))
        batch = reader.read(ids)
        for k, expected in enumerate(_sample_bytes(source, ids)):
            got = batch[k]
            if ragged:
                got = got[tuple(slice(0, int(s)) for s in packed.x.shapes[ids[k]])]
            if np.ascontiguousarray(got).tobytes() != bytes(expected):
                _mismatch(source, packed.x, int(ids[k]), "holds other data than its packed "
                          "copy")
        progress.add(int(np.prod(source.shapes[ids], axis=1).sum()) * source.dtype.itemsize)
    _verify_labels(index, packed, dst)


def _verify_labels(index, packed, dst: str) -> None:
    source, expected, found = index.x, index.y, packed.y
    if (expected is None) != (found is None):
        raise ValueError(f"{dst}: expected {'no ' if expected is None else ''}labels, as "
                         f"the source has, found {'none' if found is None else 'labels'}.")
    if expected is None:
        return
    if packed.class_names != index.class_names:
        raise ValueError(f"{dst}: expected class names {index.class_names}, found "
                         f"{packed.class_names}.")
    bad = np.flatnonzero(np.asarray(found) != np.asarray(expected))
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"{source.paths[i]}: expected label {int(expected[i])} in the pack "
                         f"{dst}, found {int(found[i])}; the pack is corrupt. Pack it again "
                         "with force=True (--force).")


def _mismatch(source, packed_x, i: int, what: str) -> None:
    where = packed_x.describe(i) if packed_x.layout == "ragged" else _row_place(packed_x, i)
    raise ValueError(f"{source.paths[i]}: {what} ({where}); the pack is corrupt, or this file "
                     "changed while it was packed. Pack it again with force=True (--force).")


def _row_place(x, i: int) -> str:
    f = int(np.searchsorted(x.row_starts, i, side="right") - 1)
    return f"{x.paths[f]}, row {i - int(x.row_starts[f])}"


# Files and progress.


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: str, value: dict) -> None:
    """Writes `value` to `path` atomically: readers see the old file or the new."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


class _Progress(index_lib.Progress):
    """A progress line on stderr (bytes done / total, MiB/s), drawn once the
    work has taken two seconds, and only when stderr is a terminal."""

    def __init__(self, total: int, verbose: bool, what: str):
        self.total, self.done, self.what = max(total, 1), 0, what
        self.verbose = verbose and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.started, self._drawn = time.perf_counter(), float("-inf")

    def _stream(self):
        return sys.stderr

    def _line(self, seconds: float) -> str:
        rate = self.done / 2**20 / seconds
        return (f"{self.what}: {self.done / 2**20:,.1f}/{self.total / 2**20:,.1f} MiB, "
                f"{rate:,.1f} MiB/s")
