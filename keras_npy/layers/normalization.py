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

import keras


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
            `subset`, `follow_links`, `verbose`, and for URLs
            `storage_options`, `cache_dir`, `cache_bytes`. Statistics are of the
            whole split, never of a shard: every process makes the same
            layer.

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
    # The data is read by the loader, imported here: the layers need Keras only.
    if isinstance(data, (str, os.PathLike)) and os.fspath(data).endswith(".npz"):
        return _from_statistics_file(os.fspath(data), axis, kwargs)
    from keras_npy.statistics import data_statistics

    mean, variance, sample_shape = data_statistics(data, axis, kwargs)
    layer = keras.layers.Normalization(axis=axis, mean=mean, variance=variance)
    layer.build((None, *sample_shape))  # so that `.mean` is there to see
    return layer


def _from_statistics_file(path: str, axis, kwargs: dict) -> keras.layers.Normalization:
    from keras_npy.statistics import load_statistics

    if kwargs:
        raise TypeError("normalization_layer() takes no keywords with a statistics file. "
                        f"Received: {sorted(kwargs)}")
    mean, variance, stored_axis, sample_shape = load_statistics(path, with_sample_shape=True)
    if stored_axis != (tuple(axis) if isinstance(axis, list) else axis):
        raise ValueError(f"{path} holds statistics for axis={stored_axis!r}; pass "
                         f"axis={stored_axis!r}. Received: axis={axis!r}")
    layer = keras.layers.Normalization(axis=axis, mean=mean, variance=variance)
    if sample_shape is not None:  # built, as from data: `.mean` is there to see
        layer.build((None, *sample_shape))
    return layer
