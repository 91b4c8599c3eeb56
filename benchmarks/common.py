"""What every benchmark group shares: timing, the result table, data writers, and the
plain readers that are the limits."""

from __future__ import annotations

import dataclasses
import os
import statistics
import time

import numpy as np

ROW = 256  # float32 features per row: 1 KiB rows
_PAUSE = 0.5  # seconds before each timed call (see `Results`)


@dataclasses.dataclass
class Figure:
    """One measured rate: median and range over repeats, and its ratio to the group's base."""

    group: str
    name: str
    kind: str  # "limit", "baseline" (what people use today) or "keras_npy"
    unit: str
    median: float
    low: float
    high: float
    ratio: float | None = None
    base: str | None = None


class Results:
    """Collects figures group by group, and prints each group once it is timed.

    The rates of a group are timed in rounds: every function once per round, in
    turn, each after a pause (one pipeline's threads wind down before the next
    is timed), and each ratio is the median over rounds of the rate over the
    base's rate in the same round. This machine's speed drifts over tens of
    seconds by more than the figures differ (the no-data `fit` ceiling ranged
    0.7-1.27x its median within one process; the open+read+close limit
    74,000-107,000 files/s between runs), and paired ratios take the drift
    out. Rounds without the pause had put NpyDataset's rows at 0.67x: the
    tf.data pipeline timed just before was still winding down."""

    def __init__(self, repeats: int):
        self.repeats, self.figures = repeats, []
        self._pending: list[tuple] = []
        self._rounds = repeats

    def group(self, title: str, rounds: int | None = None) -> str:
        """Starts a group, whose rates are timed in `rounds` rounds (`repeats`
        unless given)."""
        self.finish()
        self._rounds = rounds or self.repeats
        print(f"\n{title}")
        return title

    def rate(self, group: str, name: str, kind: str, amount: float, unit: str, fn,
             base: bool = False, setup=None) -> None:
        """Records `amount / seconds` of `fn`, timed with the rest of its group (after
        one untimed call) when the next group starts or `finish` is called. The figure
        marked `base` is what the others of the group are divided by. `setup`, when
        given, runs untimed before every call (to evict the data from the page cache)."""
        self._pending.append((group, name, kind, amount, unit, fn, base, setup))

    def value(self, group: str, name: str, kind: str, value: float, unit: str,
              low: float | None = None, high: float | None = None) -> Figure:
        """Records a figure that is not a rate (memory, a slope, a time), with
        its range when it was measured several times."""
        self.finish()
        return self._add(Figure(group, name, kind, unit, value,
                                value if low is None else low, value if high is None else high))

    def finish(self) -> None:
        """Times the rates recorded since the last group, in rounds, and adds them."""
        pending, self._pending = self._pending, []
        for *_, fn, _, setup in pending:
            if setup is not None:
                setup()
            fn()  # warm: imports, traced functions (and the page cache, unless evicted)
        rates = [[] for _ in pending]
        for _ in range(self._rounds):
            for k, (*_, amount, _, fn, _, setup) in enumerate(pending):
                if setup is not None:
                    setup()
                time.sleep(_PAUSE)
                started = time.perf_counter()
                fn()
                rates[k].append(amount / (time.perf_counter() - started))
        base = next((k for k, entry in enumerate(pending) if entry[-2]), None)
        for k, (group, name, kind, _, unit, *_) in enumerate(pending):
            ordered = sorted(rates[k])
            figure = Figure(group, name, kind, unit, statistics.median(ordered), ordered[0],
                            ordered[-1])
            if base is not None and k != base and unit == pending[base][4]:
                figure.ratio = statistics.median(r / b for r, b in zip(rates[k], rates[base]))
                figure.base = pending[base][1]
            self._add(figure)

    def _add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        ratio = f"{figure.ratio:6.2f}x" if figure.ratio is not None else " " * 7
        spread = f"[{_number(figure.low)}-{_number(figure.high)}]" if figure.low != figure.high \
            else ""
        print(f"  {figure.kind:<9} {figure.name:<50} {_number(figure.median):>12} "
              f"{figure.unit:<10} {ratio} {spread}")
        return figure


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def each(fn, items) -> None:
    """Calls `fn` on every item, keeping no result (as a training loop does)."""
    for item in items:
        fn(item)


def preadv_loop(path: str, offset: int, rows: int, batch: int, reuse: bool) -> None:
    """Reads every batch of `ROW` float32 rows with one os.preadv, into a new array each
    time (what a reader that hands out batches must do) or into one preallocated array."""
    buffer = np.empty((batch, ROW), "float32")
    fd = os.open(path, os.O_RDONLY)
    try:
        for start in range(0, rows - batch + 1, batch):
            if not reuse:  # drop the last batch first, as a training loop does
                buffer = None
                buffer = np.empty((batch, ROW), "float32")
            os.preadv(fd, [memoryview(buffer).cast("B")], offset + start * ROW * 4)
    finally:
        os.close(fd)


def open_read_close(path: str) -> None:
    with open(path, "rb", buffering=0) as f:
        f.read()


def written() -> None:
    """Writes back to disk what a group has just written, before it times anything: the
    kernel writes dirty pages back ~30 s after they were written, and that work (100,000
    files of the index group, 256 MiB of rows) otherwise lands in whichever figure is being
    measured then, on a machine of two cores."""
    os.sync()


def write_files(folder: str, num_files: int, size: int, vary: bool = False,
                num_classes: int = 1) -> str:
    """Writes `num_files` float32 samples of `size` data bytes (of 16 features; lengths
    from a half to one and a half times that, when `vary`), one file each."""
    rng = np.random.default_rng(0)
    for c in range(num_classes):
        os.makedirs(os.path.join(folder, f"class_{c}"), exist_ok=True)
    steps = size // 64
    for i in range(num_files):
        length = int(rng.integers(steps // 2, steps * 3 // 2 + 1)) if vary else steps
        np.save(os.path.join(folder, f"class_{i % num_classes}", f"{i:07d}.npy"),
                np.full((length, 16), i, "float32"))
    written()
    return folder


def write_rows(path: str, rows: int) -> str:
    np.save(path, np.random.default_rng(0).random((rows, ROW), dtype="float32"))
    written()
    return path


def evict(*paths: str) -> None:
    """Drops `paths` from the page cache (`posix_fadvise(DONTNEED)`, never the
    system's caches), after keras_npy closes its maps of them: mapped pages are
    not dropped. What was written must be on disk already (`written`)."""
    from keras_npy.read import handles

    handles.TABLE.clear()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def rss_anon() -> int:
    """Anonymous resident memory of this process, in bytes (page cache excluded)."""
    return _status("RssAnon:")


def rss_file() -> int:
    """File-backed resident memory of this process (mapped page cache), in bytes."""
    return _status("RssFile:")


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def consume(tf, dataset):
    """A function that iterates `dataset` inside a graph, as a training step would."""

    @tf.function
    def run():
        total = tf.constant(0.0)
        for element in dataset:
            first = tf.nest.flatten(element)[0]
            total += tf.cast(tf.reshape(first, [-1])[0], tf.float32)
        return total

    return lambda: run()
