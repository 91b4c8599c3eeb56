"""The tf.data front end (TensorFlow backend; CI runs this file there)."""

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_npy
from keras_npy import NpyDataset, npy_dataset, npy_dataset_from_directory, tf_pipeline
from keras_npy.batches import source_of
from keras_npy.spec import BatchSpec
from helpers import save as _save


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    rows = _save(str(tmp_path / "rows.npy"), rng.normal(size=(57, 3)).astype("float32"))
    for c, name in enumerate(["cat", "dog", "eel"]):
        for j in range(7):
            _save(str(tmp_path / "cls" / name / f"{j}.npy"),
                  np.full((2 + (j * 5 + c) % 6, 2), 10 * c + j, "int16"))
    return {"rows": rows, "dir": str(tmp_path / "cls"), "tmp": tmp_path}


def _assert_same_batches(tf_dataset, pydataset, epochs=2):
    for _ in range(epochs):
        got = list(tf_dataset.as_numpy_iterator())
        assert len(got) == len(pydataset)
        for i, batch in enumerate(got):
            expected = pydataset[i]
            for g, e in zip(tf.nest.flatten(batch), tf.nest.flatten(expected)):
                assert g.dtype == e.dtype
                np.testing.assert_array_equal(g, e)
        pydataset.on_epoch_end()


CASES = {
    "rows shuffled": lambda d: ((d["rows"],), dict(y=np.arange(57), batch_size=8,
                                                  shuffle=True, seed=1)),
    "rows in order, labels in a file": lambda d: ((d["rows"],), dict(
        y=d["rows"], batch_size=8)),
    "rows split and sharded": lambda d: ((d["rows"],), dict(
        batch_size=6, shuffle=True, seed=2, validation_split=0.3, subset="training",
        num_shards=2, shard_index=1, drop_remainder=True)),
    "files padded, inferred": lambda d: ((d["dir"],), dict(
        y="inferred", batch_size=4, shuffle=True, seed=3, pad_to="longest",
        label_mode="categorical")),
    "files bucketed": lambda d: ((d["dir"],), dict(
        batch_size=3, shuffle=True, seed=4, pad_to="longest", pad_to_multiple_of=2,
        bucket_boundaries=[4])),
    "fixed length, pre": lambda d: ((d["dir"],), dict(
        batch_size=6, pad_to=4, padding="pre", truncating="pre", pad_value=-1,
        dtype="float32")),
    "multi-input": lambda d: (({"a": d["rows"], "b": d["rows"]},), dict(
        y=d["rows"], batch_size=10, shuffle=True, seed=5)),
    "rows, many small batches": lambda d: ((d["rows"],), dict(
        y=np.arange(57), batch_size=2, shuffle=True, seed=6, label_mode="categorical")),
    "multi-input, small batches": lambda d: (({"a": d["rows"], "b": d["rows"]},), dict(
        y=d["rows"], batch_size=3, shuffle=True, seed=7)),
    "fixed length, small batches": lambda d: ((d["dir"],), dict(
        y="inferred", batch_size=2, pad_to=5, shuffle=True, seed=8)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_batches_as_npy_dataset(data, case):
    args, kwargs = CASES[case](data)
    _assert_same_batches(npy_dataset(*args, **kwargs), NpyDataset(*args, **kwargs))
    pydataset = NpyDataset(*args, **kwargs)
    _assert_same_batches(pydataset.to_tf_dataset(), NpyDataset(*args, **kwargs))


@pytest.mark.parametrize("max_stack", [1, 3])
@pytest.mark.parametrize("case", ["rows shuffled", "rows, many small batches",
                                  "multi-input, small batches", "fixed length, small batches"])
def test_same_batches_one_or_a_few_per_read(data, case, max_stack, monkeypatch):
    # Small batches of one shape are read several per call and split again:
    # by one (no stacking), and by 3 with batches left over after the stacks.
    monkeypatch.setattr(tf_pipeline, "MAX_STACK", max_stack)
    args, kwargs = CASES[case](data)
    dataset = npy_dataset(*args, **kwargs)
    _assert_same_batches(dataset, NpyDataset(*args, **kwargs), epochs=3)


@pytest.mark.parametrize("num_samples,batch_size,drop", [(57, 2, False), (57, 2, True),
                                                          (56, 2, False), (5, 8, False)])
def test_units_cover_every_batch_once_in_order(num_samples, batch_size, drop, monkeypatch,
                                               tmp_path):
    monkeypatch.setattr(tf_pipeline, "MAX_STACK", 4)
    path = _save(str(tmp_path / "x.npy"), np.zeros((num_samples, 3), "float32"))
    source = source_of(path, None, BatchSpec(batch_size=batch_size, drop_remainder=drop))
    units = tf_pipeline._Units(source, tf.nest.flatten(tf_pipeline.element_spec(source)))
    covered = [b for u in range(units.count)
               for first, count in [units.batches(u)] for b in range(first, first + count)]
    assert covered == list(range(source.order.num_batches))
    sizes = [len(source.order.batch(0, b)) for b in range(source.order.num_batches)]
    stacked = [units.batches(u) for u in range(units.num_stacks)]
    assert all(count == units.stack and set(sizes[first:first + count]) == {batch_size}
               for first, count in stacked)


@pytest.mark.parametrize("row_bytes,stack", [(1024, 16), (4096, 1), (64, 64)])
def test_batches_under_a_mebibyte_are_read_four_mebibytes_a_call(row_bytes, stack, tmp_path):
    # 256 rows of 1 KiB: 16 batches a call; of 4 KiB (1 MiB batches): one;
    # of 64 bytes: MAX_STACK.
    path = _save(str(tmp_path / "x.npy"), np.zeros((256 * 80, row_bytes // 4), "float32"))
    source = source_of(path, None, BatchSpec(batch_size=256))
    units = tf_pipeline._Units(source, tf.nest.flatten(tf_pipeline.element_spec(source)))
    assert (units.stack, units.stacked) == (stack, stack > 1)


def test_element_spec_from_headers(data):
    ds = npy_dataset(data["dir"], y="inferred", pad_to="longest", batch_size=4)
    x_spec, y_spec = ds.element_spec
    assert x_spec == tf.TensorSpec((None, None, 2), tf.int16)
    assert y_spec == tf.TensorSpec((None,), tf.int32)
    fixed = npy_dataset(data["dir"], pad_to=8, dtype="float64")
    assert fixed.element_spec == tf.TensorSpec((None, 8, 2), tf.float64)
    multi = npy_dataset({"a": data["rows"]}, y=data["rows"])
    assert multi.element_spec == ({"a": tf.TensorSpec((None, 3), tf.float32)},
                                  tf.TensorSpec((None, 3), tf.float32))
    assert int(ds.cardinality()) == 6 and ds.class_names == ["cat", "dog", "eel"]
    for shuffle in (False, True):  # one batch per read, and several
        for kwargs in ({}, {"batch_size": 2}):
            rows = npy_dataset(data["rows"], shuffle=shuffle, **kwargs)
            assert int(rows.cardinality()) == len(NpyDataset(data["rows"], **kwargs))
    assert ds.file_paths == NpyDataset(data["dir"], pad_to="longest").file_paths


def test_fit_learns_a_linear_target(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2048, 4)).astype("float32")
    w = np.array([[1.5], [-2.0], [0.5], [3.0]], "float32")
    path = _save(str(tmp_path / "x.npy"), x)
    ds = npy_dataset(path, y=x @ w, batch_size=64, shuffle=True, seed=0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no word on fit's shuffle: the dataset shuffles
        model.fit(ds, epochs=5, verbose=0)
    np.testing.assert_allclose(model.get_weights()[0], w, atol=1e-3)


def test_fit_of_an_unshuffled_npy_dataset_warns_in_keras_npys_words(rows_file):
    from keras_npy import fit_adapter

    path, x = rows_file
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    with pytest.warns(UserWarning) as caught:
        model.fit(npy_dataset(path, y=x[:, 0], batch_size=16), verbose=0)
    assert [str(w.message) for w in caught if "shuffle" in str(w.message)] == [
        fit_adapter.shuffle_warning("a tf.data.Dataset of keras_npy")]
    with pytest.warns(UserWarning, match="provided as a tf.data.Dataset"):  # Keras' own
        model.fit(npy_dataset(path, y=x[:, 0], batch_size=16).prefetch(1), verbose=0)


def test_from_directory_mirrors_keras(data, capsys):
    train, val = npy_dataset_from_directory(data["dir"], validation_split=0.25, subset="both",
                                            seed=7, pad_to="longest", batch_size=4)
    assert capsys.readouterr().out == ("Found 21 files belonging to 3 classes.\n"
                                       "Using 16 files for training.\n"
                                       "Using 5 files for validation.\n")
    assert train.class_names == val.class_names == ["cat", "dog", "eel"]
    assert sorted(train.file_paths + val.file_paths) == sorted(
        NpyDataset(data["dir"], pad_to="longest").file_paths)
    seen = [int(v) for x, y in list(train) + list(val) for v in x[:, 0, 0].numpy()]
    assert sorted(seen) == sorted(10 * c + j for c in range(3) for j in range(7))
    unlabeled = npy_dataset_from_directory(data["dir"], labels=None, pad_to=3, verbose=False)
    assert unlabeled.element_spec == tf.TensorSpec((None, 3, 2), tf.int16)
    assert capsys.readouterr().out == ""


def test_from_directory_as_pydatasets(data):
    train, val = npy_dataset_from_directory(data["dir"], validation_split=0.25, subset="both",
                                            seed=7, pad_to=6, format="pydataset",
                                            verbose=False)
    assert isinstance(train, NpyDataset) and isinstance(val, NpyDataset)
    assert train.num_samples + val.num_samples == 21 and train.class_names == ["cat", "dog",
                                                                              "eel"]
    tf_train = npy_dataset_from_directory(data["dir"], validation_split=0.25,
                                          subset="training", seed=7, pad_to=6, verbose=False)
    _assert_same_batches(tf_train, train, epochs=1)
    assert train.index is val.index  # the headers were read once for both subsets
    threaded, _ = npy_dataset_from_directory(data["dir"], validation_split=0.25, seed=7,
                                             subset="both", pad_to=6, format="pydataset",
                                             verbose=False, workers=2)
    tf_train = npy_dataset_from_directory(data["dir"], validation_split=0.25,
                                          subset="training", seed=7, pad_to=6, verbose=False)
    _assert_same_batches(tf_train, threaded, epochs=2)
    with pytest.raises(ValueError, match=r"^`workers` sets the reading workers of an "
                       r"NpyDataset \(format=\"pydataset\"\); tf.data reads in parallel "
                       r"itself. Received: format=\"tf\"$"):
        npy_dataset_from_directory(data["dir"], pad_to=6, workers=2)


def test_an_npy_dataset_from_an_index_built_once(data):
    index = keras_npy.build_index(data["dir"], "inferred", label_mode="categorical")
    kwargs = dict(label_mode="categorical", validation_split=0.25, seed=3, shuffle=True,
                  pad_to=6, batch_size=4)
    for subset in ("training", "validation"):
        direct = NpyDataset(data["dir"], "inferred", subset=subset, **kwargs)
        again = NpyDataset.from_index(index, subset=subset, **kwargs)
        assert again.index is index and again.class_names == ["cat", "dog", "eel"]
        for epoch in range(2):
            for i in range(len(direct)):
                for a, b in zip(direct[i], again[i]):
                    np.testing.assert_array_equal(a, b)
            direct.on_epoch_end()
            again.on_epoch_end()
    with pytest.raises(ValueError, match='exactly 2 class_names'):  # 3 classes
        NpyDataset.from_index(index, label_mode="binary")
    with pytest.raises(TypeError, match=r"so \['class_names', 'layout'\] cannot be passed"):
        NpyDataset.from_index(index, layout="files", class_names=["a"])
    with pytest.raises(TypeError, match=r"^`index` must be a keras_npy.DatasetIndex"):
        NpyDataset.from_index(data["dir"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(labels="folders"), "`labels` argument should be a list/tuple of integer labels, of "
     "the same size as the number of .npy files in the target directory. If you wish to "
     "infer the labels from the subdirectory names in the target directory, pass "
     '`labels="inferred"`. If you wish to get a dataset that only contains samples (no '
     "labels), pass `labels=None`. Received: labels=folders"),
    (dict(labels=[0] * 21, class_names=["a"]), 'You can only pass `class_names` if '
     '`labels="inferred"`. Received: labels=[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, '
     "0, 0, 0, 0, 0], and class_names=['a']"),
    (dict(format="grain"), '`format` should be either "tf" or "pydataset". Received: '
     "format=grain"),
    (dict(validation_split=0.2, subset="both"), "If using `validation_split` and shuffling "
     "the data, you must provide a `seed` argument, to make sure that there is no overlap "
     "between the training and validation subset."),
    (dict(subset="all", validation_split=0.2, seed=1), '`subset` must be either "training", '
     '"validation" or "both", received: all'),
    (dict(label_mode="sparse"), '`label_mode` argument must be one of "int", "categorical", '
     '"binary", or None. Received: label_mode=\'sparse\''),
])
def test_from_directory_errors(data, kwargs, message):
    with pytest.raises(ValueError) as info:
        npy_dataset_from_directory(data["dir"], pad_to=4, **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("kwargs", [dict(batch_size=0), dict(pad_to="max"),
                                    dict(num_shards=2, shard_index=3), dict(layout="cols")])
def test_errors_match_npy_dataset(data, kwargs):
    with pytest.raises(ValueError) as tf_error:
        npy_dataset(data["rows"], **kwargs)
    with pytest.raises(ValueError) as py_error:
        NpyDataset(data["rows"], **kwargs)
    assert str(tf_error.value) == str(py_error.value)


MIRRORED = """
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, keras_npy
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
ds = keras_npy.npy_dataset({path!r}, y=np.arange(96), batch_size=16, shuffle=True, seed=0)
seen = []
for x, y in strategy.experimental_distribute_dataset(ds):
    for part in strategy.experimental_local_results(y):
        seen.extend(part.numpy().tolist())
assert sorted(seen) == list(range(96)), seen
with strategy.scope():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
history = model.fit(ds, epochs=2, verbose=0)
print(strategy.num_replicas_in_sync, len(history.history["loss"]))
"""


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    path = _save(str(tmp_path / "x.npy"), np.arange(192, dtype="float32").reshape(96, 2))
    done = subprocess.run([sys.executable, "-c", MIRRORED.format(path=path)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "2 2"


_CUT_SHORT_BETWEEN_BATCHES = """
import sys
import keras
import numpy as np
from keras_npy import NpyDataset, npy_dataset

path, how = sys.argv[1], sys.argv[2]
rows = len(np.load(path, mmap_mode="r"))


class CutShort(keras.callbacks.Callback):
    def on_predict_batch_end(self, batch, logs=None):
        if batch == 2:
            with open(path, "r+b") as f:
                f.truncate(128 + 1000 * 16 * 4)  # batches 0 and 1 of 1000 rows stay


try:
    if how == "predict":
        model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(1)])
        model.predict(NpyDataset(path, batch_size=1000), callbacks=[CutShort()], verbose=0)
    else:
        for k, batch in enumerate(npy_dataset(path, batch_size=1000)):
            if k == 2:
                CutShort().on_predict_batch_end(2)
    print("no error")
except Exception as e:  # TensorFlow wraps the error of a numpy_function in its own
    print(type(e).__name__, "|", str(e).replace(chr(10), " "))
# Known, and not this test's subject: TensorFlow can deadlock when the garbage
# collector destroys, at exit, an iterator whose parallel calls failed (about 1
# run in 3 of `predict` here). What the process found is printed: leave now.
import os
sys.stdout.flush()
os._exit(0)
"""


@pytest.mark.parametrize("how", ["predict", "npy_dataset"])
def test_a_file_cut_short_while_tensorflow_holds_its_batches(tmp_path, how):
    """TensorFlow keeps batches it prefetched; none of them may be a view of a
    memory map, or a file cut short between batches kills the process."""
    x = np.lib.format.open_memmap(str(tmp_path / "x.npy"), "w+", "float32", (1_600_000, 16))
    x[:] = 1  # 100 MB, more than TensorFlow reads ahead
    x.flush()
    del x
    path = str(tmp_path / "x.npy")
    done = subprocess.run([sys.executable, "-c", _CUT_SHORT_BETWEEN_BATCHES, path, how],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    assert f"{path}: expected 102400000 data bytes for shape (1600000, 16) of dtype " \
           "float32, found 64000; the file is truncated." in done.stdout, done.stdout


def test_pipelines_built_and_dropped_keep_no_descriptors(tmp_path):
    import gc

    paths = [_save(str(tmp_path / f"x{k}.npy"), np.full((64, 4), k, "float32"))
             for k in range(3)]
    fds = len(os.listdir("/proc/self/fd"))
    for k in range(100):  # cross-validation, a hyper-parameter search
        dataset = npy_dataset(paths[k % 3], batch_size=16, shuffle=bool(k % 2), seed=k)
        assert sum(int(b.shape[0]) for b in dataset) == 64
        del dataset
    gc.collect()
    # One table of open files per process, shared: the three files, each with
    # its descriptor and its map's.
    assert len(os.listdir("/proc/self/fd")) <= fds + 2 * 3


def test_the_front_ends_are_siblings_over_one_batch_source():
    """NpyDataset and npy_dataset never import each other (not even inside a
    function): both sit on `batches` and the shared pipeline."""
    import ast

    folder = os.path.dirname(keras_npy.__file__)
    for name, other in (("dataset", "tf_dataset"), ("tf_dataset", "dataset")):
        with open(os.path.join(folder, f"{name}.py")) as f:
            tree = ast.parse(f.read())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        assert f"keras_npy.{other}" not in imported and "keras_npy.from_directory" not in imported
        assert "keras_npy.batches" in imported
