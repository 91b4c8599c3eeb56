"""`Standardize`: per-sample `(x - mean) / std`, in the model.

The per-sample normalization people write inside `numpy_function` today,
as a layer, so that the served model does it too. Under a mask (from
`PadOrTrim(mask=True)` or any masking layer) the mean and standard
deviation are taken over the real positions only.
"""

from __future__ import annotations

import numbers

import keras
import numpy as np

from keras_npy.layers import _graph


@keras.saving.register_keras_serializable(package="keras_npy")
class Standardize(keras.layers.Layer):
    """Standardizes each sample to zero mean and unit standard deviation.

    Computes `(x - mean) / max(std, epsilon)` where `mean` and `std` are
    taken per sample over the axes `axis`, and per index of the other
    non-batch axes. `axis=None` standardizes each sample as a whole; for
    sequences of shape `(batch, time, features)`, `axis=1` standardizes each
    feature of each sample over time.

    When the input carries a Keras mask of shape `(batch, time, ...)` (a
    prefix of the input's shape), masked-out positions do not count in the
    mean and standard deviation, and are set to `0` in the output; the mask
    is passed on.

    Args:
        axis: The axis or axes, in terms of a batch (never `0`, the batch
            axis), to compute each mean and standard deviation over: an
            integer, a tuple of integers, or `None` for every non-batch axis.
            Defaults to `None`.
        epsilon: The smallest standard deviation divided by, so that
            constant samples give zeros rather than NaN. A non-negative
            number. Defaults to `1e-6`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: A tensor of rank `>= 2`, integer or floating point.
        mask: An optional boolean tensor whose shape is a prefix of the
            input's, `False` where positions are padding.

    Returns:
        A tensor of the input's shape, in the layer's compute dtype
        (`float32` unless set otherwise).

    Raises:
        ValueError: `axis` names the batch axis or an axis beyond the input's
            rank, or `epsilon` is negative.

    Example:

    >>> import numpy as np
    >>> x = np.array([[1.0, 2.0, 4.0], [10.0, 10.0, 10.0]])
    >>> np.asarray(Standardize()(x)).round(4)
    array([[-1.069 , -0.2673,  1.3363],
           [ 0.    ,  0.    ,  0.    ]], dtype=float32)
    """

    def __init__(self, axis=None, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.axis = _check_axis(axis)
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not (
                epsilon >= 0):
            raise ValueError("`epsilon` must be a non-negative number. "
                             f"Received: epsilon={epsilon!r}")
        self.epsilon = float(epsilon)
        self.supports_masking = True

    def __call__(self, inputs, *args, **kwargs):
        if _graph.is_foreign_graph_tensor(inputs):  # a tf.data map on another backend
            return _standardize(_graph.tensorflow_ops(), inputs, self._axes(inputs.shape),
                                self.epsilon, None, self.compute_dtype)
        return super().__call__(inputs, *args, **kwargs)

    def build(self, input_shape):
        self._axes(input_shape)  # checked here, before Keras wraps errors

    def call(self, inputs, mask=None):
        return _standardize(keras.ops, inputs, self._axes(inputs.shape), self.epsilon, mask,
                            self.compute_dtype)

    def _axes(self, shape) -> tuple[int, ...]:
        ndim = len(shape)
        if self.axis is None:
            return tuple(range(1, ndim))
        axes = tuple(sorted({a + ndim if a < 0 else a for a in self.axis}))
        if not all(1 <= a < ndim for a in axes):
            raise ValueError("`axis` must name non-batch axes of the input, which has rank "
                             f"{ndim}. Received: axis={self._config_axis()}")
        return axes

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def _config_axis(self):
        return self.axis if self.axis is None or len(self.axis) > 1 else self.axis[0]

    def get_config(self):
        config = super().get_config()
        config.update(axis=self._config_axis(), epsilon=self.epsilon)
        return config


def _standardize(ops, x, axes: tuple[int, ...], epsilon: float, mask, dtype):
    # (x - mean) / std is computed on x divided by its largest magnitude and
    # shifted by its first value (per sample): sums of values near the dtype's
    # largest overflow (a constant sample of 3e38 in float32 gave NaN), and a
    # constant sample must give zeros exactly, not rounding noise over itself.
    # Neither changes the result: (x / s - c) is x in other units and origin,
    # with epsilon / s for epsilon.
    x = ops.cast(x, dtype)
    weights = None
    if mask is not None:
        weights = ops.cast(mask, dtype)
        for _ in range(len(x.shape) - len(mask.shape)):
            weights = ops.expand_dims(weights, -1)
        weights = weights * ops.ones_like(x)
    magnitude = ops.abs(x) if weights is None else ops.abs(x) * weights
    scale = ops.maximum(ops.max(magnitude, axis=axes, keepdims=True), ops.cast(_TINY, dtype))
    # Divided twice by its square root: XLA divides by multiplying with the
    # reciprocal, and 1 / 3e38 is subnormal, which CPUs flush to zero.
    root = ops.sqrt(scale)
    scaled = x / root / root
    first = scaled
    for axis in axes:
        first = ops.take(first, ops.arange(1), axis=axis)
    scaled = scaled - first
    # epsilon / scale, never below the dtype's smallest normal number (a
    # flushed floor of 0 would make a constant sample 0 / 0).
    floor = ops.maximum(ops.cast(epsilon, dtype) / root / root,
                        ops.cast(_smallest_normal(dtype), dtype))
    if weights is None:
        mean = ops.mean(scaled, axis=axes, keepdims=True)
        std = ops.sqrt(ops.var(scaled, axis=axes, keepdims=True))
        return (scaled - mean) / ops.maximum(std, floor)
    count = ops.maximum(ops.sum(weights, axis=axes, keepdims=True), ops.cast(1, dtype))
    mean = ops.sum(scaled * weights, axis=axes, keepdims=True) / count
    centered = (scaled - mean) * weights
    std = ops.sqrt(ops.sum(ops.square(centered), axis=axes, keepdims=True) / count)
    return centered / ops.maximum(std, floor)


#: The smallest magnitude a sample is divided by (float16's smallest normal,
#: which every float dtype holds).
_TINY = 2.0 ** -14


def _smallest_normal(dtype) -> float:
    try:
        return float(np.finfo(np.dtype(keras.backend.standardize_dtype(dtype))).tiny)
    except (TypeError, ValueError):  # a dtype NumPy does not know (bfloat16)
        return 1.1754944e-38


def _check_axis(axis) -> tuple[int, ...] | None:
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, numbers.Integral) and not isinstance(axis, bool) else (
        tuple(axis) if isinstance(axis, (list, tuple)) else None)
    if not axes or not all(isinstance(a, numbers.Integral) and not isinstance(a, bool)
                           and a != 0 for a in axes):
        raise ValueError("`axis` must be None, a non-zero integer or a non-empty tuple of them "
                         f"(axis 0 is the batch axis). Received: axis={axis!r}")
    return tuple(int(a) for a in axes)
