"""`NpyDataset`: the `keras.utils.PyDataset` front end.

It validates its arguments, builds the index (headers only), and hands
batch `i` of the current epoch to `order` and `read`. It holds paths and
compact arrays only, so it pickles small and each worker process opens its
own files.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_npy import _checks
from keras_npy.batches import build_batch_source, source_of
from keras_npy import fit_adapter  # noqa: F401  (hands fit() an NpyDataset's own reader)
from keras_npy.index import DatasetIndex
from keras_npy.spec import BatchSpec
from keras_npy.state import check_state, make_state
from keras_npy.statistics import sample_statistics
from keras_npy.workers import BatchWorkers


class NpyDataset(keras.utils.PyDataset):
    """Batches read lazily from `.npy` files, for `model.fit` on any backend.

    Args:
        x: a directory, glob, `.npy` path, or list of these; or a dict from
            input name to such a source, for a multi-input model. A member of
            an `.npz` archive is `"archive.npz::name"` (`"folder::name"`: that
            member of every archive under the folder).
        y: `None`; `"inferred"` (the class is the folder under a directory
            of `x`, or the folder that holds a file named by a glob or path);
            an array-like of one label per sample; `.npy` path(s) whose rows
            are the labels; or a directory or glob of per-sample target files
            matched to the files of `x` by relative path. Defaults to `None`.
        layout: `"files"` (one sample per file), `"rows"` (the rows of the
            files, concatenated, are the samples) or `"auto"`: rows for a
            single file path, files otherwise. Defaults to `"auto"`.
        batch_size: samples per batch; with shards, the global batch, of
            which each shard reads `batch_size // num_shards` samples.
            Defaults to `32`.
        shuffle: `True` for a new global permutation of the samples every
            epoch, drawn from `(seed, epoch)`; `"block"` for the block shuffle,
            for data far larger than memory (see `shuffle_block_size`); or
            `False`. Defaults to `False`. (`fit`'s own `shuffle` only reorders
            whole batches.)
        seed: seed of the shuffle and of the validation split; drawn at
            random when `None`. Defaults to `None`.
        label_mode: for class labels (`"inferred"` or an array): `"int"`,
            `"categorical"` (one-hot float32), `"binary"` (float32 of shape
            `(batch, 1)`), or `None` (yield `x` only). Labels from `.npy` files
            come as stored with `"int"`. Defaults to `"int"`.
        class_names: with `y="inferred"`, the class folders in label order.
            Defaults to the sorted folder names.
        validation_split: fraction of the samples held out, with `subset`.
            Defaults to `None`.
        subset: `"training"` or `"validation"`, with `validation_split`.
            Defaults to `None`.
        pad_to: `None` (samples must have one shape), `"longest"` (each axis
            to the batch's largest, like `tf.data.Dataset.padded_batch`), an
            int (the first axis to that length, padded or truncated), or a
            tuple of the whole sample shape with `None` for an axis left as it
            is. Defaults to `None`.
        pad_to_multiple_of: with `pad_to="longest"`, round padded lengths up
            to a multiple of this. Defaults to `None`.
        padding: `"pre"` or `"post"`, where padding goes. Defaults to `"post"`.
        truncating: `"pre"` or `"post"`, which end is cut. Defaults to `"post"`.
        pad_value: the value of padded positions, exactly representable in
            the data's dtype. Defaults to `0`.
        pad_targets: whether targets read from `.npy` files (`y` naming
            files) are padded as `x` is (`pad_to`, `padding`, `truncating`,
            `pad_value`): for targets aligned with the samples, such as a
            label per time step. Otherwise targets keep their own shape, which
            must be one shape. Defaults to `False`.
        crop_to: `None`; an int (the first axis) or a tuple of the whole
            sample shape, `None` for an axis kept whole: each sample of `x`
            is cut to that shape, reading only the region's bytes from disk
            (one read per run of contiguous bytes; no whole-sample load).
            Every sample must be at least that large; not with `pad_to`.
            Defaults to `None`.
        crop_position: where the region lies: `"center"` (as
            `keras.layers.CenterCrop`) or `"random"` (uniform, drawn from
            `(seed, epoch, sample)`: a new region every epoch, the same on
            every process and in both front ends). Defaults to `"center"`.
        bucket_boundaries: increasing lengths; batches hold samples whose
            first-axis lengths fall in the same bucket. Defaults to `None`.
        drop_remainder: whether a last batch smaller than `batch_size` is
            dropped. Defaults to `False`.
        dtype: the dtype of the batches; `None` for data as stored (in native
            byte order). Defaults to `None`.
        shuffle_block_size: with `shuffle="block"`, the samples of a block:
            blocks of consecutive samples (rows in file order, files in name
            order) are permuted, and the samples of each window of
            `shuffle_window` blocks are shuffled together, so that each block
            is read as one stretch of the disk. Defaults to `None`: 1 MiB of
            rows (at least one row), or 64 files.
        shuffle_window: with `shuffle="block"`, the blocks whose samples are
            shuffled together. Defaults to `None`: 32.
        read_ahead_bytes: how many bytes of the batches that come next the
            kernel is asked to read into the page cache ahead of the batch
            being read, while batches are asked for in order (`0`: only the
            reads of the batch being read are started together). Defaults to
            `64 * 2**20`.
        num_shards: the number of equal parts each global batch is cut
            into, one per process: global step `s` holds the same samples
            whatever the number of shards, and every shard has the same
            number of batches (a last global batch loses the samples that
            do not divide evenly). Defaults to `None`: the processes of the
            multi-process run this one is part of (`keras.distribution` on
            JAX, `torch.distributed`, `TF_CONFIG`), said in one line, or 1;
            `1` reads every sample.
        shard_index: the part this dataset reads. Defaults to `None`: this
            process's place in the run, or `0`.
        follow_links: whether directory walks enter links to folders.
            Defaults to `False`.
        verbose: whether a progress bar is shown on long header scans.
            Defaults to `True`.
        storage_options: for `x` and `y` named by URLs (`s3://`, `gs://`,
            `https://`, any fsspec URL; `pip install "keras-npy[s3]"`), the
            filesystem's keyword arguments, as `fsspec.filesystem` takes them
            (credentials, `client_kwargs`, `anon`). A URL of an object is a
            `.npy` file, a prefix a directory; headers are read with one
            ranged request per object, batches with ranged requests, many in
            flight, never whole objects. Defaults to `None`.
        cache_dir: for URLs, a local folder where the bytes read are kept in
            blocks of 1 MiB, for later epochs (and datasets) to read without
            requests. Defaults to `None`: no cache.
        cache_bytes: the most bytes the blocks in `cache_dir` may hold (the
            least recently used go first). Defaults to `None`: 1 GiB.
        workers: threads (or processes) that read batches ahead. Defaults to
            `1`: batches are read when asked for, in the calling thread.
        use_multiprocessing: whether workers are processes. Defaults to
            `False`.
        max_queue_size: how many batches are read ahead. Defaults to `10`.

    NpyDataset reads ahead itself rather than through Keras' enqueuer, so
    `ds.workers` reads `1` and `ds.use_multiprocessing` `False` to Keras.
    Worker processes are started with `forkserver` (or `spawn`), never by
    forking the training process: guard the script with
    `if __name__ == "__main__":`.

    `fit`, `evaluate` and `predict` read the batches of the current epoch in
    order, the same on every backend (on TensorFlow through the dataset's own
    `tf.data` pipeline, several small batches per Python call; see
    `keras_npy.fit_adapter`). The order is the dataset's: `fit`'s `shuffle` is
    ignored, with a warning when the dataset was made with `shuffle=False`.
    `fit`'s `class_weight` weighs each sample by its class.

    Example:

    >>> import tempfile, numpy as np
    >>> path = tempfile.mkdtemp() + "/x.npy"
    >>> np.save(path, np.arange(40, dtype="float32").reshape(10, 4))
    >>> ds = NpyDataset(path, y=np.arange(10), batch_size=4)
    >>> len(ds), ds.num_samples
    (3, 10)
    >>> x, y = ds[2]
    >>> x.shape, y.tolist()
    ((2, 4), [8, 9])
    """

    def __init__(self, x, y=None, *, layout="auto", batch_size=32, shuffle=False, seed=None,
                 label_mode="int", class_names=None, validation_split=None, subset=None,
                 pad_to=None, pad_to_multiple_of=None, padding="post", truncating="post",
                 pad_value=0, pad_targets=False, bucket_boundaries=None, drop_remainder=False,
                 dtype=None, num_shards=None, shard_index=None, shuffle_block_size=None,
                 shuffle_window=None, read_ahead_bytes=64 * 2**20, crop_to=None,
                 crop_position="center", follow_links=False, verbose=True, storage_options=None,
                 cache_dir=None, cache_bytes=None, workers=1, use_multiprocessing=False,
                 max_queue_size=10):
        spec = BatchSpec(
            batch_size=batch_size, shuffle=shuffle, seed=seed, label_mode=label_mode,
            validation_split=validation_split, subset=subset, pad_to=pad_to,
            pad_to_multiple_of=pad_to_multiple_of, padding=padding, truncating=truncating,
            pad_value=pad_value, pad_targets=pad_targets, bucket_boundaries=bucket_boundaries,
            drop_remainder=drop_remainder, dtype=dtype, num_shards=num_shards,
            shard_index=shard_index, shuffle_block_size=shuffle_block_size,
            shuffle_window=shuffle_window, read_ahead_bytes=read_ahead_bytes, crop_to=crop_to,
            crop_position=crop_position)
        _checks.check_workers(workers, use_multiprocessing, max_queue_size)
        source = source_of(x, y, spec, layout=layout, class_names=class_names,
                           follow_links=follow_links, verbose=verbose,
                           storage_options=storage_options, cache_dir=cache_dir,
                           cache_bytes=cache_bytes)
        self._start(source, workers, use_multiprocessing, max_queue_size)

    @classmethod
    def from_index(cls, index, *, workers=1, use_multiprocessing=False, max_queue_size=10,
                   **kwargs) -> "NpyDataset":
        """An NpyDataset of an index built before (`keras_npy.build_index`),
        so that several datasets of one tree (a training and a validation
        subset, folds) read its headers once.

        Args:
            index: a `DatasetIndex`, built with the `layout`, `label_mode`
                and `class_names` this dataset would have been given.
            workers, use_multiprocessing, max_queue_size: as for `NpyDataset`.
            **kwargs: the batch arguments of `NpyDataset` (`batch_size`,
                `shuffle`, `seed`, `label_mode`, `validation_split`, `subset`,
                the padding and ordering arguments, `dtype`, shards, the
                block shuffle's and `read_ahead_bytes`).

        Example:

        >>> import tempfile, numpy as np, keras_npy
        >>> path = tempfile.mkdtemp() + "/x.npy"
        >>> np.save(path, np.zeros((10, 4), "float32"))
        >>> index = keras_npy.build_index(path)
        >>> train, val = (NpyDataset.from_index(index, validation_split=0.2, subset=s,
        ...                                     seed=1) for s in ("training", "validation"))
        >>> train.num_samples, val.num_samples
        (8, 2)
        """
        if not isinstance(index, DatasetIndex):
            raise TypeError("`index` must be a keras_npy.DatasetIndex (from "
                            f"keras_npy.build_index). Received: index={index!r}")
        source_arguments = sorted({"x", "y", "layout", "class_names", "follow_links"}
                                  & set(kwargs))
        if source_arguments:
            raise TypeError(f"NpyDataset.from_index() takes the batch arguments; the index "
                            f"already holds the data, so {source_arguments} cannot be passed.")
        spec = BatchSpec.from_keywords("NpyDataset.from_index", **kwargs)
        _checks.check_workers(workers, use_multiprocessing, max_queue_size)
        return cls._from_source(build_batch_source(index, spec), workers=workers,
                                use_multiprocessing=use_multiprocessing,
                                max_queue_size=max_queue_size)

    @classmethod
    def _from_source(cls, source, *, workers=1, use_multiprocessing=False,
                     max_queue_size=10) -> "NpyDataset":
        """An NpyDataset of a `BatchSource` built before (what
        `npy_dataset_from_directory` builds once for both front ends)."""
        dataset = cls.__new__(cls)
        dataset._start(source, workers, use_multiprocessing, max_queue_size)
        return dataset

    def _start(self, source, workers, use_multiprocessing, max_queue_size):
        keras.utils.PyDataset.__init__(self, workers=workers,
                                       use_multiprocessing=use_multiprocessing,
                                       max_queue_size=max_queue_size)
        self._source = source
        self.index, self.seed = source.index, source.spec.seed
        self.label_mode = source.spec.label_mode
        parallel = workers > 1 or (workers > 0 and use_multiprocessing)
        self._batch_workers = BatchWorkers(source, workers, use_multiprocessing,
                                           max_queue_size) if parallel else None
        self.epoch = 0
        #: The batch the next pass over the epoch (`fit`'s) starts at.
        self._start_batch = 0

    @property
    def workers(self) -> int:
        """What Keras sees: 1. NpyDataset reads ahead itself, with the `workers`
        it was given, so that Keras' enqueuer, which can
        serve a cut-short epoch's batches in the next one, is never used."""
        return 1

    @workers.setter
    def workers(self, value) -> None:
        self._workers = value

    @property
    def use_multiprocessing(self) -> bool:
        """What Keras sees: `False` (see `workers`)."""
        return False

    @use_multiprocessing.setter
    def use_multiprocessing(self, value) -> None:
        self._use_multiprocessing = value

    @property
    def class_names(self) -> list[str] | None:
        """The class names in label order, when labels are inferred classes."""
        return self.index.class_names

    @property
    def num_samples(self) -> int:
        """The samples of this subset and shard."""
        return self._source.order.num_samples

    @property
    def file_paths(self) -> list[str]:
        """The files of this dataset in unshuffled order: one per sample (layout
        "files"), or the row files (layout "rows"). For a dict `x`, those of its
        first input."""
        return self._source.file_paths()

    def __len__(self) -> int:
        return self._source.order.num_batches

    def __getitem__(self, i):
        if type(i) is int and 0 <= i < self._source.order.num_batches and (
                self._batch_workers is None):  # the common case, checked at once
            return self._source.batches(self.epoch, i, 1)
        if type(i) is not int and (isinstance(i, (bool, np.bool_)) or not isinstance(
                i, (int, np.integer))):
            raise TypeError(f"Batch index must be an integer. Received: {i!r}")
        num_batches = self._source.order.num_batches
        if not -num_batches <= i < num_batches:
            raise IndexError(f"Batch index {i} is out of range for a dataset of {num_batches} "
                             "batches.")
        return self._read(self.epoch, int(i) % num_batches)

    def to_tf_dataset(self):
        """The same batches as a `tf.data.Dataset`: what `keras_npy.npy_dataset`
        returns for this dataset's arguments (its first iteration is epoch 0)."""
        from keras_npy.tf_pipeline import public_dataset

        return public_dataset(self._source)

    def on_epoch_end(self) -> None:
        """Moves to the next epoch (with `shuffle`, a new order), from its start."""
        self.epoch, self._start_batch = self.epoch + 1, 0

    def get_state(self) -> dict:
        """The position of this dataset in its order, as a small
        JSON-serializable dict: the seed, the epoch, the next batch (the batch
        the next pass, `fit`'s, starts at), and a fingerprint of the data
        (file names, sizes and headers, labels) and of the arguments that
        decide the order. `keras_npy.BackupAndRestore` saves it with the
        weights, so that a preempted `fit` resumes at the next unseen batch.

        Example:

        >>> import tempfile, json, numpy as np
        >>> path = tempfile.mkdtemp() + "/x.npy"
        >>> np.save(path, np.zeros((10, 4), "float32"))
        >>> ds = NpyDataset(path, batch_size=4, shuffle=True, seed=3)
        >>> ds.on_epoch_end()
        >>> state = json.loads(json.dumps(ds.get_state()))
        >>> state["seed"], state["epoch"], state["batch"]
        (3, 1, 0)
        """
        return make_state(self._source, self.epoch, self._start_batch)

    def set_state(self, state: dict) -> None:
        """Moves this dataset to a position `get_state()` returned: its epoch,
        and the batch the next pass starts at (`fit` trains on the epoch's
        remaining batches only). A dataset made with `seed=None` takes the
        state's seed.

        Raises:
            ValueError: when the data differ from those the state was taken
                from (a file added, removed, resized or re-shaped, other
                labels), or the arguments that decide the order differ
                (batch size, shuffle, split, shards, ...), or the seed given
                differs: the error says what differs.
        """
        seed, epoch, batch = check_state(self._source, state, type(self).__name__)
        if seed != self._source.seed:
            self._source.reseed(seed)
            self.seed = seed
            if self._batch_workers is not None:
                self._batch_workers.close()  # they read the old order
        self.epoch, self._start_batch = epoch, batch

    def _overrides_batches(self) -> bool:
        """Whether a subclass makes its own batches (`__getitem__`, `__len__`)."""
        cls = type(self)
        return any(getattr(cls, name) is not getattr(NpyDataset, name)
                   for name in ("__getitem__", "__len__"))

    def _reads_source(self) -> bool:
        """Whether the batches are this class's, read in the calling thread: then
        the `tf.data` pipeline of the source gives the same batches."""
        return self._batch_workers is None and not self._overrides_batches()

    def _batch_for_fit(self, epoch: int, i: int):
        """Batch `i` of `epoch` for `fit` (a subclass's `self[i]`, of its epoch)."""
        if self._overrides_batches():
            return self[i]
        return self._read(epoch, i)

    def _read(self, epoch: int, i: int):
        """Batch `i` (in range) of `epoch`, here or from the read-ahead workers."""
        if self._batch_workers is None:
            return self._source.batches(epoch, i, 1)
        return self._batch_workers.get(epoch, i, len(self))

    def statistics(self, axis=-1, verbose: bool = True):
        """Mean and variance of the unpadded samples of this subset (all of
        it, whatever the shard: every process gets the same), in one streaming
        float64 pass.

        Args:
            axis: the axis or axes, in terms of a batch (never 0), that keep one
                mean and variance per index, as `keras.layers.Normalization`'s
                `axis`; `None` for one mean and variance. Defaults to `-1`.
            verbose: whether to show a progress bar on long scans. Defaults to
                `True`.

        Returns:
            `(mean, variance)` float64 arrays (population variance); for a dict
            `x`, a dict of them.
        """
        from keras_npy.timeseries import WindowIndex

        if isinstance(self.index, WindowIndex):
            raise TypeError("statistics() of the windows of npy_timeseries_dataset would count "
                            "each row once per window; take those of the series' rows: "
                            "keras_npy.normalization_layer(data) (or NpyDataset(data)"
                            ".statistics()).")
        ids = self._source.order.sample_ids
        stats = {name: sample_statistics(reader.index, ids, axis, name=name, verbose=verbose)
                 for name, reader in self._source.readers.items()}
        return stats if isinstance(self.index.x, dict) else stats["x"]

    def __repr__(self) -> str:
        return (f"NpyDataset({self.num_samples} samples in {len(self)} batches, "
                f"{self.index.x!r})")

