"""Data that is not in memory: every pass starts with the files it reads evicted from
the page cache (`posix_fadvise(DONTNEED)`, and keras_npy's maps of them closed), and
is divided by limits measured the same way in the same run: a cold sequential read
of 8 MiB `pread`s (4 in flight), cold random 1 KiB `pread`s with 64 in flight
(threads), and a cold open+read of per-sample files with 64 threads."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from benchmarks.common import ROW, Results, consume, each, evict, rss_anon, write_files, \
    write_rows

BATCH = 256
THREADS = 64  # reads in flight in the random-read limits
ROW_BYTES = ROW * 4  # float32


def run(results: Results, root: str, rows: int, shuffled_batches: int, num_files: int,
        tf) -> None:
    path = write_rows(os.path.join(root, "cold.npy"), rows)
    _sequential(results, path, rows, tf)
    _global_shuffle(results, path, rows, shuffled_batches)
    _block_shuffle(results, path, rows)
    _files(results, root, num_files)
    _fit(results, path, rows, tf)
    _memory(results, path, rows)


def _sequential(results: Results, path: str, rows: int, tf) -> None:
    from keras_npy import NpyDataset, npy_dataset

    gib = rows * ROW_BYTES / 2**30
    group = results.group(f"cold rows, sequential, batch {BATCH}: {gib:g} GiB of 1 KiB rows; "
                          "ratio to cold 8 MiB preads, 4 in flight")
    setup = lambda: evict(path)  # noqa: E731
    results.rate(group, "cold sequential 8 MiB preads, 4 in flight (threads)", "limit", rows,
                 "rows/s", lambda: _read_sequential(path), base=True, setup=setup)
    mapped = lambda: np.load(path, mmap_mode="r")  # noqa: E731  (a new map: no pages in it)
    results.rate(group, "np.load(mmap_mode='r') slicing", "baseline", rows, "rows/s",
                 lambda: _slices(mapped(), rows), setup=setup)
    ds = NpyDataset(path, batch_size=BATCH)
    results.rate(group, "NpyDataset ds[i]", "keras_npy", rows, "rows/s",
                 lambda: each(ds.__getitem__, range(len(ds))), setup=setup)
    if tf is not None:
        results.rate(group, "npy_dataset, in a tf.function", "keras_npy", rows, "rows/s",
                     consume(tf, npy_dataset(path, batch_size=BATCH)), setup=setup)


def _global_shuffle(results: Results, path: str, rows: int, batches: int) -> None:
    from keras_npy import NpyDataset

    ds = NpyDataset(path, batch_size=BATCH, shuffle=True, seed=0)
    ids = [np.sort(ds._source.order.batch(0, i)) for i in range(batches)]
    sample = np.concatenate(ids)
    group = results.group(f"cold rows, global shuffle, batch {BATCH}: the first {batches} "
                          "batches of an epoch; ratio to cold random 1 KiB preads, "
                          f"{THREADS} in flight")
    setup = lambda: evict(path)  # noqa: E731
    results.rate(group, f"cold random 1 KiB preads, {THREADS} threads", "limit", len(sample),
                 "rows/s", lambda: _read_rows_threaded(path, sample), base=True, setup=setup)
    few = ids[:max(1, batches // 16)]  # a map faults in 8 MiB per row here: a few batches
    results.rate(group, "np.load(mmap_mode='r') fancy indexing (sorted ids)", "baseline",
                 len(few) * BATCH, "rows/s",
                 lambda: each(np.load(path, mmap_mode="r").__getitem__, few), setup=setup)
    results.rate(group, "NpyDataset ds[i], shuffle=True", "keras_npy", len(sample), "rows/s",
                 lambda: each(ds.__getitem__, range(batches)), setup=setup)


def _block_shuffle(results: Results, path: str, rows: int) -> None:
    from keras_npy import NpyDataset

    ds = NpyDataset(path, batch_size=BATCH, shuffle="block", seed=0)
    group = results.group(f"cold rows, block shuffle, batch {BATCH}: the whole file, blocks of "
                          f"{ds._source.order.block_size} rows, windows of "
                          f"{ds._source.order.window} blocks; ratio to cold 8 MiB preads, "
                          "4 in flight")
    setup = lambda: evict(path)  # noqa: E731
    results.rate(group, "cold sequential 8 MiB preads, 4 in flight (threads)", "limit", rows,
                 "rows/s", lambda: _read_sequential(path), base=True, setup=setup)
    results.rate(group, "NpyDataset ds[i], shuffle=\"block\"", "keras_npy", rows, "rows/s",
                 lambda: each(ds.__getitem__, range(len(ds))), setup=setup)
    exact = NpyDataset(path, batch_size=BATCH, shuffle=True, seed=0)
    for name, order in (("exact shuffle", exact._source.order),
                        ("block shuffle", ds._source.order)):
        spread, same_block = shuffle_quality(order, ds._source.order.block_size)
        results.value(group, f"{name}: mean distance in the file between neighbours in a "
                      "batch, / rows", "keras_npy", spread, "fraction")
        results.value(group, f"{name}: pairs of a batch from one block of "
                      f"{ds._source.order.block_size} rows", "keras_npy", same_block,
                      "fraction")


def shuffle_quality(order, block_size: int) -> tuple[float, float]:
    """How well an epoch's order mixes the file: the mean distance in the file
    between consecutive samples of a batch, over the number of samples (1/3 for
    an exact shuffle, 0 for none), and the fraction of the pairs of samples of a
    batch that come from the same block of `block_size` (about
    `block_size / samples` for an exact shuffle)."""
    n = order.num_samples
    spread, same, pairs = 0.0, 0, 0
    for i in range(order.num_batches):
        ids = np.asarray(order.batch(0, i))
        spread += float(np.abs(np.diff(ids)).sum())
        _, counts = np.unique(ids // block_size, return_counts=True)
        same += int((counts * (counts - 1) // 2).sum())
        pairs += len(ids) * (len(ids) - 1) // 2
    return spread / (n - order.num_batches) / n, same / pairs


def _files(results: Results, root: str, num_files: int) -> None:
    from keras_npy import NpyDataset

    folder = write_files(os.path.join(root, "cold_files"), num_files, 1024)
    ds = NpyDataset(folder, batch_size=BATCH, shuffle=True, seed=0, verbose=False)
    paths = ds.file_paths
    shuffled = [paths[int(i)] for i in np.random.default_rng(0).permutation(len(paths))]
    group = results.group(f"cold files, shuffled: {num_files:,} files of 1 KiB, batch {BATCH}; "
                          f"ratio to a cold open+read of each with {THREADS} threads")
    setup = lambda: evict(*paths)  # noqa: E731
    results.rate(group, f"cold open+read, {THREADS} threads", "limit", num_files, "files/s",
                 lambda: _open_read_threaded(shuffled), base=True, setup=setup)
    results.rate(group, "cold Python open+read+close loop", "baseline", num_files, "files/s",
                 lambda: each(_open_read, shuffled), setup=setup)
    results.rate(group, "NpyDataset ds[i], shuffle=True", "keras_npy", num_files, "files/s",
                 lambda: each(ds.__getitem__, range(len(ds))), setup=setup)


def _fit(results: Results, path: str, rows: int, tf) -> None:
    import keras

    from keras_npy import NpyDataset

    steps = min(rows // BATCH, 1024)
    x = np.load(path, mmap_mode="r")[:BATCH]
    y = np.zeros((rows, 1), "float32")
    model = keras.Sequential([keras.Input((ROW,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    ds = NpyDataset(path, y=y, batch_size=BATCH, shuffle="block", seed=0)

    class Constant(keras.utils.PyDataset):
        def __len__(self):
            return steps

        def __getitem__(self, i):
            return np.asarray(x), y[:BATCH]

    constant = Constant() if tf is None else tf.data.Dataset.from_tensors(
        (np.asarray(x), y[:BATCH])).repeat(steps)
    group = results.group(f"cold model.fit: Dense(1), batch {BATCH}, {steps} steps of cold rows "
                          "read with the block shuffle; ratio to one constant batch repeated",
                          rounds=2 * results.repeats + 1)
    results.rate(group, "one constant batch repeated (no data)", "limit", steps * BATCH,
                 "samples/s", lambda: model.fit(constant, epochs=1, verbose=0), base=True)
    results.rate(group, "NpyDataset, shuffle=\"block\"", "keras_npy", steps * BATCH, "samples/s",
                 lambda: model.fit(ds, epochs=1, steps_per_epoch=steps, shuffle=False,
                                   verbose=0), setup=lambda: evict(path))


def _memory(results: Results, path: str, rows: int) -> None:
    from keras_npy import NpyDataset

    gib = rows * ROW_BYTES / 2**30
    group = results.group(f"cold memory: anonymous RSS growth streaming {gib:g} GiB of cold "
                          "rows, batch 256, read_ahead_bytes 64 MiB")
    for shuffle in (False, "block"):
        ds = NpyDataset(path, batch_size=BATCH, shuffle=shuffle, seed=0)
        evict(path)
        ds[0]
        before = peak = rss_anon()
        for i in range(1, len(ds)):
            ds[i]
            if i % 64 == 0:
                peak = max(peak, rss_anon())
        kind = "sequential" if shuffle is False else "block shuffle"
        results.value(group, f"NpyDataset, {kind}: RssAnon growth", "keras_npy",
                      (max(peak, rss_anon()) - before) / 2**20, "MiB")
        results.value(group, f"NpyDataset, {kind}: most bytes read ahead at once",
                      "keras_npy", ds._source.read_ahead.peak_bytes / 2**20, "MiB")


def _read_sequential(path: str, in_flight: int = 4) -> None:
    """The file in 8 MiB `pread`s, `in_flight` at a time (threads): one at a
    time leaves the disk idle between reads."""
    fd = os.open(path, os.O_RDONLY)
    offsets = list(range(0, os.fstat(fd).st_size, 8 * 2**20))
    try:
        def work(k):
            chunk = bytearray(8 * 2**20)
            for offset in offsets[k::in_flight]:
                os.preadv(fd, [chunk], offset)

        with ThreadPoolExecutor(in_flight) as pool:
            list(pool.map(work, range(in_flight)))
    finally:
        os.close(fd)


def _slices(mapped: np.ndarray, rows: int) -> None:
    for start in range(0, rows, BATCH):
        np.array(mapped[start:start + BATCH])


def _read_rows_threaded(path: str, rows: np.ndarray) -> None:
    """Every row with its own 1 KiB pread, `THREADS` at a time."""
    fd = os.open(path, os.O_RDONLY)
    offsets = (128 + rows.astype(np.int64) * ROW_BYTES).tolist()
    try:
        def work(part):
            buffer = bytearray(ROW_BYTES)
            for offset in part:
                os.preadv(fd, [buffer], offset)

        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(work, [offsets[k::THREADS] for k in range(THREADS)]))
    finally:
        os.close(fd)


def _open_read(path: str) -> None:
    with open(path, "rb", buffering=0) as f:
        f.read()


def _open_read_threaded(paths: list[str]) -> None:
    lock, position = threading.Lock(), [0]

    def work(_):
        buffer = bytearray(2048)
        while True:
            with lock:
                k = position[0]
                position[0] += 256
            if k >= len(paths):
                return
            for path in paths[k:k + 256]:
                fd = os.open(path, os.O_RDONLY)
                os.readv(fd, [buffer])
                os.close(fd)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(work, range(THREADS)))
