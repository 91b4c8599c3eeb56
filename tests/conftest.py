"""Fixtures several test files share."""

import numpy as np
import pytest
from helpers import save


@pytest.fixture
def rows_file(tmp_path):
    """`(path, x)`: a (103, 4) float32 rows file and its array."""
    x = np.random.default_rng(0).normal(size=(103, 4)).astype("float32")
    return save(str(tmp_path / "x.npy"), x), x


@pytest.fixture(params=["maps", "preadv"])
def maps(request, monkeypatch):
    """Rows read from guarded memory maps, or with preadv where maps are not
    guarded; no open file is shared with another test."""
    from keras_npy.read import guard, handles

    handles.TABLE.clear()
    if request.param == "preadv":
        monkeypatch.setattr(guard._GUARD, "_usable", False)
    yield request.param
    handles.TABLE.clear()
