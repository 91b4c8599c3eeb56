"""Crops read from disk (`crop_to`), cold: random 64x64 crops of 1024x1024 float32
samples (4 MiB each), stored as per-sample files in a folder and as one rows file.

Every pass starts with every file it reads evicted (`common.evict`). A crop's
rows are 256 bytes each, 4 KiB apart on disk: 16 KiB of the sample's 4 MiB, in
64 pages of their own. The base of each group is the limit of reading only
those bytes: a pread of each crop row, 64 threads (files: each opened and
closed); keras_npy (`NpyDataset(..., crop_to=(64, 64), crop_position="random",
seed=0)`, batch 16) is also divided, round by round, by what people do
without it: loading whole samples and cropping them in numpy (`np.load` per
file; `NpyDataset` without `crop_to`, then each sample of the batch cut; for
the rows file a slice of `np.load(mmap_mode="r")`, which faults in pages
around each row of the crop). Then one more evicted pass of each, counted in
`/proc/self/io`: `rchar`, the bytes that read system calls asked for (a copy
from a memory map asks for none), and `read_bytes`, the bytes the storage
layer fetched, whole pages and the kernel's read-ahead included.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from benchmarks.common import Results, evict, written
from benchmarks.windows import Timed, paired

SIDE = 1024  # a sample is SIDE x SIDE float32: 4 MiB
CROP = 64
BATCH = 16
THREADS = 64  # reads in flight in the limits


def run(results: Results, root: str, samples: int) -> None:
    folder = os.path.join(root, "crops")
    os.makedirs(folder)
    rows_path = os.path.join(root, "crops_rows.npy")
    stacked = np.lib.format.open_memmap(rows_path, "w+", "float32", (samples, SIDE, SIDE))
    paths = []
    for i in range(samples):
        sample = np.random.default_rng(i).random((SIDE, SIDE), dtype="float32")
        paths.append(os.path.join(folder, f"{i:05d}.npy"))
        np.save(paths[-1], sample)
        stacked[i] = sample
    stacked.flush()
    del stacked
    written()
    # The positions of the baselines' and limits' crops (keras_npy draws its own).
    offsets = np.random.default_rng(0).integers(0, SIDE - CROP + 1, (samples, 2))
    _files(results, folder, paths, offsets)
    _rows(results, rows_path, samples, offsets)


def _data_offset(path: str) -> int:
    return np.load(path, mmap_mode="r").offset


def _files(results: Results, folder: str, paths: list[str], offsets: np.ndarray) -> None:
    from keras_npy import NpyDataset

    samples, header = len(paths), _data_offset(paths[0])
    crops = NpyDataset(folder, batch_size=BATCH, crop_to=(CROP, CROP), crop_position="random",
                       seed=0, verbose=False)
    whole = NpyDataset(folder, batch_size=BATCH, verbose=False)
    group = results.group(f"crops, cold, per-sample files: {samples} files of {SIDE}x{SIDE} "
                          f"float32 (4 MiB), batch {BATCH}, random {CROP}x{CROP} crops; ratio "
                          f"to cold preads of only the crops' rows, {THREADS} threads")
    setup = lambda: evict(*paths)  # noqa: E731
    results.rate(group, f"cold open + a pread of each crop row + close, {THREADS} threads",
                 "limit", samples, "samples/s", lambda: _read_file_crops(paths, offsets, header),
                 base=True, setup=setup)
    ours = Timed(lambda: _each_batch(crops))
    results.rate(group, f"NpyDataset(crop_to=({CROP}, {CROP}), crop_position=\"random\")",
                 "keras_npy", samples, "samples/s", ours, setup=setup)
    loaded = Timed(lambda: _load_and_crop(paths, offsets))
    results.rate(group, "np.load per file, then a numpy crop", "baseline", samples,
                 "samples/s", loaded, setup=setup)
    cut = Timed(lambda: _crop_batches(whole, offsets))
    results.rate(group, "NpyDataset of whole samples, then a numpy crop", "baseline", samples,
                 "samples/s", cut, setup=setup)
    results.finish()
    paired(results, group, "NpyDataset crops / np.load per file and a numpy crop (paired "
           "per round)", ours, loaded)
    paired(results, group, "NpyDataset crops / NpyDataset of whole samples and a numpy crop "
           "(paired per round)", ours, cut)
    needed = samples * (CROP * CROP * 4 + header)
    results.value(group, "what the crops need: their rows and the files' headers", "limit",
                  needed / 2**20, "MiB")
    results.value(group, "the pages the crops' rows lie in (a page of 4 KiB each)", "limit",
                  samples * CROP * 4096 / 2**20, "MiB")
    for name, kind, fn in (("NpyDataset crops", "keras_npy", lambda: _each_batch(crops)),
                           ("np.load per file", "baseline",
                            lambda: _load_and_crop(paths, offsets))):
        asked, fetched = _counted(fn, setup)
        results.value(group, f"{name}: rchar (bytes asked of read calls)", kind,
                      asked / 2**20, "MiB")
        results.value(group, f"{name}: rchar / what the crops need", kind, asked / needed, "x")
        results.value(group, f"{name}: read_bytes (fetched from the disk, whole pages)", kind,
                      fetched / 2**20, "MiB")


def _rows(results: Results, path: str, samples: int, offsets: np.ndarray) -> None:
    from keras_npy import NpyDataset

    crops = NpyDataset(path, batch_size=BATCH, crop_to=(CROP, CROP), crop_position="random",
                       seed=0, verbose=False)
    whole = NpyDataset(path, batch_size=BATCH, verbose=False)
    gib = os.path.getsize(path) / 2**30
    group = results.group(f"crops, cold, rows file: one file of {samples} samples of "
                          f"{SIDE}x{SIDE} float32 ({gib:.2f} GiB), batch {BATCH}, random "
                          f"{CROP}x{CROP} crops; ratio to cold preads of only the crops' rows, "
                          f"{THREADS} threads")
    setup = lambda: evict(path)  # noqa: E731
    results.rate(group, f"cold pread of each crop row, {THREADS} threads", "limit", samples,
                 "samples/s", lambda: _read_row_crops(path, offsets), base=True, setup=setup)
    ours = Timed(lambda: _each_batch(crops))
    results.rate(group, f"NpyDataset(crop_to=({CROP}, {CROP}), crop_position=\"random\")",
                 "keras_npy", samples, "samples/s", ours, setup=setup)
    mapped = Timed(lambda: _map_and_crop(path, samples, offsets))
    results.rate(group, "np.load(mmap_mode='r'), a numpy crop of each sample", "baseline",
                 samples, "samples/s", mapped, setup=setup)
    cut = Timed(lambda: _crop_batches(whole, offsets))
    results.rate(group, "NpyDataset of whole samples, then a numpy crop", "baseline", samples,
                 "samples/s", cut, setup=setup)
    results.finish()
    paired(results, group, "NpyDataset crops / NpyDataset of whole samples and a numpy crop "
           "(paired per round)", ours, cut)
    paired(results, group, "NpyDataset crops / np.load(mmap_mode='r') crops (paired per "
           "round)", ours, mapped)
    results.value(group, "the pages the crops' rows lie in (a page of 4 KiB each)", "limit",
                  samples * CROP * 4096 / 2**20, "MiB")
    for name, kind, fn in (("NpyDataset crops", "keras_npy", lambda: _each_batch(crops)),
                           ("np.load(mmap_mode='r') crops", "baseline",
                            lambda: _map_and_crop(path, samples, offsets))):
        asked, fetched = _counted(fn, setup)
        results.value(group, f"{name}: rchar (bytes asked of read calls)", kind,
                      asked / 2**20, "MiB")
        results.value(group, f"{name}: read_bytes (fetched from the disk, whole pages)", kind,
                      fetched / 2**20, "MiB")


def _each_batch(ds) -> None:
    for i in range(len(ds)):
        ds[i]


def _load_and_crop(paths: list[str], offsets: np.ndarray) -> None:
    """What people write without crops read from disk: each sample loaded
    whole, cut, and the batch stacked."""
    for first in range(0, len(paths), BATCH):
        np.stack([np.load(paths[k])[a:a + CROP, b:b + CROP] for k, (a, b) in
                  enumerate(offsets[first:first + BATCH].tolist(), first)])


def _crop_batches(ds, offsets: np.ndarray) -> None:
    for i in range(len(ds)):
        batch = ds[i]
        np.stack([sample[a:a + CROP, b:b + CROP] for sample, (a, b) in
                  zip(batch, offsets[i * BATCH:(i + 1) * BATCH].tolist())])


def _map_and_crop(path: str, samples: int, offsets: np.ndarray) -> None:
    mapped = np.load(path, mmap_mode="r")  # a new map: no pages in it
    for first in range(0, samples, BATCH):
        np.stack([mapped[k, a:a + CROP, b:b + CROP] for k, (a, b) in
                  enumerate(offsets[first:first + BATCH].tolist(), first)])


def _crop_rows(offsets: np.ndarray, k: int, base: int) -> list[int]:
    """The file offsets of sample `k`'s crop rows, its data at `base`."""
    a, b = offsets[k].tolist()
    return [base + ((a + r) * SIDE + b) * 4 for r in range(CROP)]


def _read_file_crops(paths: list[str], offsets: np.ndarray, header: int) -> None:
    """Each file opened, each row of its crop read with a pread, closed: 64 threads."""

    def work(part):
        buffer = bytearray(CROP * 4)
        for k in part:
            fd = os.open(paths[k], os.O_RDONLY)
            try:
                for offset in _crop_rows(offsets, k, header):
                    os.preadv(fd, [buffer], offset)
            finally:
                os.close(fd)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(work, [range(t, len(paths), THREADS) for t in range(THREADS)]))


def _read_row_crops(path: str, offsets: np.ndarray) -> None:
    """Each row of each crop read with a pread from the one file: 64 threads."""
    head = _data_offset(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        def work(part):
            buffer = bytearray(CROP * 4)
            for k in part:
                for offset in _crop_rows(offsets, k, head + k * SIDE * SIDE * 4):
                    os.preadv(fd, [buffer], offset)

        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(work, [range(t, len(offsets), THREADS) for t in range(THREADS)]))
    finally:
        os.close(fd)


def _counted(fn, setup) -> tuple[int, int]:
    """`(rchar, read_bytes)` of one pass of `fn` after `setup`, from
    `/proc/self/io` (every thread of this process)."""
    setup()
    before = _io()
    fn()
    after = _io()
    return after["rchar"] - before["rchar"], after["read_bytes"] - before["read_bytes"]


def _io() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {key: int(value) for key, value in (line.split(": ") for line in f)}
