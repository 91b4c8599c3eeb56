"""Shards under `torch.distributed`: two processes of a `gloo` group train a
Keras model (torch backend, `DistributedDataParallel`) on an `NpyDataset`
that finds its shard from the group, and are compared with one process
training on the same global batches (tests/shards_torch_run.py)."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import free_ports, numbered_data

pytest.importorskip("torch")

SCRIPT = os.path.join(os.path.dirname(__file__), "shards_torch_run.py")
N, BATCH, EPOCHS, SEED = 96, 16, 2, 5
STEPS = N // BATCH  # 6 global batches an epoch, 8 samples of each per rank
TIMEOUT = 300  # seconds for all processes together


def _start(data, folder, world_size, rank, port):
    """Starts one process of a group; returns it and the paths of its record
    and its output."""
    out, log = folder / f"record{world_size}_{rank}.json", folder / f"log{world_size}_{rank}.txt"
    config = folder / f"config{world_size}_{rank}.json"
    config.write_text(json.dumps(dict(data=data, port=port, world_size=world_size, rank=rank,
                                      seed=SEED, epochs=EPOCHS, batch_size=BATCH, out=str(out))))
    env = {**os.environ, "KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": "",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo talks over loopback only
    with open(log, "w") as f:  # a file, not a pipe: a full pipe would stall the process
        process = subprocess.Popen([sys.executable, SCRIPT, str(config)], stdout=f,
                                   stderr=subprocess.STDOUT, env=env)
    return process, out, log


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`{world_size: [(record, output) of each rank]}` for a world of 2 and
    the one-process reference (a world of 1), all started at once."""
    folder = tmp_path_factory.mktemp("shards_torch")
    data = numbered_data(folder / "data", N)
    groups = dict(zip((2, 1), free_ports(2)))
    started = []
    try:
        for world_size, port in groups.items():
            started += [(world_size, *_start(data, folder, world_size, rank, port))
                        for rank in range(world_size)]
        deadline = time.monotonic() + TIMEOUT
        for _, process, _, _ in started:
            process.wait(timeout=max(1, deadline - time.monotonic()))
        results = {1: [], 2: []}
        for world_size, process, out, log in started:
            output = log.read_text()
            assert process.returncode == 0, output
            results[world_size].append((json.loads(out.read_text()), output))
        return results
    finally:
        for _, process, _, _ in started:  # none left behind on a failure or timeout
            if process.poll() is None:
                process.kill()
                process.wait()


def test_each_rank_says_which_shard_it_found(runs):
    for rank, (_, output) in enumerate(runs[2]):
        assert (f"keras_npy: reading shard {rank} of 2 (torch.distributed: rank {rank} of a "
                "world of 2): 8 samples of each global batch of 16. Pass num_shards=1 to read "
                "every sample.") in output.splitlines()
    # A world of one is no shard: nothing to say.
    assert "keras_npy: reading shard" not in runs[1][0][1]


def test_ranks_take_equal_steps_and_disjoint_parts_that_cover_the_data(runs):
    records = [record for record, _ in runs[2]]
    for record in records:
        assert record["steps"] == [STEPS] * EPOCHS  # no rank waits on another that ran out
        assert [len(epoch) for epoch in record["ids"]] == [STEPS] * EPOCHS
        assert all(len(ids) == BATCH // 2 for epoch in record["ids"] for ids in epoch)
    for e in range(EPOCHS):
        parts = [{i for ids in record["ids"][e] for i in ids} for record in records]
        assert not parts[0] & parts[1], f"epoch {e}: a sample was read by both ranks"
        every = sorted(i for record in records for ids in record["ids"][e] for i in ids)
        assert every == list(range(N)), f"epoch {e} did not read each sample once"


def test_the_ranks_parts_make_the_one_process_batches(runs):
    (reference, _), = runs[1]
    first, second = (record for record, _ in runs[2])
    assert reference["steps"] == [STEPS] * EPOCHS
    for e in range(EPOCHS):
        for s in range(STEPS):
            assert first["ids"][e][s] + second["ids"][e][s] == reference["ids"][e][s], (
                f"epoch {e}, step {s}")
    # Shuffled, and differently each epoch: the order above is not trivial.
    epochs = [[i for ids in reference["ids"][e] for i in ids] for e in range(EPOCHS)]
    assert epochs[0] != list(range(N)) and epochs[0] != epochs[1]


def test_losses_match_one_process_training_on_the_global_batch(runs):
    (reference, _), = runs[1]
    for record, _ in runs[2]:
        # Every rank all-reduces the same global loss.
        np.testing.assert_allclose(record["losses"], reference["losses"], rtol=1e-4, atol=1e-6)
    losses = np.ravel(reference["losses"])
    assert losses[-STEPS:].mean() < losses[:STEPS].mean()  # it trained
