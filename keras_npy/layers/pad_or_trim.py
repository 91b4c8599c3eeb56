"""`PadOrTrim`: conforms one axis of a batch to a fixed length, in the model.

The loader pads a batch only so that its samples stack; a served model gets
raw arrays of any length. This layer gives the model one length whatever it
receives, so the same preprocessing runs in training, in a `.keras` file and
in an exported SavedModel.

How: the input is padded with `length` values on the padding side, whatever
its length, and `length` consecutive positions are taken from the result.
Pad widths and the output shape are then static, which is what XLA, JAX's
shape-polymorphic export and a SavedModel signature with `None` dimensions
need; only the start position depends on the input's length.
"""

from __future__ import annotations

import math
import numbers

import keras
import numpy as np

from keras_npy import _checks
from keras_npy.layers import _graph


@keras.saving.register_keras_serializable(package="keras_npy")
class PadOrTrim(keras.layers.Layer):
    """Pads or truncates one axis of its input to a fixed length.

    The semantics of `keras.utils.pad_sequences`, as a layer: inputs shorter
    than `length` are padded with `value`, longer ones are truncated, on the
    side `padding` and `truncating` say. The dtype of the input is kept
    (integer token ids stay integers).

    With `mask=True` the layer also produces a Keras mask of shape
    `inputs.shape[:axis + 1]` (`(batch, length)` for `axis=1`) that is `False`
    at every position it added and at every input position whose values all
    equal `value` (padding the loader added with the same `pad_value`), so
    that masking-aware layers downstream (RNNs, attention, pooling) ignore
    padding. A mask coming from an earlier layer is padded or truncated the
    same way and combined with it.

    Args:
        length: The length of axis `axis` in the output, a positive integer.
        axis: The axis to conform, in terms of a batch: a positive or
            negative integer, never the batch axis 0. Defaults to `1`.
        padding: `"pre"` or `"post"`: pad before or after the input.
            Defaults to `"post"`.
        truncating: `"pre"` or `"post"`: remove positions from the start or
            from the end of longer inputs. Defaults to `"post"`.
        value: The padding value, a number. It must be an integer for
            integer inputs. Defaults to `0`.
        mask: Whether to produce a mask of the real positions. Defaults to
            `False`.
        **kwargs: Base layer keyword arguments, such as `name`.

    Call arguments:
        inputs: A tensor of rank `>= 2` (and `> axis`), any dtype.

    Returns:
        A tensor of the input's dtype and shape, except `length` on `axis`.

    Raises:
        ValueError: an argument is out of range, `axis` is the batch axis or
            beyond the input's rank, or `value` is not an integer for an
            integer input.

    Example:

    >>> import numpy as np
    >>> layer = PadOrTrim(4)
    >>> np.asarray(layer(np.array([[1, 2, 3], [4, 5, 6]])))
    array([[1, 2, 3, 0],
           [4, 5, 6, 0]])
    >>> np.asarray(PadOrTrim(2, truncating="pre")(np.array([[1, 2, 3]])))
    array([[2, 3]])
    """

    def __init__(self, length, axis=1, padding="post", truncating="post", value=0,
                 mask=False, **kwargs):
        kwargs.setdefault("autocast", False)  # float16 and float64 inputs keep their dtype
        super().__init__(**kwargs)
        _check_length(length)
        _check_axis(axis)
        _checks.check_padding_side("padding", padding)
        _checks.check_padding_side("truncating", truncating)
        _check_value(value)
        _checks.check_bool("mask", mask)
        self.length, self.axis = int(length), int(axis)
        self.padding, self.truncating = padding, truncating
        self.value, self.mask = value, bool(mask)
        self.supports_masking = True

    def __call__(self, inputs, *args, **kwargs):
        self._check_value_fits(inputs)  # here, before Keras wraps errors of call()
        if _graph.is_foreign_graph_tensor(inputs):  # a tf.data map on another backend
            return self._conform(_graph.tensorflow_ops(), inputs)
        return super().__call__(inputs, *args, **kwargs)

    def build(self, input_shape):
        _resolve_axis(self.axis, len(input_shape))  # checked here, before Keras wraps errors

    def call(self, inputs):
        return self._conform(keras.ops, inputs)

    def compute_mask(self, inputs, mask=None):
        # Also run on the symbolic tensors of a functional model, whose graph
        # then replays these ops: no step may need a concrete length.
        axis = _resolve_axis(self.axis, len(inputs.shape))
        conformed = None
        if mask is not None and len(mask.shape) > axis:
            if len(mask.shape) != axis + 1:
                raise ValueError(f"{self.name} conforms axis {axis}, so an incoming mask must "
                                 f"have shape inputs.shape[:{axis + 1}]; received a mask of "
                                 f"shape {tuple(mask.shape)} for inputs of shape "
                                 f"{tuple(inputs.shape)}.")
            conformed = self._conform_mask(mask)
        if not self.mask:
            return conformed
        own = self._conform_mask(_differs_from(keras.ops, inputs, axis, self.value))
        return own if conformed is None else keras.ops.logical_and(conformed, own)

    def _conform_mask(self, mask):
        """`mask` (shape `(batch, ..., size)`) conformed on its last axis, with
        False where padding was added. The start position is computed from
        the mask itself, per sample, so that the ops work on symbolic tensors
        of unknown length."""
        ops = keras.ops
        widths = [[0, 0]] * (len(mask.shape) - 1)
        widths += [[0, self.length] if self.padding == "post" else [self.length, 0]]
        padded = ops.pad(mask, widths, constant_values=False)
        size = ops.sum(ops.ones_like(mask, dtype="int32"), axis=-1, keepdims=True)
        start = _start(ops, size, self.length, self.padding, self.truncating)
        indices = ops.zeros_like(size) + start + ops.arange(self.length, dtype="int32")
        return ops.take_along_axis(padded, indices, axis=-1)

    def _check_value_fits(self, inputs):
        dtype = keras.backend.standardize_dtype(getattr(inputs, "dtype", "float32"))
        if dtype != "bool" and "float" not in dtype and not float(self.value).is_integer():
            raise ValueError(f"`value` must be an integer for inputs of dtype {dtype}. "
                             f"Received: value={self.value!r}")
        if not _representable(self.value, dtype):  # 300 would pad uint8 with 44
            raise ValueError(f"`value` must be representable in the inputs' dtype {dtype}. "
                             f"Received: value={self.value!r}")

    def _conform(self, ops, inputs):
        axis = _resolve_axis(self.axis, len(inputs.shape))
        return _conform(ops, inputs, self.length, axis, self.padding, self.truncating,
                        self.value)

    def compute_output_shape(self, input_shape):
        axis = _resolve_axis(self.axis, len(input_shape))
        shape = list(input_shape)
        shape[axis] = self.length
        return tuple(shape)

    def compute_output_spec(self, inputs, *args, **kwargs):
        # The base class would give the compute dtype; the input's is kept.
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype=inputs.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(length=self.length, axis=self.axis, padding=self.padding,
                      truncating=self.truncating, value=self.value, mask=self.mask)
        return config


def _conform(ops, x, length: int, axis: int, padding: str, truncating: str, value):
    """`x` with axis `axis` padded with `value` or truncated to `length`."""
    widths = [[0, 0]] * len(x.shape)
    widths[axis] = [0, length] if padding == "post" else [length, 0]
    padded = ops.pad(x, widths, constant_values=ops.cast(value, x.dtype))
    start = _start(ops, ops.shape(x)[axis], length, padding, truncating)
    return ops.take(padded, ops.arange(length) + start, axis=axis)


def _start(ops, size, length: int, padding: str, truncating: str):
    """Where the output starts in the input padded with `length` values.

    "post" padding appends them, so the input's positions come first: keep
    the start (0) or, truncating "pre", skip `size - length` positions. "pre"
    padding puts them first: start at `size` to keep the last `length`
    positions, or at `min(size, length)` to keep the first ones.
    """
    if padding == "post":
        return 0 if truncating == "post" else ops.maximum(size - length, 0)
    return size if truncating == "pre" else ops.minimum(size, length)


def _differs_from(ops, x, axis: int, value):
    """True at each position (all axes up to `axis`) where some value of `x`
    is not `value` (for a NaN `value`: is not NaN)."""
    if isinstance(value, float) and math.isnan(value):
        differs = ops.logical_not(ops.isnan(x))
    else:
        differs = ops.not_equal(x, ops.cast(value, x.dtype))
    inner = tuple(range(axis + 1, len(x.shape)))
    return ops.any(differs, axis=inner) if inner else differs


def _resolve_axis(axis: int, ndim: int) -> int:
    resolved = axis + ndim if axis < 0 else axis
    if not 1 <= resolved < ndim:
        raise ValueError(f"`axis` must name a non-batch axis of the input, which has rank "
                         f"{ndim}. Received: axis={axis}")
    return resolved


def _representable(value, dtype: str) -> bool:
    """Whether `value` is exactly a value of `dtype` (NaN of a float dtype
    too); `True` for dtypes NumPy does not know, such as bfloat16."""
    try:
        numpy_dtype = np.dtype(dtype)
    except TypeError:
        return True
    if isinstance(value, float) and math.isnan(value):
        return numpy_dtype.kind in "fc"
    with np.errstate(over="ignore", invalid="ignore"):
        converted = np.array(value).astype(numpy_dtype)
    return converted.item() == value


def _check_length(length) -> None:
    if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 1:
        raise ValueError(f"`length` must be a positive integer. Received: length={length!r}")


def _check_axis(axis) -> None:
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or axis == 0:
        raise ValueError("`axis` must be a non-zero integer (axis 0 is the batch axis). "
                         f"Received: axis={axis!r}")


def _check_value(value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`value` must be a number. Received: value={value!r}")
