"""What resuming costs: `set_state` on a new dataset of 10^6 samples at a batch deep
into an epoch, and its first batch, against the first batch of that epoch read
without a restore (the epoch's permutation is drawn either way). `fit` with
`keras_npy.BackupAndRestore(save_freq=100)` against `fit` without it is a line of the
`fit` group."""

from __future__ import annotations

import os
import time

import numpy as np

from benchmarks.common import Results, written


def run(results: Results, root: str, num_samples: int) -> None:
    from keras_npy import NpyDataset

    path = os.path.join(root, "resume.npy")
    np.save(path, np.zeros((num_samples, 16), "float32"))
    written()
    batch = 32
    group = results.group(f"resume: a new NpyDataset of {num_samples:,} rows, shuffle=True, "
                          f"batch {batch}, moved to batch k = 3/4 of epoch 3 (milliseconds)")
    k = 3 * (num_samples // batch) // 4
    state = dict(NpyDataset(path, batch_size=batch, shuffle=True, seed=0).get_state(),
                 epoch=3, batch=k)
    rounds = 2 * results.repeats + 1

    def fresh():
        return NpyDataset(path, batch_size=batch, shuffle=True, seed=0, verbose=False)

    def restore_then_read():
        ds = fresh()
        started = time.perf_counter()
        ds.set_state(state)
        restored = time.perf_counter()
        ds[k]
        return 1e3 * (restored - started), 1e3 * (time.perf_counter() - restored)

    def read_only():
        ds = fresh()
        ds.epoch = 3
        started = time.perf_counter()
        ds[k]
        return 1e3 * (time.perf_counter() - started)

    restore_then_read(), read_only()  # untimed: imports, page cache
    timed = [restore_then_read() for _ in range(rounds)]
    plain = [read_only() for _ in range(rounds)]
    for name, kind, values in (
            ("set_state(state) on a new dataset (fingerprint of the index included)",
             "keras_npy", [t[0] for t in timed]),
            ("its first batch, ds[k] (the epoch's permutation drawn)", "keras_npy",
             [t[1] for t in timed]),
            ("ds[k] of that epoch without a restore (the same permutation drawn)", "limit",
             plain)):
        results.value(group, name, kind, float(np.median(values)), "ms", min(values),
                      max(values))
