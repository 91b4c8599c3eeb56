"""Padding: how samples of different shapes are brought to one shape per batch.

Every padded position holds `pad_value`, which must be exactly representable
in the data's dtype; data keep their dtype. Truncation cuts the start
(`"pre"`) or the end (`"post"`) of an axis that is too long.
"""

from __future__ import annotations

import numbers

import numpy as np



class Padding:
    """How samples of one input are brought to one shape per batch.

    Args:
        pad_to: `None` (samples must agree in shape), `"longest"` (every axis
            whose size varies between samples to the batch's largest), an int
            (the first axis to that length, padded or truncated), or a tuple
            of the whole sample shape with `None` for an axis left as it is.
        pad_to_multiple_of: with `"longest"`, round padded lengths up to a
            multiple of this. `None` for no rounding.
        padding: `"pre"` or `"post"`: pad before or after the data.
        truncating: `"pre"` or `"post"`: drop from the start or the end.
        pad_value: the value of padded positions.
    """

    def __init__(self, pad_to=None, pad_to_multiple_of=None, padding="post",
                 truncating="post", pad_value=0):
        self.pad_to, self.pad_to_multiple_of = pad_to, pad_to_multiple_of
        self.padding, self.truncating, self.pad_value = padding, truncating, pad_value

    def axes(self, sample_shape: tuple[int | None, ...], name: str) -> list:
        """Per axis: `None` (kept), `"longest"`, or a fixed length."""
        ndim = len(sample_shape)
        if self.pad_to is None:
            return [None] * ndim
        if self.pad_to == "longest":  # axes of one size everywhere are not padded
            return ["longest" if size is None else None for size in sample_shape]
        if isinstance(self.pad_to, numbers.Integral):
            if ndim == 0:
                raise ValueError(f"`pad_to` is an int, so samples need a first axis to pad; "
                                 f"{name} has scalar samples. Received: pad_to={self.pad_to}")
            return [int(self.pad_to)] + [None] * (ndim - 1)
        if len(self.pad_to) != ndim:
            raise ValueError(f"`pad_to` must have one entry per axis of a sample of {name}, "
                             f"which has {ndim}. Received: pad_to={self.pad_to}")
        return list(self.pad_to)

    def target_shape(self, axes: list, shapes: np.ndarray) -> tuple[int, ...]:
        """The shape every sample of a batch is brought to."""
        target = []
        for axis, spec in enumerate(axes):
            if spec is None:
                target.append(int(shapes[0, axis]) if len(shapes) else 0)
            elif spec == "longest":
                longest = int(shapes[:, axis].max()) if len(shapes) else 0
                multiple = self.pad_to_multiple_of or 1
                target.append(-(-longest // multiple) * multiple)
            else:
                target.append(spec)
        return tuple(target)

    def placement(self, shape: tuple[int, ...], target: tuple[int, ...]):
        """`(source slices, destination slices)` that put a sample of `shape`
        into a slot of `target`, truncating and padding as asked."""
        source, destination = [], []
        for length, size in zip(shape, target):
            if length >= size:
                start = length - size if self.truncating == "pre" else 0
                source.append(slice(start, start + size))
                destination.append(slice(0, size))
            else:
                start = size - length if self.padding == "pre" else 0
                source.append(slice(0, length))
                destination.append(slice(start, start + length))
        return tuple(source), tuple(destination)


def check_pad_value(pad_value, native: np.dtype):
    """The pad value as the data's dtype; it must be exactly representable."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            converted = np.array(pad_value).astype(native)
    except (OverflowError, ValueError):
        converted = None
    is_nan = isinstance(pad_value, float) and np.isnan(pad_value)
    # Compared as Python numbers: numpy would compare in the data's dtype, where
    # 1e40 and float32's inf are equal.
    if converted is None or (converted.item() != pad_value and not is_nan):
        raise ValueError(f"`pad_value` must be representable in the data's dtype {native}. "
                         f"Received: pad_value={pad_value!r}")
    return converted
