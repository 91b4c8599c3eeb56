"""The `keras-npy` command line on generated data: run in this process through
`main(argv)`, and once as the installed command in a subprocess."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest

import keras_npy
from keras_npy import normalization_layer
from keras_npy.__main__ import main
from helpers import save as _save


def _run(*args):
    """`keras-npy ARGS` in this process: its exit status and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse: bad arguments, or --help
            status = exit_.code
    return types.SimpleNamespace(returncode=status, stdout=out.getvalue(),
                                 stderr=err.getvalue())


def test_the_installed_command_starts_without_keras(tree, tmp_path):
    """`keras-npy --help`, `inspect`, `stats` and `index` import neither
    Keras nor a backend (seconds of start-up); the output is what `main`
    prints."""
    script = os.path.join(os.path.dirname(sys.executable), "keras-npy")
    if not os.path.exists(script):
        pytest.skip("keras-npy is not installed as a command next to this Python")
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}  # every import, on stderr
    output = str(tmp_path / "stats.npz")
    for args in (["--help"], ["inspect", str(tree), "-q"], ["stats", str(tree), "-q", "-o", output],
                 ["index", str(tree), "-q", "-o", str(tmp_path / "tree.index")]):
        done = subprocess.run([script, *args], capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                    if line.startswith("import time:")}
        assert "keras_npy" in imported
        heavy = sorted(m for m in imported if m.split(".")[0] in {"keras", "tensorflow", "jax",
                                                                  "torch"})
        assert heavy == [], (args, heavy[:5])
        if args[0] == "inspect":
            assert done.stdout == _run(*args).stdout


@pytest.fixture
def tree(tmp_path):
    """Two class folders of (length, 3) float32 samples, lengths 4 to 13."""
    root = tmp_path / "tree"
    for k in range(20):
        _save(str(root / ("cat" if k < 12 else "dog") / f"{k:02d}.npy"),
              np.full((4 + k % 10, 3), k, "float32"))
    return root


def test_inspect_a_clean_tree(tree):
    done = _run("inspect", tree)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    nbytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tree) for f in fs)
    assert lines[:5] == [
        f"{tree}: 20 .npy files, {nbytes / 1e6:,.1f} MB on disk",
        "samples: 20 (one per file)",
        "classes: 2: cat (12), dog (8)",
        "dtypes: float32 (20 files)",
        "sample shape: (None, 3), None where files differ",
    ]
    assert lines[5] == "  axis 0 varies from 4 to 13; files per size:"
    histogram = lines[6:16]
    assert [line.split()[0] for line in histogram] == [str(n) for n in range(4, 14)]
    assert [int(line.split()[-1]) for line in histogram] == [2] * 10
    assert lines[16:] == ["problems: 0"]


def test_inspect_lists_every_bad_file_and_fails(tree):
    truncated = str(tree / "cat" / "00.npy")
    with open(truncated, "r+b") as f:
        f.truncate(os.path.getsize(truncated) - 4)
    pickled = _save(str(tree / "dog" / "pickled.npy"), np.array([{"a": 1}], dtype=object),
                    allow_pickle=True)
    other_dtype = _save(str(tree / "dog" / "int.npy"), np.ones((4, 3), "int64"))
    not_npy = str(tree / "cat" / "text.npy")
    with open(not_npy, "w") as f:
        f.write("hello")
    done = _run("inspect", tree, "--quiet")
    assert done.returncode == 1
    problems = done.stdout.split("problems: 4\n")[1].splitlines()
    assert problems == [
        f"  {truncated}: expected 48 data bytes for shape (4, 3) of dtype float32, found 44; "
        "the file is truncated.",
        f"  {not_npy}: expected a .npy file starting with the magic string b'\\x93NUMPY', found b'hello'.",
        f"  {pickled}: expected a numeric dtype (bool, integer, float or complex), found "
        "object (pickled) data; such files are refused.",
        f"  {other_dtype}: dtype int64 (<i8) differs from the other files' float32 (<f4)",
    ]


def _write_header(path, text):
    encoded = text.encode("latin1")
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + len(encoded).to_bytes(2, "little") + encoded)
    return path


def test_inspect_lists_hostile_entries_as_problems(tmp_path):
    root = tmp_path / "tree"
    good = _save(str(root / "a" / "0.npy"), np.zeros((2, 3), "float32"))
    os.symlink("loop.npy", root / "a" / "loop.npy")  # a link to itself
    huge = _write_header(str(root / "a" / "huge.npy"), "{'descr': '<f4', 'fortran_order': "
                         "False, 'shape': (0, 1180591620717411303424), }")
    comma = _write_header(str(root / "a" / "comma.npy"),
                          "{'descr': ',', 'fortran_order': False, 'shape': (0,), }")
    done = _run("inspect", root, "--quiet")
    assert done.returncode == 1, done.stderr
    assert done.stdout.split("problems: 3\n")[1].splitlines() == [
        f"  {root / 'a' / 'loop.npy'}: cannot read the directory entry: Too many levels of "
        "symbolic links",
        f"  {comma}: expected a numeric dtype, found descr=',', which is not a dtype.",
        f"  {huge}: expected a shape NumPy can make (each dimension, and the bytes of the "
        "nonzero ones, at most 9223372036854775807), found '(0, 1180591620717411303424)' of "
        "dtype float32.",
    ]
    assert done.stdout.startswith(f"{root}: 3 .npy files") and good


def test_inspect_a_tree_where_every_file_is_bad(tmp_path):
    root = tmp_path / "bad"
    truncated = _save(str(root / "a" / "0.npy"), np.zeros((4, 3), "float32"))
    with open(truncated, "r+b") as f:
        f.truncate(130)
    text = str(root / "a" / "t.npy")
    with open(text, "w") as f:
        f.write("not an array")
    done = _run("inspect", root, "--quiet")
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[1:] == [
        "samples: 0 (one per file)",  # and no class: none of its files can be used
        "problems: 2",
        f"  {truncated}: expected 48 data bytes for shape (4, 3) of dtype float32, found 2; "
        "the file is truncated.",
        f"  {text}: expected a .npy file starting with the magic string b'\\x93NUMPY', found "
        "b'not an'.",
    ]


def test_inspect_a_rows_file_and_a_missing_path(tmp_path):
    path = _save(str(tmp_path / "x.npy"), np.zeros((1000, 16), ">i2"))
    done = _run("inspect", path)
    assert done.returncode == 0
    assert done.stdout.splitlines()[1:] == [
        "samples: 1,000 (the rows of the file)",
        "dtypes: int16 (1 file)",
        "shape: (1000, 16): rows of shape (16,)",
        "problems: 0",
    ]
    missing = _run("inspect", tmp_path / "nothere")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip().splitlines()[-1] == (
        f"keras-npy inspect: error: `PATH` must name existing files, directories or globs; "
        f"'{tmp_path / 'nothere'}' does not exist.")


def test_stats_writes_what_normalization_layer_loads(tree, tmp_path):
    output = tmp_path / "stats.npz"
    done = _run("stats", tree, "--axis", "-1", "-o", output, "-q")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (
        f"{tree}: 20 samples; axis=-1: mean and variance of shape (3,) written to {output}")
    samples = [np.load(os.path.join(d, f)) for d, _, fs in sorted(os.walk(tree)) for f in
               sorted(fs)]
    values = np.concatenate(samples).astype("float64")
    layer = normalization_layer(str(output))  # built for the samples' shape, as from data
    assert layer.built and layer(np.zeros((2, 5, 3), "float32")).shape == (2, 5, 3)
    np.testing.assert_allclose(np.ravel(layer.mean), values.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(np.ravel(layer.variance), values.var(axis=0), rtol=1e-6)
    with pytest.raises(ValueError) as error:
        normalization_layer(str(output), axis=None)
    assert str(error.value) == (f"{output} holds statistics for axis=-1; pass axis=-1. "
                                "Received: axis=None")
    whole = _run("stats", tree, "--axis", "none", "-o", tmp_path / "all.npz", "-q")
    assert whole.returncode == 0
    layer = normalization_layer(str(tmp_path / "all.npz"), axis=None)
    np.testing.assert_allclose(float(np.ravel(layer.mean)[0]), values.mean(), rtol=1e-6)


def test_stats_bad_axis_and_bad_statistics_file(tree, tmp_path):
    done = _run("stats", tree, "--axis", "1", "-q")
    assert done.returncode == 1
    assert "`axis` must name axes of fixed size, but the samples of x vary in size on axis 1" \
        in done.stderr
    bad = _save(str(tmp_path / "bad.npz").replace(".npz", ".npy"), np.zeros(3))
    os.rename(bad, str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match=r"^.*bad\.npz: expected a statistics file"):
        normalization_layer(str(tmp_path / "bad.npz"))
    older = str(tmp_path / "older.npz")  # written before files kept the sample shape
    np.savez(older, mean=np.zeros(3), variance=np.ones(3), axis=np.array("-1"),
             num_samples=np.int64(4))
    layer = normalization_layer(older)
    assert not layer.built and layer(np.ones((1, 3), "float32")).shape == (1, 3)


@pytest.mark.parametrize("layout", ["files", "rows", "pack"])
def test_bench_prints_rates_next_to_the_raw_read(tree, tmp_path, layout, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")  # what the command sets, undone after
    path = tree if layout == "files" else _save(str(tmp_path / "x.npy"),
                                                np.zeros((5000, 32), "float32"))
    if layout == "pack":  # the tree's samples as a pack's ragged rows
        path = tmp_path / "packed"
        assert _run("pack", tree, path, "-q").returncode == 0
    done = _run("bench", path, "--batches", "3", "--batch-size", "8")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    samples, nbytes = (20, 4 * 3 * sum(4 + k % 10 for k in range(20))) if layout in (
        "files", "pack") else (24, 24 * 128)
    assert lines[0] == (f"{path}: 3 batches, {samples} samples, {nbytes / 1e6:,.1f} MB of data "
                        "per pass, from the page cache (median of passes)")
    assert lines[1].split() == ["reader", "samples/s", "MB/s", "vs", "raw"]
    names = [re.match(r"(.+?)\s{2,}", line).group(1) for line in lines[2:5]]
    assert names == ["raw read (system calls)", "NpyDataset[i]", "npy_dataset (in a tf graph)"]
    assert lines[2].endswith(" 1.00x")
    assert re.match(r"Each npy_dataset pass .* a pass of one batch takes \d+ ms\.$", lines[5])
    result = json.loads(_run("bench", path, "--batches", "2", "--json").stdout)
    assert set(result["seconds"]) == {"raw", "NpyDataset", "npy_dataset"}


@pytest.mark.parametrize("level", ["2", "0"])
def test_tensorflow_start_up_notices_are_held_to_the_log_level(monkeypatch, capfd, level):
    """`bench` and `demo` import TensorFlow inside `_start_up_notices_held_back`: what its
    libraries log while they load, before they read TF_CPP_MIN_LOG_LEVEL (2 unless set),
    comes out as that level says."""
    from keras_npy.__main__ import _start_up_notices_held_back

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level)
    logged = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796195844.650175   11040 port.cc:153] oneDNN custom operations are on.",
        "W0501 12:00:01.000001   11040 cuda_executor.cc:10] no CUDA driver",
        "E0000 00:00:1796195844.650175   11040 cuda_dnn.cc:8579] Unable to register a factory",
        "a line of Python's",
    ]
    with _start_up_notices_held_back():
        os.write(2, "".join(line + "\n" for line in logged).encode())
    kept = capfd.readouterr().err.splitlines()
    assert kept == (logged[3:] if level == "2" else logged)


def test_bad_arguments_exit_with_usage(tree):
    done = _run("stats", tree, "--axis", "x")
    assert done.returncode == 2
    assert "argument --axis: expected an integer, integers separated by commas, or 'none'; " \
           "found 'x'" in done.stderr
    assert _run("frobnicate").returncode == 2
    zero = _run("demo", "--epochs", "0")
    assert zero.returncode == 2 and "expected a positive integer, found '0'" in zero.stderr


def test_inspect_row_files_as_rows(tmp_path):
    for k, n in enumerate((300, 200, 100)):
        _save(str(tmp_path / "parts" / f"{k}.npy"), np.zeros((n, 16), "float32"))
    _save(str(tmp_path / "parts" / "3.npy"), np.zeros((50, 8), "float32"))
    _save(str(tmp_path / "parts" / "4.npy"), np.float32(1))
    as_files = _run("inspect", tmp_path / "parts", "-q")
    assert as_files.stdout.splitlines()[1] == "samples: 4 (one per file)"
    done = _run("inspect", tmp_path / "parts", "--layout", "rows", "-q")
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[1:] == [
        "samples: 600 (the rows of the files)",
        "dtypes: float32 (3 files)",
        "rows of shape (16,): 100 to 300 per file",
        "problems: 2",
        f"  {tmp_path / 'parts' / '3.npy'}: rows of shape (8,) differ from the other files' "
        "(16,)",
        f"  {tmp_path / 'parts' / '4.npy'}: a scalar has no rows",
    ]


def test_usable_files_are_counted_per_class(tmp_path):
    _save(str(tmp_path / "tree" / "a" / "0.npy"), np.array([{"a": 1}], dtype=object),
          allow_pickle=True)
    _save(str(tmp_path / "tree" / "b" / "0.npy"), np.zeros(3, "float32"))
    done = _run("inspect", tmp_path / "tree", "-q")
    assert done.stdout.splitlines()[1:3] == ["samples: 1 (one per file)", "classes: 1: b (1)"]


def test_stats_refuses_to_overwrite_unless_forced(tree, tmp_path):
    output = tmp_path / "stats.npz"
    output.write_bytes(b"mine")
    done = _run("stats", tree, "-o", output, "-q")
    assert done.returncode == 1 and output.read_bytes() == b"mine"
    assert done.stderr == (f"keras-npy stats: error: {output} exists; pass --force to overwrite "
                           "it, or --output to write another file.\n")
    assert _run("stats", tree, "-o", output, "-q", "--force").returncode == 0
    normalization_layer(str(output))
    bare = tmp_path / "s"  # np.savez writes s.npz: that is the file checked and named
    assert "written to " + str(bare) + ".npz" in _run("stats", tree, "-o", bare, "-q").stdout
    assert _run("stats", tree, "-o", bare, "-q").returncode == 1
    missing = _run("stats", tree, "-o", tmp_path / "nothere" / "s.npz", "-q")
    assert missing.returncode == 1 and missing.stderr.startswith("keras-npy stats: error: ")


def test_version_and_help(capsys):
    from importlib import metadata

    done = _run("--version")
    assert done.returncode == 0
    assert done.stdout == f"keras-npy {metadata.version('keras-npy')}\n"
    assert metadata.version("keras-npy") == keras_npy.__version__
    for command in ("inspect", "stats", "bench", "demo"):
        text = _run(command, "--help").stdout
        assert "--layout" in text or command == "demo"
        assert command != "demo" or "default 2000" in text


def test_no_progress_bar_in_a_pipe(tree, monkeypatch):
    from keras_npy import index

    monkeypatch.setattr(index, "_PROGRESS_AFTER_SECONDS", -1.0)  # at once, were it shown
    done = _run("inspect", tree)  # stdout is not a terminal here
    assert "\x1b" not in done.stdout + done.stderr and "\r" not in done.stdout + done.stderr
    assert done.stdout.splitlines()[1] == "samples: 20 (one per file)"


def test_a_progress_line_on_a_terminal(monkeypatch):
    from keras_npy import index

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(index, "_PROGRESS_AFTER_SECONDS", -1.0)
    progress = index.Progress(3, verbose=True)
    for _ in range(3):
        progress.add(1)
    assert screen.getvalue().startswith("\r1/3 files, ") and screen.getvalue().endswith("\n")
    assert "\r3/3 files, " in screen.getvalue()
    quiet = index.Progress(3, verbose=False)
    quiet.add(3)
    assert screen.getvalue().count("\n") == 1


def test_pack_writes_what_one_npy_dataset_call_loads(tree, tmp_path):
    dst = tmp_path / "packed"
    done = _run("pack", tree, dst, "--shard-size", "300", "-q")
    assert done.returncode == 0, done.stderr
    shards = len([n for n in os.listdir(dst) if n.startswith("values-")])
    assert shards > 1
    assert re.fullmatch(
        rf"Packed 20 samples \(ragged, dtype <f4\) into {shards} shards in {re.escape(str(dst))}, "
        r"2 classes, verified, in \d+\.\d s\. Load it with keras_npy\.NpyDataset\("
        rf"{re.escape(repr(str(dst)))}\) \(keras_npy_pack\.json\)\.\n", done.stdout)
    packed = keras_npy.NpyDataset(str(dst), pad_to="longest", batch_size=6, shuffle=True, seed=1)
    files = keras_npy.NpyDataset(str(tree), "inferred", pad_to="longest", batch_size=6,
                                 shuffle=True, seed=1)
    assert packed.class_names == files.class_names == ["cat", "dog"]
    for (x, y), (fx, fy) in zip((packed[i] for i in range(len(packed))),
                                (files[i] for i in range(len(files))), strict=True):
        np.testing.assert_array_equal(x, fx)
        np.testing.assert_array_equal(y, fy)
    again = _run("pack", tree, dst, "--shard-size", "300", "-q")  # finished: checked, kept
    assert again.returncode == 0 and again.stdout.startswith("Packed 20 samples")


def test_pack_options_and_refusals(tree, tmp_path):
    dst = tmp_path / "packed"
    done = _run("pack", tree, dst, "--labels", "none", "--no-verify", "-q")
    assert done.returncode == 0, done.stderr
    assert ", 2 classes" not in done.stdout and ", verified" not in done.stdout
    assert sorted(os.listdir(dst)) == ["keras_npy_pack.json", "offsets-00000.npy",
                                       "values-00000.npy"]
    refused = _run("pack", tree, dst, "-q")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == (
        f"keras-npy pack: error: {dst}: expected an empty directory or an unfinished pack of "
        f"{tree}, found a pack (keras_npy_pack.json) of this source with other options "
        "(labels=None, not 'inferred', class_names=None, not ['cat', 'dog']). Pass force=True "
        "(--force) to overwrite it.\n")
    assert _run("pack", tree, dst, "-q", "--force").returncode == 0
    assert "y-00000.npy" in os.listdir(dst)
    size = _run("pack", tree, tmp_path / "other", "--shard-size", "lots")
    assert size.returncode == 1 and size.stderr == (
        "keras-npy pack: error: `shard_size` must be a positive number of bytes, as an int or "
        "a string such as \"256MiB\" or \"1GB\". Received: shard_size='lots'\n")
    missing = _run("pack", tmp_path / "nothing", tmp_path / "other")
    assert missing.returncode == 1 and missing.stderr == (
        f"keras-npy pack: error: `src` must be a directory of .npy files; {tmp_path}/nothing "
        f"does not exist. Received: src='{tmp_path}/nothing'\n")
    labels = _run("pack", tree, tmp_path / "other", "--labels", "folders")
    assert labels.returncode == 2 and "argument --labels: invalid choice: 'folders'" in \
        labels.stderr
