"""NpyDataset end to end. CI runs this file on the TensorFlow, JAX and PyTorch backends."""

import os
import pickle
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_npy import NpyDataset
from helpers import save as _save


def _epoch(ds):
    return [ds[i] for i in range(len(ds))]


@pytest.fixture
def class_files(tmp_path):
    """Variable-length int16 samples in class folders, sorted like the walk."""
    samples = []
    for c, name in enumerate(["neg", "pos"]):
        for j in range(5):
            array = np.full((2 + j, 3), 10 * c + j, "int16")
            path = _save(str(tmp_path / "data" / name / f"{j}.npy"), array)
            samples.append((path, array, c))
    return str(tmp_path / "data"), samples


def test_rows_batches_equal_the_array_with_a_short_last_batch(rows_file):
    path, x = rows_file
    ds = NpyDataset(path, batch_size=10)
    assert len(ds) == 11 and ds.num_samples == 103 and ds.file_paths == [path]
    batches = _epoch(ds)
    assert all(isinstance(b, np.ndarray) for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), x)
    assert batches[-1].shape == (3, 4) and batches[0].dtype == np.float32
    dropped = NpyDataset(path, batch_size=10, drop_remainder=True)
    assert len(dropped) == 10 and dropped[9].shape == (10, 4)


@pytest.mark.parametrize("label_mode", ["int", "categorical", "binary"])
def test_unshuffled_rows_with_labels_in_memory(tmp_path, label_mode):
    # Unshuffled plain rows take a shortcut (batch i is rows first + i * batch
    # on): a validation subset starts past row 0, batches of 9 rows span two
    # files, batches of 3 are too short for one read, labels come converted.
    xs = [np.arange(k * 1000, k * 1000 + 4 * n, dtype="float32").reshape(n, 4)
          for k, n in enumerate([40, 23])]
    for k, part in enumerate(xs):
        _save(str(tmp_path / f"x_{k}.npy"), part)
    x, y = np.concatenate(xs), np.arange(63) % 2
    expected_y = {"int": y, "categorical": np.eye(2, dtype="float32")[y],
                  "binary": y.astype("float32").reshape(-1, 1)}[label_mode]
    for batch_size in (9, 3):
        for subset, rows in (("training", slice(0, 51)), ("validation", slice(51, 63))):
            ds = NpyDataset(str(tmp_path / "x_*.npy"), y=y, layout="rows", batch_size=batch_size,
                            label_mode=label_mode, validation_split=0.2, subset=subset)
            got_x, got_y = zip(*_epoch(ds))
            np.testing.assert_array_equal(np.concatenate(got_x), x[rows])
            np.testing.assert_array_equal(np.concatenate(got_y), expected_y[rows])
            assert got_y[0].dtype == expected_y.dtype
    ds = NpyDataset(str(tmp_path / "x_0.npy"), y=y[:40], batch_size=10, label_mode=label_mode)
    ds[0][1][:] = 7  # a batch's labels are its own, not a view of the dataset's
    np.testing.assert_array_equal(ds[0][1], expected_y[:10])


@pytest.mark.parametrize("shuffle", [False, True])
def test_tensors_made_from_batches_keep_their_values(tmp_path, shuffle):
    # Batch buffers are reused once nothing holds them; a backend tensor that
    # shares a batch's memory must hold it (TensorFlow, JAX and PyTorch).
    x = np.random.default_rng(0).normal(size=(4096, 64)).astype("float32")
    path = _save(str(tmp_path / "x.npy"), x)
    ds = NpyDataset(path, batch_size=1024, shuffle=shuffle, seed=0)
    expected = [np.array(b) for b in _epoch(NpyDataset(path, batch_size=1024, shuffle=shuffle,
                                                      seed=0))]
    tensors = [keras.ops.convert_to_tensor(ds[i]) for i in range(len(ds))]
    for _ in range(3):
        ds.on_epoch_end()
        _epoch(ds)
    for tensor, batch in zip(tensors, expected):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(tensor), batch)


def test_multi_file_rows_with_label_files(tmp_path):
    xs = [np.arange(k * 100, k * 100 + 2 * n).reshape(n, 2) for k, n in enumerate([3, 5, 4])]
    for k, part in enumerate(xs):
        _save(str(tmp_path / "x" / f"x_{k}.npy"), part)
        _save(str(tmp_path / "y" / f"y_{k}.npy"), part[:, 0] * 2)
    ds = NpyDataset(str(tmp_path / "x"), y=str(tmp_path / "y"), layout="rows", batch_size=5)
    x = np.concatenate(xs)
    got_x, got_y = zip(*_epoch(ds))
    np.testing.assert_array_equal(np.concatenate(got_x), x)
    np.testing.assert_array_equal(np.concatenate(got_y), x[:, 0] * 2)


def test_files_layout_padded_with_inferred_labels(class_files):
    root, samples = class_files
    ds = NpyDataset(root, y="inferred", batch_size=4, pad_to="longest", pad_value=-1)
    assert ds.class_names == ["neg", "pos"]
    assert ds.file_paths == [p for p, _, _ in samples]
    x, y = ds[1]
    assert x.shape == (4, 6, 3) and x.dtype == np.int16 and y.dtype == np.int32
    assert y.tolist() == [0, 1, 1, 1]
    expected = samples[4][1]
    np.testing.assert_array_equal(x[0, :6], expected)
    x, y = ds[2]
    assert x.shape == (2, 6, 3) and y.tolist() == [1, 1]
    np.testing.assert_array_equal(x[0, :5], samples[8][1])
    assert (x[0, 5:] == -1).all()


def test_fixed_length_pre_padding_and_truncation(class_files):
    root, samples = class_files
    ds = NpyDataset(root, batch_size=10, pad_to=4, padding="pre", truncating="pre",
                    pad_value=-1)
    x = ds[0]
    assert x.shape == (10, 4, 3)
    assert x[0, :, 0].tolist() == [-1, -1, 0, 0]  # 2 rows of 0, padded before
    assert x[9, :, 0].tolist() == [14, 14, 14, 14]  # 6 rows of 14, the first 2 cut


def test_varying_shapes_need_pad_to(class_files):
    root, samples = class_files
    with pytest.raises(ValueError) as info:
        NpyDataset(root)
    assert str(info.value) == (
        f"Samples of x differ in shape on axis 0: {samples[0][0]} has shape (2, 3), "
        f"{samples[4][0]} has shape (6, 3). Pass `pad_to` to pad them to one shape per batch: "
        "pad_to=\"longest\", an int, or a tuple. Received: pad_to=None")


def test_per_sample_target_files_and_dict_inputs(tmp_path):
    for k in range(4):
        _save(str(tmp_path / "a" / f"{k}.npy"), np.full(3, k, "float32"))
        _save(str(tmp_path / "b" / f"{k}.npy"), np.full((2, 2), -k, "int8"))
        _save(str(tmp_path / "t" / f"{k}.npy"), np.full(k + 1, k, "int64"))
    ds = NpyDataset({"a": str(tmp_path / "a"), "b": str(tmp_path / "b")},
                    y=str(tmp_path / "t"), batch_size=3, pad_to="longest", pad_targets=True)
    x, y = ds[0]
    assert sorted(x) == ["a", "b"]
    assert x["a"][:, 0].tolist() == [0, 1, 2] and x["b"][:, 0, 0].tolist() == [0, -1, -2]
    assert y.tolist() == [[0, 0, 0], [1, 1, 0], [2, 2, 2]]


@pytest.fixture
def short_clips(tmp_path):
    """Six samples of (6 + k, 2) float32 in two class folders; returns the root."""
    for k in range(6):
        _save(str(tmp_path / "clips" / ("a" if k < 3 else "b") / f"{k}.npy"),
              np.full((6 + k, 2), k, "float32"))
    return tmp_path / "clips"


@pytest.mark.parametrize("kind", ["labels (n,)", "labels (n, k)", "row-aligned file (n, 2)",
                                  "row-aligned file (n,)", "per-sample files (2,)",
                                  "per-sample files, scalars"])
def test_targets_keep_their_own_shape_when_samples_are_padded(short_clips, tmp_path, kind):
    ids = np.arange(6)
    expected = {"labels (n,)": ids, "labels (n, k)": np.stack([ids, -ids], 1),
                "row-aligned file (n, 2)": np.stack([ids, ids * 10], 1).astype("int16"),
                "row-aligned file (n,)": ids.astype("float64"),
                "per-sample files (2,)": np.stack([ids, ids + 1], 1).astype("int32"),
                "per-sample files, scalars": ids.astype("float32")}[kind]
    if kind.startswith("labels"):
        y = expected
    elif kind.startswith("row-aligned"):
        y = _save(str(tmp_path / "y.npy"), expected)
    else:
        for k in range(6):
            _save(str(tmp_path / "t" / ("a" if k < 3 else "b") / f"{k}.npy"), expected[k])
        y = str(tmp_path / "t")
    for pad_to in (4, "longest", (9, None)):
        ds = NpyDataset(short_clips, y=y, batch_size=4, pad_to=pad_to)
        x, targets = ds[0]
        assert x.shape[1] == {4: 4, "longest": 9, (9, None): 9}[pad_to]
        assert targets.dtype == expected.dtype
        np.testing.assert_array_equal(targets, expected[:4])  # neither padded nor cut
        np.testing.assert_array_equal(ds[1][1], expected[4:])


def test_targets_that_vary_in_shape_are_padded_only_when_asked(short_clips, tmp_path):
    for k in range(6):
        _save(str(tmp_path / "t" / ("a" if k < 3 else "b") / f"{k}.npy"),
              np.full(6 + k, k, "int8"))  # a label per time step
    with pytest.raises(ValueError) as error:
        NpyDataset(short_clips, y=str(tmp_path / "t"), batch_size=4, pad_to=8)
    assert str(error.value) == (
        f"Samples of y differ in shape on axis 0: {tmp_path / 't' / 'a' / '0.npy'} has shape "
        f"(6,), {tmp_path / 't' / 'b' / '5.npy'} has shape (11,). Targets keep their own shape "
        "unless `pad_targets=True` pads them as x is padded (`pad_to`, `padding`, "
        "`truncating`, `pad_value`). Received: pad_targets=False")
    ds = NpyDataset(short_clips, y=str(tmp_path / "t"), batch_size=4, pad_to=8,
                    padding="pre", truncating="pre", pad_value=-1, pad_targets=True)
    x, y = ds[0]
    assert x.shape == (4, 8, 2) and y.shape == (4, 8) and y.dtype == np.int8
    assert y.tolist() == [[-1, -1, 0, 0, 0, 0, 0, 0], [-1, 1, 1, 1, 1, 1, 1, 1],
                          [2] * 8, [3] * 8]  # as x: padded before, cut at the start


def test_pad_targets_needs_targets_in_files(short_clips):
    for y, found in ((np.arange(6), "these labels are held in memory, one per sample."),
                     ("inferred", "these labels are held in memory, one per sample."),
                     (None, "there are no targets.")):
        with pytest.raises(ValueError) as error:
            NpyDataset(short_clips, y=y, pad_to=4, pad_targets=True)
        assert str(error.value) == ("`pad_targets=True` pads targets read from .npy files as x "
                                    f"is padded; {found} Received: pad_targets=True")
    with pytest.raises(TypeError, match=r"^`pad_targets` must be True or False. "
                       r"Received: pad_targets='yes'$"):
        NpyDataset(short_clips, pad_targets="yes")


def test_global_shuffle_seeded_exactly_once_and_new_each_epoch(tmp_path):
    n = 1000
    path = _save(str(tmp_path / "x.npy"), np.arange(n, dtype="int64").reshape(n, 1))
    ds = NpyDataset(path, y=np.arange(n), batch_size=100, shuffle=True, seed=5)
    first_batch = ds[0][0][:, 0]
    assert first_batch.max() - first_batch.min() > 800  # spans the whole file
    epoch0 = np.concatenate([x[:, 0] for x, _ in _epoch(ds)])
    assert sorted(epoch0.tolist()) == list(range(n))
    for x, y in _epoch(ds):
        np.testing.assert_array_equal(x[:, 0], y)  # labels follow their samples
    again = NpyDataset(path, batch_size=100, shuffle=True, seed=5)
    np.testing.assert_array_equal(np.concatenate(_epoch(again))[:, 0], epoch0)
    ds.on_epoch_end()
    epoch1 = np.concatenate([x[:, 0] for x, _ in _epoch(ds)])
    assert sorted(epoch1.tolist()) == list(range(n)) and not np.array_equal(epoch0, epoch1)


def test_splits_and_shards_partition(rows_file):
    path, x = rows_file
    kwargs = dict(batch_size=8, shuffle=True, seed=1, validation_split=0.3)
    seen = []
    for subset in ["training", "validation"]:
        for shard in range(2):
            ds = NpyDataset(path, subset=subset, num_shards=2, shard_index=shard, **kwargs)
            assert len(ds) == (9 if subset == "training" else 4)
            seen.append(np.concatenate(_epoch(ds)))
    # int(0.3 * 103) = 30 held out; the training set's last global batch, of
    # 1 sample, cannot be cut in two: dropped.
    assert [len(s) for s in seen] == [36, 36, 15, 15]
    whole = NpyDataset(path, subset="training", **kwargs)
    dropped = _epoch(whole)[-1]
    allrows = np.concatenate([*seen, dropped])
    assert sorted(map(tuple, allrows.tolist())) == sorted(map(tuple, x.tolist()))


def test_label_modes(class_files):
    root, _ = class_files
    kwargs = dict(y="inferred", batch_size=10, pad_to="longest")
    _, y = NpyDataset(root, label_mode="categorical", **kwargs)[0]
    assert y.dtype == np.float32 and y.tolist() == [[1, 0]] * 5 + [[0, 1]] * 5
    _, y = NpyDataset(root, label_mode="binary", **kwargs)[0]
    assert y.dtype == np.float32 and y.shape == (10, 1) and y[:, 0].tolist() == [0] * 5 + [1] * 5
    x = NpyDataset(root, label_mode=None, **kwargs)[0]
    assert isinstance(x, np.ndarray)
    _, y = NpyDataset(root, y=[0, 2, 1, 1, 0, 0, 0, 0, 0, 2], label_mode="categorical",
                      batch_size=10, pad_to="longest")[0]
    assert y.shape == (10, 3) and y[1].tolist() == [0, 0, 1]


def test_dtype_cast_and_batch_index_errors(rows_file):
    path, x = rows_file
    ds = NpyDataset(path, batch_size=50, dtype="float16")
    assert ds[0].dtype == np.float16
    np.testing.assert_array_equal(ds[-1], x[100:].astype("float16"))
    with pytest.raises(IndexError) as info:
        ds[3]
    assert str(info.value) == "Batch index 3 is out of range for a dataset of 3 batches."
    with pytest.raises(TypeError) as info:
        ds[1.0]
    assert str(info.value) == "Batch index must be an integer. Received: 1.0"


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(y=np.array([0, 1, -1] + [0] * 100), label_mode="categorical"), ValueError,
     'label_mode="categorical" one-hot encodes class ids from 0 to 1; `y` holds -1 for '
     "sample 2."),
    (dict(dtype="bogus"), TypeError,
     "`dtype` must be None or a numeric dtype. Received: dtype='bogus'"),
    (dict(dtype="U3"), TypeError, "`dtype` must be None or a numeric dtype (bool, integer, "
                                  "float or complex). Received: dtype='U3'"),
    (dict(pad_to=(4,), pad_value=1e40), ValueError,
     "`pad_value` must be representable in the data's dtype float32. Received: "
     "pad_value=1e+40"),
])
def test_bad_values_are_refused_when_the_dataset_is_built(rows_file, kwargs, error, message):
    path, _ = rows_file
    with pytest.raises(error) as info:
        NpyDataset(path, **kwargs)
    assert str(info.value) == message


def test_bad_arguments_name_the_argument(rows_file):
    path, _ = rows_file
    with pytest.raises(ValueError) as info:
        NpyDataset(path, batch_size=-1)
    assert str(info.value) == "`batch_size` must be a positive integer. Received: batch_size=-1"
    with pytest.raises(ValueError) as info:
        NpyDataset(path, workers=-2)
    assert str(info.value) == "`workers` must be a non-negative integer. Received: workers=-2"
    with pytest.raises(ValueError) as info:
        NpyDataset(path, y=path, label_mode="categorical")
    assert str(info.value) == (
        "`label_mode='categorical'` converts class labels held in memory; labels read from .npy "
        'files come as stored. Use label_mode="int", or pass `y` as an array.')


def test_pickles_small_for_a_large_rows_file(tmp_path):
    path = str(tmp_path / "big.npy")
    np.lib.format.open_memmap(path, "w+", "float32", (4_000_000, 64)).flush()  # 1 GiB, sparse
    ds = NpyDataset(path, batch_size=256, shuffle=True, seed=0, validation_split=0.1,
                    subset="training")
    ds[0]
    data = pickle.dumps(ds)
    assert len(data) < 8192
    copy = pickle.loads(data)
    np.testing.assert_array_equal(copy[5], ds[5])


def test_import_and_read_without_tensorflow(rows_file):
    path, x = rows_file
    code = ("import sys, numpy as np, keras_npy\n"
            f"ds = keras_npy.NpyDataset({path!r}, batch_size=7, shuffle=True, seed=0)\n"
            "b = ds[0]\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'), b.shape)\n")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] (7, 4)"


def _linear_model(weights):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
        1, use_bias=False, kernel_initializer=keras.initializers.Constant(weights))])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    return model


@pytest.mark.parametrize("workers, use_multiprocessing", [(1, False), (2, False), (2, True)])
def test_fit_evaluate_predict_with_workers(rows_file, workers, use_multiprocessing):
    path, x = rows_file
    true_w = np.array([[1.0], [-2.0], [0.5], [3.0]], "float32")
    y = (x @ true_w)[:, 0]
    start = np.full((4, 1), 0.1, "float32")
    kwargs = dict(y=y, batch_size=16, shuffle=True, seed=11)
    ds = NpyDataset(path, workers=workers, use_multiprocessing=use_multiprocessing, **kwargs)
    model = _linear_model(start)
    model.fit(ds, epochs=3, shuffle=False, verbose=0)
    assert ds.epoch == 3  # fit's epochs are the dataset's epochs 0, 1 and 2
    reference_ds = NpyDataset(path, **kwargs)
    epochs = []
    for _ in range(3):
        epochs.append(_epoch(reference_ds))
        reference_ds.on_epoch_end()
    # and by hand: plain SGD on the mean squared error, batch after batch.
    w = start.astype("float64")
    for epoch in range(3):
        for bx, by in epochs[epoch]:
            w -= 0.05 * 2 * bx.T @ (bx @ w - by[:, None]) / len(bx)
    np.testing.assert_allclose(model.get_weights()[0], w, rtol=1e-4)
    ordered = NpyDataset(path, y=y, batch_size=16, workers=workers,
                         use_multiprocessing=use_multiprocessing)
    predictions = model.predict(NpyDataset(path, batch_size=16, workers=workers,
                                           use_multiprocessing=use_multiprocessing), verbose=0)
    np.testing.assert_allclose(predictions, x @ model.get_weights()[0], rtol=1e-5, atol=1e-6)
    loss = model.evaluate(ordered, verbose=0)
    np.testing.assert_allclose(loss, np.mean((predictions[:, 0] - y) ** 2), rtol=1e-4)


@pytest.mark.parametrize("use_multiprocessing", [False, True])
def test_read_ahead_never_serves_another_epochs_batches(rows_file, use_multiprocessing):
    path, _ = rows_file
    kwargs = dict(batch_size=10, shuffle=True, seed=4)
    ds = NpyDataset(path, workers=2, use_multiprocessing=use_multiprocessing,
                    max_queue_size=4, **kwargs)
    assert (ds.workers, ds.use_multiprocessing) == (1, False)  # Keras' enqueuer stays off
    assert (ds._batch_workers.workers, ds._batch_workers.use_multiprocessing) == (
        2, use_multiprocessing)
    plain = NpyDataset(path, **kwargs)
    np.testing.assert_array_equal(ds[0], plain[0])  # a peek: batches 1-4 are read ahead
    ds.on_epoch_end()
    plain.on_epoch_end()
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds[i], plain[i])
    ds._batch_workers.close()


def _rss_anon_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])


def test_streaming_a_shuffled_gigabyte_keeps_anonymous_memory_flat(tmp_path):
    path = str(tmp_path / "big.npy")
    rows = 2**30 // (4096 * 4)
    mapped = np.lib.format.open_memmap(path, "w+", "float32", (rows, 4096))
    mapped[::1000] = 1.0  # some real pages; the rest are holes that read as zeros
    del mapped
    ds = NpyDataset(path, batch_size=256, shuffle=True, seed=0)
    before = _rss_anon_kib()
    total = 0.0
    for i in range(len(ds)):
        total += float(ds[i][:, 0].sum())
    grown_mib = (_rss_anon_kib() - before) / 1024
    assert total == len(range(0, rows, 1000))
    assert grown_mib < 150, f"RssAnon grew by {grown_mib:.0f} MiB"


@pytest.mark.parametrize("axis", [-1, None])
def test_statistics_equal_numpy_on_unpadded_data(class_files, axis):
    root, samples = class_files
    ds = NpyDataset(root, pad_to="longest", batch_size=4)
    mean, variance = ds.statistics(axis=axis, verbose=False)
    data = np.concatenate([a for _, a, _ in samples]).astype("float64")
    reduce = 0 if axis == -1 else None
    np.testing.assert_allclose(mean, data.mean(axis=reduce), rtol=1e-12)
    np.testing.assert_allclose(variance, data.var(axis=reduce), rtol=1e-12)
    padded = np.concatenate([ds[i].reshape(-1, 3) for i in range(len(ds))])
    assert not np.allclose(mean, padded.mean(axis=reduce))  # padding is not counted


def test_statistics_of_rows_by_chunks_and_bad_axes(rows_file, class_files, monkeypatch):
    from keras_npy import statistics
    monkeypatch.setattr(statistics, "_CHUNK_BYTES", 64)  # many chunks to merge
    path, x = rows_file
    ds = NpyDataset(path, validation_split=0.2, subset="training")
    mean, variance = ds.statistics(verbose=False)
    np.testing.assert_allclose(mean, x[:83].astype("float64").mean(0), rtol=1e-10)
    np.testing.assert_allclose(variance, x[:83].astype("float64").var(0), rtol=1e-10)
    root, _ = class_files
    padded = NpyDataset(root, pad_to="longest")
    with pytest.raises(ValueError) as info:
        padded.statistics(axis=1)
    assert str(info.value) == ("`axis` must name axes of fixed size, but the samples of x vary "
                               "in size on axis 1. Received: axis=1")
    with pytest.raises(ValueError) as info:
        padded.statistics(axis=3)
    assert str(info.value) == ("`axis` must name axes of a batch of x, which has 3 (the batch "
                               "axis 0 excluded). Received: axis=3")


def test_fit_on_variable_length_files_padded_to_a_fixed_length(class_files):
    root, samples = class_files
    ds = NpyDataset(root, y="inferred", label_mode="binary", pad_to=8, batch_size=3,
                    shuffle=True, seed=0, dtype="float32")
    model = keras.Sequential([keras.Input((8, 3)), keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy")
    history = model.fit(ds, epochs=2, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2
    assert model.predict(ds, verbose=0).shape == (10, 1)


def test_buckets_batch_similar_lengths_with_little_padding(tmp_path):
    lengths = [3, 17, 4, 18, 5, 16, 2, 19]
    for k, n in enumerate(lengths):
        _save(str(tmp_path / "seq" / f"{k}.npy"), np.full(n, k, "int32"))
    ds = NpyDataset(str(tmp_path / "seq"), batch_size=2, pad_to="longest",
                    pad_to_multiple_of=4, bucket_boundaries=[10], shuffle=True, seed=3)
    for epoch in range(3):
        batches = _epoch(ds)
        ids = np.concatenate([b[:, 0] for b in batches])
        assert sorted(ids.tolist()) == list(range(8))  # every sample once
        for b in batches:
            longest = max(lengths[int(v)] for v in b[:, 0])
            assert b.shape[1] == -(-longest // 4) * 4  # the longest, rounded up to 4
            assert len({lengths[int(v)] >= 10 for v in b[:, 0]}) == 1  # one bucket
        ds.on_epoch_end()


@pytest.fixture
def numbered_rows(tmp_path):
    """Two rows files whose rows hold their own global index."""
    for k, (start, stop) in enumerate([(0, 300), (300, 513)]):
        _save(str(tmp_path / "numbered" / f"x_{k}.npy"),
              np.repeat(np.arange(start, stop, dtype="int64")[:, None], 3, axis=1))
    return str(tmp_path / "numbered")


@pytest.mark.parametrize("workers, use_multiprocessing", [(1, False), (2, False), (2, True)])
def test_block_shuffle_is_exactly_once_with_splits_shards_and_workers(
        numbered_rows, workers, use_multiprocessing):
    kwargs = dict(layout="rows", batch_size=20, shuffle="block", seed=7, shuffle_block_size=16,
                  shuffle_window=4, validation_split=0.25, subset="training")
    whole = NpyDataset(numbered_rows, **kwargs)  # the global order, one process
    shards = [NpyDataset(numbered_rows, num_shards=2, shard_index=k, workers=workers,
                         use_multiprocessing=use_multiprocessing, **kwargs) for k in range(2)]
    plain = [NpyDataset(numbered_rows, num_shards=2, shard_index=k, **kwargs) for k in range(2)]
    epochs = []
    for _ in range(2):
        batches = [_epoch(ds) for ds in shards]
        for k in range(2):
            for got, expected in zip(batches[k], _epoch(plain[k])):
                np.testing.assert_array_equal(got, expected)
        for i, global_batch in enumerate(_epoch(whole)):  # each step: the parts make it
            cut = len(global_batch) - len(global_batch) % 2
            np.testing.assert_array_equal(np.concatenate([b[i] for b in batches]),
                                          global_batch[:cut])
        ids = [np.concatenate(b)[:, 0] for b in batches]
        assert len(ids[0]) == len(ids[1]) == shards[0].num_samples == 192  # of 385
        assert not set(ids[0].tolist()) & set(ids[1].tolist())
        epochs.append(np.concatenate(ids))
        for ds in [whole, *shards, *plain]:
            ds.on_epoch_end()
    assert not np.array_equal(epochs[0], epochs[1])
    validation = NpyDataset(numbered_rows, **{**kwargs, "subset": "validation"})
    val_ids = set(np.concatenate(_epoch(validation))[:, 0].tolist())
    for seen in epochs:  # 385 training rows: the one left over by the last cut is dropped
        assert len(set(seen.tolist()) | val_ids) == 512 and not set(seen.tolist()) & val_ids


def test_block_shuffle_of_per_sample_files(class_files):
    root, samples = class_files
    ds = NpyDataset(root, y="inferred", pad_to="longest", batch_size=3, shuffle="block",
                    seed=2, shuffle_block_size=2, shuffle_window=2)
    for _ in range(2):
        got = sorted((int(x[0, 0]), int(y)) for bx, by in _epoch(ds) for x, y in zip(bx, by))
        assert got == sorted((int(a[0, 0]), c) for _, a, c in samples)
        ds.on_epoch_end()


def _wait_for_child(pid: int, seconds: float) -> int:
    """The child's exit status, or kills it and fails when it hangs."""
    import signal
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child hung for {seconds} s")


@pytest.mark.parametrize("use_multiprocessing", [False, True])
def test_a_forked_child_reads_batches_with_workers_of_its_own(rows_file, use_multiprocessing):
    path, x = rows_file
    ds = NpyDataset(path, batch_size=10, workers=2, use_multiprocessing=use_multiprocessing,
                    max_queue_size=2)
    np.testing.assert_array_equal(ds[0], x[:10])  # the parent's workers are running
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # batch 7 was not read ahead: the child's own workers read it
        ok = False
        try:
            ok = np.array_equal(ds[7], x[70:80]) and np.array_equal(ds[8], x[80:90])
            if use_multiprocessing:  # then it ends without closing them
                os.write(write, " ".join(map(str, ds._batch_workers._executor._processes)).encode())
        finally:
            os._exit(0 if ok else 1)
    os.close(write)
    assert _wait_for_child(pid, 120) == 0
    np.testing.assert_array_equal(ds[1], x[10:20])  # the parent's go on
    ds._batch_workers.close()
    orphans = [int(p) for p in os.read(read, 4096).split()]
    os.close(read)
    deadline = time.monotonic() + 30  # the child's workers see it gone, and end
    while orphans and time.monotonic() < deadline:
        orphans = [p for p in orphans if _alive(p)]
        time.sleep(0.1)
    assert orphans == []


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of a pool that ended is not a leak
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_worker_fails_its_batch_and_the_next_starts_new_workers(rows_file):
    from concurrent.futures.process import BrokenProcessPool

    path, x = rows_file
    ds = NpyDataset(path, batch_size=10, workers=2, use_multiprocessing=True, max_queue_size=1)
    np.testing.assert_array_equal(ds[0], x[:10])
    for process in list(ds._batch_workers._executor._processes.values()):
        process.kill()
    with pytest.raises(BrokenProcessPool) as info:
        for i in range(2, len(ds)):  # batch 1 may have been read before the kill
            ds[i]
    assert "The next batch asked for starts new worker processes." in str(info.value)
    ds.on_epoch_end()
    for i in range(len(ds)):  # a new pool serves the next epoch
        np.testing.assert_array_equal(ds[i], x[i * 10:(i + 1) * 10])
    ds._batch_workers.close()


def test_a_file_cut_short_under_worker_threads_names_it_and_leaks_nothing(tmp_path):
    import gc
    import threading
    import time

    from keras_npy.read import handles

    handles.TABLE.clear()
    threads, fds = set(threading.enumerate()), len(os.listdir("/proc/self/fd"))
    x = np.arange(4096 * 16, dtype="float32").reshape(4096, 16)
    path = _save(str(tmp_path / "x.npy"), x)
    ds = NpyDataset(path, batch_size=64, workers=2, max_queue_size=8)
    np.testing.assert_array_equal(ds[0], x[:64])
    with open(path, "r+b") as f:
        f.truncate(128 + 2048 * 64)  # half the rows are gone, some being read
    errors = 0
    for i in range(1, len(ds)):
        try:
            np.testing.assert_array_equal(ds[i], x[i * 64:(i + 1) * 64])
        except ValueError as e:
            assert str(e).startswith(f"{path}: ")
            errors += 1
    assert errors >= len(ds) // 2 - 1
    ds._batch_workers.close()
    del ds
    gc.collect()
    deadline = time.monotonic() + 10
    def left():  # the process' read-ahead and copy helpers are one per process, not ours
        return {t for t in set(threading.enumerate()) - threads
                if t.name not in ("keras_npy-read-ahead", "keras_npy-copy")}

    while left() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left()
    handles.TABLE.clear()  # the process' table of open files, bounded, shared
    assert len(os.listdir("/proc/self/fd")) <= fds
