"""npy_timeseries_dataset: Keras' timeseries_dataset_from_array, read from .npy
files. CI runs this file on the TensorFlow, JAX and PyTorch backends."""

import json

import keras
import numpy as np
import pytest
from helpers import save

from keras_npy import npy_timeseries_dataset

FORMATS = ["tf", "pydataset"]


def _batches(ds):
    """Every batch of one epoch (the next), as numpy."""
    if isinstance(ds, keras.utils.PyDataset):
        out = [ds[i] for i in range(len(ds))]
        ds.on_epoch_end()
        return out
    return list(ds.as_numpy_iterator())


def _keras(data, targets, **kwargs):
    return list(keras.utils.timeseries_dataset_from_array(data, targets, **kwargs)
                .as_numpy_iterator())


def _assert_same(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
        for u, v in zip(a, b):
            assert u.shape == v.shape and u.dtype == v.dtype
            np.testing.assert_array_equal(u, v)


@pytest.fixture
def series(tmp_path):
    """`(x path, y path, x, y)`: a (300, 3) float32 series and (300, 2) targets."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3)).astype("float32")
    y = rng.normal(size=(300, 2)).astype("float32")
    return save(str(tmp_path / "x.npy"), x), save(str(tmp_path / "y.npy"), y), x, y


CASES = [
    dict(sequence_length=10),
    dict(sequence_length=10, sequence_stride=3, sampling_rate=2, batch_size=7),
    dict(sequence_length=5, start_index=40, end_index=250, batch_size=32),
    dict(sequence_length=1, sequence_stride=299),
    dict(sequence_length=300, batch_size=3),
    dict(sequence_length=12, sampling_rate=5, start_index=3, batch_size=16),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("format", FORMATS)
def test_batch_for_batch_as_keras(series, case, format, maps):
    x_path, y_path, x, y = series
    theirs = _keras(x, y, **case)
    for data, targets in ((x_path, y_path), (x, y), (x_path, y)):
        ds = npy_timeseries_dataset(data, targets, format=format, **case)
        _assert_same(_batches(ds), theirs)
    _assert_same(_batches(npy_timeseries_dataset(x_path, None, format=format, **case)),
                 _keras(x, None, **case))


@pytest.mark.parametrize("row_shape", [(), (2, 3)])
@pytest.mark.parametrize("stored", ["<i4", ">i4", "F"])
def test_row_shapes_byte_orders_and_fortran_order(tmp_path, row_shape, stored):
    whole = np.arange(50 * int(np.prod(row_shape)), dtype="int32").reshape(50, *row_shape)
    whole = np.asfortranarray(whole) if stored == "F" else whole.astype(stored)
    path = save(str(tmp_path / "x.npy"), whole)
    case = dict(sequence_length=4, sampling_rate=3, sequence_stride=2, batch_size=5)
    ds = npy_timeseries_dataset(path, None, format="pydataset", **case)
    ours = _batches(ds)
    _assert_same(ours, _keras(np.ascontiguousarray(whole).astype("int32"), None, **case))
    cast = npy_timeseries_dataset(path, None, format="pydataset", dtype="float32", **case)
    assert _batches(cast)[0].dtype == np.float32


def test_preadv_of_windows_with_a_sampling_rate(series, monkeypatch):
    from keras_npy.read import guard, handles

    handles.TABLE.clear()
    monkeypatch.setattr(guard._GUARD, "_usable", False)
    x_path, y_path, x, y = series
    case = dict(sequence_length=7, sampling_rate=4, sequence_stride=5, batch_size=9,
                shuffle=True, seed=3)
    ds = npy_timeseries_dataset(x_path, y_path, format="pydataset", **case)
    for bx, by in _batches(ds):
        for window, target in zip(bx, by):
            start = int(np.flatnonzero((x == window[0]).all(axis=1))[0])
            np.testing.assert_array_equal(window, x[start:start + 25:4])
            np.testing.assert_array_equal(target, y[start])
    handles.TABLE.clear()


def _window_set(batches):
    return sorted(w.tobytes() + t.tobytes() for bx, by in batches for w, t in zip(bx, by))


@pytest.mark.parametrize("format", FORMATS)
def test_shuffle_gives_keras_windows_in_an_order_from_seed_and_epoch(series, format):
    x_path, y_path, x, y = series
    case = dict(sequence_length=8, sequence_stride=2, batch_size=16, shuffle=True, seed=5)
    theirs = _window_set(_keras(x, y, **case))
    ds = npy_timeseries_dataset(x_path, y_path, format=format, **case)
    first, second = _batches(ds), _batches(ds)
    assert _window_set(first) == theirs and _window_set(second) == theirs
    assert not np.array_equal(first[0][0], second[0][0])  # a new order each epoch
    again = npy_timeseries_dataset(x_path, y_path, format="pydataset", **case)
    _assert_same(_batches(again), first)  # the same for the same seed, in both formats
    _assert_same(_batches(again), second)
    other = npy_timeseries_dataset(x_path, y_path, format=format, **{**case, "seed": 6})
    assert not np.array_equal(_batches(other)[0][0], first[0][0])


@pytest.mark.parametrize("format", FORMATS)
def test_several_files_are_several_series(tmp_path, format):
    """Windows never cross from one file into the next; each file's windows
    are those Keras makes of it alone, one file after the other."""
    lengths = [40, 25, 33]
    xs = [np.stack([np.full(n, f), np.arange(n)], axis=1).astype("int64")
          for f, n in enumerate(lengths)]
    ys = [a[:, 1] * 10 for a in xs]
    x_paths = [save(str(tmp_path / "x" / f"part{f}.npy"), a) for f, a in enumerate(xs)]
    y_paths = [save(str(tmp_path / "y" / f"part{f}.npy"), a) for f, a in enumerate(ys)]
    case = dict(sequence_length=6, sequence_stride=2, sampling_rate=2, start_index=1,
                end_index=24, batch_size=4)
    theirs = [w for a, b in zip(xs, ys) for bx, by in _keras(a, b, **case)
              for w in zip(bx, by)]
    for data, targets in ((x_paths, y_paths), (str(tmp_path / "x"), str(tmp_path / "y/*.npy")),
                          (xs, ys)):
        ds = npy_timeseries_dataset(data, targets, format=format, **case)
        ours = [w for bx, by in _batches(ds) for w in zip(bx, by)]
        assert len(ours) == len(theirs) == 3 * 7
        for (w, t), (kw, kt) in zip(ours, theirs):
            np.testing.assert_array_equal(w, kw)
            np.testing.assert_array_equal(t, kt)
            assert len(set(w[:, 0].tolist())) == 1  # one file per window
    assert ds.file_paths == [] and npy_timeseries_dataset(
        x_paths, None, sequence_length=3, format=format).file_paths == x_paths


def test_a_batch_allocates_its_windows_only(tmp_path):
    """Memory while reading is the batch's: nothing of the size of every
    window of the series (20,000 windows of 120 rows: 134 MB) is made."""
    import tracemalloc

    path = save(str(tmp_path / "long.npy"), np.zeros((20_000, 14), "float32"))
    for rate in (1, 6):
        ds = npy_timeseries_dataset(path, None, sequence_length=120, sampling_rate=rate,
                                    batch_size=128, shuffle=True, seed=0, format="pydataset")
        tracemalloc.start()
        try:
            ds[0], ds[1]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 * 128 * 120 * 14 * 4, peak


def test_unbatched_windows(series):
    x_path, y_path, x, y = series
    case = dict(sequence_length=20, sequence_stride=7, batch_size=None)
    ours = list(npy_timeseries_dataset(x_path, y_path, **case).as_numpy_iterator())
    _assert_same(ours, _keras(x, y, **case))
    assert npy_timeseries_dataset(x_path, y_path, **case).file_paths == [x_path]


def test_fit_trains_as_on_keras_windows(series):
    """fit on either format updates the weights exactly as fit on Keras'
    dataset of the same array (the same batches, in the same order)."""
    x_path, y_path, x, y = series
    case = dict(sequence_length=6, sequence_stride=2, batch_size=16)

    def trained(dataset):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((6, 3)), keras.layers.Flatten(),
                                  keras.layers.Dense(2)])
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        history = model.fit(dataset, epochs=2, shuffle=False, verbose=0)
        return model.get_weights(), history.history["loss"]

    theirs, their_loss = trained(keras.utils.timeseries_dataset_from_array(x, y, **case))
    for format in FORMATS:
        ours, loss = trained(npy_timeseries_dataset(x_path, y_path, format=format, **case))
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(loss, their_loss, rtol=1e-5)


@pytest.mark.parametrize("format", FORMATS)
def test_state_resumes_and_names_other_windows(series, format):
    x_path, y_path, _, _ = series
    case = dict(sequence_length=9, batch_size=32, shuffle=True, seed=2)
    ds = npy_timeseries_dataset(x_path, y_path, format="pydataset", **case)
    ds.on_epoch_end()
    state = json.loads(json.dumps(ds.get_state()))
    expected = _batches(ds)
    restored = npy_timeseries_dataset(x_path, y_path, format=format, **case)
    restored.set_state(state)
    _assert_same(_batches(restored), expected)
    other = npy_timeseries_dataset(x_path, y_path, format=format,
                                   **{**case, "sequence_length": 10})
    with pytest.raises(ValueError) as info:
        other.set_state(state)
    what = "NpyDataset" if format == "pydataset" else "tf.data.Dataset"
    assert str(info.value) == (
        f"{what}.set_state(): the data differ from those of the saved state, so the saved "
        "position would be another order of other samples. What differs: the number of "
        "samples: 292 in the state, 291 now; sequence_length: 9 in the state, 10 now "
        "(windows.sequence_length). Restore onto the data the state was taken from.")


def test_workers_read_the_same_windows(series):
    x_path, y_path, _, _ = series
    case = dict(sequence_length=9, batch_size=32, shuffle=True, seed=2, format="pydataset")
    expected = _batches(npy_timeseries_dataset(x_path, y_path, **case))
    ds = npy_timeseries_dataset(x_path, y_path, workers=2, **case)
    _assert_same(_batches(ds), expected)


def _error(*args, **kwargs):
    with pytest.raises((ValueError, TypeError)) as info:
        npy_timeseries_dataset(*args, **kwargs)
    return str(info.value)


def _keras_error(*args, **kwargs):
    with pytest.raises(ValueError) as info:
        keras.utils.timeseries_dataset_from_array(*args, **kwargs)
    return str(info.value)


@pytest.mark.parametrize("bad", [
    dict(start_index=-1), dict(start_index=300), dict(start_index=50, end_index=40),
    dict(end_index=300), dict(end_index=-2), dict(sampling_rate=0), dict(sampling_rate=300),
    dict(sequence_stride=0), dict(sequence_stride=301)])
def test_keras_errors_with_keras_wording_after_the_file(series, bad):
    x_path, y_path, x, y = series
    theirs = _keras_error(x, y, **{"sequence_length": 5, **bad})
    assert _error(x, y, **{"sequence_length": 5, **bad}) == theirs
    assert _error(x_path, y_path, **{"sequence_length": 5, **bad}) == f"{x_path}: {theirs}"


def test_other_errors_name_the_file_or_argument(series, tmp_path):
    x_path, y_path, x, y = series
    assert _error(x_path, y_path, sequence_length=151, sampling_rate=2, start_index=1) == (
        f"{x_path}: a window of sequence_length=151 with sampling_rate=2 spans 301 rows, but "
        "the series has 299 rows from start_index=1 to end_index=300. Pass a shorter "
        "`sequence_length` (or `sampling_rate`), or leave this series out.")
    assert _error(x_path, y_path, sequence_length=5, format="grain") == (
        '`format` should be either "tf" or "pydataset". Received: format=grain')
    assert _error(x_path, y_path, sequence_length=0) == (
        "`sequence_length` must be higher than 0. Received: sequence_length=0")
    assert _error(x_path, y_path, sequence_length=2.5) == (
        "`sequence_length` must be an integer. Received: sequence_length=2.5")
    assert _error(x_path, y_path, sequence_length=5, batch_size=None, format="pydataset") == (
        'An NpyDataset (format="pydataset") yields batches: `batch_size` must be an integer. '
        "Received: batch_size=None")
    short = save(str(tmp_path / "short.npy"), y[:100])
    assert _error(x_path, short, sequence_length=5, start_index=10) == (
        f"{short}: the targets of {x_path} have 100 rows, but its last window starts at row "
        "109 and needs targets[109]: targets[i] is the target of the window that starts at "
        "row i.")
    assert _error([x_path, x_path], y_path, sequence_length=5) == (
        f"`targets` must hold one series per series of `data`: `data` has 2 ({x_path}, ...), "
        f"`targets` 1 ({y_path}).")
    assert _error([x, x[:, :2]], None, sequence_length=5) == (
        "The series of `data` must agree in dtype and row shape: the first has dtype float32 "
        "and rows of shape (3,), another dtype float32 and rows of shape (2,).")
    assert _error(x_path, None, sequence_length=5, workers=2) == (
        "`workers`, `use_multiprocessing` and `max_queue_size` set the reading workers of an "
        'NpyDataset (format="pydataset"); tf.data reads in parallel itself. '
        'Received: format="tf"')
    assert _error(x_path, None, sequence_length=5, batch_size=None, drop_remainder=True) == (
        "`drop_remainder` drops a last, smaller batch; with batch_size=None windows come one "
        "by one. Received: batch_size=None, drop_remainder=True")
    assert _error([x, x[:10]], None, sequence_length=3, start_index=12) == (
        "data[1]: `start_index` must be lower than the length of the data. Received: "
        "start_index=12, for data of length 10")
    ds = npy_timeseries_dataset(x_path, None, sequence_length=5, format="pydataset")
    with pytest.raises(TypeError, match=r"statistics\(\) of the windows"):
        ds.statistics()


def test_example_in_the_docstring():
    import doctest

    import keras_npy.timeseries

    assert doctest.testmod(keras_npy.timeseries).failed == 0
