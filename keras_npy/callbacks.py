"""`BackupAndRestore`: a preempted `fit` resumes at the next unseen batch.

Keras' `keras.callbacks.BackupAndRestore(save_freq=N)` saves the weights
every N batches, but a restarted `fit` begins the interrupted epoch again from
its first batch: the batches before the interruption are trained twice in
that epoch. This callback saves, with the weights, the state of the keras_npy
dataset being trained on (`get_state()`: seed, epoch, next batch, and a
fingerprint of data and arguments); restarted, it restores the weights and
moves the dataset to the batch after the last one whose weights were saved,
so that every sample of every epoch is trained on exactly once across any
number of interruptions, and the run is the one that would have happened.

It uses Keras' public API only. One thing that API cannot express is a
callback choosing the epoch `fit` starts at (Keras' own callback sets a
private attribute of the model): pass `initial_epoch=backup.initial_epoch` to
`fit`. A `fit` that starts elsewhere is an error, not a silent other run.
"""

from __future__ import annotations

import json
import os
import shutil

import keras

from keras_npy import fit_adapter

#: The record of the latest backup, the file written last (atomically).
CHECKPOINT = "checkpoint.json"
#: With `double_checkpoint`, the record of the backup before it.
PREVIOUS = "previous.json"
FORMAT = "keras_npy.backup"


class BackupAndRestore(keras.callbacks.Callback):
    """Backs up the weights and the data's position every `save_freq`
    batches; a `fit` started again resumes at the next unseen batch.

    `keras.callbacks.BackupAndRestore` restarts an interrupted epoch from its
    first batch; this callback, given the same arguments, resumes it at the
    batch after the last one whose weights were saved, for `x` an
    `NpyDataset` or a `tf.data.Dataset` made by `keras_npy.npy_dataset`
    (either front end, any backend, with read-ahead workers or not). Pass
    `initial_epoch=backup.initial_epoch` to `fit`: the epoch to start at, `0`
    when there is no backup. The resumed epoch trains on its remaining
    batches: its progress bar counts them, and its entry of `history` is the
    loss and metrics over them.

    A backup is the weights (with the optimizer's state) and a JSON record
    (the epoch to start at, the dataset's `get_state()`), committed by an
    atomic rename: a process killed while saving leaves the previous backup.
    Restoring onto data that changed, or a dataset made with arguments that
    change the order, is a `ValueError` saying what differs.

    Args:
        backup_dir: the folder of the backup, used by this training run only.
        save_freq: `"epoch"` (at the end of every epoch) or an integer: every
            that many batches (and at no epoch's end). Defaults to `"epoch"`.
        double_checkpoint: whether the backup before the latest is kept, and
            restored when the latest cannot be read. Defaults to `False`.
        delete_checkpoint: whether the backup is deleted when `fit` ends.
            Defaults to `True`.

    Example:

    ```python
    ds = keras_npy.NpyDataset("data", y="inferred", batch_size=64,
                              shuffle=True, seed=1)
    backup = keras_npy.BackupAndRestore("backup", save_freq=100)
    model.fit(ds, epochs=10, callbacks=[backup],
              initial_epoch=backup.initial_epoch)
    ```
    """

    def __init__(self, backup_dir, save_freq="epoch", double_checkpoint=False,
                 delete_checkpoint=True):
        super().__init__()
        if not isinstance(backup_dir, (str, os.PathLike)) or not os.fspath(backup_dir):
            raise ValueError("`backup_dir` must be the path of a folder. "
                             f"Received: backup_dir={backup_dir!r}")
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(
                save_freq, int) or save_freq < 1):
            raise ValueError('`save_freq` must be "epoch" or a positive integer (batches '
                             f"between backups). Received: save_freq={save_freq!r}")
        for name, value in (("double_checkpoint", double_checkpoint),
                            ("delete_checkpoint", delete_checkpoint)):
            if not isinstance(value, bool):
                raise TypeError(f"`{name}` must be True or False. Received: {name}={value!r}")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq
        self.double_checkpoint, self.delete_checkpoint = double_checkpoint, delete_checkpoint
        self._adapter = None

    @property
    def initial_epoch(self) -> int:
        """The epoch `fit` resumes at (pass it as `fit`'s `initial_epoch`): that
        of the latest backup, or `0` when there is none."""
        record = self._read(CHECKPOINT) or (
            self._read(PREVIOUS) if self.double_checkpoint else None)
        return 0 if record is None else record["epoch"]

    # -- fit's hooks ------------------------------------------------------

    def on_train_begin(self, logs=None):
        adapter = fit_adapter.training_data()
        if adapter is None:
            raise ValueError(
                "keras_npy.BackupAndRestore resumes the data of an NpyDataset, or of a "
                "tf.data.Dataset made by keras_npy.npy_dataset, passed to fit() as `x`; this "
                "fit() reads other data (or a tf.data.Dataset transformed after it was made), "
                "whose position it cannot restore. Use keras.callbacks.BackupAndRestore for "
                "it.")
        if self.params.get("steps") != adapter.num_batches:
            raise ValueError(
                f"keras_npy.BackupAndRestore needs each epoch of fit() to be one pass over the "
                f"dataset ({adapter.num_batches} batches); this fit() runs "
                f"{self.params.get('steps')} steps an epoch. Do not pass `steps_per_epoch`.")
        self._adapter, self._restored_epoch, self._first_epoch = adapter, None, True
        record = self._restore()
        if record is not None:
            self._restored_epoch = record["epoch"]

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch:
            self._first_epoch = False
            if self._restored_epoch is not None and epoch != self._restored_epoch:
                raise ValueError(
                    f"The backup in {self.backup_dir} resumes at epoch {self._restored_epoch}, "
                    f"but fit() starts at epoch {epoch}: pass "
                    "`initial_epoch=backup.initial_epoch` to fit() (Keras lets no callback "
                    "choose the epoch fit() starts at).")
        self._epoch = epoch
        self._data_epoch, self._start = self._adapter.resume_point()
        self._trained, self._since_save = 0, 0
        if self._start:
            self._resume_notice(epoch)

    def on_train_batch_end(self, batch, logs=None):
        # Cheap: no weights are touched here (on JAX, `self.model` syncs state).
        trained = batch + 1
        self._since_save += trained - self._trained
        self._trained = trained
        if self.save_freq != "epoch" and self._since_save >= self.save_freq:
            self._since_save = 0
            position = self._start + trained  # the epoch's last: fit resumes at the next
            self._save(self._epoch + (position >= self._adapter.num_batches),
                       self._data_epoch, position)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch + 1, self._data_epoch + 1, 0)

    def on_train_end(self, logs=None):
        self._adapter = None
        if self.delete_checkpoint and os.path.isdir(self.backup_dir):
            shutil.rmtree(self.backup_dir)

    # -- backups ------------------------------------------------------------

    def _save(self, epoch, data_epoch, data_batch):
        os.makedirs(self.backup_dir, exist_ok=True)
        self._serial = getattr(self, "_serial", 0) + 1
        weights = f"weights-{os.getpid()}-{self._serial}.weights.h5"
        self.model.save_weights(os.path.join(self.backup_dir, weights), overwrite=True)
        record = {"format": FORMAT, "version": 1, "epoch": int(epoch), "weights": weights,
                  "data": self._adapter.state_at(data_epoch, data_batch)}
        path = os.path.join(self.backup_dir, CHECKPOINT)
        if self.double_checkpoint and os.path.exists(path):
            os.replace(path, os.path.join(self.backup_dir, PREVIOUS))
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w") as f:
            json.dump(record, f)
        os.replace(temporary, path)  # the backup is committed here
        previous = self._read(PREVIOUS) if self.double_checkpoint else None
        keep = {weights, *([previous["weights"]] if previous else [])}
        for name in os.listdir(self.backup_dir):
            if name.endswith(".weights.h5") and name not in keep:
                os.remove(os.path.join(self.backup_dir, name))

    def _restore(self):
        """Loads the latest backup (or, with `double_checkpoint`, the one before
        it when the latest cannot be read); returns its record, or `None`."""
        names = [CHECKPOINT, PREVIOUS] if self.double_checkpoint else [CHECKPOINT]
        errors = []
        for name in names:
            record = self._read(name)
            if record is None:
                continue
            try:
                self._load(record)
                return record
            except (OSError, KeyError) as error:  # an unreadable weights file
                errors.append(f"{name}: {error}")
        if errors:
            raise OSError(f"The backup in {self.backup_dir} cannot be restored: "
                          + "; ".join(errors))
        return None

    def _load(self, record):
        model = self.model
        if not model.built:
            raise ValueError("keras_npy.BackupAndRestore restores weights into a built "
                             "model; build it (call it on a batch) before fit().")
        self._adapter.restore(record["data"])  # checks the data before any weight moves
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(os.path.join(self.backup_dir, record["weights"]))

    def _read(self, name):
        path = os.path.join(self.backup_dir, name)
        try:
            with open(path) as f:
                record = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a backup record of keras_npy.BackupAndRestore "
                             f"({error}).") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(
                record.get("epoch"), int) or not isinstance(record.get("weights"), str):
            raise ValueError(f"{path}: not a backup record of keras_npy.BackupAndRestore "
                             "(this folder must hold its backups only).")
        return record

    # -- the resumed epoch ----------------------------------------------------

    def _resume_notice(self, epoch):
        n = self._adapter.num_batches
        if self.params.get("verbose", 1):
            print(f"Epoch {epoch + 1}/{self.params.get('epochs')} resumes at batch "
                  f"{self._start + 1} of {n}: batches 1 to {self._start} were trained before "
                  f"the interruption. Its progress and logs are of the {n - self._start} "
                  "batches left.", flush=True)
