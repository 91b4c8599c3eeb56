"""`keras-npy inspect`: what a tree of `.npy` files holds, and what is wrong with it.

Unlike the index, which stops at the first bad file, an inspection reads every
header, keeps going, and lists every problem with its reason: unreadable or
malformed headers, pickled arrays, files whose size disagrees with their
header, and files whose dtype or rank differs from the majority's.
"""

from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np

from keras_npy import index as index_lib
from keras_npy import npz, sources
from keras_npy.header import read_header

_HISTOGRAM_BINS = 10
_BAR_WIDTH = 30


@dataclasses.dataclass
class Inspection:
    """What `inspect_source` found.

    Attributes:
        source: the path, glob or directory inspected.
        layout: `"files"` (a sample per file) or `"rows"` (the rows of the
            files are the samples).
        num_files: `.npy` files found.
        nbytes: their size on disk, in bytes.
        classes: usable files per class folder (the first folder under a
            directory); empty when the files are not in folders, or are rows.
        dtypes: files per dtype (as stored, e.g. `<f4`).
        shapes: the shape of every readable file, in walk order.
        problems: `(path, reason)` for every file that cannot be used.
    """

    source: str
    layout: str
    num_files: int = 0
    nbytes: int = 0
    classes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    dtypes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    shapes: list = dataclasses.field(default_factory=list)
    problems: list = dataclasses.field(default_factory=list)

    @property
    def num_samples(self) -> int:
        if self.layout == "rows":
            return sum(shape[0] for shape in self.shapes if shape)
        return len(self.shapes)


def inspect_source(source: str, *, layout: str = "auto", follow_links: bool = False,
                   verbose: bool = True) -> Inspection:
    """Reads the header of every `.npy` file of `source` and reports on them.

    Args:
        source: a directory (walked recursively), a glob, or a `.npy` path.
        layout: as `NpyDataset`'s: `"files"`, `"rows"`, or `"auto"` (rows for
            a single file path, files otherwise). Defaults to `"auto"`.
        follow_links: whether the walk enters links to folders. Defaults to
            `False`.
        verbose: whether a progress bar is shown on long scans. Defaults to
            `True`.

    Returns:
        An `Inspection`; its `problems` are empty when every file is usable.

    Raises:
        ValueError: `source` does not exist or holds no `.npy` file.
    """
    unreadable = []
    paths = sources.find_files(source, follow_links=follow_links, name="PATH",
                               problems=unreadable)
    if layout not in ("auto", "files", "rows"):
        raise ValueError('`layout` must be "auto", "files" or "rows". '
                         f"Received: layout={layout!r}")
    if layout == "auto":
        layout = "rows" if len(paths) == 1 and sources.is_file(source) else "files"
    report = Inspection(source, layout, num_files=len(paths), problems=unreadable)
    headers, classes = [], []
    progress = index_lib.Progress(len(paths), verbose)
    for i, path in enumerate(paths):
        report.nbytes += _size(path)
        try:
            headers.append(read_header(path))
            classes.append(_class_of(paths, i) if layout == "files" else None)
        except (ValueError, OSError) as error:
            report.problems.append((path, _reason(path, error)))
        progress.add(1)
    _check_agreement(headers, classes, report)
    report.classes.pop(None, None)
    return report


def format_report(report: Inspection) -> str:
    """The report `keras-npy inspect` prints."""
    lines = [f"{report.source}: {report.num_files:,} .npy file{_s(report.num_files)}, "
             f"{_megabytes(report.nbytes)} on disk"]
    per = "one per file" if report.layout == "files" else (
        f"the rows of the file{_s(report.num_files)}")
    lines.append(f"samples: {report.num_samples:,} ({per})")
    if report.classes:
        listed = ", ".join(f"{name} ({count:,})" for name, count in sorted(report.classes.items()))
        lines.append(f"classes: {len(report.classes)}: {listed}")
    if report.dtypes:
        lines.append("dtypes: " + ", ".join(f"{np.dtype(d).name} ({count:,} file{_s(count)})"
                                            for d, count in report.dtypes.most_common()))
    lines.extend(_shape_lines(report))
    lines.append(f"problems: {len(report.problems)}")
    lines.extend(f"  {path}: {reason}" for path, reason in report.problems)
    return "\n".join(lines)


def _check_agreement(headers: list, classes: list, report: Inspection) -> None:
    """Counts dtypes, classes and keeps shapes of the usable files, and reports
    those whose dtype, rank (or, as rows, row shape) differs from the most
    common one, and scalars as rows: the index would refuse them."""
    if not headers:
        return
    rows = report.layout == "rows"
    dtypes = collections.Counter(h.dtype.str for h in headers)
    ranks = collections.Counter(len(h.shape) for h in headers)
    row_shapes = collections.Counter(h.shape[1:] for h in headers if h.shape)
    dtype, rank = dtypes.most_common(1)[0][0], ranks.most_common(1)[0][0]
    row_shape = row_shapes.most_common(1)[0][0] if row_shapes else None
    for header, name in zip(headers, classes):
        if header.dtype.str != dtype:
            report.problems.append((header.path, f"dtype {header.dtype.name} ({header.dtype.str})"
                                    f" differs from the other files' {np.dtype(dtype).name} "
                                    f"({dtype})"))
        elif rows and not header.shape:
            report.problems.append((header.path, "a scalar has no rows"))
        elif rows and header.shape[1:] != row_shape:
            report.problems.append((header.path, f"rows of shape {header.shape[1:]} differ "
                                    f"from the other files' {row_shape}"))
        elif len(header.shape) != rank:
            report.problems.append((header.path, f"shape {header.shape} has {len(header.shape)} "
                                    f"axes, the other files have {rank}"))
        else:
            report.dtypes[dtype] += 1
            report.shapes.append(header.shape)
            report.classes[name] += 1


def _shape_lines(report: Inspection) -> list[str]:
    if not report.shapes:  # every file has a problem
        return []
    shapes = np.array(report.shapes, dtype=np.int64).reshape(len(report.shapes), -1)
    if report.layout == "rows":
        if len(shapes) == 1:
            shape = tuple(int(d) for d in shapes[0])
            return [f"shape: {shape}: rows of shape {shape[1:]}"]
        row_shape = tuple(int(d) for d in shapes[0, 1:])
        counts = shapes[:, 0]
        return [f"rows of shape {row_shape}: {int(counts.min()):,} to {int(counts.max()):,} "
                "per file"]
    low, high = shapes.min(axis=0), shapes.max(axis=0)
    summary = tuple(int(a) if a == b else None for a, b in zip(low, high))
    lines = [f"sample shape: {summary}" + ("" if None not in summary else
                                          ", None where files differ")]
    for axis in np.flatnonzero(low != high):
        lines.append(f"  axis {axis} varies from {low[axis]} to {high[axis]}; files per size:")
        lines.extend(_histogram(shapes[:, axis]))
    return lines


def _histogram(values: np.ndarray) -> list[str]:
    """Counts in at most `_HISTOGRAM_BINS` bins of whole numbers, one line each."""
    low = int(values.min())
    width = -(-(int(values.max()) - low + 1) // _HISTOGRAM_BINS)
    counts = np.bincount((values - low) // width)
    high = int(values.max())
    digits = len(str(high))
    lines = []
    for k, count in enumerate(counts):
        start, stop = low + k * width, min(low + (k + 1) * width - 1, high)
        label = f"{start}" if width == 1 else f"{start}-{stop}"
        bar = "#" * int(round(_BAR_WIDTH * count / counts.max()))
        lines.append(f"    {label:>{2 * digits + 1}} {bar:<{_BAR_WIDTH}} {count:,}")
    return lines


def _class_of(paths: sources.PathTable, i: int) -> str | None:
    if paths.kinds[paths.root_ids[i]] != sources.DIRECTORY:
        return None
    parts = paths.relpath(i).split(os.sep)
    return parts[0] if len(parts) > 1 else None


def _reason(path: str, error: Exception) -> str:
    """The error's message without the path it starts with."""
    message = str(error)
    return message[len(path) + 2:] if message.startswith(f"{path}: ") else message


def _size(path: str) -> int:
    try:
        return os.stat(npz.physical(path)).st_size
    except OSError:
        return 0


def _megabytes(nbytes: int) -> str:
    return f"{nbytes / 1e6:,.1f} MB"


def _s(count: int) -> str:
    return "" if count == 1 else "s"
