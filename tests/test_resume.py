"""Exact resume: a dataset's state round-trips through JSON and is refused on
other data or arguments, and a `fit` killed with SIGKILL and started again
with `keras_npy.BackupAndRestore` trains on every sample of every epoch once,
in the order of an uninterrupted run, to the same weights (this file runs
under TensorFlow, JAX and PyTorch)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import save

import keras_npy
from keras_npy import NpyDataset

SCRIPT = os.path.join(os.path.dirname(__file__), "resume_run.py")
N, BATCH, EPOCHS = 40, 8, 3  # 5 batches an epoch
BATCHES = N // BATCH

try:
    import tensorflow  # noqa: F401
    HAS_TF = True
except ImportError:
    HAS_TF = False
needs_tf = pytest.mark.skipif(not HAS_TF, reason="the tf.data front end needs TensorFlow")
FRONTS = ["pydataset", pytest.param("tf", marks=needs_tf)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume_data")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 4)).astype("float32")
    x[:, 0] = np.arange(N)  # the id of each sample, which the model records
    save(str(folder / "x.npy"), x)
    save(str(folder / "y.npy"), rng.normal(size=N).astype("float32"))
    save(str(folder / "val.npy"), rng.normal(size=(8, 4)).astype("float32"))
    return str(folder)


def _run(data, folder, kill=None, front="pydataset", seed=7, save_freq=1, workers=1):
    """Runs tests/resume_run.py once; returns its return code and output."""
    config = dict(data=data, backup=str(folder / "backup"), record=str(folder / "record"),
                  weights=str(folder / "weights.npy"), front=front, seed=seed,
                  save_freq=save_freq, workers=workers, epochs=EPOCHS, kill=kill)
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    done = subprocess.run([sys.executable, SCRIPT, str(path)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "KERAS_BACKEND": keras.backend.backend(),
                                            "TF_CPP_MIN_LOG_LEVEL": "2"})
    return done.returncode, done.stdout + done.stderr


def _resumed(data, folder, kills, **kwargs):
    """Runs the script killed at each of `kills` in turn, then to the end;
    returns the batches of ids the model trained on, the final weights, the
    history of the last run and the last run's output."""
    folder.mkdir(exist_ok=True)
    for kill in kills:
        code, output = _run(data, folder, kill=kill, **kwargs)
        assert code == -9, f"the run was to be killed at {kill}:\n{output}"
    code, output = _run(data, folder, **kwargs)
    assert code == 0, output
    batches = [json.loads(line) for line in (folder / "record").read_text().splitlines()]
    history = json.loads((folder / "weights.npy.json").read_text())
    return batches, np.load(folder / "weights.npy"), history, output


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """The batches and weights of the run with seed 7 that nothing stops."""
    batches, weights, history, _ = _resumed(data, tmp_path_factory.mktemp("whole"), [])
    assert history["epochs"] == list(range(EPOCHS))
    return batches, weights


def _check_epochs(batches):
    assert len(batches) == EPOCHS * BATCHES
    for e in range(EPOCHS):
        ids = sorted(i for b in batches[e * BATCHES:(e + 1) * BATCHES] for i in b)
        assert ids == list(range(N)), f"epoch {e} did not train on each sample once"


def test_the_uninterrupted_run_trains_on_every_sample_once_an_epoch(uninterrupted):
    batches, _ = uninterrupted
    _check_epochs(batches)
    assert batches[:BATCHES] != batches[BATCHES:2 * BATCHES]  # shuffled every epoch


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("kill", [(0, 0), (1, 2), (1, BATCHES - 1)],
                         ids=["first batch", "mid-epoch", "last batch"])
def test_a_killed_fit_resumes_at_the_next_batch(data, tmp_path, uninterrupted, front, kill):
    if front == "tf" and kill == (0, 0):
        pytest.skip("the first batch is covered by the pydataset front end")
    batches, weights, history, output = _resumed(data, tmp_path / "run", [kill], front=front)
    assert batches == uninterrupted[0]  # each sample once an epoch, in the same order
    np.testing.assert_allclose(weights, uninterrupted[1], rtol=1e-5, atol=1e-6)
    epoch, batch = kill
    if batch == BATCHES - 1:  # the epoch was done: the run goes on with the next
        assert history["epochs"] == list(range(epoch + 1, EPOCHS))
    else:
        assert history["epochs"] == list(range(epoch, EPOCHS))
        assert (f"Epoch {epoch + 1}/{EPOCHS} resumes at batch {batch + 2} of {BATCHES}"
                in output)
    assert "ran out of data" not in output


def test_two_interruptions_in_one_epoch(data, tmp_path, uninterrupted):
    # Killed after batch 1 of epoch 1, then after the resumed epoch's batch 1
    # (the epoch's batch 3): Keras' own callback would restart at epoch 0 here.
    batches, weights, history, _ = _resumed(data, tmp_path / "run", [(1, 1), (1, 1)])
    assert batches == uninterrupted[0]
    np.testing.assert_allclose(weights, uninterrupted[1], rtol=1e-5, atol=1e-6)
    assert history["epochs"] == [1, 2]


def test_batches_after_the_last_backup_are_trained_again(data, tmp_path, uninterrupted):
    # Backups after batches 1 and 3 of each epoch; killed after batch 2 of
    # epoch 1, whose weights were not saved: the run goes on from batch 2.
    folder = tmp_path / "run"
    batches, weights, _, _ = _resumed(data, folder, [(1, 2)], save_freq=2)
    lost = BATCHES + 2  # the record of the killed run's batch 2, whose weights were lost
    assert batches[:lost] + batches[lost + 1:] == uninterrupted[0]
    assert batches[lost] == uninterrupted[0][lost]
    np.testing.assert_allclose(weights, uninterrupted[1], rtol=1e-5, atol=1e-6)


def test_a_seed_drawn_at_random_is_the_backups(data, tmp_path):
    batches, _, _, _ = _resumed(data, tmp_path / "run", [(1, 2)], seed=None)
    _check_epochs(batches)


def test_read_ahead_workers_neither_lose_nor_count_batches(data, tmp_path, uninterrupted):
    batches, weights, _, _ = _resumed(data, tmp_path / "run", [(1, 2)], workers=2)
    assert batches == uninterrupted[0]
    np.testing.assert_allclose(weights, uninterrupted[1], rtol=1e-5, atol=1e-6)


# -- get_state / set_state, in this process ------------------------------------


def _dataset(front, path, **kwargs):
    kwargs = dict(dict(batch_size=4, shuffle=True, seed=3), **kwargs)
    if front == "tf":
        return keras_npy.npy_dataset(path, **kwargs)
    return NpyDataset(path, **kwargs)


@pytest.mark.parametrize("front", FRONTS)
def test_state_round_trips_through_json(rows_file, front):
    path, x = rows_file
    ds = _dataset(front, path)
    state = ds.get_state()
    assert (state["seed"], state["epoch"], state["batch"]) == (3, 0, 0)
    again = json.loads(json.dumps(state))
    assert again == state
    other = _dataset(front, path)
    other.set_state(again)
    assert other.get_state() == state


def test_a_restored_dataset_continues_the_order(rows_file):
    path, _ = rows_file
    ds = NpyDataset(path, batch_size=10, shuffle=True, seed=None)
    ds.on_epoch_end()
    ds.on_epoch_end()
    state = ds.get_state()
    other = NpyDataset(path, batch_size=10, shuffle=True, seed=None)  # another seed
    other.set_state(json.loads(json.dumps(state)))
    assert other.epoch == 2 and other.seed == ds.seed
    for i in range(len(ds)):
        np.testing.assert_array_equal(other[i], ds[i])


def test_fit_reads_only_the_batches_left(rows_file, monkeypatch):
    from keras_npy.batches import BatchSource

    path, _ = rows_file
    ds = NpyDataset(path, y=np.zeros(103, "float32"), batch_size=10, shuffle=True, seed=1)
    state = dict(ds.get_state(), epoch=2, batch=7)
    ds.set_state(state)
    read = []
    original = BatchSource.read

    def counted(self, epoch, first, count, advise=True):
        read.append((epoch, first, count))
        return original(self, epoch, first, count, advise)

    monkeypatch.setattr(BatchSource, "read", counted)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    history = model.fit(ds, epochs=1, verbose=0)
    assert sorted({(e, f + k) for e, f, c in read for k in range(c)}) == [
        (2, 7), (2, 8), (2, 9), (2, 10)]
    assert len(history.history["loss"]) == 1
    assert ds.get_state()["epoch"] == 3 and ds.get_state()["batch"] == 0


@pytest.mark.parametrize("front", FRONTS)
def test_restoring_onto_changed_data_says_what_differs(tmp_path, front):
    folder = tmp_path / "data"
    rng = np.random.default_rng(0)
    for i in range(6):
        save(str(folder / f"{i}.npy"), rng.normal(size=(3,)).astype("float32"))
    kwargs = dict(batch_size=2, shuffle=True, seed=1)
    state = _dataset(front, str(folder), **kwargs).get_state()

    save(str(folder / "6.npy"), rng.normal(size=(3,)).astype("float32"))  # a file added
    with pytest.raises(ValueError, match=r"data differ.*the number of samples: 6 in the "
                                         r"state, 7 now.*the number of files"):
        _dataset(front, str(folder), **kwargs).set_state(state)
    os.remove(folder / "6.npy")
    os.rename(folder / "5.npy", folder / "9.npy")  # renamed
    with pytest.raises(ValueError, match=r"the file names \(inputs.x.names\)"):
        _dataset(front, str(folder), **kwargs).set_state(state)
    os.rename(folder / "9.npy", folder / "5.npy")
    save(str(folder / "2.npy"), rng.normal(size=(4,)).astype("float32"))  # resized
    with pytest.raises(ValueError, match=r"sizes, shapes or headers \(inputs.x.headers\)"):
        _dataset(front, str(folder), **kwargs, pad_to=4).set_state(state)


@pytest.mark.parametrize("front", FRONTS)
def test_restoring_with_arguments_that_change_the_order_is_an_error(rows_file, front):
    path, _ = rows_file
    state = _dataset(front, path).get_state()
    with pytest.raises(ValueError, match=r"other arguments.*batch_size: 4 in the state, 5 now"):
        _dataset(front, path, batch_size=5).set_state(state)
    with pytest.raises(ValueError, match=r"shuffle: True in the state, 'block' now"):
        _dataset(front, path, shuffle="block").set_state(state)
    with pytest.raises(ValueError, match=r"seed=3, this dataset was made with seed=4"):
        _dataset(front, path, seed=4).set_state(state)
    with pytest.raises(ValueError, match="takes a value returned by get_state"):
        _dataset(front, path).set_state({"epoch": 1})
    with pytest.raises(ValueError, match=r"'batch' must be an integer >= 0; it is -1"):
        _dataset(front, path).set_state(dict(state, batch=-1))
    _dataset(front, path, read_ahead_bytes=0).set_state(state)  # reading, not order


@needs_tf
def test_a_tf_dataset_restored_mid_epoch_refuses_a_loop_of_your_own(rows_file):
    path, _ = rows_file
    ds = keras_npy.npy_dataset(path, batch_size=10)
    ds.set_state(dict(ds.get_state(), batch=3))
    with pytest.raises(Exception, match="fit\\(\\), evaluate\\(\\) and predict\\(\\) read it"):
        list(ds)
    assert ds.get_state()["batch"] == 3  # the error moved nothing on
    ds.set_state(dict(ds.get_state(), epoch=4, batch=0))
    assert len(list(ds)) == 11 and ds.get_state()["epoch"] == 5


def test_fit_must_start_at_the_backups_epoch(rows_file, tmp_path):
    path, _ = rows_file
    backup_dir = str(tmp_path / "backup")

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 3:
                raise KeyboardInterrupt  # an interruption, in this process

    def fit(callbacks, **kwargs):
        ds = NpyDataset(path, y=np.zeros(103, "float32"), batch_size=10, shuffle=True, seed=2)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        return model.fit(ds, epochs=2, verbose=0, callbacks=callbacks, **kwargs)

    backup = keras_npy.BackupAndRestore(backup_dir, save_freq=2)
    with pytest.raises(KeyboardInterrupt):
        fit([backup, Stop()])
    assert backup.initial_epoch == 0
    record = json.loads(open(os.path.join(backup_dir, "checkpoint.json")).read())
    assert (record["epoch"], record["data"]["epoch"], record["data"]["batch"]) == (0, 0, 4)
    backup = keras_npy.BackupAndRestore(backup_dir, save_freq=2)
    with pytest.raises(ValueError, match="resumes at epoch 0, but fit\\(\\) starts at epoch 1"):
        fit([backup], initial_epoch=1)
    history = fit([keras_npy.BackupAndRestore(backup_dir, save_freq=2)])
    assert history.epoch == [0, 1] and not os.path.exists(backup_dir)


def test_backup_refuses_data_it_cannot_resume(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    backup = keras_npy.BackupAndRestore(str(tmp_path / "b"), save_freq=1)
    with pytest.raises(ValueError, match="resumes the data of an NpyDataset"):
        model.fit(np.zeros((8, 4)), np.zeros(8), verbose=0, callbacks=[backup])
    for bad in (0, True, "batch"):
        with pytest.raises(ValueError, match="`save_freq` must be"):
            keras_npy.BackupAndRestore(str(tmp_path / "b"), save_freq=bad)


def _interrupted_fit(path, backup, stop_at=None, more=()):
    """`fit` of an NpyDataset of `path` for 3 epochs with `backup` (and the
    callbacks `more`); raises KeyboardInterrupt after batch `stop_at = (epoch,
    batch)`."""

    class Stop(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if (self.epoch, batch) == stop_at:
                raise KeyboardInterrupt

    ds = NpyDataset(path, y=np.zeros(103, "float32"), batch_size=10, shuffle=True, seed=2)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    return model.fit(ds, epochs=3, verbose=0, callbacks=[backup, Stop(), *more],
                     initial_epoch=backup.initial_epoch)


def test_backups_at_the_end_of_each_epoch(rows_file, tmp_path):
    path, _ = rows_file
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        _interrupted_fit(path, keras_npy.BackupAndRestore(backup_dir), stop_at=(1, 5))
    record = json.loads(open(os.path.join(backup_dir, "checkpoint.json")).read())
    assert (record["epoch"], record["data"]["epoch"], record["data"]["batch"]) == (1, 1, 0)
    history = _interrupted_fit(path, keras_npy.BackupAndRestore(backup_dir))
    assert history.epoch == [1, 2]


def test_double_checkpoint_restores_the_previous_backup_when_the_latest_is_unreadable(
        rows_file, tmp_path):
    path, _ = rows_file
    backup_dir = str(tmp_path / "backup")
    backup = keras_npy.BackupAndRestore(backup_dir, save_freq=4, double_checkpoint=True)
    with pytest.raises(KeyboardInterrupt):
        _interrupted_fit(path, backup, stop_at=(0, 9))
    latest = json.loads(open(os.path.join(backup_dir, "checkpoint.json")).read())
    previous = json.loads(open(os.path.join(backup_dir, "previous.json")).read())
    assert (latest["data"]["batch"], previous["data"]["batch"]) == (8, 4)
    assert sorted(f for f in os.listdir(backup_dir) if f.endswith(".h5")) == sorted(
        [latest["weights"], previous["weights"]])
    with open(os.path.join(backup_dir, latest["weights"]), "wb") as f:
        f.write(b"not an HDF5 file")
    trained = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            trained.append(batch)

    backup = keras_npy.BackupAndRestore(backup_dir, save_freq=4, double_checkpoint=True)
    history = _interrupted_fit(path, backup, more=[Count()])
    assert history.epoch == [0, 1, 2]
    assert len(trained) == 3 * 11 - 4  # from batch 4 of epoch 0: the previous backup's
