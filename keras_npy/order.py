"""Which samples form batch `i` of epoch `e`: split, shard, shuffle, buckets.

The order is a pure function of the arguments and `(seed, epoch)`:

1. **split**: with `validation_split`, the samples are permuted with `seed`
   (or kept in order when `shuffle=False`, as Keras does) and the last
   `int(validation_split * n)` of them are the validation subset, the rest
   the training subset; the two partition the data exactly. This is fixed
   once, before any epoch shuffle.
2. **shuffle**: each epoch permutes the selected samples globally with
   `np.random.default_rng((seed, epoch))`, not batch by batch. The block
   shuffle (`shuffle="block"`), for data far larger than memory, cuts the
   selected samples (in index order: rows in file order, files in name order)
   into blocks of `block_size` consecutive samples, permutes the blocks, and
   permutes the samples within each window of `window` consecutive blocks of
   that order: still every sample once per epoch, and each window is read as
   `window` long stretches of the disk instead of one short read per sample.
3. **buckets**: with `bucket_boundaries`, samples are grouped by the length
   of their first axis; each bucket is cut into batches, and with `shuffle`
   the batches of all buckets are interleaved in a random order.
4. **batches**: consecutive runs of `batch_size`; the last, smaller batch of
   each group is kept unless `drop_remainder`. These are the *global*
   batches, the same whatever the number of shards.
5. **shard**: with `num_shards` P, each global batch is cut into P equal,
   consecutive parts, and shard `shard_index` reads its part: global step
   `s` of epoch `e` holds the same samples whether P is 1, 2 or 4, the parts
   of P processes make it whole (in shard order, as Keras' distributions
   assemble a global batch from each process's part), and every shard has
   the same number of batches (a collective step never waits for a process
   that has run out). A global batch of `n` samples with `n % P != 0` (the
   last, smaller batch of a group) loses its last `n % P` samples; one of
   fewer than P samples is dropped on every shard.

Every selected sample appears exactly once per epoch, on one shard (minus
what `drop_remainder` and the cut into equal parts drop), whichever process
or thread asks.
"""

from __future__ import annotations

import threading

import numpy as np



class Order:
    """The batches of every epoch, as arrays of sample ids: where each batch
    starts and ends is decided here and nowhere else.

    Args:
        num_samples: the number of samples in the index.
        spec: the `BatchSpec` (`batch_size`, `shuffle`, `seed`, the split,
            the shard, `drop_remainder`, `bucket_boundaries`).
        lengths: the length (first axis) of each sample, `int64`, needed only
            with `bucket_boundaries`.
        block_size: with `shuffle="block"`, the samples of a block.
        window: with `shuffle="block"`, the blocks whose samples are shuffled
            together.
    """

    def __init__(self, num_samples: int, spec, *, lengths: np.ndarray | None = None,
                 block_size: int = 1, window: int = 1):
        self._arguments = (num_samples, spec, lengths, block_size, window)
        batch_size, shuffle = spec.batch_size, spec.shuffle
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, spec.seed
        self.drop_remainder, self.block_size, self.window = spec.drop_remainder, block_size, window
        self.sample_ids = select_samples(num_samples, spec.validation_split, spec.subset,
                                         shuffle, spec.seed)
        #: The shards each global batch is cut into, and the one read here.
        self.num_shards, self.shard_index = spec.num_shards, spec.shard_index
        self.buckets = None  # the bucket of each selected sample
        if spec.bucket_boundaries is not None:
            self.buckets = np.searchsorted(np.asarray(spec.bucket_boundaries),
                                            lengths[self.sample_ids], side="right")
        ids = self.sample_ids
        #: Whether every batch is a run of consecutive sample ids (no shuffle,
        #: no buckets, a contiguous selection), which readers need not check.
        self.consecutive = bool(not shuffle and self.buckets is None and self.num_shards == 1
                                and (len(ids) == 0 or ids[-1] - ids[0] == len(ids) - 1))
        self._base = int(ids[0]) if len(ids) else 0
        self._stop = len(ids) - len(ids) % batch_size if self.drop_remainder else len(ids)
        self._blocks = shuffle == "block" and self.buckets is None
        self._lock = threading.Lock()
        self._cached = None  # (epoch, ordered sample ids, batch starts, windows, steps)
        _, starts0, _, steps0 = self._plan(0)
        self.num_batches = len(starts0) - 1
        #: The global batches of an epoch (the same in every epoch).
        self.num_global_batches = self.num_batches if steps0 is None else int(steps0[-1])
        #: The samples selected (the split applied); with shards, those of
        #: this shard's parts of an epoch's batches (the same number in every
        #: epoch, not the same samples).
        self.num_samples = len(ids) if self.num_shards == 1 else int(starts0[-1])
        #: The samples of a batch of this shard (`batch_size // num_shards`).
        self.shard_batch_size = batch_size // self.num_shards
        #: How many batches, from the first, hold `shard_batch_size` samples in
        #: every epoch (all but a last, smaller one; without buckets).
        self.full_batches = len(ids) // batch_size if self.buckets is None else 0

    def batch(self, epoch: int, i: int) -> np.ndarray:
        """The sample ids of batch `i` of `epoch`, in batch order."""
        return self.batches(epoch, i, 1)

    def batches(self, epoch: int, first: int, count: int):
        """The sample ids of batches `first` to `first + count - 1` of `epoch`,
        one batch after the other: an `int64` array, or a `range` when the
        order is `consecutive`."""
        if self.consecutive:  # every epoch alike: no plan to look up
            start = first * self.batch_size
            return range(self._base + start,
                         self._base + min(start + count * self.batch_size, self._stop))
        ids, starts = self._plan(epoch)[:2]
        return ids[starts[first]:starts[first + count]]

    def global_step(self, epoch: int, i: int) -> int:
        """The global batch that batch `i` of this shard is a part of (`i`
        itself, unless a global batch of fewer than `num_shards` samples was
        dropped before it); `i == num_batches` gives the global count."""
        if self.num_shards == 1 or i == self.num_batches:
            return i if self.num_shards == 1 else self.num_global_batches
        return int(self._plan(epoch)[3][i])

    def shard_batch(self, epoch: int, step: int) -> int:
        """The first batch of this shard at or after global batch `step`."""
        if self.num_shards == 1:
            return step
        return int(np.searchsorted(self._plan(epoch)[3], step))

    def window_ids(self, epoch: int, i: int, new_only: bool = False) -> np.ndarray | None:
        """With the block shuffle, the sample ids of the windows that batch `i`
        draws from (`new_only`: that start in it), sorted: what reading it
        ahead means (whole blocks, each one stretch of the disk); `None` for
        the other orders."""
        if not self._blocks:
            return None
        _, starts, windows, steps = self._plan(epoch)
        bounds, blocks, global_starts, mine = windows
        if starts[i + 1] == starts[i]:
            return self.sample_ids[:0]
        step = i if steps is None else steps[i]  # windows are cut in the global order
        begin, end = global_starts[step], global_starts[step + 1] - 1
        first = np.searchsorted(bounds, begin, side="right") - 1
        last = np.searchsorted(bounds, end, side="right") - 1
        if new_only and bounds[first] < begin:
            first += 1  # began in an earlier batch
        if first > last:
            return self.sample_ids[:0]
        chosen = np.sort(np.concatenate(blocks[first:last + 1]))
        positions = _block_positions(chosen, self.block_size, len(self.sample_ids))
        if mine is not None:  # only what this shard's parts hold
            positions = positions[mine[positions]]
        return self.sample_ids[positions]

    def _plan(self, epoch: int):
        with self._lock:
            if self._cached is None or self._cached[0] != epoch:
                self._cached = (epoch, *self._shard(*self._make_plan(epoch)))
            return self._cached[1:]

    def _shard(self, ids: np.ndarray, starts: np.ndarray, windows, positions: np.ndarray):
        """This shard's part of the global plan: `(ids, starts, windows, the
        global step of each batch and the global count, or None unsharded)`.
        With the block shuffle, windows gain the global batch starts and
        whether this shard reads each position (in `sample_ids`) this epoch."""
        if self.num_shards == 1:
            if windows is not None:
                windows = (*windows, starts, None)
            return ids, starts, windows, None
        sizes = np.diff(starts) // self.num_shards
        steps = np.flatnonzero(sizes)  # a global batch too small for every shard is dropped
        sizes = sizes[steps]
        begins = starts[steps] + self.shard_index * sizes
        offsets = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        taken = np.repeat(begins, sizes) + offsets  # global places of this shard's samples
        shard_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        if windows is not None:
            mine = np.zeros(len(self.sample_ids), bool)
            mine[positions[taken]] = True
            windows = (*windows, starts, mine)
        return ids[taken], shard_starts, windows, np.append(steps, len(starts) - 1)

    def _make_plan(self, epoch: int):
        """The global plan of `epoch`: `(ordered sample ids, batch starts,
        windows, the position in sample_ids of each ordered sample)`."""
        rng = np.random.default_rng((self.seed, epoch))
        positions, windows = np.arange(len(self.sample_ids)), None
        if self.shuffle == "block":
            positions, windows = block_shuffle(len(positions), self.block_size, self.window, rng)
        elif self.shuffle:
            positions = rng.permutation(positions)
        if self.buckets is None:  # runs of the permutation: no list of batches to cut
            stop = self._stop
            count = -(-stop // self.batch_size)
            starts = np.minimum(np.arange(count + 1, dtype=np.int64) * self.batch_size, stop)
            return self.sample_ids[positions[:stop]], starts, windows, positions[:stop]
        groups = [positions[self.buckets[positions] == b] for b in np.unique(self.buckets)]
        batches = [chunk for group in groups for chunk in self._cut(group)]
        if self.shuffle:
            batches = [batches[k] for k in rng.permutation(len(batches))]
            windows = None  # batches of a bucket come from anywhere
        sizes = [len(b) for b in batches]
        ordered = np.concatenate(batches) if batches else positions[:0]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return self.sample_ids[ordered], starts, windows, ordered

    def _cut(self, group: np.ndarray) -> list[np.ndarray]:
        stop = len(group) - len(group) % self.batch_size if self.drop_remainder else len(group)
        return [group[k:k + self.batch_size] for k in range(0, stop, self.batch_size)]

    def with_spec(self, spec) -> "Order":
        """This order for another spec of the same data (another seed)."""
        num_samples, _, lengths, block_size, window = self._arguments
        return Order(num_samples, spec, lengths=lengths, block_size=block_size, window=window)

    def __getstate__(self):
        return self._arguments  # the ids are recomputed: a pickle holds fewer arrays

    def __setstate__(self, arguments):
        num_samples, spec, lengths, block_size, window = arguments
        self.__init__(num_samples, spec, lengths=lengths, block_size=block_size, window=window)


def block_shuffle(n: int, block_size: int, window: int, rng) -> tuple[np.ndarray, tuple]:
    """A permutation of `range(n)` that permutes blocks of `block_size`
    consecutive positions, then the positions within each window of `window`
    blocks of that order. Returns it and `(window bounds, blocks of each
    window)`: window `w` holds positions `bounds[w]` to `bounds[w + 1] - 1` of
    the permutation, drawn from the blocks `blocks[w]`."""
    num_blocks = -(-n // block_size)
    blocks = rng.permutation(num_blocks)
    chunks, bounds, windows = [], [0], []
    for w in range(0, num_blocks, window):
        chosen = blocks[w:w + window]
        positions = _block_positions(chosen, block_size, n)
        chunks.append(rng.permutation(positions))
        bounds.append(bounds[-1] + len(positions))
        windows.append(chosen)
    permutation = np.concatenate(chunks) if chunks else np.arange(0)
    return permutation, (np.array(bounds, np.int64), windows)


def _block_positions(blocks: np.ndarray, block_size: int, n: int) -> np.ndarray:
    """The positions of `blocks` (each `block_size` long, the last one cut at
    `n`), block after block."""
    starts = blocks.astype(np.int64) * block_size
    lengths = np.minimum(block_size, n - starts)
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + offsets


def select_samples(num_samples: int, validation_split: float | None, subset: str | None,
                   shuffle: bool, seed: int) -> np.ndarray:
    """The sorted ids of the samples of one subset (`int64`)."""
    ids = np.arange(num_samples, dtype=np.int64)
    if validation_split:
        permuted = np.random.default_rng(seed).permutation(ids) if shuffle else ids
        num_val = int(validation_split * num_samples)
        chosen = permuted[num_samples - num_val:] if subset == "validation" else (
            permuted[:num_samples - num_val])
        ids = np.sort(chosen)
    return ids
