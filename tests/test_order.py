import pickle

import numpy as np
import pytest

from keras_npy.order import Order as _Order
from keras_npy.spec import BatchSpec


def Order(num_samples, *, lengths=None, block_size=1, window=1, **spec):  # noqa: N802
    """An `Order` of a `BatchSpec` made of the batch keywords `spec`."""
    return _Order(num_samples, BatchSpec(**spec), lengths=lengths, block_size=block_size,
                  window=window)


def _epoch(order, epoch):
    return [np.asarray(order.batch(epoch, i)) for i in range(order.num_batches)]


def test_unshuffled_batches_are_sequential_with_a_short_last_batch():
    order = Order(10, batch_size=4, shuffle=False, seed=0)
    assert [b.tolist() for b in _epoch(order, 0)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [b.tolist() for b in _epoch(order, 5)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert order.batches(0, 1, 2) == range(4, 10)  # consecutive ids come as a range
    dropped = Order(10, batch_size=4, shuffle=False, seed=0, drop_remainder=True)
    assert [b.tolist() for b in _epoch(dropped, 0)] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_shuffle_is_global_seeded_exactly_once_and_new_each_epoch():
    order = Order(1000, batch_size=100, shuffle=True, seed=7)
    first = np.concatenate(_epoch(order, 0))
    assert sorted(first.tolist()) == list(range(1000))
    assert order.batch(0, 0).max() - order.batch(0, 0).min() > 800  # spans the whole range
    again = Order(1000, batch_size=100, shuffle=True, seed=7)
    assert np.array_equal(np.concatenate(_epoch(again, 0)), first)
    second = np.concatenate(_epoch(order, 1))
    assert sorted(second.tolist()) == list(range(1000)) and not np.array_equal(first, second)
    other_seed = Order(1000, batch_size=100, shuffle=True, seed=8)
    assert not np.array_equal(np.concatenate(_epoch(other_seed, 0)), first)
    assert np.array_equal(order.batch(0, 3), first[300:400])  # back to epoch 0


@pytest.mark.parametrize("shuffle", [False, True])
def test_validation_split_partitions_exactly(shuffle):
    kwargs = dict(batch_size=8, shuffle=shuffle, seed=3, validation_split=0.25)
    train = Order(103, subset="training", **kwargs)
    val = Order(103, subset="validation", **kwargs)
    assert val.num_samples == 25 and train.num_samples == 78
    both = np.concatenate([train.sample_ids, val.sample_ids])
    assert sorted(both.tolist()) == list(range(103))
    if not shuffle:  # Keras: the last fraction, in order
        assert val.sample_ids.tolist() == list(range(78, 103))
    else:
        assert val.sample_ids.tolist() != list(range(78, 103))
    # The split does not move between epochs.
    assert set(np.concatenate(_epoch(train, 4)).tolist()) == set(train.sample_ids.tolist())


def test_shards_partition_the_split():
    kwargs = dict(batch_size=6, shuffle=True, seed=1, validation_split=0.2, subset="training")
    shards = [Order(50, num_shards=3, shard_index=k, **kwargs) for k in range(3)]
    ids = [set(np.concatenate(_epoch(s, 0)).tolist()) for s in shards]
    # 40 samples: 6 global batches of 6, and one of 4 cut to 3, one per shard
    assert [s.num_samples for s in shards] == [13, 13, 13]
    assert [s.num_batches for s in shards] == [7, 7, 7]
    assert sum(len(i) for i in ids) == 39 and len(set.union(*ids)) == 39


@pytest.mark.parametrize("kwargs", [
    dict(shuffle=False),
    dict(shuffle=True, seed=3),
    dict(shuffle=True, seed=3, validation_split=0.3, subset="validation"),
    dict(shuffle="block", seed=2, block_size=5, window=3),
    dict(shuffle=True, seed=4, drop_remainder=True),
    dict(shuffle=True, seed=5, lengths=np.arange(203) % 17, bucket_boundaries=[4, 9]),
])
def test_global_steps_hold_the_same_samples_at_any_number_of_shards(kwargs):
    whole = Order(203, batch_size=8, **kwargs)
    for num_shards in (2, 4, 8):
        shards = [Order(203, batch_size=8, num_shards=num_shards, shard_index=k, **kwargs)
                  for k in range(num_shards)]
        assert len({s.num_batches for s in shards}) == 1  # no process waits on another
        for epoch in range(2):
            steps = [i for i in range(whole.num_batches)
                     if len(whole.batch(epoch, i)) >= num_shards]
            assert shards[0].num_batches == len(steps)
            for i, step in enumerate(steps):
                expected = np.asarray(whole.batch(epoch, step))
                expected = expected[:len(expected) - len(expected) % num_shards]
                parts = [np.asarray(s.batch(epoch, i)) for s in shards]
                assert len({len(p) for p in parts}) == 1
                np.testing.assert_array_equal(np.concatenate(parts), expected)
                assert all(s.global_step(epoch, i) == step for s in shards)
                assert shards[0].shard_batch(epoch, step) == i
                for s, part in zip(shards, parts):  # read ahead: its own samples, no others
                    ahead = s.window_ids(epoch, i)
                    if ahead is not None:
                        assert set(part.tolist()) <= set(ahead.tolist())


def test_buckets_group_similar_lengths():
    lengths = np.array([1, 9, 2, 8, 3, 7, 15, 4, 12, 5], np.int64)
    order = Order(10, batch_size=2, shuffle=False, seed=0, lengths=lengths,
                  bucket_boundaries=[5, 10])
    batches = [b.tolist() for b in _epoch(order, 0)]
    assert batches == [[0, 2], [4, 7], [1, 3], [5, 9], [6, 8]]
    shuffled = Order(10, batch_size=2, shuffle=True, seed=0, lengths=lengths,
                     bucket_boundaries=[5, 10])
    for epoch in range(3):
        batches = _epoch(shuffled, epoch)
        assert sorted(np.concatenate(batches).tolist()) == list(range(10))
        for b in batches:
            assert len(set(np.searchsorted([5, 10], lengths[b], side="right"))) == 1


def test_pickles_small_and_gives_the_same_batches():
    order = Order(2_000_000, batch_size=256, shuffle=True, seed=2)
    copy = pickle.loads(pickle.dumps(order))
    assert len(pickle.dumps(order)) < 4096
    assert np.array_equal(copy.batch(3, 17), order.batch(3, 17))


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "`batch_size` must be a positive integer. Received: batch_size=0"),
    (dict(batch_size=2.0), "`batch_size` must be a positive integer. Received: batch_size=2.0"),
    (dict(validation_split=1.5, subset="training"),
     "`validation_split` must be between 0 and 1, received: 1.5"),
    (dict(validation_split=0.2), "If `subset` is set, `validation_split` must be set, and "
                                 "inversely."),
    (dict(validation_split=0.2, subset="both"),
     '`subset` must be either "training" or "validation", received: both'),
    (dict(validation_split=0.2, subset="training", shuffle=True, seed=None),
     "If using `validation_split` and shuffling the data, you must provide a `seed` argument, "
     "to make sure that there is no overlap between the training and validation subset."),
    (dict(num_shards=2, shard_index=2),
     "`shard_index` must be an integer in [0, 2), num_shards being 2. Received: shard_index=2"),
    (dict(num_shards=0), "`num_shards` must be a positive integer. Received: num_shards=0"),
    (dict(num_shards=3, shard_index=0),
     "`batch_size` must be divisible by `num_shards`: batch_size is the global batch, of which "
     "each of the 3 shards reads an equal part. Received: batch_size=4, num_shards=3"),
    (dict(num_shards=2, shard_index=0, shuffle=True, seed=None),
     "With shards, a shuffled dataset needs a `seed`: every process must draw the same order, "
     "or the shards would overlap and miss samples. Pass the same seed to every process. "
     "Received: seed=None"),
    (dict(num_shards=2, shard_index=None),
     "`num_shards` was given without `shard_index`: pass both (or num_shards=1 to read every "
     "sample). Received: num_shards=2"),
    (dict(num_shards=None, shard_index=1),
     "`shard_index` was given without `num_shards`: pass both, or neither to follow the run. "
     "Received: shard_index=1"),
    (dict(bucket_boundaries=[5, 5]),
     "`bucket_boundaries` must be a non-empty list of strictly increasing positive integers. "
     "Received: bucket_boundaries=[5, 5]"),
    (dict(seed=-1), "`seed` must be None or a non-negative integer. Received: seed=-1"),
])
def test_bad_arguments(kwargs, message):
    arguments = dict(batch_size=4, shuffle=False, seed=0, validation_split=None, subset=None,
                     num_shards=1, shard_index=0, drop_remainder=False, bucket_boundaries=None)
    arguments.update(kwargs)
    with pytest.raises(ValueError) as info:
        BatchSpec(**arguments)
    assert str(info.value) == message


def test_shuffle_must_be_a_bool_or_block():
    with pytest.raises(TypeError) as info:
        BatchSpec(batch_size=4, shuffle="yes", seed=0)
    assert str(info.value) == ('`shuffle` must be True, False or "block". '
                               "Received: shuffle='yes'")


@pytest.mark.parametrize("kwargs, consecutive", [
    (dict(), True),
    (dict(shuffle=True), False),
    (dict(validation_split=0.5, subset="validation"), True),
    (dict(num_shards=3, shard_index=1), False),
    (dict(lengths=np.arange(20), bucket_boundaries=[5]), False),
])
def test_consecutive_batches_are_flagged(kwargs, consecutive):
    order = Order(20, batch_size=3, **{"shuffle": False, "seed": 0, **kwargs})
    assert order.consecutive is consecutive
    if consecutive:
        for i in range(order.num_batches):
            batch = order.batch(0, i)
            assert (np.diff(batch) == 1).all()


def _block_of(ids, block_size):
    return np.asarray(ids) // block_size


def test_block_shuffle_is_exactly_once_seeded_and_new_each_epoch():
    order = Order(1000, batch_size=64, shuffle="block", seed=3, block_size=50, window=4)
    first = np.concatenate(_epoch(order, 0))
    assert sorted(first.tolist()) == list(range(1000))
    again = Order(1000, batch_size=64, shuffle="block", seed=3, block_size=50, window=4)
    assert np.array_equal(np.concatenate(_epoch(again, 0)), first)
    second = np.concatenate(_epoch(order, 1))
    assert sorted(second.tolist()) == list(range(1000)) and not np.array_equal(first, second)
    # Each window of 4 blocks (200 samples) is a shuffle of exactly those blocks.
    for w in range(5):
        window = first[w * 200:(w + 1) * 200]
        blocks = np.unique(_block_of(window, 50))
        assert len(blocks) == 4
        assert sorted(window.tolist()) == sorted(
            np.concatenate([np.arange(b * 50, b * 50 + 50) for b in blocks]).tolist())
    assert not np.array_equal(first[:200], np.sort(first[:200]))  # shuffled within


def test_block_shuffle_window_ids_are_the_blocks_a_batch_draws_from():
    order = Order(1000, batch_size=64, shuffle="block", seed=3, block_size=50, window=4)
    ids = np.concatenate(_epoch(order, 0))  # windows: positions 0-199, 200-399, ...
    for i in range(order.num_batches):
        first, last = i * 64 // 200, (min(i * 64 + 64, 1000) - 1) // 200
        expected = np.sort(ids[first * 200:(last + 1) * 200])
        np.testing.assert_array_equal(order.window_ids(0, i), expected)
    new = [order.window_ids(0, i, new_only=True) for i in range(order.num_batches)]
    assert sorted(np.concatenate(new).tolist()) == list(range(1000))  # each window once
    assert Order(100, batch_size=8, shuffle=True, seed=0).window_ids(0, 0) is None


@pytest.mark.parametrize("kwargs", [
    dict(validation_split=0.3, subset="training"),
    dict(validation_split=0.3, subset="validation"),
    dict(num_shards=4, shard_index=1),
    dict(validation_split=0.2, subset="training", num_shards=2, shard_index=0),
    dict(drop_remainder=True),
])
def test_block_shuffle_composes_with_splits_shards_and_drop_remainder(kwargs):
    exact = Order(997, batch_size=32, shuffle=True, seed=5, **kwargs)
    block = Order(997, batch_size=32, shuffle="block", seed=5, block_size=40, window=3,
                  **kwargs)
    assert block.num_batches == exact.num_batches
    np.testing.assert_array_equal(block.sample_ids, exact.sample_ids)  # the same subset
    for epoch in range(2):
        got = np.concatenate(_epoch(block, epoch))
        expected = exact.sample_ids if not kwargs.get("drop_remainder") else None
        if kwargs.get("num_shards"):  # a part of each global batch: other samples each epoch
            assert len(set(got.tolist())) == len(got) == block.num_samples
            assert set(got.tolist()) <= set(exact.sample_ids.tolist())
        elif expected is not None:
            assert sorted(got.tolist()) == expected.tolist()
        else:
            assert len(set(got.tolist())) == len(got) == 997 // 32 * 32


@pytest.mark.parametrize("kwargs, message", [
    (dict(shuffle=True, shuffle_block_size=100),
     '`shuffle_block_size` sets up the block shuffle; pass shuffle="block" with it. '
     "Received: shuffle=True, shuffle_block_size=100"),
    (dict(shuffle="block", shuffle_block_size=0),
     "`shuffle_block_size` must be None or a positive integer. Received: "
     "shuffle_block_size=0"),
    (dict(shuffle="block", shuffle_window=2.5),
     "`shuffle_window` must be None or a positive integer. Received: shuffle_window=2.5"),
])
def test_bad_block_shuffle_arguments(kwargs, message):
    with pytest.raises(ValueError) as info:
        BatchSpec(**kwargs)
    assert str(info.value) == message
