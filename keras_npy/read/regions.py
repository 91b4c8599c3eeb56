"""Crops read from disk: which region of each sample, and which bytes that is.

A crop (`crop_to`) cuts each sample to a shape on some of its axes, at the
centre (as `keras.layers.CenterCrop` places it) or at offsets drawn from
`(seed, epoch, sample)` (as `keras.layers.RandomCrop`, but reproducible:
the same sample gets the same region in an epoch on every process, a new
one the next epoch). Only the region's bytes are read: for a C-order sample,
the region is `runs` of contiguous bytes, one per index of the axes before
the last cropped axis, each read with its own `preadv` straight into its
place in the batch (or copied from a memory map, which faults in only their
pages).
"""

from __future__ import annotations

import math

import numpy as np

POSITIONS = ("center", "random")

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection of uint64 whose outputs look random."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


class Crop:
    """Where each sample is cut (see the module docstring).

    Args:
        crop_to: an int (the first axis), or a tuple of the whole sample
            shape with `None` for an axis kept whole.
        position: `"center"` or `"random"`.
        seed: the seed of random positions.
    """

    def __init__(self, crop_to, position: str = "center", seed: int = 0):
        self.crop_to, self.position, self.seed = crop_to, position, int(seed)

    def sizes(self, sample_ndim: int, name: str) -> tuple[int | None, ...]:
        """The crop's size on each axis of a sample (`None`: kept whole)."""
        if isinstance(self.crop_to, int):
            sizes = (self.crop_to,) + (None,) * max(0, sample_ndim - 1)
        else:
            sizes = tuple(self.crop_to)
        if sample_ndim == 0 or len(sizes) != sample_ndim:
            raise ValueError(f"`crop_to` must give one size per axis of a sample of {name} "
                             f"(None for an axis kept whole); the samples have {sample_ndim} "
                             f"axes. Received: crop_to={self.crop_to!r}")
        return sizes

    def offsets(self, ids: np.ndarray, shapes: np.ndarray, sizes: tuple, epoch: int) -> np.ndarray:
        """`(len(ids), ndim)` `int64`: the first index of each sample's region on
        each axis (0 on axes kept whole)."""
        crop = np.array([s if s is not None else 0 for s in sizes], np.int64)
        cropped = np.array([s is not None for s in sizes])
        room = np.where(cropped, shapes - crop, 0)
        if self.position == "center":
            return room // 2
        key = _mix(np.uint64(self.seed) ^ np.uint64(0x6B657261735F6E70))  # "keras_np"
        key = _mix(key ^ np.uint64(epoch))
        per_sample = _mix(key ^ np.asarray(ids, np.uint64))
        axes = np.arange(1, shapes.shape[1] + 1, dtype=np.uint64)
        draws = _mix(per_sample[:, None] ^ (axes * np.uint64(0x9E3779B97F4A7C15)))
        return (draws % (room + 1).astype(np.uint64)).astype(np.int64)


def region(offsets: np.ndarray, sizes: tuple, shape) -> tuple:
    """The index of one sample's region (slices), for a map or an array."""
    return tuple(slice(None) if c is None else slice(int(o), int(o) + c)
                 for o, c in zip(offsets.tolist(), sizes)) if len(shape) else ()


def runs(shape, sizes: tuple, offsets: np.ndarray, itemsize: int) -> tuple[np.ndarray, int]:
    """`(starts, length)`: the byte offsets, from the sample's first data byte,
    of the contiguous runs that make a C-order sample's region, in the order
    of the region's bytes, and the bytes of each run."""
    shape = tuple(int(s) for s in shape)
    full = [s if c is None else c for s, c in zip(shape, sizes)]
    cut = [j for j, (s, c) in enumerate(zip(shape, full)) if c < s]
    if not cut:
        return np.zeros(1, np.int64), math.prod(shape) * itemsize
    k = cut[-1]
    inner = math.prod(shape[k + 1:])
    strides = [math.prod(shape[j + 1:]) for j in range(len(shape))]
    start = sum(int(offsets[j]) * strides[j] for j in range(k + 1))
    starts = np.zeros((), np.int64) + start
    for j in range(k):  # one run per index of the axes before the last cut one
        starts = (starts[..., None] + np.arange(full[j], dtype=np.int64) * strides[j])
    return starts.reshape(-1) * itemsize, full[k] * inner * itemsize
