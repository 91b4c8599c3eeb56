"""`BatchSpec`: what defines a batch, checked once, passed to every stage.

Each public entry point (`NpyDataset`, `NpyDataset.from_index`,
`npy_dataset`, `npy_dataset_from_directory`) turns its batch keywords into
one `BatchSpec`; building the spec runs every check of them, here and
nowhere else. The stages take the spec, or the part they need:
`spec.padding` for the readers, `spec` for the `Order`.
"""

from __future__ import annotations

import copy
import dataclasses
import numbers

import numpy as np

from keras_npy import _checks, labels as labels_lib, shards
from keras_npy.read import Padding
from keras_npy.read.regions import Crop

#: Bytes read ahead of the batch being read (see `keras_npy.read.prefetch`).
READ_AHEAD_BYTES = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """The keywords that define a batch (see `NpyDataset` for each), checked
    when the spec is made. Immutable.

    `seed` is drawn at random when `None` is given, once: every dataset made
    from one spec (a training and a validation subset) has the same order.
    `num_shards` and `shard_index` left `None` are those of the multi-process
    run this process is part of (`keras_npy.shards`), or 1 and 0.
    """

    batch_size: int = 32
    shuffle: bool | str = False
    seed: int | None = None
    label_mode: str | None = "int"
    validation_split: float | None = None
    subset: str | None = None
    pad_to: object = None
    pad_to_multiple_of: int | None = None
    padding: str = "post"
    truncating: str = "post"
    pad_value: numbers.Number = 0
    pad_targets: bool = False
    bucket_boundaries: tuple[int, ...] | None = None
    drop_remainder: bool = False
    dtype: np.dtype | None = None
    num_shards: int | None = None
    shard_index: int | None = None
    shuffle_block_size: int | None = None
    shuffle_window: int | None = None
    read_ahead_bytes: int = READ_AHEAD_BYTES
    crop_to: object = None
    crop_position: str = "center"
    #: Whether `seed` was given (not drawn at random): a restored state may
    #: bring its own seed only to a spec whose seed was drawn.
    seed_given: bool = dataclasses.field(default=False, init=False, compare=False, repr=False)

    def __post_init__(self):
        _checks.check_batch_size(self.batch_size)
        _checks.check_shuffle(self.shuffle)
        _checks.check_bool("drop_remainder", self.drop_remainder)
        _checks.check_seed(self.seed)
        _checks.check_validation_split(self.validation_split, self.subset, self.shuffle,
                                       self.seed, allow_both=False)
        num_shards, shard_index, run = shards.resolve(self.num_shards, self.shard_index)
        _checks.check_shards(num_shards, shard_index, self.batch_size, self.shuffle,
                             self.seed, run)
        object.__setattr__(self, "num_shards", int(num_shards))
        object.__setattr__(self, "shard_index", int(shard_index))
        if run is not None:
            print(shards.describe(num_shards, shard_index, self.batch_size, run))
        _checks.check_bucket_boundaries(self.bucket_boundaries)
        _checks.check_block_shuffle(self.shuffle, self.shuffle_block_size, self.shuffle_window)
        _checks.check_dtype(self.dtype)
        _checks.check_read_ahead_bytes(self.read_ahead_bytes)
        _checks.check_padding(self.pad_to, self.pad_to_multiple_of, self.padding,
                              self.truncating, self.pad_value)
        _checks.check_bool("pad_targets", self.pad_targets)
        _checks.check_crop(self.crop_to, self.crop_position, self.pad_to, self.pad_targets)
        labels_lib.check_label_mode(self.label_mode, None)
        object.__setattr__(self, "seed_given", self.seed is not None)
        normal = {
            "seed": int(np.random.SeedSequence().entropy % 2**32) if self.seed is None else (
                int(self.seed)),
            "crop_to": None if self.crop_to is None else int(self.crop_to) if isinstance(
                self.crop_to, numbers.Integral) else tuple(
                    None if c is None else int(c) for c in self.crop_to),
            "bucket_boundaries": None if self.bucket_boundaries is None else tuple(
                int(b) for b in self.bucket_boundaries),
            "dtype": None if self.dtype is None else np.dtype(self.dtype),
            "shuffle": self.shuffle if isinstance(self.shuffle, str) else bool(self.shuffle)}
        for name, value in normal.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_keywords(cls, caller: str, **kwargs) -> "BatchSpec":
        """The spec of the batch keywords `caller` was given; a keyword that is
        not one is named with `caller`."""
        unknown = sorted(set(kwargs) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}")
        return cls(**kwargs)

    def for_subset(self, subset: str) -> "BatchSpec":
        """This spec for the other subset of the same split (checked already)."""
        other = copy.copy(self)
        object.__setattr__(other, "subset", subset)
        return other

    def with_seed(self, seed: int) -> "BatchSpec":
        """This spec with another seed (that of a restored state), still
        counted as drawn when this one's was."""
        other = dataclasses.replace(self, seed=seed)
        object.__setattr__(other, "seed_given", self.seed_given)
        return other

    @property
    def crop_spec(self) -> Crop | None:
        """Where samples of `x` are cut (`crop_to`), or `None`."""
        return None if self.crop_to is None else Crop(self.crop_to, self.crop_position, self.seed)

    @property
    def padding_spec(self) -> Padding:
        """How the samples of `x` (and of targets, with `pad_targets`) are padded."""
        return Padding(self.pad_to, self.pad_to_multiple_of, self.padding, self.truncating,
                       self.pad_value)
