"""Windows of a long series: `npy_timeseries_dataset` reading a `.npy` file against
`keras.utils.timeseries_dataset_from_array` over the same array in memory.

The data is one `(N, 14)` float32 series saved as one `.npy` file (10^6 rows; an
eighth with --quick), cut into windows of 120 rows, batch 128, without targets.

- Warm (the file in the page cache): windows/s over the first K batches of the
  same epoch, every reader the same K, named in the group's title. A full pass of
  Keras' function over 10^6 windows takes ~50-80 s here, so K is what the slowest
  reader (Keras' function or keras_npy, timed on a few batches first) reads in
  `PASS_SECONDS`, at least 2. Keras' function is iterated with
  `as_numpy_iterator` and inside a `tf.function` (`common.consume`); keras_npy
  with `format="pydataset"` (`ds[i]`) and `format="tf"`, both ways. Unshuffled,
  and once shuffled each (`shuffle=True, seed=0`). The base is the limit of
  making the windows at all: numpy taking each batch's windows from the array in
  memory (one `take` of a (128, 120) index, a new array per batch; numpy's fancy
  indexing of the same windows is 4-5x slower). Each keras_npy figure is also
  divided by Keras' function iterated the same way, round by round ("/ Keras",
  paired as `Results` pairs ratios to the base).
- Memory: the peak growth of anonymous RSS while those K batches are read,
  sampled every 2 ms by a thread (what a batch allocates and frees counts):
  Keras' function with the file loaded by `np.load` inside the measurement (its
  array must be in memory), and keras_npy reading the file.
- Cold (the file evicted before every pass), each pass over the whole epoch
  unless a warm one takes longer than `PASS_SECONDS` (then its first batches,
  as the title says): non-overlapping windows (`sequence_stride=120`: the
  windows' bytes are the file's bytes) in rows/s of the series, against the
  cold sequential read limit of `cold.py` (8 MiB preads, 4 in flight) on the
  same file; and stride 1, whose windows copy each row 120 times, cold against
  the same pass warm.
"""

from __future__ import annotations

import ctypes
import gc
import os
import statistics
import threading
import time

import numpy as np

from benchmarks.cold import _read_sequential
from benchmarks.common import Results, consume, each, evict, rss_anon, written

BATCH = 128
LENGTH = 120
FEATURES = 14
PASS_SECONDS = 2.5  # what the slowest reader's pass of K batches takes, about
_SAMPLE_SECONDS = 0.002  # RSS sampling period


class Timed:
    """`fn`, keeping the seconds of every call (the first is `Results`' untimed
    warm-up call), so that two figures of a group can be paired round by round."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, []

    def __call__(self):
        started = time.perf_counter()
        self.fn()
        self.seconds.append(time.perf_counter() - started)


def paired(results: Results, group: str, name: str, ours: Timed, theirs: Timed) -> None:
    """Records `ours`' rate over `theirs`' in each round (the same amount: the
    ratio of their times), as a median with [min-max]: call after `finish`."""
    ratios = sorted(t / o for o, t in zip(ours.seconds[1:], theirs.seconds[1:]))
    if ratios:
        results.value(group, name, "keras_npy", statistics.median(ratios), "x", ratios[0],
                      ratios[-1])


def run(results: Results, root: str, rows: int, tf) -> None:
    path = os.path.join(root, "series.npy")
    np.save(path, np.random.default_rng(0).random((rows, FEATURES), dtype="float32"))
    written()
    k = _batches(path, tf)
    tf_format = _memory(results, path, rows, k, tf)
    _warm(results, path, rows, k, tf, tf_format)
    _cold_stride(results, path, rows, tf if tf_format else None)
    _cold_overlapping(results, path, rows)


def _ours(path: str, fmt: str, shuffle: bool = False, stride: int = 1):
    from keras_npy import npy_timeseries_dataset

    return npy_timeseries_dataset(path, None, LENGTH, sequence_stride=stride,
                                  batch_size=BATCH, shuffle=shuffle, seed=0, format=fmt,
                                  verbose=False)


def _keras(data: np.ndarray, shuffle: bool = False):
    import keras

    return keras.utils.timeseries_dataset_from_array(data, None, LENGTH, batch_size=BATCH,
                                                     shuffle=shuffle, seed=0)


def _drain(dataset) -> None:
    for _ in dataset.as_numpy_iterator():
        pass


def _seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _batches(path: str, tf) -> int:
    """K: the batches the slowest reader reads in `PASS_SECONDS` (at least 2),
    each timed on a few batches after one untimed read."""
    ds = _ours(path, "pydataset")
    ds[0]
    per_batch = [_seconds(lambda: each(ds.__getitem__, range(1, min(len(ds), 4)))) / 3]
    if tf is not None:
        few = _keras(np.load(path)).take(8)
        _drain(few)
        per_batch.append(_seconds(lambda: _drain(few)) / 8)
    print(f"  (seconds per batch: {', '.join(f'{s:.4f}' for s in per_batch)}; K from the "
          f"slowest)")
    return max(2, min(len(ds), int(PASS_SECONDS / max(per_batch))))


def _memory(results: Results, path: str, rows: int, k: int, tf) -> bool:
    """The memory group; whether there is room for the tf.data pipeline, whose
    parallel calls each allocate what one `ds[i]` allocated (checked so that a
    shared machine is not run out of memory)."""
    group = results.group(f"windows, memory: peak anonymous RSS growth over the first {k} "
                          f"batches of {BATCH} windows of {LENGTH} rows of a ({rows:,}, "
                          f"{FEATURES}) float32 series (sampled every 2 ms, within batches too)")
    if tf is not None:
        def keras_pass():
            _drain(_keras(np.load(path)).take(k))

        results.value(group, "keras.utils.timeseries_dataset_from_array, np.load of the file "
                      "included", "baseline", peak_growth(keras_pass), "MiB")

    def ours_pass():
        ds = _ours(path, "pydataset")
        each(ds.__getitem__, range(k))

    grown = peak_growth(ours_pass)
    results.value(group, 'npy_timeseries_dataset(format="pydataset"), ds[i]', "keras_npy",
                  grown, "MiB")
    room = tf is not None and 2 * grown * 2**20 + 2**31 < _available()
    if tf is not None and not room:
        print(f"  (format=\"tf\" left out: its parallel calls would allocate about "
              f"{2 * grown:,.0f} MiB, {_available() / 2**20:,.0f} MiB available)")
    if room:
        results.value(group, 'npy_timeseries_dataset(format="tf"), as_numpy_iterator',
                      "keras_npy", peak_growth(lambda: _drain(_ours(path, "tf").take(k))),
                      "MiB")
    results.value(group, "the series' bytes (what np.load holds)", "baseline",
                  os.path.getsize(path) / 2**20, "MiB")
    return room


def peak_growth(fn) -> float:
    """The peak growth of anonymous RSS while `fn` runs, in MiB: sampled every
    `_SAMPLE_SECONDS` by a thread, so that what is allocated and freed within
    a batch counts. Free memory of the C heap is handed back first
    (`malloc_trim`): reused, it would hide an allocation (a freed array of the
    last figure holding the next one's)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    before = rss_anon()
    peak, done = [before], threading.Event()

    def sample():
        while not done.wait(_SAMPLE_SECONDS):
            peak[0] = max(peak[0], rss_anon())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return (max(peak[0], rss_anon()) - before) / 2**20


def _available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _warm(results: Results, path: str, rows: int, k: int, tf, tf_format: bool) -> None:
    data = np.load(path)
    windows = k * BATCH
    group = results.group(f"windows, warm, batch {BATCH}, length {LENGTH}: the first {k} "
                          f"batches ({windows:,} windows) of a ({rows:,}, {FEATURES}) float32 "
                          "series, stride 1, no targets; ratio to numpy taking the windows "
                          "from the array in memory")
    results.rate(group, "numpy: each batch's windows taken from the array in memory",
                 "limit", windows, "windows/s", lambda: _take(data, k), base=True)
    pairs = []
    for shuffle in (False, True):
        said = ", shuffle=True" if shuffle else ""
        theirs = {}
        if tf is not None:
            keras_ds = _keras(data, shuffle).take(k)
            theirs["iterated"] = Timed(lambda d=keras_ds: _drain(d))
            results.rate(group, f"timeseries_dataset_from_array{said}, as_numpy_iterator",
                         "baseline", windows, "windows/s", theirs["iterated"])
            if not shuffle:
                theirs["graph"] = Timed(consume(tf, keras_ds))
                results.rate(group, "timeseries_dataset_from_array, in a tf.function",
                             "baseline", windows, "windows/s", theirs["graph"])
        ds = _ours(path, "pydataset", shuffle)
        ours = Timed(lambda d=ds: each(d.__getitem__, range(k)))
        results.rate(group, f'npy_timeseries_dataset(format="pydataset"{said}), ds[i]',
                     "keras_npy", windows, "windows/s", ours)
        pairs.append((f'format="pydataset"{said}, ds[i] / Keras, as_numpy_iterator', ours,
                      theirs.get("iterated")))
        if tf_format:
            tf_ds = _ours(path, "tf", shuffle).take(k)
            ours = Timed(lambda d=tf_ds: _drain(d))
            results.rate(group, f'npy_timeseries_dataset(format="tf"{said}), as_numpy_iterator',
                         "keras_npy", windows, "windows/s", ours)
            pairs.append((f'format="tf"{said}, as_numpy_iterator / Keras, the same', ours,
                          theirs.get("iterated")))
            if not shuffle:
                ours = Timed(consume(tf, tf_ds))
                results.rate(group, 'npy_timeseries_dataset(format="tf"), in a tf.function',
                             "keras_npy", windows, "windows/s", ours)
                pairs.append(('format="tf", in a tf.function / Keras, the same', ours,
                              theirs.get("graph")))
    results.finish()
    for name, ours, theirs in pairs:
        if theirs is not None:
            paired(results, group, name + " (paired per round)", ours, theirs)


def _take(data: np.ndarray, k: int) -> None:
    steps, count = np.arange(LENGTH), len(data) - LENGTH + 1  # the windows there are
    for start in range(0, min(k * BATCH, count), BATCH):
        data.take(np.arange(start, min(start + BATCH, count))[:, None] + steps, axis=0)


def _affordable(path: str, stride: int) -> int:
    """The batches that a warm pass reads in `PASS_SECONDS`: all of them,
    unless that takes longer (at least 2). Timed on a dataset of its own: one
    that has read batches from the page cache takes the data to be there, and
    reading the same epoch again from batch 0 does not look again (no read
    ahead), where a new dataset, or the next epoch, does."""
    ds = _ours(path, "pydataset", stride=stride)
    ds[0]
    per_batch = _seconds(lambda: each(ds.__getitem__, range(1, min(len(ds), 3)))) / 2
    return max(2, min(len(ds), int(PASS_SECONDS / per_batch)))


def _cold_stride(results: Results, path: str, rows: int, tf) -> None:
    """Non-overlapping windows, cold: the whole series, or as many batches as
    a pass reads in `PASS_SECONDS` warm."""
    k = _affordable(path, LENGTH)
    ds = _ours(path, "pydataset", stride=LENGTH)
    read = min(k * BATCH, ds.num_samples) * LENGTH
    what = "the whole series" if k == len(ds) else f"the first {k} of {len(ds)} batches"
    group = results.group(f"windows, cold, stride {LENGTH}: {what} ({read:,} rows of "
                          f"{FEATURES * 4} bytes), batch {BATCH} of non-overlapping windows of "
                          f"{LENGTH} rows (the windows' bytes are the file's); ratio to cold "
                          "8 MiB preads, 4 in flight")
    setup = lambda: evict(path)  # noqa: E731
    results.rate(group, "cold sequential 8 MiB preads, 4 in flight (threads)", "limit", rows,
                 "rows/s", lambda: _read_sequential(path), base=True, setup=setup)
    results.rate(group, 'npy_timeseries_dataset(format="pydataset"), ds[i]', "keras_npy", read,
                 "rows/s", lambda: each(ds.__getitem__, range(k)), setup=setup)
    if tf is not None:
        results.rate(group, 'npy_timeseries_dataset(format="tf"), in a tf.function',
                     "keras_npy", read, "rows/s",
                     consume(tf, _ours(path, "tf", stride=LENGTH).take(k)), setup=setup)


def _cold_overlapping(results: Results, path: str, rows: int) -> None:
    """Stride 1, cold against warm: the whole epoch, or as many batches as a
    warm pass reads in `PASS_SECONDS` (the disk's share of a few batches says
    little: a pass of all of them reads the file once, and copies it 120 times)."""
    k = _affordable(path, 1)
    warm, cold = _ours(path, "pydataset"), _ours(path, "pydataset")  # see `_affordable`
    windows = min(k * BATCH, warm.num_samples)
    what = "the whole epoch" if k == len(warm) else f"the first {k} of {len(warm)} batches"
    group = results.group(f"windows, cold, stride 1: {what} ({windows:,} windows of {LENGTH} "
                          f"rows, each row copied {LENGTH} times, of a ({rows:,}, {FEATURES}) "
                          "float32 series); ratio to the same pass warm")
    results.rate(group, 'npy_timeseries_dataset(format="pydataset"), ds[i], warm', "limit",
                 windows, "windows/s", lambda: each(warm.__getitem__, range(k)), base=True)
    results.rate(group, 'npy_timeseries_dataset(format="pydataset"), ds[i], cold', "keras_npy",
                 windows, "windows/s", lambda: each(cold.__getitem__, range(k)),
                 setup=lambda: evict(path))
