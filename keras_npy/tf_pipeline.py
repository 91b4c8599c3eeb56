"""The `tf.data` pipeline of a `BatchSource`, shared by both front ends.

The pipeline is `range(units)` mapped, in order, through one
`tf.numpy_function` call per unit that asks the `BatchSource` for batches of
epoch `e`: the same batches, in the same order, as `NpyDataset`. A unit is one
batch, or several small batches of one shape read as one and split again by
`unbatch` (handing an element to TensorFlow costs more than reading a small
batch). Each new iterator over the dataset (a new epoch of `fit`) draws its
epoch, and the batch it starts at, from a `Cursor` in its first element: the
epochs follow one another, so `shuffle=True` reshuffles every epoch exactly as
`NpyDataset` does, and a restored state (`set_state`) moves the cursor.

TensorFlow is imported only when a pipeline is made.
"""

from __future__ import annotations

import threading

import numpy as np

from keras_npy.batches import BatchSource


def source_to_tf_dataset(source: BatchSource, cursor: "Cursor | None" = None,
                         on_last_read=None, resumable: bool = False):
    """The `tf.data.Dataset` of a `BatchSource`'s batches, epoch after epoch.

    Args:
        source: the batches.
        cursor: where each iteration starts: a `Cursor` (the next epoch and
            the batch it starts at), which each new iterator draws from in its
            first element. Defaults to a new `Cursor` at epoch 0.
        on_last_read: `None`, or a function called when the last batch of an
            iteration has been read. Defaults to `None`.
        resumable: whether an iteration may start at a batch other than 0 (a
            restored state) and then yields the epoch's remaining batches
            only; the dataset's cardinality is then unknown (what reads it
            knows the number of batches). Otherwise an iteration is a whole
            epoch, and starting elsewhere is an error. Defaults to `False`.
    """
    import tensorflow as tf

    cursor = Cursor() if cursor is None else cursor
    specs = element_spec(source)
    flat_specs = tf.nest.flatten(specs)
    units = _Units(source, flat_specs)
    flatten = _flattener(specs)

    # An unshuffled dataset read in whole epochs needs no stage that carries the
    # epoch (its order is every epoch's; iterating ran ~15% faster without it):
    # its cursor moves on when the last unit is read.
    counted = not source.order.shuffle and not resumable

    def refuse_mid_epoch():
        # The cursor is left as set_state put it: the error moves nothing on.
        if not resumable and cursor.start:
            raise ValueError(
                f"This tf.data.Dataset was set (set_state) to batch {cursor.start} of epoch "
                f"{cursor.epoch}, but its iterations yield whole epochs: fit(), evaluate() and "
                "predict() read it from that batch; a loop of your own cannot. Restore to the "
                "start of an epoch, or iterate an NpyDataset.")

    def read(epoch, start, unit):  # batch arrays of our own: a tensor may keep them
        if counted:  # whichever unit is read first
            refuse_mid_epoch()
        first, count = units.batches(int(unit))
        if first < start:  # the unit the iteration starts in, from its start batch
            first, count = int(start), first + count - int(start)
        flat = flatten(source.batches(int(epoch), first, count))
        if first + count == units.num_batches:
            if counted:
                cursor.move(cursor.epoch + 1, 0)
            if on_last_read is not None:
                on_last_read()
        return [a.reshape(count, -1, *a.shape[1:]) for a in flat] if units.stacked else flat

    def to_element(epoch, start, unit):
        flat = tf.numpy_function(read, [epoch, start, unit], [s.dtype for s in flat_specs])
        for tensor, spec in zip(flat, flat_specs):
            tensor.set_shape([None, *spec.shape] if units.stacked else spec.shape)
        return tf.nest.pack_sequence_as(specs, flat)

    # Per-sample files release the GIL at every system call, and parallel
    # calls fighting for it ran slower (28,000 vs 48,000 12-KiB files/s), so
    # they are read by one call at a time (prefetch still reads ahead of the
    # model); rows are a view or one gather per batch, and gain from parallel
    # calls.
    files = any(r.reads_files for r in source.readers.values())
    parallel = {} if files else dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def draw():
        refuse_mid_epoch()
        epoch, start = cursor.draw()
        return np.int64(epoch), np.int64(start), np.int64(units.unit_of(start))

    def with_position(drawn, j):
        # The first element of each iteration draws the iteration's epoch and
        # start; the others carry them on. (A scan costs less per iteration
        # than a generator of epochs and a flat_map: 30 vs 55 ms here.)
        drawn = tf.cond(drawn[0] < 0, lambda: tf.stack(tf.numpy_function(
            draw, [], [tf.int64] * 3, stateful=True)), lambda: drawn)
        drawn.set_shape((3,))
        return drawn, (drawn[0], drawn[1], j + drawn[2])

    # Every element costs a fixed ~250 us to hand to TensorFlow: small batches
    # are read several at a time, stacked, and split again by `unbatch`.
    dataset = tf.data.Dataset.range(units.count)
    if counted:
        dataset = dataset.map(lambda unit: to_element(
            tf.constant(0, tf.int64), tf.constant(0, tf.int64), unit), **parallel)
    else:
        dataset = dataset.scan(tf.constant([-1, 0, 0], tf.int64), with_position)
        if resumable:  # from the start's unit to the last: nothing before it is read
            dataset = dataset.take_while(lambda epoch, start, unit: unit < units.count)
        dataset = dataset.map(to_element, **parallel)
    if units.stacked:
        dataset = dataset.unbatch()
    if not resumable:  # unbatch loses the count of elements, which fit's progress shows
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(
            source.order.num_batches))
    options = tf.data.Options()
    # Unsharded, several workers each keep the batches of their own shard:
    # distinct samples per replica. Sharded already (`num_shards`), it is
    # not sharded again: fit hands each worker its own (fit_adapter's
    # `_per_worker`), as `distribute_datasets_from_function` does.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA if source.order.num_shards == 1
        else tf.data.experimental.AutoShardPolicy.OFF)
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


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
            batch_bytes = max(1, order.shard_batch_size * sample_bytes)
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

    def unit_of(self, batch: int) -> int:
        """The unit that holds `batch`."""
        stacked = self.num_stacks * self.stack
        return batch // self.stack if batch < stacked else self.num_stacks + batch - stacked


class Cursor:
    """Where the next iteration of a dataset starts: `epoch`, and the batch
    `start` of it (not 0 only after a restored state). Each new iterator draws
    it once, in its first element, and leaves the start of the next epoch."""

    def __init__(self, epoch: int = 0, start: int = 0):
        self.epoch, self.start, self._lock = epoch, start, threading.Lock()

    def draw(self) -> tuple[int, int]:
        with self._lock:
            drawn = self.epoch, self.start
            self.epoch, self.start = self.epoch + 1, 0
        return drawn

    def move(self, epoch: int, start: int) -> None:
        with self._lock:
            self.epoch, self.start = epoch, start


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


def public_dataset(source: BatchSource):
    """The `tf.data.Dataset` that `npy_dataset` returns: whole epochs, one an
    iteration, with `class_names`, `file_paths`, and `get_state()` /
    `set_state(state)` (see `PipelineState`)."""
    cursor = Cursor()
    dataset = source_to_tf_dataset(source, cursor)
    dataset.class_names = source.index.class_names
    dataset.file_paths = source.file_paths()
    # fit, evaluate and predict read it through keras_npy (see fit_adapter).
    dataset._keras_npy = PipelineState(source, cursor)
    dataset.get_state = dataset._keras_npy.get_state
    dataset.set_state = dataset._keras_npy.set_state
    return dataset


class PipelineState:
    """The state of a `tf.data.Dataset` of keras_npy: the epoch and batch its
    next iteration starts at (as `NpyDataset.get_state`)."""

    def __init__(self, source: BatchSource, cursor: Cursor):
        self._source, self.cursor = source, cursor

    def get_state(self) -> dict:
        """The position of the dataset's next iteration in its order, as a
        small JSON-serializable dict (see `keras_npy.NpyDataset.get_state`)."""
        from keras_npy.state import make_state

        return make_state(self._source, self.cursor.epoch, self.cursor.start)

    def set_state(self, state: dict) -> None:
        """Moves the dataset's next iteration to a position `get_state()`
        returned (see `keras_npy.NpyDataset.set_state`). An iteration that
        `fit`, `evaluate` or `predict` starts there reads the epoch's
        remaining batches; a loop of your own needs the start of an epoch."""
        from keras_npy.state import check_state

        seed, epoch, batch = check_state(self._source, state, "tf.data.Dataset")
        self._source.reseed(seed)
        self.cursor.move(epoch, batch)

    # What `fit_adapter.NpyDatasetAdapter` reads a dataset through, so that
    # fit reads this one as it reads an NpyDataset: from the cursor's epoch
    # and batch, which moves on only after a whole pass (Keras' JAX and
    # PyTorch trainers peek at a batch before the first epoch).

    @property
    def epoch(self) -> int:
        return self.cursor.epoch

    @property
    def _start_batch(self) -> int:
        return self.cursor.start

    def __len__(self) -> int:
        return self._source.order.num_batches

    def on_epoch_begin(self) -> None:
        pass

    def on_epoch_end(self) -> None:
        self.cursor.move(self.cursor.epoch + 1, 0)

    def _overrides_batches(self) -> bool:
        return False

    def _reads_source(self) -> bool:
        return True

    def _batch_for_fit(self, epoch: int, i: int):
        return self._source.batches(epoch, i, 1)
