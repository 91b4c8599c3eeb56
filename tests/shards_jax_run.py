"""A Keras-on-JAX training run that tests/test_shards_jax.py starts: `fit` of
an NpyDataset whose first feature is the sample's id, made without
`num_shards`, so that under a distribution over several processes it finds
its shard itself. The ids of every batch fit reads are recorded (a subclass's
`__getitem__`) and written, with the losses, to a JSON file.

    python shards_jax_run.py CONFIG.json

CONFIG: data (folder of x.npy, y.npy), out (the JSON written), batch_size,
seed, epochs, distribution (whether to set `keras.distribution.DataParallel`
over `jax.devices()`), and for a run of several processes: processes,
process_id, port (of the coordinator, on 127.0.0.1).

Must run with KERAS_BACKEND=jax, JAX_PLATFORMS=cpu.
"""

import json
import os
import sys
import traceback

import numpy as np


def main(config):
    import jax  # here: pytest's --doctest-modules imports this file, maybe without JAX

    if config.get("processes", 1) > 1:
        # Before Keras makes any array: the devices of every process are
        # jax.devices() only once the processes are joined.
        address = f"127.0.0.1:{config['port']}"  # bound on the loopback only
        jax.distributed.initialize(coordinator_address=address,
                                   coordinator_bind_address=address,
                                   num_processes=config["processes"],
                                   process_id=config["process_id"],
                                   initialization_timeout=120, shutdown_timeout_seconds=60)
    import keras

    import keras_npy

    if config["distribution"]:
        # Built from every process's devices (jax.devices() is global after
        # initialize); the same on each process, as Keras requires.
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=jax.devices()))

    class Recorded(keras_npy.NpyDataset):
        """Keeps the ids (first feature) of each batch read, by (epoch, batch)."""

        record = {}

        def __getitem__(self, i):
            x, y = super().__getitem__(i)
            self.record.setdefault(self.epoch, {})[int(i)] = (
                np.asarray(x)[:, 0].round().astype(int).tolist())
            return x, y

    data = config["data"]
    ds = Recorded(os.path.join(data, "x.npy"), y=os.path.join(data, "y.npy"),
                  batch_size=config["batch_size"], shuffle=True, seed=config["seed"])
    # The same initial weights in every run, whatever the distribution; no
    # random layer (dropout) and plain SGD, so that runs differ only in the
    # order of float sums. The seed first: every process must draw the same
    # initial values (jax.distributed.initialize does not align Keras' seeds,
    # and a replicated variable refuses values that differ across processes).
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=(4, 1)).astype("float32") * 0.01,
                       np.zeros(1, "float32")])
    model.compile(keras.optimizers.SGD(1e-4), "mse")
    history = model.fit(ds, epochs=config["epochs"], verbose=0)
    record = {int(e): [batches[i] for i in sorted(batches)] for e, batches in ds.record.items()}
    with open(config["out"], "w") as f:
        json.dump({"ids": [record[e] for e in sorted(record)], "steps": len(ds),
                   "loss": history.history["loss"], "epoch": ds.epoch,
                   "process_count": jax.process_count(), "devices": jax.device_count()}, f)
    sys.stdout.flush()
    if config.get("processes", 1) > 1:
        jax.distributed.shutdown()  # waits for the other process: neither exits mid-step


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        config = json.load(f)
    try:
        main(config)
    except BaseException:
        # Out at once: JAX's exit handler would wait for the other process at
        # its shutdown barrier, and the test waits for this one to fail.
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
