"""How `fit`, `evaluate` and `predict` read an `NpyDataset`: its own batches,
in its own order, the same way on every backend, with `fit`'s arguments.

Every backend's trainer picks how to read `x` by calling Keras'
`get_data_adapter(x, y, sample_weight, batch_size, steps_per_epoch, shuffle,
class_weight)`. A `PyDataset` gets Keras' `PyDatasetAdapter`, which on
TensorFlow fixes the shape of every batch from the first two (a later batch
of another shape fails) and hands TensorFlow one Python call per batch. A
`DataAdapter` passed as `x` is used as it is, but sees none of `fit`'s
arguments: `class_weight` would be dropped without a word. So importing
keras_npy wraps `get_data_adapter`: an `NpyDataset` gets an
`NpyDatasetAdapter` made with `fit`'s arguments, and so does a
`tf.data.Dataset` made by `npy_dataset` (not transformed since): the adapter
reads its batch source as it reads an NpyDataset's, from the batch a restored
state names (`set_state`; the dataset's own pipeline yields whole epochs, as
its cardinality says). Any other `x` goes to Keras' function untouched. For
both of keras_npy's, `fit`'s `shuffle` is ignored with this module's warning,
given only when the dataset does not shuffle itself, and the adapter is kept
for `keras_npy.BackupAndRestore` (`training_data`).

Under `MultiWorkerMirroredStrategy`, a dataset that reads its own shard goes
to each worker as it is (`_per_worker`), and two faults of Keras' TF trainer
that stop every multi-worker `fit` at its first step (keras-team/keras#20585)
are worked around: the model is built from keras_npy's element spec, and
scalar logs are averaged over the workers with `axis=None`.

This module is the one place keras_npy uses Keras' private modules
(`keras.src`). `KERAS_PROBLEM` says what differs when a Keras release no
longer has what the wrapper relies on; then nothing is wrapped, importing
keras_npy warns, and Keras reads an NpyDataset as any PyDataset. The tests
fail on it (tests/test_fit_adapter.py), so a Keras release that breaks this
is found before a user meets it.
"""

from __future__ import annotations

import inspect
import numbers
import threading
import warnings

import keras
import numpy as np

from keras_npy.state import make_state

#: The parameters of Keras' `get_data_adapter`, the wrapper's too.
PARAMETERS = ("x", "y", "sample_weight", "batch_size", "steps_per_epoch", "shuffle",
              "class_weight")
#: The methods of Keras' `DataAdapter` the trainers call.
ADAPTER_METHODS = ("get_numpy_iterator", "get_tf_dataset", "get_jax_iterator",
                   "get_torch_dataloader", "num_batches", "batch_size", "on_epoch_begin",
                   "on_epoch_end")


def _find_keras():
    """`(data_adapters module, DataAdapter class, None)`, or `(None, None,
    what differs)` where Keras is not as this module expects."""
    try:
        from keras.src.trainers import data_adapters
        from keras.src.trainers.data_adapters.data_adapter import DataAdapter
    except ImportError as error:
        return None, None, f"Keras' data adapters cannot be imported ({error})"
    function = getattr(data_adapters, "get_data_adapter", None)
    if not callable(function):
        return None, None, "keras.src.trainers.data_adapters has no get_data_adapter"
    parameters = tuple(inspect.signature(function).parameters)
    if parameters != PARAMETERS:
        return None, None, f"get_data_adapter takes {parameters}, not {PARAMETERS}"
    missing = [name for name in ADAPTER_METHODS if not hasattr(DataAdapter, name)]
    if missing:
        return None, None, f"Keras' DataAdapter has no {missing}"
    return data_adapters, DataAdapter, None


_ADAPTERS, _DataAdapter, KERAS_PROBLEM = _find_keras()


def shuffle_warning(what: str = "an NpyDataset") -> str:
    return (f"`shuffle=True` was passed to fit() (its default), but is ignored: {what} is "
            "read in its own order, the same on every backend, and this one was made with "
            "shuffle=False, so every epoch trains on the batches in the same order. Make the "
            'training dataset with shuffle=True (or "block") for a new order every epoch, or '
            "pass shuffle=False to fit() to keep this one.")


_LATEST = threading.local()


def training_data():
    """The adapter keras_npy made for the `x` of the latest `fit`, `evaluate`
    or `predict` set up in this thread, or `None` when that `x` was not an
    NpyDataset or a `tf.data.Dataset` of keras_npy. `fit` makes its adapter
    just before its callbacks' `on_train_begin` (a validation set's comes
    later), so there it is the training data's."""
    return getattr(_LATEST, "adapter", None)


def _wrap(original):
    def get_data_adapter(x, y=None, sample_weight=None, batch_size=None,
                         steps_per_epoch=None, shuffle=False, class_weight=None):
        from keras_npy.dataset import NpyDataset  # which imports this module

        _LATEST.adapter = None
        pipeline = getattr(x, "_keras_npy", None)  # a tf.data.Dataset keras_npy made
        if not isinstance(x, NpyDataset) and pipeline is None:
            return original(x, y, sample_weight, batch_size, steps_per_epoch, shuffle,
                            class_weight)
        what = "an NpyDataset" if pipeline is None else "a tf.data.Dataset of keras_npy"
        for value, name, kind in ((y, "y", "targets"),
                                  (sample_weight, "sample_weight", "sample weights")):
            if value is not None:
                raise ValueError(f"When `x` is {what}, `{name}` cannot be passed: the "
                                 f"dataset yields the {kind} (its `y`).")
        dataset = x if pipeline is None else pipeline
        if shuffle and not dataset._source.order.shuffle:
            warnings.warn(shuffle_warning(what), stacklevel=2)
        adapter = NpyDatasetAdapter(dataset, class_weight)
        _LATEST.adapter = adapter
        return adapter

    get_data_adapter.__wrapped__ = original
    get_data_adapter.keras_npy = True
    get_data_adapter.__doc__ = original.__doc__
    return get_data_adapter


def install() -> bool:
    """Wraps Keras' `get_data_adapter` once; returns whether it is wrapped."""
    if _ADAPTERS is None:
        return False
    if not getattr(_ADAPTERS.get_data_adapter, "keras_npy", False):
        _ADAPTERS.get_data_adapter = _wrap(_ADAPTERS.get_data_adapter)
    if keras.backend.backend() == "tensorflow":
        _build_from_specs()
        _reduce_scalars_across_workers()
        _remember_strategy()
    return True


_TF_STRATEGY = threading.local()


def _remember_strategy() -> None:
    """Keras' `TFEpochIterator` asks the adapter for its `tf.data` pipeline
    while it is made with the trainer's strategy, which the adapter needs to
    hand a sharded dataset to each worker (`_per_worker`): kept in a
    thread-local while the iterator is made."""
    try:
        from keras.src.backend.tensorflow.trainer import TFEpochIterator
    except ImportError:
        return
    original = TFEpochIterator.__init__
    if getattr(original, "keras_npy", False):
        return

    def __init__(self, distribute_strategy=None, *args, **kwargs):
        _TF_STRATEGY.value = distribute_strategy
        try:
            original(self, distribute_strategy, *args, **kwargs)
        finally:
            _TF_STRATEGY.value = None

    __init__.keras_npy = True
    TFEpochIterator.__init__ = __init__


def _build_from_specs() -> None:
    """Before its first epoch under a `tf.distribute` strategy, Keras' TF
    trainer builds the model from a batch it takes from the dataset, and
    `strategy.reduce`s a batch of per-replica values, which fails for a
    tuple (`x`, `y`) under `MultiWorkerMirroredStrategy` (keras-team/keras
    #20585). For keras_npy's data it is given the element spec instead: the
    shapes are all it needs, and no batch is read twice."""
    try:
        from keras.src.backend.tensorflow.trainer import TensorFlowTrainer
    except ImportError:
        return
    original = getattr(TensorFlowTrainer, "_maybe_symbolic_build", None)
    if original is None or getattr(original, "keras_npy", False):
        return

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        adapter = getattr(iterator, "data_adapter", None)
        if (data_batch is None and isinstance(adapter, NpyDatasetAdapter)
                and getattr(self, "_distribute_strategy", None) is not None):
            return original(self, data_batch=adapter.symbolic_batch())
        return original(self, iterator=iterator, data_batch=data_batch)

    _maybe_symbolic_build.keras_npy = True
    TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build


def _reduce_scalars_across_workers() -> None:
    """Under `MultiWorkerMirroredStrategy`, Keras' TF trainer averages each
    step's logs (scalars) over the workers with `strategy.reduce("MEAN", v,
    axis=0)`, which fails for a scalar: every `fit` stops at its first step
    (keras-team/keras#20585). Scalars are averaged with `axis=None` instead;
    every other value, and every other strategy, goes to Keras' function."""
    try:
        from keras.src.backend.tensorflow import trainer
    except ImportError:
        return
    original = getattr(trainer, "reduce_per_replica", None)
    is_multi_worker = getattr(trainer, "_collective_all_reduce_multi_worker", None)
    if original is None or is_multi_worker is None or getattr(original, "keras_npy", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and is_multi_worker(strategy):
            def reduce(v):
                one = strategy.experimental_local_results(v)[0]  # a replica's value
                if one.shape.rank == 0:
                    return strategy.reduce("MEAN", v, axis=None)
                return original(v, strategy, reduction)

            return keras.tree.map_structure(reduce, values)
        return original(values, strategy, reduction)

    reduce_per_replica.keras_npy = True
    trainer.reduce_per_replica = reduce_per_replica


if KERAS_PROBLEM is not None:
    warnings.warn(f"keras_npy cannot hand fit() its own reader of an NpyDataset ("
                  f"{KERAS_PROBLEM}; this Keras release, {keras.__version__}, differs from "
                  "those keras_npy knows), so Keras reads it as any PyDataset: fit()'s "
                  "shuffle reorders its batches, and on TensorFlow batches that vary in "
                  "shape fail.", stacklevel=2)

    class NpyDatasetAdapter:
        """Not available: see `KERAS_PROBLEM`."""

        def __init__(self, *args, **kwargs):
            raise RuntimeError(KERAS_PROBLEM)
else:
    class NpyDatasetAdapter(_DataAdapter):
        """What Keras' trainers read an `NpyDataset` through (or the
        `tf_pipeline.PipelineState` of a `tf.data.Dataset` of keras_npy): its
        batches of its current epoch, in order, from the batch a restored
        state names, weighted by `class_weight`, as NumPy arrays (JAX), torch
        tensors (PyTorch), or its `tf.data` pipeline (TensorFlow)."""

        def __init__(self, dataset, class_weight=None):
            self._dataset = dataset
            self._weights = None if class_weight is None else ClassWeights(
                class_weight, dataset._source.labels)
            #: Whether a pass has read every batch since the last epoch's end.
            self._pass_read = False
            self._quiet = _QuietRestart()

        def _batches(self):
            dataset = self._dataset
            # The epoch the pass reads, from the batch a restored state names.
            epoch, start, last = dataset.epoch, dataset._start_batch, len(dataset) - 1
            for i in range(start, last + 1):
                batch = dataset._batch_for_fit(epoch, i)
                if i == last:
                    self._passed()
                yield self._weighted(batch)

        def _passed(self):
            self._pass_read = True

        def get_numpy_iterator(self):
            return self._batches()

        def get_jax_iterator(self):
            return self._batches()

        def get_torch_dataloader(self):
            convert = keras.ops.convert_to_tensor
            for batch in self._batches():
                yield keras.tree.map_structure(convert, batch)

        def get_tf_dataset(self):
            import tensorflow as tf

            dataset = self._dataset
            if dataset._reads_source():
                from keras_npy.tf_pipeline import source_to_tf_dataset

                pipeline = source_to_tf_dataset(dataset._source, _DatasetPosition(dataset),
                                                on_last_read=self._passed, resumable=True)
                if self._weights is not None:
                    pipeline = pipeline.map(self._weights.add_to_tensors,
                                            num_parallel_calls=tf.data.AUTOTUNE)
            else:
                # No declared cardinality: a pass restored mid-epoch is shorter
                # (fit takes the number of batches from `num_batches`).
                pipeline = tf.data.Dataset.from_generator(
                    self._batches, output_signature=self._signature(tf)).prefetch(
                        tf.data.AUTOTUNE)
            return _per_worker(pipeline, dataset._source.order, _fit_strategy())

        def symbolic_batch(self):
            """The `tf.TensorSpec`s of a batch, for Keras to build a model."""
            import tensorflow as tf

            return self._signature(tf)

        def _signature(self, tf):
            """The element spec of the batches: that of the dataset's own, or,
            for a subclass's `__getitem__`, Keras' rule (each axis as in the
            first two batches, `None` where they differ)."""
            from keras_npy.tf_pipeline import element_spec

            dataset = self._dataset
            if not dataset._overrides_batches():
                spec = element_spec(dataset._source)
                if self._weights is not None:
                    spec = (*spec, tf.TensorSpec((None,), keras.config.floatx()))
                return spec
            first = [self._weighted(dataset[i]) for i in range(min(2, len(dataset)))]
            if not first:
                raise ValueError(f"{dataset!r} has no batches.")
            return keras.tree.map_structure(
                lambda *arrays: tf.TensorSpec(
                    (None, *(d if len({a.shape[k + 1] for a in arrays}) == 1 else None
                             for k, d in enumerate(arrays[0].shape[1:]))),
                    tf.as_dtype(arrays[0].dtype)), *first)

        def _weighted(self, batch):
            return batch if self._weights is None else self._weights.add_to(batch)

        @property
        def num_batches(self):
            return len(self._dataset)

        @property
        def batch_size(self):
            return None  # as Keras' PyDatasetAdapter: batches may differ in size

        @property
        def has_partial_batch(self):
            return None

        @property
        def partial_batch_size(self):
            return None

        def on_epoch_begin(self):
            self._dataset.on_epoch_begin()
            self._quiet.start(self._dataset._start_batch)

        def resume_point(self) -> tuple[int, int]:
            """`(epoch, batch)` the next pass starts at."""
            return self._dataset.epoch, self._dataset._start_batch

        def state_at(self, epoch: int, batch: int) -> dict:
            """The dataset's state at batch `batch` of `epoch`."""
            return make_state(self._dataset._source, epoch, batch)

        def restore(self, state: dict) -> None:
            self._dataset.set_state(state)

        def on_epoch_end(self):
            self._quiet.stop()
            # Keras also ends an epoch before the first (each trainer's
            # `epoch_iterator.reset()`, after maybe reading a batch to build
            # the model): the dataset's epoch moves on only after a whole
            # pass, so that fit's k-th epoch is the dataset's epoch k.
            if self._pass_read:
                self._pass_read = False
                self._dataset.on_epoch_end()


def _fit_strategy():
    """The `tf.distribute` strategy of the `fit` (or `evaluate`, `predict`)
    that asks for the dataset: the one Keras' `TFEpochIterator` is being made
    with (`_remember_strategy`); outside it, the strategy in scope."""
    import tensorflow as tf

    return getattr(_TF_STRATEGY, "value", None) or tf.distribute.get_strategy()


def _per_worker(pipeline, order, strategy):
    """A pipeline of one shard's batches, for `strategy`. Over several workers
    (`MultiWorkerMirroredStrategy`), `tf.distribute` would cut each batch into
    parts and shard again what is sharded already; each worker's own batches
    go to its replicas as they are (`distribute_datasets_from_function`)."""
    import tensorflow as tf

    if order.num_shards == 1 or not isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return pipeline

    def per_worker(context):
        if (context.num_input_pipelines, context.input_pipeline_id) != (
                order.num_shards, order.shard_index):
            raise ValueError(
                f"The dataset reads shard {order.shard_index} of {order.num_shards}, but this "
                f"is worker {context.input_pipeline_id} of {context.num_input_pipelines} of "
                "the tf.distribute strategy. Make the dataset with num_shards and shard_index "
                "left to None (they follow TF_CONFIG), or with the strategy's.")
        replicas = context.num_replicas_in_sync // context.num_input_pipelines
        if replicas == 1:
            return pipeline
        if order.shard_batch_size % replicas:
            raise ValueError(
                f"Each worker reads {order.shard_batch_size} samples a batch, which its "
                f"{replicas} replicas cannot share equally: pass a batch_size divisible by "
                f"{order.num_shards * replicas}.")
        return pipeline.flat_map(_cut_in(replicas))

    return strategy.distribute_datasets_from_function(per_worker)


def _cut_in(parts: int):
    """A `flat_map` function that cuts each batch into `parts` consecutive
    pieces, one per replica of a worker (never across batches: batches of a
    bucket, or padded to their own length, stay apart)."""
    import tensorflow as tf

    def cut(*element):
        element = element[0] if len(element) == 1 else element
        size = (tf.shape(tf.nest.flatten(element)[0], tf.int64)[0] + parts - 1) // parts
        return tf.data.Dataset.range(parts).map(lambda k: tf.nest.map_structure(
            lambda t: t[k * size:(k + 1) * size], element))

    return cut


class _QuietRestart:
    """Keras' warning that the input "ran out of data; interrupting training",
    held back in an epoch restored mid-way (`set_state`): its data end before
    fit's count of steps on purpose, and training goes on. Keras gives it
    before it ends the epoch with the adapter's `on_epoch_end`."""

    def __init__(self):
        self._filters = None

    def start(self, start_batch: int) -> None:
        if start_batch and self._filters is None:
            self._filters = warnings.catch_warnings()
            self._filters.__enter__()
            warnings.filterwarnings("ignore", message="Your input ran out of data")

    def stop(self) -> None:
        if self._filters is not None:
            self._filters.__exit__(None, None, None)
            self._filters = None


class _DatasetPosition:
    """The `Cursor` of an NpyDataset's `tf.data` pipeline for `fit`: its
    epoch and start batch, which the dataset moves itself (`on_epoch_end`)."""

    def __init__(self, dataset):
        self._dataset = dataset

    def draw(self) -> tuple[int, int]:
        return self._dataset.epoch, self._dataset._start_batch


class ClassWeights:
    """`fit`'s `class_weight` as a third element of each batch: each sample's
    weight is that of its class (`1.0` for a class not named), with Keras'
    rule for the class of a label: an integer label is the class, a label of
    shape `(1,)` is rounded, a one-hot or probability row gives its argmax.

    Args:
        class_weight: a dict from class index (int >= 0) to weight.
        labels: the dataset's `Labels`.
    """

    def __init__(self, class_weight, labels):
        if not isinstance(class_weight, dict):
            raise TypeError("`class_weight` must be a dict from class index to weight. "
                            f"Received: class_weight={class_weight!r}")
        for key, value in class_weight.items():
            if (not isinstance(key, numbers.Integral) or isinstance(key, bool) or key < 0
                    or not isinstance(value, numbers.Real) or not np.isfinite(value)):
                raise ValueError("`class_weight` maps class indices (integers >= 0) to finite "
                                 f"weights; it holds {key!r}: {value!r}.")
        spec = labels.element_spec()
        if spec is None:
            raise ValueError("`class_weight` weighs each sample by its class, but this "
                             "NpyDataset yields no targets (`y=None` or `label_mode=None`).")
        self.shape, dtype = spec
        if len(self.shape) > 1 or (len(self.shape) == 1 and self.shape[0] is None):
            raise ValueError("`class_weight` weighs each sample by its class, read from its "
                             "label: an integer, a label of shape (1,), or a one-hot row. "
                             f"This NpyDataset's labels have shape {self.shape} each.")
        self.rounded = np.dtype(dtype).kind not in "iub"
        self.table = np.ones(max(class_weight, default=-1) + 1, keras.config.floatx())
        for key, value in class_weight.items():
            self.table[int(key)] = value

    def weights(self, y: np.ndarray) -> np.ndarray:
        """The weight of each label of a batch `y`."""
        if y.ndim == 2:
            y = y[:, 0] if y.shape[1] == 1 else np.argmax(y, axis=1)
        classes = np.round(y).astype(np.int64) if self.rounded and y.dtype.kind == "f" else (
            y.astype(np.int64))
        known = (classes >= 0) & (classes < len(self.table))
        weights = np.ones(len(classes), self.table.dtype)
        weights[known] = self.table[classes[known]]
        return weights

    def add_to(self, batch):
        x, y = batch
        return x, y, self.weights(np.asarray(y))

    def add_to_tensors(self, x, y):
        """`add_to` in TensorFlow ops, for a `tf.data` pipeline."""
        import tensorflow as tf

        classes = y
        if len(self.shape) == 1:
            classes = classes[:, 0] if self.shape[0] == 1 else tf.argmax(classes, axis=1)
        if self.rounded and classes.dtype.is_floating:
            classes = tf.round(classes)
        classes = tf.cast(classes, tf.int64)
        table = tf.constant(self.table)
        known = (classes >= 0) & (classes < len(self.table))
        weights = tf.where(known, tf.gather(table, tf.where(known, classes, 0)),
                           tf.ones_like(classes, table.dtype))
        return x, y, weights


install()
