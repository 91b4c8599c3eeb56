"""Shards found from the run, on Keras over JAX: two processes joined by
`jax.distributed.initialize` under `keras.distribution.DataParallel` each read
their part of every global batch of an NpyDataset made without `num_shards`,
the parts make the one-process order, and `fit` trains to the losses of one
process; a DataParallel over two devices of one process reads every sample.

Each run is a subprocess of tests/shards_jax_run.py (the JAX backend, a
distributed JAX and XLA_FLAGS are fixed before jax is imported); all four are
started at once, so the module takes the time of the slowest.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import free_ports, numbered_data

pytest.importorskip("jax")

from keras_npy import NpyDataset  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(__file__), "shards_jax_run.py")
N, BATCH, EPOCHS, SEED = 96, 16, 2, 5  # 6 global batches an epoch
STEPS = N // BATCH
TIMEOUT = 300  # seconds, for all the runs together


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return numbered_data(tmp_path_factory.mktemp("shards_jax_data"), N)


def _env(**extra):
    # No proxy variables: the processes meet on the loopback, and JAX warns
    # that one may hang jax.distributed.initialize. XLA_FLAGS only if given.
    env = {k: v for k, v in os.environ.items()
           if k != "XLA_FLAGS" and "_proxy" not in k.lower()}
    return {**env, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2",
            **extra}


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """Runs tests/shards_jax_run.py four times at once: `reference` (one
    process, no distribution), `forced` (one process, DataParallel over two
    forced host devices), `p0` and `p1` (the two processes of a DataParallel).
    Returns, by name, `(return code, output, the run's JSON or None)`."""
    folder = tmp_path_factory.mktemp("shards_jax_runs")
    port, = free_ports(1)  # the coordinator binds 127.0.0.1 only
    common = dict(data=data, batch_size=BATCH, seed=SEED, epochs=EPOCHS)
    plans = {
        "reference": (dict(distribution=False), _env()),
        "forced": (dict(distribution=True),
                   _env(XLA_FLAGS="--xla_force_host_platform_device_count=2")),
        **{f"p{i}": (dict(distribution=True, processes=2, process_id=i, port=port), _env())
           for i in range(2)},
    }
    processes, logs = {}, {}
    try:
        for name, (config, env) in plans.items():
            config = dict(common, **config, out=str(folder / f"{name}.json"))
            path = folder / f"{name}.config.json"
            path.write_text(json.dumps(config))
            logs[name] = open(folder / f"{name}.log", "w+")  # a file: a full pipe cannot block
            processes[name] = subprocess.Popen([sys.executable, SCRIPT, str(path)],
                                               stdout=logs[name], stderr=subprocess.STDOUT,
                                               env=env)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and any(p.poll() is None for p in processes.values()):
            peers = [processes["p0"], processes["p1"]]
            if any(p.poll() not in (None, 0) for p in peers):
                for p in peers:  # the other would wait for it until JAX's own timeouts
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.2)
    finally:
        for process in processes.values():  # on a timeout or an error: none left running
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs.values():
            log.close()
    results = {}
    for name, process in processes.items():
        output = (folder / f"{name}.log").read_text()
        if process.returncode == -signal.SIGKILL:
            output += f"\n[killed by the test: out of time ({TIMEOUT} s) or its peer failed]"
        out = folder / f"{name}.json"
        results[name] = (process.returncode, output,
                         json.loads(out.read_text()) if out.exists() else None)
    return results


def _result(runs, name):
    code, output, record = runs[name]
    assert code == 0 and record is not None, f"the run {name!r} failed:\n{output}"
    return record, output


def _one_process_order(data):
    """The ids of each global batch of each epoch, of an unsharded dataset."""
    ds = NpyDataset(os.path.join(data, "x.npy"), y=os.path.join(data, "y.npy"),
                    batch_size=BATCH, shuffle=True, seed=SEED, num_shards=1)
    order = []
    for _ in range(EPOCHS):
        order.append([ds[s][0][:, 0].round().astype(int).tolist() for s in range(len(ds))])
        ds.on_epoch_end()
    return order


def _shard_line(k):
    return (f"keras_npy: reading shard {k} of 2 (keras.distribution.DataParallel over 2 "
            f"processes): {BATCH // 2} samples of each global batch of {BATCH}. "
            "Pass num_shards=1 to read every sample.")


def test_the_reference_run_reads_the_one_process_order(data, runs):
    reference, output = _result(runs, "reference")
    assert reference["process_count"] == 1 and reference["devices"] == 1
    assert reference["ids"] == _one_process_order(data)
    assert reference["steps"] == STEPS and reference["epoch"] == EPOCHS
    assert "keras_npy: reading shard" not in output


def test_two_processes_find_their_shards_and_read_the_one_process_order(data, runs):
    (p0, out0), (p1, out1) = _result(runs, "p0"), _result(runs, "p1")
    assert p0["process_count"] == p1["process_count"] == 2
    assert p0["devices"] == p1["devices"] == 2
    # Found from the distribution, not passed: said once, with the shard.
    assert out0.count("keras_npy: reading shard") == 1
    assert _shard_line(0) in out0.splitlines()
    assert out1.count("keras_npy: reading shard") == 1
    assert _shard_line(1) in out1.splitlines()
    # The same number of steps (a collective step never waits for a process
    # that has run out), and each epoch read whole by fit.
    assert p0["steps"] == p1["steps"] == STEPS
    assert p0["epoch"] == p1["epoch"] == EPOCHS
    assert len(p0["ids"]) == len(p1["ids"]) == EPOCHS
    order = _one_process_order(data)
    for e in range(EPOCHS):
        assert len(p0["ids"][e]) == len(p1["ids"][e]) == STEPS
        ids0 = [i for batch in p0["ids"][e] for i in batch]
        ids1 = [i for batch in p1["ids"][e] for i in batch]
        assert not set(ids0) & set(ids1), f"epoch {e}: a sample read by both processes"
        assert sorted(ids0 + ids1) == list(range(N)), f"epoch {e}: not every sample once"
        for s in range(STEPS):
            assert len(p0["ids"][e][s]) == len(p1["ids"][e][s]) == BATCH // 2
            # Process 0's part, then process 1's: global batch s of one process.
            assert p0["ids"][e][s] + p1["ids"][e][s] == order[e][s], f"epoch {e}, step {s}"
    assert order[0] != order[1]  # shuffled anew each epoch


def test_two_processes_train_to_the_losses_of_one(runs):
    (p0, _), (p1, _) = _result(runs, "p0"), _result(runs, "p1")
    reference, _ = _result(runs, "reference")
    assert len(p0["loss"]) == EPOCHS
    # The loss is of the global batch: the same number on both processes.
    np.testing.assert_allclose(p0["loss"], p1["loss"], rtol=1e-6)
    np.testing.assert_allclose(p0["loss"], reference["loss"], rtol=1e-5)
    assert reference["loss"][0] != reference["loss"][1]  # the weights moved


def test_data_parallel_over_the_devices_of_one_process_reads_every_sample(data, runs):
    forced, output = _result(runs, "forced")
    reference, _ = _result(runs, "reference")
    assert forced["process_count"] == 1 and forced["devices"] == 2
    assert "keras_npy: reading shard" not in output  # one process: nothing to shard
    assert forced["steps"] == STEPS
    assert forced["ids"] == _one_process_order(data)  # whole global batches, in order
    np.testing.assert_allclose(forced["loss"], reference["loss"], rtol=1e-5)
