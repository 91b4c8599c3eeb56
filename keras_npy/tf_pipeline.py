"""The `tf.data` pipeline of a `BatchSource`, shared by both front ends.

The pipeline is `range(units)` mapped, in order, through one
`tf.numpy_function` call per unit that asks the `BatchSource` for batches of
epoch `e`: the same batches, in the same order, as `NpyDataset`. A unit is one
batch, or several small batches of one shape read as one and split again by
`unbatch` (handing an element to TensorFlow costs more than reading a small
batch). The epoch is the number of the iteration: each new iterator over the
dataset (a new epoch of `fit`) draws the next one in its first element, so
`shuffle=True` reshuffles every epoch exactly as `NpyDataset` does.

TensorFlow is imported only when a pipeline is made.
"""

from __future__ import annotations

import threading

import numpy as np

from keras_npy.batches import BatchSource


def source_to_tf_dataset(source: BatchSource, epoch=None, on_last_read=None):
    """The `tf.data.Dataset` of a `BatchSource`'s batches, epoch after epoch.

    Args:
        source: the batches.
        epoch: `None`, for iteration `k` to be epoch `k`, or a function called
            at the start of each iteration that returns its epoch (that of an
            `NpyDataset` feeding `fit`). Defaults to `None`.
        on_last_read: `None`, or a function called when the last batch of an
            iteration has been read. Defaults to `None`.
    """
    import tensorflow as tf

    specs = element_spec(source)
    flat_specs = tf.nest.flatten(specs)
    units = _Units(source, flat_specs)
    flatten = _flattener(specs)

    def read(epoch, unit):  # batch arrays of our own: a tensor may keep them
        first, count = units.batches(int(unit))
        flat = flatten(source.batches(int(epoch), first, count))
        if on_last_read is not None and first + count == units.num_batches:
            on_last_read()
        return [a.reshape(count, -1, *a.shape[1:]) for a in flat] if units.stacked else flat

    def to_element(epoch, unit):
        flat = tf.numpy_function(read, [epoch, unit], [s.dtype for s in flat_specs])
        for tensor, spec in zip(flat, flat_specs):
            tensor.set_shape([None, *spec.shape] if units.stacked else spec.shape)
        return tf.nest.pack_sequence_as(specs, flat)

    # Per-sample files release the GIL at every system call, and parallel
    # calls fighting for it ran slower (28,000 vs 48,000 12-KiB files/s), so
    # they are read by one call at a time (prefetch still reads ahead of the
    # model); rows are a view or one gather per batch, and gain from parallel
    # calls.
    files = any(r.index.layout == "files" for r in source.readers.values())
    parallel = {} if files else dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    next_epoch = _EpochCounter().next if epoch is None else lambda: np.int64(epoch())

    def with_epoch(drawn, unit):
        # The first element of each iteration draws the iteration's epoch; the
        # others carry it on. (A scan costs less per iteration than a
        # generator of epochs and a flat_map: 30 vs 55 ms here.)
        drawn = tf.cond(drawn < 0, lambda: tf.numpy_function(
            next_epoch, [], tf.int64, stateful=True), lambda: drawn)
        drawn.set_shape(())
        return drawn, (drawn, unit)

    # Every element costs a fixed ~250 us to hand to TensorFlow: small batches
    # are read several at a time, stacked, and split again by `unbatch`.
    dataset = tf.data.Dataset.range(units.count)
    if source.order.shuffle:
        dataset = dataset.scan(tf.constant(-1, tf.int64), with_epoch).map(to_element, **parallel)
    else:  # every epoch is the same: no stage to count them
        dataset = dataset.map(lambda unit: to_element(tf.constant(0, tf.int64), unit), **parallel)
    if units.stacked:  # unbatch loses the count of elements, which fit's progress shows
        dataset = dataset.unbatch().apply(
            tf.data.experimental.assert_cardinality(source.order.num_batches))
    options = tf.data.Options()
    # Several workers each keep the batches of their own shard: distinct
    # samples per replica. (Reading only one's shard: see `num_shards`.)
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    dataset = dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
    dataset.class_names = source.index.class_names
    dataset.file_paths = source.file_paths()
    dataset._keras_npy_shuffles = bool(source.order.shuffle)  # for fit (see fit_adapter)
    return dataset


def _flattener(specs):
    """`tf.nest.flatten` for batches of this structure; a list or a tuple of
    two arrays costs a tenth of it (~0.1 vs ~1.2 us a call)."""
    import tensorflow as tf

    if isinstance(specs, tf.TensorSpec):
        return lambda batch: [batch]
    if isinstance(specs, tuple) and all(isinstance(s, tf.TensorSpec) for s in specs):
        return list
    return tf.nest.flatten


#: Batches smaller than this are read several per `numpy_function` call (two
#: 1 MiB batches a call cost more in `unbatch`'s copy than the call saved) ...
STACK_BYTES = 2**20
#: ... as many as make this many bytes, up to `MAX_STACK`. Fewer calls leave
#: more of the cores to training: `fit` of a Dense(1) on batches of 256 KiB
#: ran at 0.89x of the no-data ceiling with 4 MiB a call, 0.72x with 1 MiB (12
#: passes each, paired with the ceiling's); iterating alone, about the same
#: (1.01x, 0.84-1.54x over 5 passes).
UNIT_BYTES = 4 * 2**20
MAX_STACK = 64


class _Units:
    """What each `numpy_function` call reads: one batch, or `stack` batches of
    the same shape read as one and split again after (`stacked`).

    Batches are stacked when every sample has one shape (no `"longest"`
    padding, no buckets) and a batch is under `STACK_BYTES`, `UNIT_BYTES` a
    unit: units `0 .. full // stack - 1` are `stack` batches each, the rest
    (the batches left over and a last, smaller batch) one each.
    """

    def __init__(self, source: BatchSource, flat_specs):
        order = source.order
        self.num_batches, self.stack = order.num_batches, 1
        fixed = order.buckets is None and all(
            s.shape[1:].is_fully_defined() for s in flat_specs)
        full = order.full_batches
        if fixed:
            sample_bytes = sum(s.shape[1:].num_elements() * s.dtype.size for s in flat_specs)
            batch_bytes = max(1, order.batch_size * sample_bytes)
            if batch_bytes < STACK_BYTES:
                self.stack = max(1, min(MAX_STACK, UNIT_BYTES // batch_bytes, full))
        self.stacked = self.stack > 1
        self.num_stacks = full // self.stack if self.stacked else 0
        self.count = self.num_stacks + self.num_batches - self.num_stacks * self.stack

    def batches(self, unit: int) -> tuple[int, int]:
        """`(first batch, number of batches)` of `unit`."""
        if unit < self.num_stacks:
            return unit * self.stack, self.stack
        return unit - self.num_stacks + self.num_stacks * self.stack, 1


class _EpochCounter:
    """Called once per iteration of the dataset: returns that iteration's epoch."""

    def __init__(self):
        self._next, self._lock = 0, threading.Lock()

    def next(self):
        with self._lock:
            epoch, self._next = self._next, self._next + 1
        return np.int64(epoch)


def element_spec(source: BatchSource):
    """The `tf.TensorSpec` structure of the batches of `source` (`None` for
    the batch axis and for axes whose length differs between batches)."""
    import tensorflow as tf

    x = {name: tf.TensorSpec((None, *reader.element_shape()), tf.as_dtype(reader.dtype))
         for name, reader in source.readers.items()}
    x = x if source.multi_input else x["x"]
    y = source.labels.element_spec()
    if y is None:
        return x
    shape, dtype = y
    return x, tf.TensorSpec((None, *shape), tf.as_dtype(dtype))
