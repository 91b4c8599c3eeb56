"""The readers a user would pick instead of keras_npy, written as their documentation
shows: a torch `DataLoader` over a memory map with a sampler of index arrays, and a
Grain `MapDataset` over a random-access source. Each returns `None` when its package
is not installed (`pip install -e ".[bench]"` installs both)."""

from __future__ import annotations

import numpy as np


def torch_rows_loader(path: str, batch_size: int, order: list[np.ndarray]):
    """A torch `DataLoader` (0 workers) whose sampler yields each batch's row ids
    (`order`) and whose dataset gathers them from `np.load(mmap_mode="r")`."""
    try:
        import torch
    except ImportError:
        return None
    mapped = np.load(path, mmap_mode="r")

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(mapped)

        def __getitem__(self, ids):
            return torch.from_numpy(mapped[ids])

    return torch.utils.data.DataLoader(Rows(), sampler=order, batch_size=None, num_workers=0)


def grain_rows(path: str, batch_size: int, shuffle: bool):
    """Grain over the rows of a memory map, one record a row, batched by Grain."""
    try:
        import grain
    except ImportError:
        return None
    dataset = grain.MapDataset.source(_MappedRows(path))
    if shuffle:
        dataset = dataset.shuffle(seed=0)
    return dataset.batch(batch_size, drop_remainder=True)


class _MappedRows:
    """A Grain random-access source: the rows of a `.npy` file, mapped lazily
    (a worker process maps it again)."""

    def __init__(self, path: str):
        self.path, self._mapped = path, None
        self._len = int(np.load(path, mmap_mode="r").shape[0])

    def __len__(self):
        return self._len

    def __getitem__(self, i):
        if self._mapped is None:
            self._mapped = np.load(self.path, mmap_mode="r")
        return np.asarray(self._mapped[i])

    def __getstate__(self):
        return {"path": self.path, "_mapped": None, "_len": self._len}


def grain_files(paths: list[str], batch_size: int, workers: int):
    """Grain over per-sample files, `np.load` a record, shuffled and batched, with
    `workers` worker processes (0: in this process); iterate it for an epoch."""
    try:
        import grain
    except ImportError:
        return None
    dataset = grain.MapDataset.source(_Files(paths)).shuffle(seed=0).batch(
        batch_size, drop_remainder=True)
    if workers == 0:
        return dataset
    from absl import flags

    if not flags.FLAGS.is_parsed():  # Grain's workers read its absl flags
        flags.FLAGS.mark_as_parsed()
    # One reading thread per worker process, as NpyDataset's workers: with
    # Grain's default of 16, np.load's headers parsed in threads at once hit
    # CPython 3.11's "AST constructor recursion depth mismatch" SystemError.
    return dataset.to_iter_dataset(grain.ReadOptions(num_threads=1)).mp_prefetch(
        grain.MultiprocessingOptions(num_workers=workers))


class _Files:
    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return np.load(self.paths[i])
