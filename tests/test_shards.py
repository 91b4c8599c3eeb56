"""Shards found from the run (keras_npy/shards.py), and fit over several
TensorFlow workers with MultiWorkerMirroredStrategy on loopback ports."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import free_ports, numbered_data

from keras_npy import NpyDataset, shards

SCRIPT = os.path.join(os.path.dirname(__file__), "shards_tf_run.py")
N, BATCH, EPOCHS = 96, 16, 2


def _cluster(num_workers, index, chief=False):
    workers = [f"localhost:{p}" for p in range(20000, 20000 + num_workers)]
    cluster = {"worker": workers}
    if chief:
        cluster = {"chief": ["localhost:19999"], "worker": workers}
    task = {"type": "chief", "index": 0} if chief and index < 0 else {"type": "worker",
                                                                      "index": index}
    return json.dumps({"cluster": cluster, "task": task})


@pytest.mark.parametrize("config, expected", [
    (_cluster(3, 2), (3, 2)),
    (_cluster(2, 1, chief=True), (3, 2)),  # the chief is input pipeline 0
    (_cluster(2, -1, chief=True), (3, 0)),
    (_cluster(1, 0), None),  # one worker: nothing to share
    (json.dumps({"cluster": {"worker": ["a:1", "b:1"], "evaluator": ["c:1"]},
                 "task": {"type": "evaluator", "index": 0}}), None),
])
def test_tf_config_names_the_shard(monkeypatch, config, expected):
    monkeypatch.setenv("TF_CONFIG", config)
    run = shards.find_run()
    assert (run and (run.num_shards, run.shard_index)) == expected


def test_a_run_found_is_said_once_and_overridden_by_num_shards(monkeypatch, rows_file, capsys):
    path, x = rows_file
    monkeypatch.setenv("TF_CONFIG", _cluster(2, 1))
    ds = NpyDataset(path, batch_size=8)
    assert capsys.readouterr().out == (
        "keras_npy: reading shard 1 of 2 (TF_CONFIG: worker 1 of 2 tasks): 4 samples of each "
        "global batch of 8. Pass num_shards=1 to read every sample.\n")
    np.testing.assert_array_equal(ds[0], x[4:8])  # the second half of global batch 0
    whole = NpyDataset(path, batch_size=8, num_shards=1)
    assert capsys.readouterr().out == "" and len(whole[0]) == 8
    with pytest.raises(ValueError) as error:
        NpyDataset(path, batch_size=8, shuffle=True)
    assert str(error.value) == (
        "With shards (the shards of the run: TF_CONFIG: worker 1 of 2 tasks), a shuffled "
        "dataset needs a `seed`: every process must draw the same order, or the shards would "
        "overlap and miss samples. Pass the same seed to every process. Received: seed=None")
    with pytest.raises(ValueError) as error:
        NpyDataset(path, batch_size=7)
    assert str(error.value) == (
        "`batch_size` must be divisible by `num_shards` (the shards of the run: TF_CONFIG: "
        "worker 1 of 2 tasks): batch_size is the global batch, of which each of the 2 shards "
        "reads an equal part. Received: batch_size=7, num_shards=2")


def test_a_keras_distribution_that_replicates_the_data_decides(monkeypatch):
    import keras

    class Told:  # auto_shard_dataset=False: its data are sharded by the user
        num_processes, auto_shard_dataset = 2, False

    monkeypatch.setenv("TF_CONFIG", _cluster(2, 1))
    monkeypatch.setattr(keras.distribution, "distribution", lambda: Told())
    assert shards.find_run() is None  # not overruled by TF_CONFIG


def test_commands_read_every_sample_whatever_the_run(monkeypatch, rows_file, tmp_path):
    from test_cli import _run

    path, x = rows_file
    monkeypatch.setenv("TF_CONFIG", _cluster(3, 1))
    done = _run("stats", path, "-q", "-o", str(tmp_path / "s.npz"))
    assert done.returncode == 0, done.stderr
    assert "reading shard" not in done.stdout
    np.testing.assert_allclose(np.load(tmp_path / "s.npz")["mean"], x.mean(axis=0), rtol=1e-5)


def test_a_state_of_the_first_format_is_read(rows_file):
    path, _ = rows_file
    ds = NpyDataset(path, batch_size=8, shuffle=True, seed=3)
    state = ds.get_state()
    order = {**state["order"], "num_shards": 1, "shard_index": 0}
    ds.set_state({**state, "version": 1, "order": order, "batch": 4})
    assert (ds.epoch, ds._start_batch) == (0, 4)
    with pytest.raises(ValueError) as error:
        ds.set_state({**state, "version": 1, "order": {**order, "num_shards": 2}})
    assert str(error.value) == (
        "NpyDataset.set_state(): this state (version 1) was taken of shard 0 of 2, whose "
        "batches this keras_npy orders otherwise (each shard now reads a part of every global "
        "batch). Start the run again.")


def test_a_state_resumes_on_another_number_of_shards(rows_file):
    path, _ = rows_file
    kwargs = dict(batch_size=8, shuffle=True, seed=3)
    whole = NpyDataset(path, **kwargs)
    whole.on_epoch_end()
    whole.set_state({**whole.get_state(), "batch": 5})  # epoch 1, global step 5
    state = whole.get_state()
    for num_shards in (2, 4):
        parts = [NpyDataset(path, num_shards=num_shards, shard_index=k, **kwargs)
                 for k in range(num_shards)]
        for part in parts:
            part.set_state(state)
        assert {(part.epoch, part._start_batch) for part in parts} == {(1, 5)}
        for i in range(5, len(whole)):  # the global steps left, each cut in parts
            got = np.concatenate([part._read(part.epoch, i) for part in parts])
            np.testing.assert_array_equal(got, whole._read(1, i)[:len(got)])


# Several TensorFlow workers --------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Samples whose first feature is their id, and a target of them."""
    return numbered_data(tmp_path_factory.mktemp("data"), N)


def _run_workers(data, folder, num_workers, front):
    """Runs tests/shards_tf_run.py in `num_workers` processes (one: no
    TF_CONFIG); returns what each wrote."""
    folder.mkdir(parents=True, exist_ok=True)
    ports = free_ports(num_workers)
    workers = [f"localhost:{p}" for p in ports]
    processes = []
    try:
        for k in range(num_workers):
            config = dict(data=data, out=str(folder / f"out{k}.json"), epochs=EPOCHS,
                          batch_size=BATCH, seed=5, front=front)
            (folder / f"config{k}.json").write_text(json.dumps(config))
            env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2",
                   "CUDA_VISIBLE_DEVICES": ""}
            env.pop("TF_CONFIG", None)
            if num_workers > 1:
                env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers},
                                               "task": {"type": "worker", "index": k}})
            processes.append(subprocess.Popen(
                [sys.executable, SCRIPT, str(folder / f"config{k}.json")], env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [p.communicate(timeout=300)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, output in zip(processes, outputs):
        assert p.returncode == 0, output
    return [json.loads((folder / f"out{k}.json").read_text()) for k in range(num_workers)], \
        outputs


@pytest.mark.parametrize("front", ["pydataset", "tf"])
def test_multi_worker_fit_reads_each_sample_once_in_the_global_order(data, tmp_path, front):
    one, _ = _run_workers(data, tmp_path / "one", 1, front)
    two, outputs = _run_workers(data, tmp_path / "two", 2, front)
    for k, output in enumerate(outputs):
        assert (f"keras_npy: reading shard {k} of 2 (TF_CONFIG: worker {k} of 2 tasks): 8 "
                "samples of each global batch of 16.") in output
    assert two[0]["steps"] == two[1]["steps"] == one[0]["steps"] == N // BATCH
    for epoch in range(EPOCHS):
        parts = [run["ids"][epoch] for run in two]
        assert not set(sum(parts[0], [])) & set(sum(parts[1], []))
        assert sorted(sum(parts[0], []) + sum(parts[1], [])) == list(range(N))
        # step s of P = 2 is step s of P = 1: the parts of worker 0, then 1
        assert [a + b for a, b in zip(*parts)] == one[0]["ids"][epoch]
    assert one[0]["ids"][0] != one[0]["ids"][1]  # shuffled each epoch
    for run in two:  # all-reduced gradients of equal parts: the one-process updates
        for got, expected in zip(run["weights"], one[0]["weights"]):
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(run["loss"], one[0]["loss"], rtol=1e-4)
