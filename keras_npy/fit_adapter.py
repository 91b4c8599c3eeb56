"""How `NpyDataset` feeds Keras' TensorFlow trainer (`fit`, `evaluate`, `predict`).

Keras hands any `PyDataset` to its TensorFlow trainer through
`tf.data.Dataset.from_generator`: one Python call handed to TensorFlow per
batch, which held `fit` of a one-layer model at ~0.6x of the no-data ceiling
here whatever the dataset read (a PyDataset returning one constant batch did
no better). Keras also takes a `DataAdapter` in place of data
(`get_data_adapter` returns one as it is). On the TensorFlow backend
`NpyDataset` is one, through `FitAdapter`: the trainer asks it for a
`tf.data.Dataset` and gets the pipeline of `npy_dataset` over the same batch
source (the same batches in the same order, several small batches per Python
call), ~0.8x of the ceiling.

Some things only Keras' own PyDataset path does: `class_weight`, `fit`'s
shuffle of the batches of an unshuffled dataset, reading ahead with `workers`,
and a subclass's own `__getitem__`. For those, and for any caller but the
TensorFlow trainer's epoch iterator, `FitAdapter` hands over Keras'
`PyDatasetAdapter` with `fit`'s arguments, as Keras would have made it. The
arguments are read from the frame of the epoch iterator being built, the one
place they are (a `DataAdapter` is given none of them).

`DataAdapter` is not public Keras API (`keras.src`), so `FitAdapter` is one
only where every piece this relies on is found as expected, on the TensorFlow
backend; elsewhere it is a plain base and `NpyDataset` is a plain `PyDataset`.
"""

from __future__ import annotations

import inspect
import sys
import types

import keras


def _keras_pieces():
    """What `FitAdapter` uses of Keras, or `None` where anything differs."""
    if keras.backend.backend() != "tensorflow":
        return None
    try:
        from keras.src.backend.tensorflow.trainer import TFEpochIterator
        from keras.src.trainers import data_adapters
        from keras.src.trainers.data_adapters.data_adapter import DataAdapter
        from keras.src.trainers.epoch_iterator import EpochIterator
    except ImportError:
        return None
    init, signature = TFEpochIterator.__init__, inspect.signature(EpochIterator.__init__)
    probe = type("Probe", (DataAdapter,), {})()
    if not ({"args", "kwargs"} <= inspect.signature(init).parameters.keys()
            and {"y", "sample_weight", "shuffle", "class_weight"} <= signature.parameters.keys()
            and "get_tf_dataset" in init.__code__.co_names
            and data_adapters.get_data_adapter(probe) is probe
            and hasattr(data_adapters, "PyDatasetAdapter")
            and hasattr(data_adapters, "raise_unsupported_arg")):
        return None
    return types.SimpleNamespace(
        DataAdapter=DataAdapter, adapters=data_adapters, trainer_code=init.__code__,
        signature=signature)


_KERAS = _keras_pieces()

#: fit's arguments a PyDataset comes without: name, and Keras' words in its error.
_NOT_WITH_A_PYDATASET = (("y", "y", "the targets"),
                         ("sample_weight", "sample_weights", "the sample weights"))


def fit_arguments(frame):
    """The arguments of the `EpochIterator` that `frame` builds, when it is the
    TensorFlow trainer's; `None` otherwise."""
    if _KERAS is None or frame.f_code is not _KERAS.trainer_code:
        return None
    local = frame.f_locals
    arguments = _KERAS.signature.bind(None, *local["args"], **local["kwargs"])
    arguments.apply_defaults()
    return arguments.arguments


if _KERAS is None:
    class FitAdapter:
        """A plain base: Keras' `DataAdapter` is not as this package expects it,
        or the backend is not TensorFlow."""

        supported = False
else:
    class FitAdapter(_KERAS.DataAdapter):
        """A Keras `DataAdapter` for a `PyDataset` that can also make its own
        `tf.data` pipeline, `_pipeline_for_fit(shuffle, class_weight)` (or
        `None` where Keras' PyDataset path must do what was asked)."""

        supported = True

        def get_tf_dataset(self):
            arguments = fit_arguments(sys._getframe(1))
            if arguments is None:  # not the trainer: what Keras makes of a PyDataset
                return self._keras_adapter().get_tf_dataset()
            for name, shown, description in _NOT_WITH_A_PYDATASET:
                if arguments[name] is not None:  # Keras' own check of a PyDataset
                    _KERAS.adapters.raise_unsupported_arg(shown, description, "PyDataset")
            shuffle, class_weight = arguments["shuffle"], arguments["class_weight"]
            pipeline = self._pipeline_for_fit(shuffle, class_weight)
            if pipeline is not None:
                return pipeline
            return self._keras_adapter(shuffle, class_weight).get_tf_dataset()

        def get_numpy_iterator(self):
            return self._keras_adapter().get_numpy_iterator()

        def get_jax_iterator(self):
            return self._keras_adapter().get_jax_iterator()

        def get_torch_dataloader(self):
            return self._keras_adapter().get_torch_dataloader()

        @property
        def batch_size(self):
            return None  # as Keras' PyDatasetAdapter: batches may differ in size

        def _keras_adapter(self, shuffle=False, class_weight=None):
            return _KERAS.adapters.PyDatasetAdapter(self, class_weight=class_weight,
                                                    shuffle=shuffle)
