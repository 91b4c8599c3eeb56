"""`normalization_layer`: a `keras.layers.Normalization` whose statistics come
from the `.npy` data itself.

`Normalization.adapt()` on padded batches counts the padding as data and
shifts the mean and variance toward the padding value. Here the mean and
variance come from one streaming float64 pass over the samples as stored
(`keras_npy.statistics`), so padding is never counted, and the result is
Keras' own layer, saved and exported like any other.
"""

from __future__ import annotations

import os
import warnings

import keras

from keras_npy.dataset import NpyDataset
from keras_npy.statistics import load_statistics

# The keywords that decide which samples are counted (the split and shard of
# a training set) and how the data is found; batching and padding do not
# change statistics of unpadded samples.
_INDEX_KEYWORDS = ("layout", "shuffle", "seed", "validation_split", "subset", "num_shards",
                   "shard_index", "follow_links", "verbose")


def normalization_layer(data, axis=-1, **kwargs) -> keras.layers.Normalization:
    """Returns a `keras.layers.Normalization` adapted to `.npy` data, exactly.

    The mean and variance are those of every value of the unpadded samples
    (one streaming float64 pass, bounded memory); pass the same split and
    shard keywords as the training `NpyDataset`, or that dataset itself, to
    count the training samples only.

    Args:
        data: An `NpyDataset` with a single input; what `NpyDataset` takes
            as `x`: a directory, glob, `.npy` path or a list of these; or an
            `.npz` file written by `keras-npy stats`.
        axis: As `keras.layers.Normalization`'s `axis`, in terms of a batch:
            the axis or axes (never `0`) that keep their own mean and
            variance, or `None` for one mean and variance. Defaults to `-1`
            (one per feature).
        **kwargs: With a path `data`, the `NpyDataset` keywords that select
            the samples: `layout`, `shuffle`, `seed`, `validation_split`,
            `subset`, `num_shards`, `shard_index`, `follow_links`, `verbose`.

    Returns:
        A `keras.layers.Normalization(axis=axis, mean=..., variance=...)`,
        built for batches of the data's samples (`None` where sizes vary),
        float32 like Keras' default.

    Raises:
        TypeError: `data` is an `NpyDataset` and keywords were passed too, or
            a keyword is not one of those above.
        ValueError: `data` has several inputs, `axis` names the batch axis or
            an axis whose size varies between samples, or the data is
            invalid (named by path).

    Example:

    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
    >>> np.save(path, np.array([[1.0, 10.0], [3.0, 30.0]], dtype="float32"))
    >>> layer = normalization_layer(path)
    >>> np.asarray(layer(np.array([[2.0, 20.0]]))).tolist()
    [[0.0, 0.0]]
    """
    if isinstance(data, (str, os.PathLike)) and os.fspath(data).endswith(".npz"):
        return _from_statistics_file(os.fspath(data), axis, kwargs)
    if isinstance(data, NpyDataset):
        if kwargs:
            raise TypeError("normalization_layer() takes no keywords with an NpyDataset, whose "
                            f"own arguments select the samples. Received: {sorted(kwargs)}")
        dataset = data
    else:
        unknown = sorted(set(kwargs) - set(_INDEX_KEYWORDS))
        if unknown:
            raise TypeError(f"normalization_layer() got unexpected keyword arguments {unknown}; "
                            f"it takes {', '.join(_INDEX_KEYWORDS)}.")
        with warnings.catch_warnings():  # about fit on varying shapes: no fit here
            warnings.filterwarnings("ignore", message="Batches of x vary in shape")
            # Padding only lets batches of varying shapes stack; statistics never read it.
            dataset = NpyDataset(data, pad_to="longest", **kwargs)
    if isinstance(dataset.index.x, dict):
        raise ValueError("normalization_layer() normalizes one input, but the data has "
                         f"{len(dataset.index.x)}: {sorted(dataset.index.x)}. Pass one input's "
                         "files.")
    mean, variance = dataset.statistics(axis=axis, verbose=kwargs.get("verbose", True))
    layer = keras.layers.Normalization(axis=axis, mean=mean, variance=variance)
    layer.build((None, *dataset.index.x.sample_shape))  # so that `.mean` is there to see
    return layer


def _from_statistics_file(path: str, axis, kwargs: dict) -> keras.layers.Normalization:
    if kwargs:
        raise TypeError("normalization_layer() takes no keywords with a statistics file. "
                        f"Received: {sorted(kwargs)}")
    mean, variance, stored_axis = load_statistics(path)
    if stored_axis != (tuple(axis) if isinstance(axis, list) else axis):
        raise ValueError(f"{path} holds statistics for axis={stored_axis!r}; pass "
                         f"axis={stored_axis!r}. Received: axis={axis!r}")
    return keras.layers.Normalization(axis=axis, mean=mean, variance=variance)
