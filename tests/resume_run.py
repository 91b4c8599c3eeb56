"""A training run that tests/test_resume.py starts, kills and starts again:
`fit` with `keras_npy.BackupAndRestore` on a data set whose first feature is
the sample's id. A layer appends the ids of every batch the model trains on to
a record file (one JSON line a batch); a callback kills the process with
SIGKILL after a given batch, as a preemption would. At the end the trained
weights are saved, to compare with an uninterrupted run.

    python resume_run.py CONFIG.json

CONFIG: data (folder of x.npy, y.npy, val.npy), backup, record, weights (the
path of the final weights), front ("pydataset" or "tf"), seed (or null),
save_freq, workers, epochs, kill ([epoch, batch] of fit's count, or null).
"""

import json
import os
import signal
import sys

import keras
import numpy as np

import keras_npy


class Record(keras.layers.Layer):
    """Appends the ids (first feature) of each training batch to a file."""

    def __init__(self, path, **kwargs):
        super().__init__(**kwargs)
        self.record_path = path

    def call(self, x, training=None):
        if training:
            try:
                ids = np.asarray(keras.ops.convert_to_numpy(x[:, 0]))
            except Exception:  # a symbolic tensor: a trace, not a batch
                return x
            with open(self.record_path, "a") as f:
                f.write(json.dumps(ids.round().astype(int).tolist()) + "\n")
        return x


class Kill(keras.callbacks.Callback):
    """SIGKILL after batch `batch` of epoch `epoch` (fit's numbering)."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at, self.epoch = (epoch, batch), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


def main(config):
    data = config["data"]
    keywords = dict(y=os.path.join(data, "y.npy"), batch_size=8, shuffle=True,
                    seed=config["seed"])
    if config["front"] == "tf":
        train = keras_npy.npy_dataset(os.path.join(data, "x.npy"), **keywords)
    else:
        train = keras_npy.NpyDataset(os.path.join(data, "x.npy"), **keywords,
                                     workers=config["workers"])
    val = keras_npy.NpyDataset(os.path.join(data, "val.npy"), y=np.zeros(8, "float32"),
                               batch_size=4)
    model = keras.Sequential([keras.Input((4,)), Record(config["record"]), keras.layers.Dense(
        1, kernel_initializer="zeros", bias_initializer="zeros")])
    model.compile(keras.optimizers.SGD(0.001, momentum=0.5), "mse", run_eagerly=True)
    backup = keras_npy.BackupAndRestore(config["backup"], save_freq=config["save_freq"])
    callbacks = [backup] + ([Kill(*config["kill"])] if config["kill"] else [])
    history = model.fit(train, epochs=config["epochs"], callbacks=callbacks,
                        initial_epoch=backup.initial_epoch, validation_data=val, verbose=2)
    np.save(config["weights"], np.concatenate([w.ravel() for w in model.get_weights()]))
    with open(config["weights"] + ".json", "w") as f:
        json.dump({"epochs": history.epoch, "loss": history.history["loss"]}, f)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        main(json.load(f))
