"""NpyDataset read speed and memory, each against its baseline in the same run.

    python -m benchmarks.read_speed            # ~2 minutes here
    python -m benchmarks.read_speed --quick    # smaller data, 1 repeat

Every figure is the median over --repeats (min-max in brackets), from the page
cache (each file is read once before timing), and a ratio to its baseline:

- rows, sequential, (N, 256) float32, batch 256: `ds[i]` loop vs a plain
  `os.preadv` of the same bytes into a new array per batch (and into one
  preallocated array, and memmap slicing);
- rows, global shuffle: `ds[i]` loop vs that same sequential preadv rate (and
  memmap fancy indexing of the same shuffled ids);
- files of 1 KiB and 12 KiB: `ds[i]` loop vs a plain single-threaded Python
  open+read+close loop over the same files (and an `np.load` loop);
- `model.fit` of a one-layer model for one epoch vs fitting one constant batch
  repeated as often (the no-data ceiling), and vs in-memory numpy arrays;
- memory: anonymous RSS growth while streaming a large (sparse) rows file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

ROW = 256  # float32 features per row: 1 KiB rows


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm: page cache, imports, compiled functions
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def each(fn, items) -> None:
    """Calls `fn` on every item, keeping no result (as a training loop does)."""
    for item in items:
        fn(item)


def rate(amount: float, times: list[float]) -> tuple[float, float, float]:
    rates = sorted(amount / t for t in times)
    return statistics.median(rates), rates[0], rates[-1]


def report(name: str, amount: float, unit: str, times, baseline=None) -> float:
    median, low, high = rate(amount, times)
    ratio = f"  {median / baseline:5.2f}x" if baseline else ""
    print(f"  {name:<44} {median:12,.0f} {unit} [{low:,.0f}-{high:,.0f}]{ratio}")
    return median


def preadv_loop(path: str, offset: int, rows: int, batch: int, reuse: bool) -> None:
    """Reads every batch with os.preadv, into a new array each time (what a
    reader that hands out batches must do) or into one preallocated array."""
    buffer = np.empty((batch, ROW), "float32")
    fd = os.open(path, os.O_RDONLY)
    try:
        for start in range(0, rows - batch + 1, batch):
            buffer = buffer if reuse else np.empty((batch, ROW), "float32")
            os.preadv(fd, [memoryview(buffer).cast("B")], offset + start * ROW * 4)
    finally:
        os.close(fd)


def bench_rows(root: str, rows: int, repeats: int) -> None:
    from keras_npy import NpyDataset

    path = os.path.join(root, "rows.npy")
    np.save(path, np.random.default_rng(0).random((rows, ROW), dtype="float32"))
    batch = 256
    samples = rows - rows % batch
    print(f"rows: ({rows}, {ROW}) float32, {rows * ROW * 4 / 2**20:.0f} MiB, batch {batch} "
          "(samples/s; ratio to the plain preadv loop)")
    raw = report("plain os.preadv, a new array per batch", samples, "samples/s",
                 timed(lambda: preadv_loop(path, 128, rows, batch, False), repeats))
    report("os.preadv into one preallocated batch", samples, "samples/s",
           timed(lambda: preadv_loop(path, 128, rows, batch, True), repeats), raw)
    mapped = np.load(path, mmap_mode="r")
    report("memmap slicing", samples, "samples/s",
           timed(lambda: each(lambda s: np.array(mapped[s:s + batch]),
                              range(0, samples, batch)), repeats), raw)
    ds = NpyDataset(path, batch_size=batch, drop_remainder=True)
    report("NpyDataset ds[i], sequential", samples, "samples/s",
           timed(lambda: each(ds.__getitem__, range(len(ds))), repeats), raw)
    shuffled = NpyDataset(path, batch_size=batch, drop_remainder=True, shuffle=True, seed=0)
    ids = [np.sort(shuffled._source.order.batch(0, i)) for i in range(len(shuffled))]
    report("memmap fancy indexing, shuffled", samples, "samples/s",
           timed(lambda: each(mapped.__getitem__, ids), repeats), raw)
    report("NpyDataset ds[i], global shuffle", samples, "samples/s",
           timed(lambda: each(shuffled.__getitem__, range(len(shuffled))), repeats), raw)


def write_files(root: str, num_files: int, size: int) -> str:
    """Writes `num_files` float32 samples of `size` data bytes, one file each."""
    folder = os.path.join(root, f"files_{size}")
    os.makedirs(folder)
    sample = np.zeros(size // 4, "float32")
    for i in range(num_files):
        np.save(os.path.join(folder, f"{i:07d}.npy"), sample)
    return folder


def open_read_close(path: str) -> None:
    with open(path, "rb") as f:
        f.read()


def bench_files(root: str, num_files: int, size: int, repeats: int) -> None:
    from keras_npy import NpyDataset

    ds = NpyDataset(write_files(root, num_files, size), batch_size=256, verbose=False)
    paths = ds.file_paths

    print(f"files: {num_files} files of {size // 1024} KiB of data, batch 256 "
          "(files/s; ratio to the open+read+close loop)")
    raw = report("Python open+read+close loop", num_files, "files/s",
                 timed(lambda: each(open_read_close, paths), repeats))
    report("np.load loop", num_files, "files/s",
           timed(lambda: each(np.load, paths), repeats), raw)
    report("NpyDataset ds[i]", num_files, "files/s",
           timed(lambda: each(ds.__getitem__, range(len(ds))), repeats), raw)


def bench_fit(root: str, rows: int, repeats: int) -> None:
    import keras

    from keras_npy import NpyDataset

    path = os.path.join(root, "fit.npy")
    x = np.random.default_rng(1).random((rows, ROW), dtype="float32")
    y = x[:, :1].sum(axis=1)
    np.save(path, x)
    batch = 256
    ds = NpyDataset(path, y=y, batch_size=batch, drop_remainder=True)

    class Constant(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.batch = ds[0]

        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            return self.batch

    model = keras.Sequential([keras.Input((ROW,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    samples = len(ds) * batch
    fit = lambda data, **kw: (lambda: model.fit(data, epochs=1, verbose=0, shuffle=False,
                                                **kw))
    print(f"model.fit, Dense(1) on ({rows}, {ROW}) float32, batch {batch}, one epoch "
          "(samples/s; ratio to the constant batch)")
    ceiling = report("one constant batch repeated (no data)", samples, "samples/s",
                     timed(fit(Constant()), repeats))
    report("in-memory numpy arrays", samples, "samples/s",
           timed(fit(x[:samples], y=y[:samples], batch_size=batch), repeats), ceiling)
    report("NpyDataset", samples, "samples/s", timed(fit(ds), repeats), ceiling)


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def bench_memory(root: str, gib: float) -> None:
    from keras_npy import NpyDataset

    path = os.path.join(root, "big.npy")
    rows = int(gib * 2**30) // (ROW * 4)
    np.lib.format.open_memmap(path, "w+", "float32", (rows, ROW)).flush()  # sparse
    batch = 1024
    for shuffle in (False, True):
        ds = NpyDataset(path, batch_size=batch, shuffle=shuffle, seed=0)
        ds[0]
        before, peak = rss_anon(), 0
        for i in range(len(ds)):
            ds[i]
            if i % 64 == 0:
                peak = max(peak, rss_anon())
        grown = (max(peak, rss_anon()) - before) / 2**20
        bound = 64 + batch * ROW * 4 * (ds.max_queue_size + 2) / 2**20
        print(f"memory: streamed {gib:g} GiB ({'shuffled' if shuffle else 'sequential'}), "
              f"RssAnon grew {grown:.1f} MiB (promise: < {bound:.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-gib", type=float, default=5.0)
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    rows = 65_536 if args.quick else 262_144
    files = 5_000 if args.quick else 20_000
    with tempfile.TemporaryDirectory() as root:
        bench_rows(root, rows, repeats)
        for size in (1024, 12 * 1024):
            bench_files(root, files, size, repeats)
        bench_fit(root, rows, repeats)
        bench_memory(root, 1.0 if args.quick else args.memory_gib)


if __name__ == "__main__":
    main()
