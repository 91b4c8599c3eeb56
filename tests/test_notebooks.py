"""Every notebook runs top to bottom on small data (their own asserts check the results),
and is stored without outputs."""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
SMALL = {"KERAS_NPY_NOTEBOOK_SAMPLES": "120", "KERAS_NPY_NOTEBOOK_GB": "0.05",
         "KERAS_NPY_TIMESERIES_GB": "0.0024"}


def test_the_notebooks_are_there():
    names = [os.path.basename(path) for path in NOTEBOOKS]
    assert names == ["image_classification_swap.ipynb", "large_arrays.ipynb",
                     "quickstart.ipynb", "timeseries_classification_swap.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path, monkeypatch):
    for name, value in SMALL.items():
        monkeypatch.setenv(name, value)  # the kernel inherits the environment
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback
    assert os.listdir(tmp_path) == []  # its data went to a temporary folder of its own
