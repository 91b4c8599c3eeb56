"""The notebooks run top to bottom, the checks below hold for what they computed, their data
stays in a temporary folder, and the outputs stored in them are those of a run.

The notebooks are stored with the outputs of a run at their default sizes, so that they
render when browsed. The tests run them on smaller data, then run hidden check cells in the
same kernel (`CHECKS`: the facts a notebook demonstrates, asserted here rather than in the
cells a reader sees), and compare each code cell's fresh outputs with the stored ones: the
same outputs in the same order, the same text once numbers (timings, metrics, sizes) and
whitespace are masked, and images only by their type.

Outputs left out of the stored notebooks: stderr (TensorFlow's native log lines, which
depend on the machine, and warnings, which name local paths) and keras_npy's progress lines.

After changing a notebook, or what it prints, store the outputs of a fresh run:

    .venv/bin/python tests/test_notebooks.py            # all five, a few minutes
    .venv/bin/python tests/test_notebooks.py quickstart # or some of them

It writes a notebook only when it ran without errors and its checks held.
"""

import contextlib
import difflib
import glob
import os
import re
import sys
import tempfile

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
SMALL = {"KERAS_NPY_NOTEBOOK_SAMPLES": "120", "KERAS_NPY_NOTEBOOK_GB": "0.05",
         "KERAS_NPY_TIMESERIES_GB": "0.0024", "KERAS_NPY_WEATHER_ROWS": "10000"}
MAX_BYTES = 150_000  # a stored notebook, outputs and plots included

# Run in the notebook's kernel after its last cell; an AssertionError fails the test.
CHECKS = {
    "image_classification_swap.ipynb": """
assert history.history["val_accuracy"][-1] > 0.8, history.history["val_accuracy"]
""",
    "large_arrays.ipynb": """
assert checksum == float(np.arange(num_rows, dtype="float64").sum())  # every row once
assert every_row_once is True
growth = ours[:, 1].max() - ours[0, 1]
assert growth < 150, f"RssAnon grew {growth:.0f} MB"
assert theirs[:, 1].max() > 0.8 * os.path.getsize("x.npy") / 2**20  # np.load held it all
""",
    "quickstart.ipynb": """
assert resumed.epoch == [1, 2], resumed.epoch  # the preempted epoch 2, then epoch 3
from keras_npy.inspection import inspect_source
assert not inspect_source("signals", verbose=False).problems
assert history.history["val_accuracy"][-1] > 0.8, history.history["val_accuracy"]
for path in ["signals/class_0/0000.npy", "signals/class_1/0001.npy", "signals/class_2/0002.npy"]:
    raw = np.load(path)[None]
    keras_probabilities = model.predict(raw, verbose=0)
    np.testing.assert_allclose(reloaded.predict(raw, verbose=0), keras_probabilities, atol=1e-6)
    np.testing.assert_allclose(served.serve(raw).numpy(), keras_probabilities, atol=1e-5)
""",
    "timeseries_classification_swap.ipynb": """
accuracy = history.history["val_sparse_categorical_accuracy"]
assert max(accuracy) > 0.8, accuracy
""",
    "timeseries_weather_forecasting_swap.ipynb": """
import itertools
# The batches of Keras' function on the tutorial's in-memory arrays, batch for batch.
x_train = features[:train_split]
y_train = features[past + future:past + future + train_split, [1]]
x_val = features[train_split:num_rows - past - future]
y_val = features[train_split + past + future:, [1]]
for ours, x, y in ((dataset_train, x_train, y_train), (dataset_val, x_val, y_val)):
    theirs = keras.utils.timeseries_dataset_from_array(
        x, y, sequence_length=sequence_length, sampling_rate=step, batch_size=batch_size)
    for count, (a, b) in enumerate(itertools.zip_longest(ours, theirs)):
        assert a is not None and b is not None, count  # as many batches
        np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
        np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    assert count > 3, count
val_loss = history.history["val_loss"]
assert len(val_loss) == epochs, val_loss
assert val_loss[-1] < 0.9 * val_loss_before, (val_loss_before, val_loss)  # training helped
if num_rows >= 50_000:  # the stored run: well below the naive baseline
    assert val_loss[-1] < 0.5 * naive_mse, (naive_mse, val_loss)
""",
}
# What the cell whose source contains the key prints (the fresh run's text, unmasked).
PRINTED = {
    "quickstart.ipynb": {"!keras-npy inspect signals": ["problems: 0", "classes: 3: class_0"]},
    "large_arrays.ipynb": {"every_row_once =": ["every row read exactly once: True"]},
}

_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_PROGRESS = re.compile(r"^[\d,]+/[\d,]+ \w+s, [\d,]+ \w+s/s$")  # keras_npy.index.Progress


def test_the_notebooks_are_there():
    names = [os.path.basename(path) for path in NOTEBOOKS]
    assert names == ["image_classification_swap.ipynb", "large_arrays.ipynb",
                     "quickstart.ipynb", "timeseries_classification_swap.ipynb",
                     "timeseries_weather_forecasting_swap.ipynb"]
    assert sorted(CHECKS) == names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stored_with_the_outputs_of_a_run(path):
    text = open(path, encoding="utf-8").read()
    assert len(text.encode()) < MAX_BYTES
    for local in {ROOT, tempfile.gettempdir(), os.path.expanduser("~")} - {"/"}:
        assert local not in text  # no path of the machine that ran it
    notebook = nbformat.reads(text, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), \
        "not one run top to bottom: python tests/test_notebooks.py to store a fresh one"
    for cell in code:
        assert "execution" not in cell.metadata, cell.source[:60]
        assert "assert" not in cell.source, cell.source[:60]  # checks go to CHECKS
        for output in cell.outputs:
            assert output.output_type != "error", cell.source[:60]
            assert output.get("name") != "stderr", cell.source[:60]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_uses_only_the_public_api(path):
    import keras_npy

    sources = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells
                        if cell.cell_type == "code")
    used = set(re.findall(r"\bkeras_npy\.(\w+)", sources))
    for names in re.findall(r"\bfrom keras_npy import ([\w, ]+)", sources):
        used.update(name.strip() for name in names.split(","))
    assert used and used <= set(keras_npy.__all__), used - set(keras_npy.__all__)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_its_checks_hold_and_its_outputs_are_stored(path, tmp_path):
    stored = nbformat.read(path, as_version=4)
    with _environment(SMALL):
        fresh = _run(path, str(tmp_path))  # raises CellExecutionError, with the cell
    assert os.listdir(tmp_path) == []  # its data went to a temporary folder of its own
    name = os.path.basename(path)
    assert len(fresh.cells) == len(stored.cells)
    for old, new in zip(stored.cells, fresh.cells):
        if old.cell_type != "code":
            continue
        was, now = _comparable(old.outputs), _comparable(new.outputs)
        assert was == now, (
            f"The outputs of this cell changed:\n{old.source}\n\n"
            + "\n".join(difflib.unified_diff(_lines(was), _lines(now), "stored", "fresh",
                                             lineterm=""))
            + "\n\nIf that is intended: python tests/test_notebooks.py " + name)


def _run(path, directory):
    """The notebook at `path`, run in `directory` with its checks (`CHECKS`, then
    `PRINTED`), with outputs as `_stored` keeps them and without the check cell."""
    notebook = nbformat.read(path, as_version=4)
    count = len(notebook.cells)
    notebook.cells.append(nbformat.v4.new_code_cell(
        "import os as _os, tempfile as _tempfile\n"  # data and models went to a temporary folder
        "assert _os.getcwd().startswith(_tempfile.gettempdir()), _os.getcwd()\n"
        + CHECKS[os.path.basename(path)]))
    with tempfile.TemporaryDirectory(prefix="notebook_tmp_") as scratch, _environment({
            "KERAS_BACKEND": "tensorflow",
            # the `keras-npy` command, as in an activated environment
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            "TMPDIR": scratch}):  # the notebook's tempfile.mkdtemp() folder, removed after
        NotebookClient(notebook, timeout=900, kernel_name="python3", record_timing=False,
                       resources={"metadata": {"path": directory}}).execute()
    del notebook.cells[count:]
    for cell in notebook.cells:
        if cell.cell_type == "code":
            stderr = "".join(o.text for o in cell.outputs if o.get("name") == "stderr")
            assert "shuffle=True` was passed" not in stderr, (cell.source, stderr)
            cell.outputs = _stored(cell.outputs)
    for key, phrases in PRINTED.get(os.path.basename(path), {}).items():
        [cell] = [cell for cell in notebook.cells if key in cell.source]
        printed = "".join(o.text for o in cell.outputs if o.output_type == "stream")
        for phrase in phrases:
            assert phrase in printed, (phrase, printed)
    return notebook


def _stored(outputs):
    """Outputs as stored: stdout coalesced and as a terminal shows it, without keras_npy's
    progress lines; no stderr."""
    kept = []
    for output in outputs:
        if output.output_type == "stream":
            if output.name != "stdout":
                continue
            if kept and kept[-1].output_type == "stream":
                kept[-1].text += output.text
                continue
        kept.append(output)
    for output in kept:
        if output.output_type == "stream":
            lines = [line.rstrip("\r").rsplit("\r", 1)[-1]  # `!command` ends lines in \r\n
                     for line in output.text.split("\n")]
            output.text = "\n".join(line for line in lines if not _PROGRESS.match(line.strip()))
    return [output for output in kept
            if output.output_type != "stream" or output.text.strip()]


def _comparable(outputs):
    """What must not change between runs: the kind and order of outputs, the text with
    numbers and whitespace masked, the types of rich outputs."""
    result = []
    for output in _stored(outputs):
        if output.output_type == "stream":
            result.append(("stdout", _masked(output.text)))
        elif output.output_type == "error":
            result.append(("error", output.ename, _masked(output.evalue)))
        else:
            result.append((output.output_type, tuple(sorted(output.data)),
                           _masked(output.data.get("text/plain", ""))))
    return result


def _masked(text):
    lines = []
    for line in text.split("\n"):
        line = _NUMBER.sub("#", line)
        line = re.sub(r"#(?:us|ms|s)\b", "#s", line)  # Keras' time unit follows the speed
        line = re.sub(r"#+", "#", line)  # numbers and the bars of a histogram
        line = "".join(line.split())
        if line:
            lines.append(line)
    return tuple(lines)


def _lines(comparable):
    """`_comparable`'s outputs as lines, for a diff."""
    lines = []
    for kind, *details, text in comparable:
        lines.append(f"[{kind}{''.join(f' {detail}' for detail in details)}]")
        lines.extend(text)
    return lines


@contextlib.contextmanager
def _environment(values):
    """os.environ with `values` set (a value of None unsets), restored after; the kernel
    inherits it."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def store_outputs(names=()):
    """Runs the notebooks (those whose names start with one of `names`, or all) at their
    default sizes with their checks, and stores their outputs in them."""
    for path in NOTEBOOKS:
        name = os.path.basename(path)
        if names and not any(name.startswith(prefix) for prefix in names):
            continue
        print(f"running {name}", flush=True)
        stored = nbformat.read(path, as_version=4)
        with tempfile.TemporaryDirectory() as directory, \
                _environment(dict.fromkeys(SMALL)):  # the defaults, as a reader runs it
            fresh = _run(path, directory)
            assert os.listdir(directory) == [], os.listdir(directory)
        for old, new in zip(stored.cells, fresh.cells):
            if old.cell_type == "code":
                old.outputs, old.execution_count = new.outputs, new.execution_count
        nbformat.write(stored, path)  # the notebook's own metadata, not the kernel's
        print(f"stored {name}: {os.path.getsize(path):,} bytes", flush=True)


if __name__ == "__main__":
    store_outputs(sys.argv[1:])
