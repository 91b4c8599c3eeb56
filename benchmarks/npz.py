""".npz archives against the same data as .npy files: rows of an uncompressed
member (np.savez) read in place, warm and cold, and per-sample archives (stored
and deflated) against per-sample .npy files. Ratios are to the .npy reads."""

from __future__ import annotations

import os

import numpy as np

from benchmarks.common import ROW, Results, each, evict, write_files, write_rows, written

BATCH = 256


def run(results: Results, root: str, rows: int, num_files: int) -> None:
    path = write_rows(os.path.join(root, "npz_rows.npy"), rows)
    archive = os.path.join(root, "rows.npz")
    np.savez(archive, x=np.load(path, mmap_mode="r"))
    written()
    _rows(results, path, archive, rows, cold=False)
    _rows(results, path, archive, rows, cold=True)
    _files(results, root, num_files)


def _rows(results: Results, path: str, archive: str, rows: int, cold: bool) -> None:
    from keras_npy import NpyDataset

    state = "cold" if cold else "warm"
    setup = (lambda: evict(path, archive)) if cold else None
    for shuffle in (False, True):
        what = "global shuffle" if shuffle else "sequential"
        group = results.group(f"npz rows, {state}, {what}, batch {BATCH}: ({rows:,}, {ROW}) "
                              "float32 as a stored member of an .npz; ratio to the same rows "
                              "as .npy")
        npy = NpyDataset(path, batch_size=BATCH, shuffle=shuffle, seed=0)
        member = NpyDataset(f"{archive}::x", batch_size=BATCH, shuffle=shuffle, seed=0)
        count = len(npy) // 8 if shuffle and cold else len(npy)  # scattered cold rows: a part
        samples = min(rows, count * BATCH)
        results.rate(group, f".npy NpyDataset ds[i], shuffle={shuffle}", "limit", samples,
                     "rows/s", lambda ds=npy: each(ds.__getitem__, range(count)),
                     base=True, setup=setup)
        results.rate(group, f".npz member NpyDataset ds[i], shuffle={shuffle}", "keras_npy",
                     samples, "rows/s", lambda ds=member: each(ds.__getitem__, range(count)),
                     setup=setup)


def _files(results: Results, root: str, num_files: int) -> None:
    from keras_npy import NpyDataset

    folder = os.path.join(root, "npz_files")
    write_files(folder, num_files, 1024)
    inner = os.path.join(folder, "class_0")
    for kind, save in (("stored", np.savez), ("deflated", np.savez_compressed)):
        os.makedirs(os.path.join(root, f"npz_{kind}"))
        for name in sorted(os.listdir(inner)):
            save(os.path.join(root, f"npz_{kind}", name[:-4] + ".npz"),
                 x=np.load(os.path.join(inner, name)))
    written()
    group = results.group(f"npz files, warm, batch {BATCH}: {num_files:,} per-sample files of "
                          "1 KiB, shuffled; ratio to the same samples as .npy files")
    npy = NpyDataset(folder, batch_size=BATCH, shuffle=True, seed=0)
    results.rate(group, ".npy files NpyDataset ds[i]", "limit", num_files, "samples/s",
                 lambda: each(npy.__getitem__, range(len(npy))), base=True)
    for kind in ("stored", "deflated"):
        ds = NpyDataset(os.path.join(root, f"npz_{kind}") + "::x", batch_size=BATCH,
                        shuffle=True, seed=0)
        results.rate(group, f".npz files ({kind}) NpyDataset ds[i]", "keras_npy", num_files,
                     "samples/s", lambda ds=ds: each(ds.__getitem__, range(len(ds))))
