"""`fit`, `evaluate` and `predict` of an NpyDataset: through its own tf.data
pipeline on the TensorFlow backend, through Keras' PyDataset path where only
that path does what was asked, and the same results either way."""

import keras
import numpy as np
import pytest
from helpers import save

from keras_npy import NpyDataset
from keras_npy.fit_adapter import FitAdapter

TENSORFLOW = keras.backend.backend() == "tensorflow"


@pytest.fixture
def calls(monkeypatch):
    """The batch indices `NpyDataset.__getitem__` was asked for: Keras' PyDataset
    path asks for every batch; the dataset's own pipeline never does."""
    asked = []
    getitem = NpyDataset.__getitem__

    def counted(self, i):
        asked.append(i)
        return getitem(self, i)

    monkeypatch.setattr(NpyDataset, "__getitem__", counted)
    return asked


def _model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
        1, kernel_initializer=keras.initializers.Constant(0.1))])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    return model


def test_only_the_tensorflow_backend_gets_the_own_pipeline(rows_file):
    from keras.src.trainers.data_adapters import get_data_adapter
    from keras.src.trainers.data_adapters.data_adapter import DataAdapter

    path, _ = rows_file
    ds = NpyDataset(path, batch_size=10)
    assert FitAdapter.supported is TENSORFLOW
    assert isinstance(ds, DataAdapter) is TENSORFLOW
    assert (get_data_adapter(ds) is ds) is TENSORFLOW


def test_fit_evaluate_predict_never_ask_for_a_batch_on_tensorflow(rows_file, calls):
    path, x = rows_file
    y = x @ np.array([1.0, -2.0, 0.5, 3.0], "float32")
    ds = NpyDataset(path, y=y, batch_size=16, shuffle=True, seed=3)
    model = _model()
    for shuffle in (False, True):  # fit's batch shuffle adds nothing to a global one
        model.fit(ds, epochs=2, shuffle=shuffle, verbose=0)
    loss = model.evaluate(NpyDataset(path, y=y, batch_size=16), verbose=0)
    predictions = model.predict(NpyDataset(path, batch_size=16), verbose=0)
    np.testing.assert_allclose(predictions, x @ model.get_weights()[0] + model.get_weights()[1],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, np.mean((predictions[:, 0] - y) ** 2), rtol=1e-5)
    if TENSORFLOW:
        assert calls == []
    else:
        assert len(calls) >= 4 * len(ds) + 2 * 7


@pytest.mark.parametrize("case", ["class_weight", "fit shuffles batches", "workers",
                                  "a subclass's __getitem__"])
def test_keras_pydataset_path_where_only_it_does_what_was_asked(rows_file, calls, case):
    path, x = rows_file
    y = (x[:, 0] > 0).astype("int32")
    kwargs = dict(y=y, batch_size=16, shuffle=case != "fit shuffles batches", seed=3)
    fit_kwargs = dict(epochs=1, verbose=0, shuffle=True)
    if case == "class_weight":
        fit_kwargs["class_weight"] = {0: 1.0, 1: 3.0}
    if case == "workers":
        kwargs["workers"] = 2
    cls = NpyDataset
    if case == "a subclass's __getitem__":
        class Flipped(NpyDataset):
            def __getitem__(self, i):
                bx, by = super().__getitem__(i)
                return -bx, by
        cls = Flipped
    ds = cls(path, **kwargs)
    _model().fit(ds, **fit_kwargs)
    assert len(calls) >= len(ds)  # every batch through Keras' path
    assert ds._pipeline_for_fit(True, fit_kwargs.get("class_weight")) is None


def test_class_weight_trains_as_sample_weights_do(rows_file):
    path, x = rows_file
    y = (x[:, 0] > 0).astype("int32")
    class_weight = {0: 1.0, 1: 3.0}
    ds = NpyDataset(path, y=y, batch_size=16, shuffle=True, seed=5)
    model = _model()
    model.fit(ds, epochs=1, class_weight=class_weight, shuffle=False, verbose=0)

    class Weighted(keras.utils.PyDataset):
        def __init__(self, batches):
            super().__init__()
            self.batches = batches

        def __len__(self):
            return len(self.batches)

        def __getitem__(self, i):
            bx, by = self.batches[i]
            return bx, by, np.where(by == 1, 3.0, 1.0).astype("float32")

    reference_ds = NpyDataset(path, y=y, batch_size=16, shuffle=True, seed=5)
    reference_ds.epoch = ds.epoch - 1  # the epoch fit trained
    reference = _model()
    batches = [reference_ds[i] for i in range(len(reference_ds))]
    reference.fit(Weighted(batches), epochs=1, shuffle=False, verbose=0)
    for got, expected in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("name, shown, description", [
    ("y", "y", "targets"), ("sample_weight", "sample_weights", "sample weights")])
def test_y_or_sample_weight_beside_the_dataset_get_keras_error(rows_file, name, shown,
                                                               description):
    path, x = rows_file
    ds = NpyDataset(path, y=x[:, 0], batch_size=16)
    with pytest.raises(ValueError) as info:
        _model().fit(ds, **{name: x[:, 0]}, verbose=0)
    assert str(info.value) == (  # Keras' words, on every backend
        f"When providing `x` as a PyDataset, `{shown}` should not be passed. Instead, the "
        f"{description} should be included as part of the PyDataset.")


def test_each_pass_of_the_own_pipeline_reads_the_epoch_it_starts_in(rows_file):
    path, x = rows_file
    ds = NpyDataset(path, y=np.arange(103), batch_size=16, shuffle=True, seed=8)
    reference = NpyDataset(path, y=np.arange(103), batch_size=16, shuffle=True, seed=8)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(ds.epoch)

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(ds, epochs=3, shuffle=False, verbose=0, callbacks=[Record()])
    assert seen == [ds.epoch - 3, ds.epoch - 2, ds.epoch - 1]
    if not TENSORFLOW:
        return
    pipeline = ds._pipeline_for_fit(False, None)
    for epoch in (ds.epoch, ds.epoch + 1):
        reference.epoch = ds.epoch = epoch
        ids = [by for _, by in pipeline.as_numpy_iterator()]  # a pass per epoch
        np.testing.assert_array_equal(np.concatenate(ids), np.concatenate(
            [reference[i][1] for i in range(len(reference))]))


@pytest.mark.skipif(not TENSORFLOW, reason="NpyDataset is a DataAdapter on TensorFlow only")
def test_a_caller_other_than_the_trainer_gets_keras_pydataset_path(rows_file, calls):
    path, x = rows_file
    ds = NpyDataset(path, y=x[:, 0], batch_size=16)
    got = [bx for bx, _ in ds.get_tf_dataset().as_numpy_iterator()]
    np.testing.assert_array_equal(np.concatenate(got), x)
    assert len(calls) >= len(ds)


def test_batches_of_varying_shape_fit_on_every_backend(tmp_path, recwarn):
    for k in range(9):
        save(str(tmp_path / "seq" / ("ab"[k % 2]) / f"{k}.npy"), np.full((2 + k, 3), k, "int16"))
    ds = NpyDataset(str(tmp_path / "seq"), y="inferred", label_mode="binary", pad_to="longest",
                    batch_size=2, dtype="float32", shuffle=True, seed=0)
    assert [w for w in recwarn if "vary in shape" in str(w.message)] == []
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy")
    history = model.fit(ds, epochs=2, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2
    assert model.predict(NpyDataset(str(tmp_path / "seq"), pad_to=12, batch_size=2),
                         verbose=0).shape == (9, 1)
