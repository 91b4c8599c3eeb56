"""Mean and variance in one streaming float64 pass over unpadded samples.

Samples are read in chunks of bounded size; each chunk's count, mean and sum
of squared deviations are merged into the running totals with the parallel
formulas of Chan, Golub and LeVeque (exact up to rounding, stable, and never
holding more than one chunk). Padding is never read: samples are taken as
stored.
"""

from __future__ import annotations

import json

import numpy as np

from keras_npy import index as index_lib
from keras_npy.index import FileIndex, RowIndex
from keras_npy.read import BatchReader, Padding

_CHUNK_BYTES = 32 * 2**20
# The keywords of `normalization_layer` that decide which samples are counted
# (the split of a training set) and how the data is found; batching and
# padding do not change statistics of unpadded samples. Shards do not either:
# statistics are of the whole split, the same layer on every process.
_INDEX_KEYWORDS = ("layout", "shuffle", "seed", "validation_split", "subset",
                   "follow_links", "verbose", "storage_options", "cache_dir", "cache_bytes")


def data_statistics(data, axis, kwargs: dict):
    """`(mean, variance, sample shape)` of the unpadded samples of `data` (an
    `NpyDataset`, or what it takes as `x`, with the keywords of
    `normalization_layer` that select samples): what that layer is made of."""
    from keras_npy.batches import source_of_keywords
    from keras_npy.dataset import NpyDataset

    if isinstance(data, NpyDataset):
        if kwargs:
            raise TypeError("normalization_layer() takes no keywords with an NpyDataset, whose "
                            f"own arguments select the samples. Received: {sorted(kwargs)}")
        source = data._source
    else:
        unknown = sorted(set(kwargs) - set(_INDEX_KEYWORDS))
        if unknown:
            raise TypeError(f"normalization_layer() got unexpected keyword arguments {unknown}; "
                            f"it takes {', '.join(_INDEX_KEYWORDS)}.")
        # Padding only lets batches of varying shapes stack; statistics never read it.
        source = source_of_keywords("normalization_layer", data, None,
                                    {**kwargs, "pad_to": "longest", "num_shards": 1})
    if source.multi_input:
        raise ValueError("normalization_layer() normalizes one input, but the data has "
                         f"{len(source.index.x)}: {sorted(source.index.x)}. Pass one input's "
                         "files.")
    x = source.index.x
    mean, variance = sample_statistics(x, source.order.sample_ids, axis,
                                       verbose=kwargs.get("verbose", True))
    return mean, variance, x.sample_shape


class RunningMoments:
    """Count, mean and M2 (sum of squared deviations) per kept index."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, None, None

    def add(self, values: np.ndarray) -> None:
        """Adds rows of `values` (shape `(n, *kept)`), as float64."""
        if not len(values):
            return
        values = values.astype(np.float64, copy=False)
        count = len(values)
        mean = values.mean(axis=0)
        m2 = ((values - mean) ** 2).sum(axis=0)
        if self.mean is None:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.count * count / total)
        self.count = total

    def variance(self) -> np.ndarray:
        return self.m2 / self.count


def sample_statistics(index: FileIndex | RowIndex, ids: np.ndarray, axis=-1, *,
                      name: str = "x", verbose: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) variance of the samples `ids`, unpadded.

    Args:
        index: the index of the input.
        ids: the samples to include.
        axis: as `keras.layers.Normalization`'s, in terms of a batch: the axis
            or axes (never 0, the batch axis) that keep one mean and variance
            per index; `None` for a single mean and variance.
        name: the input's name, for error messages.
        verbose: whether to show a progress bar on long scans.

    Returns:
        `(mean, variance)`, float64 arrays of the kept axes' shape.

    Raises:
        ValueError: `axis` is out of range or names an axis whose size varies,
            or a sample holds a NaN or an infinity (the message names its file,
            sample and feature).
    """
    kept = _kept_axes(axis, index.sample_ndim, index.sample_shape, name)
    reader = BatchReader(index, Padding("longest" if index.sample_ndim else None), name=name)
    moments = RunningMoments()
    progress = index_lib.Progress(len(ids), verbose, unit="sample")
    pending, pending_bytes = [], 0
    for chunk in _chunks(index, ids):
        batch = reader.read(chunk)
        _check_finite(index, chunk, batch, kept, name)
        pending.append(_rows_of(batch, kept))  # one shape per chunk
        pending_bytes += pending[-1].nbytes
        if pending_bytes >= _CHUNK_BYTES:
            moments.add(np.concatenate(pending))
            pending, pending_bytes = [], 0
        progress.add(len(chunk))
    if pending:
        moments.add(np.concatenate(pending))
    if moments.mean is None:
        raise ValueError(f"{name} has no values to compute statistics from.")
    return moments.mean, moments.variance()


def _check_finite(index, ids: np.ndarray, batch: np.ndarray, kept: tuple[int, ...],
                  name: str) -> None:
    """Statistics of data holding NaN or infinities are NaN: refused, naming
    the first such value's file, sample and feature (its position on the kept
    axes)."""
    if batch.dtype.kind not in "fc" or np.isfinite(batch).all():
        return
    where = np.argwhere(~np.isfinite(batch))[0]
    sample, position = int(ids[where[0]]), tuple(int(p) for p in where[1:])
    feature = tuple(position[k] for k in kept)
    if isinstance(index, RowIndex):
        f = int(np.searchsorted(index.row_starts, sample, side="right") - 1)
        place = f"{index.paths[f]}: row {sample - int(index.row_starts[f])}"
    elif index.layout == "ragged":  # a pack's variable-length samples
        place = index.describe(sample)
    else:
        place = f"{index.paths[sample]}: the sample"
    raise ValueError(f"{place} of {name} holds {batch[tuple(where)]} at position {position} "
                     f"(feature {feature if len(feature) != 1 else feature[0]} of the "
                     "statistics); mean and variance need finite values.")


def _kept_axes(axis, ndim: int, shape, name: str) -> tuple[int, ...]:
    """The sample axes (0-based, batch axis excluded) that are kept."""
    if axis is None:
        return ()
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    kept = []
    for a in axes:
        batch_axis = a if a >= 0 else ndim + 1 + a
        if not 1 <= batch_axis <= ndim:
            raise ValueError(f"`axis` must name axes of a batch of {name}, which has {ndim + 1} "
                             f"(the batch axis 0 excluded). Received: axis={axis}")
        if shape[batch_axis - 1] is None:
            raise ValueError(f"`axis` must name axes of fixed size, but the samples of {name} "
                             f"vary in size on axis {batch_axis}. Received: axis={axis}")
        kept.append(batch_axis - 1)
    return tuple(sorted(set(kept)))


def _chunks(index, ids: np.ndarray):
    if isinstance(index, RowIndex):
        step = max(1, _CHUNK_BYTES // max(1, index.row_nbytes))
        for start in range(0, len(ids), step):
            yield ids[start:start + step]
    else:  # samples may differ in shape: one file at a time
        for i in ids:
            yield np.array([i])


def _rows_of(batch: np.ndarray, kept: tuple[int, ...]) -> np.ndarray:
    """`batch` as `(values, *kept shape)`: every axis but the kept ones flattened."""
    kept_batch_axes = [k + 1 for k in kept]
    others = [a for a in range(batch.ndim) if a not in kept_batch_axes]
    moved = np.transpose(batch, others + kept_batch_axes)
    return moved.reshape((-1, *(batch.shape[a] for a in kept_batch_axes)))


_STATISTICS_KEYS = ("mean", "variance", "axis", "num_samples")


def save_statistics(path: str, mean: np.ndarray, variance: np.ndarray, axis,
                    num_samples: int, sample_shape: tuple | None = None) -> None:
    """Writes statistics to an `.npz` file that `load_statistics` (and
    `keras_npy.normalization_layer`) reads back: float64 `mean` and
    `variance`, the `axis` they keep and the shape of a sample (`None` where
    sizes vary; both as JSON text), and the sample count."""
    np.savez(path, mean=np.asarray(mean, np.float64), variance=np.asarray(variance, np.float64),
             axis=np.array(json.dumps(axis)), num_samples=np.int64(num_samples),
             sample_shape=np.array(json.dumps(None if sample_shape is None
                                              else list(sample_shape))))


def load_statistics(path: str, with_sample_shape: bool = False) -> tuple:
    """Reads `(mean, variance, axis)` from a file written by `save_statistics`,
    and with `with_sample_shape` the shape of a sample (`None` in files that
    do not record it).

    Raises:
        ValueError: the file is not such a file (named, with what is missing).
    """
    expected = f"{path}: expected a statistics file written by `keras-npy stats`"
    try:
        stored = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{expected}; cannot read it: {e}") from e
    if not isinstance(stored, np.lib.npyio.NpzFile):
        raise ValueError(f"{expected}, found a single array of shape {stored.shape}.")
    with stored:
        missing = [key for key in _STATISTICS_KEYS if key not in stored.files]
        if missing:
            raise ValueError(f"{expected}, with {list(_STATISTICS_KEYS)}; found {stored.files}.")
        mean, variance = stored["mean"], stored["variance"]
        axis = json.loads(str(stored["axis"]))
        shape = json.loads(str(stored["sample_shape"])) if "sample_shape" in stored.files \
            else None
    if mean.shape != variance.shape:
        raise ValueError(f"{path}: mean and variance differ in shape: {mean.shape} and "
                         f"{variance.shape}.")
    axis = axis if not isinstance(axis, list) else tuple(axis)
    if with_sample_shape:
        return mean, variance, axis, None if shape is None else tuple(shape)
    return mean, variance, axis
