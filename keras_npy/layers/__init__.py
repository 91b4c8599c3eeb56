"""Keras layers that carry keras_npy's preprocessing into saved and exported
models."""

from keras_npy.layers.normalization import normalization_layer
from keras_npy.layers.pad_or_trim import PadOrTrim
from keras_npy.layers.standardize import Standardize

__all__ = ["PadOrTrim", "Standardize", "normalization_layer"]
