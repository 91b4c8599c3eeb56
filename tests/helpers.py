"""What several test files share (on the path through `pythonpath` in setup.cfg)."""

import os

import numpy as np


def save(path, array, **kwargs):
    """`np.save(path, array)`, making the folder first; returns `path`."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, array, **kwargs)
    return path
