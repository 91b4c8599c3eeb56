"""A TensorFlow worker that tests/test_shards.py starts: `fit` under
`MultiWorkerMirroredStrategy` (several of these, with `TF_CONFIG` on
loopback ports) or under the default strategy (one, the reference), on a data
set whose first feature is the sample's id. It writes what it saw as JSON.

    python shards_tf_run.py CONFIG.json

CONFIG: data (folder of x.npy, y.npy), out (the JSON to write), epochs,
batch_size, seed, front ("pydataset" or "tf").
"""

import json
import sys

import numpy as np
import tensorflow as tf

import keras
import keras_npy

keras.config.disable_traceback_filtering()


class Recorded(keras_npy.NpyDataset):
    """Records the ids (first feature) of each batch fit reads, by epoch and
    batch: tf.data may read a batch twice (an iterator made and dropped)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ids = {}

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        self.ids[self.epoch, i] = x[:, 0].round().astype(int).tolist()
        return x, y


def main(config_path):
    with open(config_path) as f:
        config = json.load(f)
    strategy = (tf.distribute.MultiWorkerMirroredStrategy() if "TF_CONFIG" in __import__(
        "os").environ else tf.distribute.get_strategy())
    kwargs = dict(batch_size=config["batch_size"], shuffle=True, seed=config["seed"])
    x, y = f"{config['data']}/x.npy", f"{config['data']}/y.npy"
    if config["front"] == "tf":
        ds = keras_npy.npy_dataset(x, y, **kwargs)
        twin = keras_npy.npy_dataset(x, y, **kwargs)  # its own epochs: fit's stay at 0
        ids = [[b[:, 0].round().astype(int).tolist() for b, _ in twin.as_numpy_iterator()]
               for _ in range(config["epochs"])]
    else:
        ds = Recorded(x, y, **kwargs)
    keras.utils.set_random_seed(1)  # the same initial weights in every process
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                                  keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    history = model.fit(ds, epochs=config["epochs"], verbose=0)
    if config["front"] != "tf":
        ids = [[ds.ids[e, i] for i in range(len(ds))] for e in range(config["epochs"])]
    result = {"ids": ids, "steps": len(ds) if config["front"] != "tf" else int(
        ds.cardinality()), "loss": history.history["loss"],
        "weights": [w.tolist() for w in model.get_weights()]}
    with open(config["out"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
