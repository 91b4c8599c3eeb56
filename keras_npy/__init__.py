"""keras_npy: stream training data stored as `.npy` files into Keras."""

from keras_npy.dataset import NpyDataset
from keras_npy.header import NpyHeader, read_header
from keras_npy.index import DatasetIndex, FileIndex, RowIndex, build_index
from keras_npy import layers
from keras_npy.layers import normalization_layer
from keras_npy.from_directory import npy_dataset_from_directory
from keras_npy.tf_dataset import npy_dataset

__version__ = "0.1.0"

__all__ = [
    "DatasetIndex",
    "FileIndex",
    "NpyDataset",
    "NpyHeader",
    "RowIndex",
    "__version__",
    "build_index",
    "layers",
    "npy_dataset",
    "npy_dataset_from_directory",
    "normalization_layer",
    "read_header",
]
