"""Argument checks, each in one place: `BatchSpec` runs those of the batch
keywords once per entry point, so the same bad argument gives the same
message everywhere. Messages follow Keras' where Keras has the same
argument."""

from __future__ import annotations

import numbers
import os

import numpy as np

PADDING_SIDES = ("pre", "post")


def check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or (
            batch_size < 1):
        raise ValueError("`batch_size` must be a positive integer. "
                         f"Received: batch_size={batch_size!r}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False. Received: {name}={value!r}")


def check_shuffle(shuffle) -> None:
    if not (isinstance(shuffle, (bool, np.bool_)) or (isinstance(shuffle, str)
                                                      and shuffle == "block")):
        raise TypeError('`shuffle` must be True, False or "block". '
                        f"Received: shuffle={shuffle!r}")


def check_seed(seed) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(
            seed, numbers.Integral) or seed < 0):
        raise ValueError(f"`seed` must be None or a non-negative integer. Received: seed={seed!r}")


def check_validation_split(validation_split, subset, shuffle, seed, allow_both: bool) -> None:
    """Keras' `check_validation_split_arg`, with "both" only where it is allowed."""
    if validation_split is not None and (
            isinstance(validation_split, bool)
            or not isinstance(validation_split, numbers.Real)
            or not 0 < validation_split < 1):
        raise ValueError("`validation_split` must be between 0 and 1, "
                         f"received: {validation_split}")
    subsets = ("training", "validation", "both") if allow_both else ("training", "validation")
    if subset not in (*subsets, None):
        names = '"training" or "validation"' if not allow_both else (
            '"training", "validation" or "both"')
        raise ValueError(f"`subset` must be either {names}, received: {subset}")
    if (validation_split or subset) and not (validation_split and subset):
        raise ValueError("If `subset` is set, `validation_split` must be set, and inversely.")
    if validation_split and shuffle and seed is None:
        raise ValueError("If using `validation_split` and shuffling the data, you must provide "
                         "a `seed` argument, to make sure that there is no overlap between the "
                         "training and validation subset.")


def check_shards(num_shards, shard_index, batch_size=1, shuffle=False, seed=None,
                 run=None) -> None:
    if isinstance(num_shards, bool) or not isinstance(num_shards, numbers.Integral) or (
            num_shards < 1):
        raise ValueError("`num_shards` must be a positive integer. "
                         f"Received: num_shards={num_shards!r}")
    found = "" if run is None else f" (the shards of the run: {run.found})"
    if isinstance(shard_index, bool) or not isinstance(shard_index, numbers.Integral) or not (
            0 <= shard_index < num_shards):
        raise ValueError(f"`shard_index` must be an integer in [0, {num_shards}), "
                         f"num_shards being {num_shards}{found}. Received: "
                         f"shard_index={shard_index!r}")
    if batch_size % num_shards:
        raise ValueError(
            f"`batch_size` must be divisible by `num_shards`{found}: batch_size is the global "
            f"batch, of which each of the {num_shards} shards reads an equal part. "
            f"Received: batch_size={batch_size}, num_shards={num_shards}")
    if num_shards > 1 and shuffle and seed is None:
        raise ValueError(
            f"With shards{found}, a shuffled dataset needs a `seed`: every process must draw "
            "the same order, or the shards would overlap and miss samples. Pass the same "
            "seed to every process. Received: seed=None")


def check_bucket_boundaries(boundaries) -> None:
    if boundaries is None:
        return
    values = list(boundaries) if isinstance(boundaries, (list, tuple)) else None
    if not values or not all(isinstance(b, numbers.Integral) and not isinstance(b, bool)
                             and b > 0 for b in values) or any(
            a >= b for a, b in zip(values, values[1:])):
        raise ValueError("`bucket_boundaries` must be a non-empty list of strictly increasing "
                         f"positive integers. Received: bucket_boundaries={boundaries!r}")


def check_padding_side(name: str, value) -> None:
    if value not in PADDING_SIDES:
        raise ValueError(f'`{name}` must be "pre" or "post". Received: {name}={value!r}')


def check_workers(workers, use_multiprocessing, max_queue_size) -> None:
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 0:
        raise ValueError(f"`workers` must be a non-negative integer. Received: workers={workers!r}")
    check_bool("use_multiprocessing", use_multiprocessing)
    if isinstance(max_queue_size, bool) or not isinstance(max_queue_size, numbers.Integral) or (
            max_queue_size < 1):
        raise ValueError("`max_queue_size` must be a positive integer. "
                         f"Received: max_queue_size={max_queue_size!r}")


def check_block_shuffle(shuffle, block_size, window) -> None:
    for name, value in (("shuffle_block_size", block_size), ("shuffle_window", window)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"`{name}` must be None or a positive integer. "
                             f"Received: {name}={value!r}")
        if not (isinstance(shuffle, str) and shuffle == "block"):
            raise ValueError(f'`{name}` sets up the block shuffle; pass shuffle="block" with '
                             f"it. Received: shuffle={shuffle!r}, {name}={value!r}")


def check_read_ahead_bytes(read_ahead_bytes) -> None:
    if isinstance(read_ahead_bytes, bool) or not isinstance(
            read_ahead_bytes, numbers.Integral) or read_ahead_bytes < 0:
        raise ValueError("`read_ahead_bytes` must be a non-negative integer. "
                         f"Received: read_ahead_bytes={read_ahead_bytes!r}")


def check_dtype(dtype) -> None:
    """`dtype`, the dtype batches are cast to: `None`, or a numeric dtype."""
    if dtype is None:
        return
    try:
        kind = np.dtype(dtype).kind
    except Exception as e:  # TypeError, and SyntaxError for some strings
        raise TypeError(f"`dtype` must be None or a numeric dtype. Received: dtype={dtype!r}"
                        ) from e
    if kind not in "biufc":
        raise TypeError(f"`dtype` must be None or a numeric dtype (bool, integer, float or "
                        f"complex). Received: dtype={dtype!r}")


def check_padding(pad_to, pad_to_multiple_of, padding, truncating, pad_value) -> None:
    """The padding arguments (`NpyDataset`'s `pad_to` to `pad_value`)."""
    fixed = isinstance(pad_to, numbers.Integral) and not isinstance(pad_to, bool) and pad_to >= 0
    shape = isinstance(pad_to, tuple) and all(
        d is None or (isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 0)
        for d in pad_to)
    if not (pad_to is None or pad_to == "longest" or fixed or shape):
        raise ValueError('`pad_to` must be None, "longest", a non-negative int, or a tuple of '
                         f"non-negative ints and None. Received: pad_to={pad_to!r}")
    if pad_to_multiple_of is not None and (
            isinstance(pad_to_multiple_of, bool)
            or not isinstance(pad_to_multiple_of, numbers.Integral) or pad_to_multiple_of < 1):
        raise ValueError("`pad_to_multiple_of` must be None or a positive integer. "
                         f"Received: pad_to_multiple_of={pad_to_multiple_of!r}")
    if pad_to_multiple_of is not None and pad_to != "longest":
        raise ValueError('`pad_to_multiple_of` rounds up lengths padded with pad_to="longest"; '
                         f"pass both. Received: pad_to={pad_to!r}")
    check_padding_side("padding", padding)
    check_padding_side("truncating", truncating)
    if isinstance(pad_value, bool) or not isinstance(pad_value, numbers.Number):
        raise TypeError(f"`pad_value` must be a number. Received: pad_value={pad_value!r}")


def check_crop(crop_to, crop_position, pad_to, pad_targets=False) -> None:
    """The crop arguments (`NpyDataset`'s `crop_to` and `crop_position`)."""
    def size(d):
        return isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1

    if not (crop_to is None or size(crop_to) or (
            isinstance(crop_to, tuple) and crop_to and all(d is None or size(d) for d in crop_to)
            and any(d is not None for d in crop_to))):
        raise ValueError("`crop_to` must be None, a positive int (the first axis), or a tuple "
                         "of the sample's shape with positive ints and None (an axis kept "
                         f"whole). Received: crop_to={crop_to!r}")
    if crop_position not in ("center", "random"):
        raise ValueError('`crop_position` must be "center" or "random". '
                         f"Received: crop_position={crop_position!r}")
    if crop_to is not None and pad_to is not None:
        raise ValueError("`crop_to` cuts samples to one shape and `pad_to` pads them; pass one "
                         f"of them. Received: crop_to={crop_to!r}, pad_to={pad_to!r}")
    if crop_to is not None and pad_targets:
        raise ValueError("`crop_to` cuts the samples of x, not targets, and `pad_targets` pads "
                         "targets as x is padded: pass one of them. "
                         f"Received: crop_to={crop_to!r}, pad_targets=True")


def check_storage(storage_options, cache_dir, cache_bytes) -> None:
    """The object-storage arguments (`storage_options`, `cache_dir`, `cache_bytes`)."""
    if storage_options is not None and not isinstance(storage_options, dict):
        raise TypeError("`storage_options` must be None or a dict of the filesystem's keyword "
                        "arguments (as `fsspec.filesystem` takes them). "
                        f"Received: storage_options={storage_options!r}")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError("`cache_dir` must be None or the path of a local folder. "
                        f"Received: cache_dir={cache_dir!r}")
    if cache_bytes is not None and (isinstance(cache_bytes, bool) or not isinstance(
            cache_bytes, numbers.Integral) or cache_bytes < 1):
        raise ValueError("`cache_bytes` must be None or a positive integer. "
                         f"Received: cache_bytes={cache_bytes!r}")
    if cache_bytes is not None and cache_dir is None:
        raise ValueError("`cache_bytes` limits the block cache in `cache_dir`; pass "
                         f"`cache_dir` too. Received: cache_bytes={cache_bytes!r}, cache_dir=None")
