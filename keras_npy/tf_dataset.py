"""`npy_dataset`: the `tf.data` front end, a sibling of `NpyDataset` over the
same `BatchSource` (see `keras_npy.tf_pipeline`). TensorFlow is imported only
when it is called.
"""

from __future__ import annotations

from keras_npy.batches import source_of_keywords
from keras_npy.tf_pipeline import public_dataset


def npy_dataset(x, y=None, **kwargs):
    """A `tf.data.Dataset` of the batches `keras_npy.NpyDataset(x, y, **kwargs)` has.

    Args:
        x: as `NpyDataset`'s.
        y: as `NpyDataset`'s.
        **kwargs: the keyword arguments of `NpyDataset` (`layout`,
            `batch_size`, `shuffle`, `seed`, `label_mode`, `class_names`,
            `validation_split`, `subset`, the padding and ordering arguments
            (`pad_targets` among them),
            `dtype`, `num_shards`, `shard_index`, `shuffle_block_size`,
            `shuffle_window`, `read_ahead_bytes`, `crop_to`, `crop_position`,
            `follow_links`, `verbose`, `storage_options`, `cache_dir`,
            `cache_bytes`)
            but its worker arguments: tf.data reads in parallel itself.

    Returns:
        A `tf.data.Dataset` of `x`, `(x, y)`, or `(dict of x, y)` batches, with
        an `element_spec` known from the headers (`None` on axes whose padded
        size varies between batches), `.class_names` and `.file_paths`. Each
        iteration is the next epoch. `.get_state()` and `.set_state(state)`
        save and restore its position, as `NpyDataset`'s do: `fit`,
        `evaluate` and `predict` read it from a restored batch (see
        `keras_npy.BackupAndRestore`).

    Example:

    >>> import tempfile, numpy as np
    >>> path = tempfile.mkdtemp() + "/x.npy"
    >>> np.save(path, np.arange(40, dtype="float32").reshape(10, 4))
    >>> ds = npy_dataset(path, y=np.arange(10), batch_size=4)
    >>> [tuple(x.shape) for x, _ in ds]
    [(4, 4), (4, 4), (2, 4)]
    """
    return public_dataset(source_of_keywords("npy_dataset", x, y, kwargs))
