"""Running the layers' math inside a TensorFlow graph on another Keras backend.

`keras.ops` dispatches to the active backend, so on JAX or PyTorch it cannot
take the symbolic tensors of a `tf.data` pipeline's `.map`. Keras' own
preprocessing layers switch to TensorFlow ops there; these layers do the
same: their math is written against an `ops` namespace, `keras.ops`
normally and, in that one case, the TensorFlow functions of the same names
below (only those the layers use). TensorFlow is imported only when a
TensorFlow graph tensor is already in hand.
"""

from __future__ import annotations

import sys
import types

import keras


def is_foreign_graph_tensor(x) -> bool:
    """Whether `x` is a symbolic TensorFlow tensor while the Keras backend is
    not TensorFlow (a `tf.data` map on JAX or PyTorch)."""
    tf = sys.modules.get("tensorflow")
    return (tf is not None and keras.backend.backend() != "tensorflow"
            and isinstance(x, tf.Tensor) and not tf.executing_eagerly())


def tensorflow_ops() -> types.SimpleNamespace:
    """The `keras.ops` functions the layers use, as TensorFlow functions."""
    import tensorflow as tf

    def shape(x):
        dynamic = tf.shape(x)
        return tuple(d if d is not None else dynamic[i] for i, d in enumerate(x.shape))

    def reduce(fn):
        return lambda x, axis=None, keepdims=False: fn(x, axis=axis, keepdims=keepdims)

    return types.SimpleNamespace(
        abs=tf.abs, arange=tf.range, cast=tf.cast, max=reduce(tf.reduce_max),
        maximum=tf.maximum, mean=reduce(tf.reduce_mean), minimum=tf.minimum, pad=tf.pad,
        shape=shape, sqrt=tf.sqrt, sum=reduce(tf.reduce_sum), square=tf.square,
        ones_like=tf.ones_like, expand_dims=tf.expand_dims,
        take=lambda x, indices, axis: tf.gather(x, indices, axis=axis),
        var=reduce(tf.math.reduce_variance),
    )
