"""Which samples form batch `i` of epoch `e`: split, shard, shuffle, buckets.

The order is a pure function of the arguments and `(seed, epoch)`:

1. **split**: with `validation_split`, the samples are permuted with `seed`
   (or kept in order when `shuffle=False`, as Keras does) and the last
   `int(validation_split * n)` of them are the validation subset, the rest
   the training subset; the two partition the data exactly. This is fixed
   once, before any epoch shuffle.
2. **shard**: the selected samples are dealt round-robin to `num_shards`
   shards; shard `shard_index` keeps its own.
3. **shuffle**: each epoch permutes the shard's samples globally with
   `np.random.default_rng((seed, epoch))`, not batch by batch.
4. **buckets**: with `bucket_boundaries`, samples are grouped by the length
   of their first axis; each bucket is cut into batches, and with `shuffle`
   the batches of all buckets are interleaved in a random order.
5. **batches**: consecutive runs of `batch_size`; the last, smaller batch of
   each group is kept unless `drop_remainder`.

Every selected sample appears exactly once per epoch (minus what
`drop_remainder` drops), whichever process or thread asks.
"""

from __future__ import annotations

import threading

import numpy as np

from keras_npy import _checks


class Order:
    """The batches of every epoch, as arrays of sample ids.

    Args:
        num_samples: the number of samples in the index.
        batch_size: samples per batch.
        shuffle: whether each epoch draws a new global permutation.
        seed: the seed of the split and of every epoch's permutation.
        validation_split: fraction of samples held out for validation, or
            `None`.
        subset: `"training"` or `"validation"` when `validation_split` is
            set.
        num_shards: the number of shards the selected samples are dealt to.
        shard_index: the shard kept.
        drop_remainder: whether a last batch smaller than `batch_size` is
            dropped.
        lengths: the length (first axis) of each sample, `int64`, needed only
            with `bucket_boundaries`.
        bucket_boundaries: increasing lengths; bucket `k` holds samples with
            `boundaries[k-1] <= length < boundaries[k]`.
    """

    def __init__(self, num_samples: int, *, batch_size: int, shuffle: bool, seed: int,
                 validation_split: float | None = None, subset: str | None = None,
                 num_shards: int = 1, shard_index: int = 0, drop_remainder: bool = False,
                 lengths: np.ndarray | None = None,
                 bucket_boundaries: list[int] | None = None):
        self._arguments = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_remainder = drop_remainder
        self.sample_ids = select_samples(num_samples, validation_split, subset, shuffle, seed,
                                         num_shards, shard_index)
        self.buckets = None  # the bucket of each selected sample
        if bucket_boundaries is not None:
            self.buckets = np.searchsorted(np.asarray(bucket_boundaries),
                                            lengths[self.sample_ids], side="right")
        ids = self.sample_ids
        #: Whether every batch is a run of consecutive sample ids (no shuffle,
        #: no buckets, a contiguous selection), which readers need not check.
        self.consecutive = bool(not shuffle and self.buckets is None and (
            len(ids) == 0 or ids[-1] - ids[0] == len(ids) - 1))
        self._lock = threading.Lock()
        self._cached = None  # (epoch, ordered sample ids, batch starts)
        self.num_batches = len(self._plan(0)[1]) - 1

    @property
    def num_samples(self) -> int:
        """The number of samples selected (split and shard applied)."""
        return len(self.sample_ids)

    def batch(self, epoch: int, i: int) -> np.ndarray:
        """The sample ids of batch `i` of `epoch`, in batch order."""
        return self.batches(epoch, i, 1)

    def batches(self, epoch: int, first: int, count: int) -> np.ndarray:
        """The sample ids of batches `first` to `first + count - 1` of `epoch`,
        one batch after the other."""
        ids, starts = self._plan(epoch)
        return ids[starts[first]:starts[first + count]]

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if self._cached is None or self._cached[0] != epoch:
                self._cached = (epoch, *self._make_plan(epoch))
            return self._cached[1:]

    def _make_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng((self.seed, epoch))
        positions = np.arange(len(self.sample_ids))
        if self.shuffle:
            positions = rng.permutation(positions)
        groups = [positions] if self.buckets is None else [
            positions[self.buckets[positions] == b] for b in np.unique(self.buckets)]
        batches = [chunk for group in groups for chunk in self._cut(group)]
        if self.shuffle and self.buckets is not None:
            batches = [batches[k] for k in rng.permutation(len(batches))]
        sizes = [len(b) for b in batches]
        ordered = np.concatenate(batches) if batches else positions[:0]
        return self.sample_ids[ordered], np.concatenate([[0], np.cumsum(sizes)]).astype(int)

    def _cut(self, group: np.ndarray) -> list[np.ndarray]:
        stop = len(group) - len(group) % self.batch_size if self.drop_remainder else len(group)
        return [group[k:k + self.batch_size] for k in range(0, stop, self.batch_size)]

    def __getstate__(self):
        return self._arguments  # the ids are recomputed: a pickle holds no arrays

    def __setstate__(self, arguments):
        self.__init__(**arguments)


def select_samples(num_samples: int, validation_split: float | None, subset: str | None,
                   shuffle: bool, seed: int, num_shards: int, shard_index: int) -> np.ndarray:
    """The sorted ids of the samples of one subset and shard (`int64`)."""
    ids = np.arange(num_samples, dtype=np.int64)
    if validation_split:
        permuted = np.random.default_rng(seed).permutation(ids) if shuffle else ids
        num_val = int(validation_split * num_samples)
        chosen = permuted[num_samples - num_val:] if subset == "validation" else (
            permuted[:num_samples - num_val])
        ids = np.sort(chosen)
    return ids[shard_index::num_shards]


def check_order_arguments(batch_size, shuffle, seed, validation_split, subset, num_shards,
                          shard_index, drop_remainder, bucket_boundaries,
                          allow_both: bool = False) -> None:
    """Checks the ordering arguments; the messages are Keras' where Keras has one."""
    _checks.check_batch_size(batch_size)
    _checks.check_bool("shuffle", shuffle)
    _checks.check_bool("drop_remainder", drop_remainder)
    _checks.check_seed(seed)
    _checks.check_validation_split(validation_split, subset, shuffle, seed, allow_both)
    _checks.check_shards(num_shards, shard_index)
    _checks.check_bucket_boundaries(bucket_boundaries)
