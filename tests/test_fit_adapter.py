"""`fit`, `evaluate` and `predict` of an NpyDataset, run as they are on every
backend (this file runs under TensorFlow, JAX and PyTorch): default arguments
work for every option, the model sees the dataset's batches in the dataset's
order, `fit`'s `shuffle` is ignored with a warning, and `class_weight` weighs
the samples."""

import warnings

import keras
import numpy as np
import pytest
from helpers import save

from keras_npy import NpyDataset, fit_adapter

TENSORFLOW = keras.backend.backend() == "tensorflow"


@pytest.fixture
def calls(monkeypatch):
    """The batch indices `NpyDataset.__getitem__` was asked for."""
    asked = []
    getitem = NpyDataset.__getitem__

    def counted(self, i):
        asked.append(i)
        return getitem(self, i)

    monkeypatch.setattr(NpyDataset, "__getitem__", counted)
    return asked


def _linear(lr=0.05):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
        1, kernel_initializer="zeros", bias_initializer="zeros")])
    model.compile(keras.optimizers.SGD(lr), "mse")
    return model


def _sgd(batches, lr=0.05, weights=None):
    """What `_linear().fit` gives after these `(x, y[, sample weight])`
    batches, in this order: plain SGD on the mean squared error (Keras' mean
    of weighted losses over the batch)."""
    kernel, bias = np.zeros((4, 1)), np.zeros(1)
    for batch in batches:
        bx, by = batch[0].astype("float64"), batch[1].astype("float64").reshape(-1, 1)
        sw = np.ones(len(bx)) if len(batch) == 2 else batch[2].astype("float64")
        error = (bx @ kernel + bias - by) * sw[:, None]
        kernel -= lr * 2 * bx.T @ error / len(bx)
        bias -= lr * 2 * error.sum(0) / len(bx)
    return kernel, bias


def _batches(ds, epoch):
    ds.epoch, epoch = epoch, ds.epoch
    try:
        return [ds[i] for i in range(len(ds))]
    finally:
        ds.epoch = epoch


def test_keras_hands_fit_an_npydataset_with_its_arguments(rows_file):
    """The one use of Keras' private modules: if a Keras release changes what
    it relies on, this fails (and importing keras_npy warns)."""
    from keras.src.trainers import data_adapters

    assert fit_adapter.KERAS_PROBLEM is None
    assert data_adapters.get_data_adapter.keras_npy
    path, x = rows_file
    ds = NpyDataset(path, y=x[:, 0], batch_size=10)
    adapter = data_adapters.get_data_adapter(ds, class_weight={0: 2.0})
    assert isinstance(adapter, fit_adapter.NpyDatasetAdapter)
    assert adapter.num_batches == len(ds) and adapter._weights is not None
    # Anything else is Keras' business, untouched.
    other = data_adapters.get_data_adapter(x, x[:, 0], batch_size=10)
    assert type(other).__name__ == "ArrayDataAdapter"


def test_fit_trains_on_the_datasets_batches_in_its_order(rows_file, calls):
    path, x = rows_file
    y = x @ np.array([1.0, -2.0, 0.5, 3.0], "float32")
    ds = NpyDataset(path, y=y, batch_size=16, shuffle=True, seed=3)
    expected = _sgd(_batches(ds, 0) + _batches(ds, 1))
    calls.clear()
    model = _linear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning about fit's shuffle: the dataset shuffles
        model.fit(ds, epochs=2, verbose=0)
    kernel, bias = model.get_weights()
    np.testing.assert_allclose(kernel, expected[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bias, expected[1], rtol=1e-4, atol=1e-6)
    assert ds.epoch == 2
    assert calls == []  # read from the source, not batch by batch through __getitem__


def test_evaluate_and_predict_follow_the_dataset(rows_file):
    path, x = rows_file
    y = x @ np.array([1.0, -2.0, 0.5, 3.0], "float32")
    model = _linear()
    model.fit(NpyDataset(path, y=y, batch_size=16, shuffle=True, seed=1), verbose=0)
    kernel, bias = model.get_weights()
    predictions = model.predict(NpyDataset(path, batch_size=16), verbose=0)
    np.testing.assert_allclose(predictions, x @ kernel + bias, rtol=1e-5, atol=1e-6)
    loss = model.evaluate(NpyDataset(path, y=y, batch_size=16), verbose=0)
    np.testing.assert_allclose(loss, np.mean((predictions[:, 0] - y) ** 2), rtol=1e-5)


def test_fits_shuffle_is_ignored_with_a_warning_when_the_dataset_keeps_its_order(rows_file):
    path, x = rows_file
    y = x[:, 0]
    ds = NpyDataset(path, y=y, batch_size=16)
    with pytest.warns(UserWarning) as caught:
        model = _linear()
        model.fit(ds, verbose=0)  # fit's default is shuffle=True
    messages = [str(w.message) for w in caught]
    assert [m for m in messages if "shuffle" in m] == [fit_adapter.shuffle_warning()]
    expected = _sgd(_batches(ds, 0))  # the file's order, not reshuffled batches
    np.testing.assert_allclose(model.get_weights()[0], expected[0], rtol=1e-4, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _linear().fit(ds, shuffle=False, verbose=0)
        _linear().evaluate(ds, verbose=0)


def _sequences(tmp_path):
    for k in range(11):
        save(str(tmp_path / "seq" / ("ab"[k % 2]) / f"{k}.npy"),
             np.full((2 + 3 * (k % 4) + (k == 10) * 9, 3), k, "int16"))
    return str(tmp_path / "seq")


def _sequence_model():
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy")
    return model


@pytest.mark.parametrize("options", [
    dict(pad_to="longest"),
    dict(pad_to="longest", shuffle=True, seed=0),
    dict(pad_to="longest", pad_to_multiple_of=4, drop_remainder=True),
    dict(pad_to=6, truncating="pre"),
    dict(bucket_boundaries=[6, 9], pad_to="longest", shuffle=True, seed=1),
    dict(pad_to="longest", shuffle="block", shuffle_block_size=2, seed=2),
    dict(pad_to="longest", workers=2),
    dict(pad_to="longest", validation_split=0.3, subset="training", seed=4),
    dict(pad_to="longest", num_shards=2, shard_index=1),
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_default_fit_evaluate_predict_for_batches_that_vary_in_shape(tmp_path, options):
    """The first two batches have one length, later ones others: Keras'
    PyDataset path on TensorFlow would fix the shape from the first two."""
    folder = _sequences(tmp_path)
    kwargs = dict(y="inferred", label_mode="binary", batch_size=2, dtype="float32", **options)
    ds = NpyDataset(folder, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fit's shuffle of a dataset in file order
        history = _sequence_model().fit(ds, epochs=2)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    model = _sequence_model()
    assert np.isfinite(model.evaluate(ds))
    predictions = model.predict(NpyDataset(folder, **{**kwargs, "y": None}))
    assert predictions.shape == (sum(len(b[0]) for b in _batches(ds, ds.epoch)), 1)


def test_predict_returns_one_row_per_sample_in_the_datasets_order(tmp_path):
    folder = _sequences(tmp_path)
    ds = NpyDataset(folder, pad_to="longest", batch_size=3, dtype="float32", shuffle=True,
                    seed=7)
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.GlobalMaxPooling1D()])
    got = model.predict(ds, verbose=0)[:, 0]
    expected = np.concatenate([b.max(axis=(1, 2)) for b in _batches(ds, 0)])
    np.testing.assert_array_equal(got, expected)


def test_a_subclass_batches_are_the_ones_fit_reads(rows_file):
    path, x = rows_file

    class Flipped(NpyDataset):
        def __getitem__(self, i):
            return -super().__getitem__(i)

    model = keras.Sequential([keras.Input((4,)), keras.layers.Identity()])
    np.testing.assert_array_equal(model.predict(Flipped(path, batch_size=16), verbose=0), -x)


@pytest.mark.parametrize("label_mode", ["int", "binary", "categorical"])
def test_class_weight_weighs_each_sample_by_its_class(rows_file, label_mode):
    path, x = rows_file
    classes = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 1)
    class_weight = {0: 1.0, 1: 3.0, 2: 0.5}
    ds = NpyDataset(path, y=classes, label_mode=label_mode, batch_size=16, shuffle=True,
                    seed=5)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
        3 if label_mode == "categorical" else 1, kernel_initializer="zeros")])
    loss = "categorical_crossentropy" if label_mode == "categorical" else "mse"
    model.compile(keras.optimizers.SGD(0.05), loss)
    model.fit(ds, class_weight=class_weight, verbose=0)

    reference = keras.models.clone_model(model)
    reference.set_weights([np.zeros_like(w) for w in model.get_weights()])
    reference.compile(keras.optimizers.SGD(0.05), loss)
    for bx, by in _batches(ds, 0):
        ids = np.argmax(by, 1) if label_mode == "categorical" else np.round(by).reshape(-1)
        reference.train_on_batch(bx, by, sample_weight=np.array(
            [class_weight[int(c)] for c in ids], "float32"))
    for got, expected in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_class_weight_of_a_class_not_named_is_one(rows_file):
    path, x = rows_file
    ds = NpyDataset(path, y=np.arange(103) % 4, batch_size=103)
    adapter = fit_adapter.NpyDatasetAdapter(ds, {1: 2.0})
    _, _, weights = next(iter(adapter.get_numpy_iterator()))
    np.testing.assert_array_equal(weights, np.where(np.arange(103) % 4 == 1, 2.0, 1.0))
    if TENSORFLOW:
        _, _, tf_weights = next(iter(adapter.get_tf_dataset().as_numpy_iterator()))
        np.testing.assert_array_equal(tf_weights, weights)


@pytest.mark.parametrize("class_weight, y, match", [
    ([1.0, 2.0], "labels", "must be a dict"),
    ({-1: 2.0}, "labels", r"\(integers >= 0\) to finite weights; it holds -1: 2.0"),
    ({0: float("nan")}, "labels", "finite"),
    ({0: 2.0}, None, "yields no targets"),
    ({0: 2.0}, "sequences", r"labels have shape \(5, 2\) each"),
])
def test_class_weight_that_cannot_weigh_is_refused(rows_file, tmp_path, class_weight, y,
                                                   match):
    path, x = rows_file
    targets = {"labels": np.arange(103) % 2, None: None,
               "sequences": save(str(tmp_path / "t.npy"), np.zeros((103, 5, 2), "int32"))}[y]
    ds = NpyDataset(path, y=targets, batch_size=16)
    with pytest.raises((ValueError, TypeError), match=match):
        _linear().fit(ds, class_weight=class_weight, shuffle=False, verbose=0)


@pytest.mark.parametrize("name", ["y", "sample_weight"])
def test_y_or_sample_weight_beside_the_dataset_is_refused(rows_file, name):
    path, x = rows_file
    ds = NpyDataset(path, y=x[:, 0], batch_size=16)
    with pytest.raises(ValueError, match=f"When `x` is an NpyDataset, `{name}` cannot be "
                                         "passed: the dataset yields the"):
        _linear().fit(ds, **{name: x[:, 0]}, verbose=0)


def test_each_pass_reads_the_epoch_it_starts_in(rows_file):
    path, x = rows_file
    ds = NpyDataset(path, y=np.arange(103), batch_size=16, shuffle=True, seed=8)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(ds.epoch)

    _linear().fit(ds, epochs=3, verbose=0, callbacks=[Record()])
    assert seen == [0, 1, 2] and ds.epoch == 3
    adapter = fit_adapter.NpyDatasetAdapter(ds)
    passes = [adapter.get_numpy_iterator]
    if TENSORFLOW:
        passes.append(lambda: adapter.get_tf_dataset().as_numpy_iterator())
    for make_pass in passes:
        for epoch in (3, 4):
            ds.epoch = epoch
            labels = np.concatenate([by for _, by in make_pass()])
            np.testing.assert_array_equal(labels, np.concatenate(
                [by for _, by in _batches(ds, epoch)]))


def test_worker_threads_give_fit_the_same_batches(rows_file):
    path, x = rows_file
    y = x @ np.array([1.0, -2.0, 0.5, 3.0], "float32")
    kwargs = dict(y=y, batch_size=8, shuffle=True, seed=9)
    models = []
    for workers in (1, 3):
        model = _linear()
        model.fit(NpyDataset(path, workers=workers, **kwargs), epochs=2, verbose=0)
        models.append(model.get_weights())
    for a, b in zip(*models):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("method", ["fit", "evaluate"])
def test_the_kth_pass_reads_the_datasets_epoch_k(rows_file, monkeypatch, method):
    """Keras ends an epoch once before the first (`EpochIterator.reset`): it
    does not move the dataset to its next epoch."""
    from keras_npy.batches import BatchSource

    path, x = rows_file
    read = []
    batches = BatchSource.batches

    def recorded(self, epoch, first, count):
        read.append(int(epoch))
        return batches(self, epoch, first, count)

    monkeypatch.setattr(BatchSource, "batches", recorded)
    ds = NpyDataset(path, y=x[:, 0], batch_size=50, shuffle=True, seed=2)
    model = _linear()
    if method == "fit":
        model.fit(ds, epochs=3, verbose=0)
        assert sorted(set(read)) == [0, 1, 2] and ds.epoch == 3
    else:
        model.evaluate(ds, verbose=0)
        model.evaluate(ds, verbose=0)
        assert sorted(set(read)) == [0, 1] and ds.epoch == 2
