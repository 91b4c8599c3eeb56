"""Index files (keras_npy/index_file.py): written once, loaded instead of the
headers, refused or replaced when the data changed."""

import os
import shutil
import time

import numpy as np
import pytest
from helpers import save
from test_cli import _run

import keras_npy
from keras_npy import NpyDataset, build_index, load_index, write_index
from keras_npy import header as header_lib


@pytest.fixture
def tree(tmp_path):
    """Two class folders of (length, 2) float32 samples, lengths 1 to 6."""
    root = tmp_path / "tree"
    for k in range(12):
        save(str(root / f"class_{k % 2}" / f"{k:02d}.npy"),
             np.full((k % 6 + 1, 2), k, "float32"))
    return str(root)


def _touch_later(path, array):
    """Writes `path` after the clock has moved on (a folder's time is coarse)."""
    time.sleep(0.02)
    save(path, array)


def _no_headers(monkeypatch):
    """Makes reading any header fail: what loads must come from the index file."""
    def refuse(*args, **kwargs):
        raise AssertionError("a header was read")
    monkeypatch.setattr(header_lib, "read_header", refuse)
    monkeypatch.setattr(header_lib.HeaderCache, "read", refuse)


def test_an_index_file_holds_the_index_and_datasets_load_it(tree, monkeypatch, capsys):
    built = build_index(tree, y="inferred", index_file=False)
    path = write_index(tree, y="inferred")
    assert path == os.path.join(tree, "keras_npy.index")
    loaded = load_index(path)
    assert loaded.class_names == built.class_names == ["class_0", "class_1"]
    np.testing.assert_array_equal(loaded.y, built.y)
    for name in ("shapes", "data_offsets", "fortran_order", "header_crc32"):
        np.testing.assert_array_equal(getattr(loaded.x, name), getattr(built.x, name))
    assert list(loaded.x.paths) == list(built.x.paths)
    _no_headers(monkeypatch)
    ds = NpyDataset(tree, y="inferred", pad_to="longest", batch_size=5, shuffle=True, seed=1)
    monkeypatch.undo()
    plain = NpyDataset.from_index(built, pad_to="longest", batch_size=5, shuffle=True, seed=1)
    for i in range(len(ds)):
        for got, want in zip(ds[i], plain[i]):
            np.testing.assert_array_equal(got, want)
    assert capsys.readouterr().out == ""


def test_a_stale_index_file_is_refused_or_replaced(tree, capsys):
    path = write_index(tree, y="inferred")
    _touch_later(os.path.join(tree, "class_1", "99.npy"), np.zeros((3, 2), "float32"))
    with pytest.raises(ValueError) as error:
        load_index(path)
    message = (f"{path}: the index file is stale: the files in "
               f"{os.path.join(tree, 'class_1', '')} changed since it was written. Run "
               "`keras-npy index` again (or keras_npy.write_index).")
    assert str(error.value) == message
    ds = NpyDataset(tree, y="inferred", pad_to="longest")
    assert capsys.readouterr().out == f"keras_npy: {message} Reading the headers instead.\n"
    assert ds.num_samples == 13  # the new file too
    write_index(tree, y="inferred")
    assert load_index(path).num_samples == 13


def test_an_index_file_of_other_arguments_is_not_used(tree, capsys):
    write_index(tree, y="inferred")
    ds = NpyDataset(tree, pad_to="longest")
    assert capsys.readouterr().out == (
        f"keras_npy: {os.path.join(tree, 'keras_npy.index')} was written with other "
        "arguments (y): reading the headers instead.\n")
    assert ds.num_samples == 12


def test_a_rows_file_rewritten_makes_the_index_stale(tmp_path):
    rows = save(str(tmp_path / "data" / "x.npy"), np.zeros((10, 3), "float32"))
    path = write_index(str(tmp_path / "data"), layout="rows")
    assert load_index(path).num_samples == 10
    _touch_later(rows, np.zeros((11, 3), "float32"))  # same folder entry, another size
    with pytest.raises(ValueError, match=f"the file {rows} changed since it was written"):
        load_index(path)


def test_a_tree_copied_with_its_index_loads_where_it_is(tree, tmp_path, monkeypatch, capsys):
    write_index(tree, y="inferred")
    copy = str(tmp_path / "copy")
    shutil.copytree(tree, copy)  # copy2 and copystat keep the times
    _no_headers(monkeypatch)
    index = load_index(os.path.join(copy, "keras_npy.index"))
    assert index.x.paths[0] == os.path.join(copy, "class_0", "00.npy")
    ds = NpyDataset(copy, y="inferred", pad_to="longest")  # its arguments match there too
    assert ds.file_paths[0] == os.path.join(copy, "class_0", "00.npy")
    assert capsys.readouterr().out == ""


def test_the_directory_function_loads_the_index_file(tree, monkeypatch, capsys):
    write_index(tree, y="inferred")  # layout "auto": files, for a directory
    _no_headers(monkeypatch)
    ds = keras_npy.npy_dataset_from_directory(tree, format="pydataset", pad_to="longest",
                                              batch_size=4, verbose=False)
    assert ds.num_samples == 12 and capsys.readouterr().out == ""


def test_a_change_after_the_index_file_is_touched_is_still_found(tree):
    path = write_index(tree)
    os.chmod(path, 0o600)  # changes the file's ctime, not its time
    time.sleep(0.02)
    os.rename(os.path.join(tree, "class_0", "00.npy"), os.path.join(tree, "00.npy"))
    with pytest.raises(ValueError, match=f"the files in {tree}/ changed since it was written"):
        load_index(path)


def test_a_file_added_where_a_glob_matches_makes_the_index_stale(tree, tmp_path):
    path = write_index(os.path.join(tree, "*", "*.npy"), path=str(tmp_path / "glob.index"))
    assert load_index(path).num_samples == 12
    _touch_later(os.path.join(tree, "class_1", "99.npy"), np.zeros((3, 2), "float32"))
    with pytest.raises(ValueError, match="the files in .*class_1/ changed since it was written"):
        load_index(path)


def test_the_cache_of_headers_still_checks_each_file(tree):
    victim = os.path.join(tree, "class_0", "06.npy")  # the header of 00.npy, shape (1, 2)
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) - 4)
    with pytest.raises(ValueError) as error:
        build_index(tree, index_file=False)
    assert str(error.value) == (f"{victim}: expected 8 data bytes for shape (1, 2) of dtype "
                                "float32, found 4; the file is truncated.")


def test_a_file_that_is_not_an_index_is_named(tmp_path):
    path = tmp_path / "keras_npy.index"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=f"^{path}: expected an index file written by "
                       r"keras_npy.write_index \(keras-npy index\), found one that cannot be "
                       "read"):
        load_index(str(path))


def test_write_index_needs_a_path_beside_other_sources(tmp_path):
    rows = save(str(tmp_path / "x.npy"), np.zeros((4, 2), "float32"))
    with pytest.raises(ValueError) as error:
        write_index(rows)
    assert str(error.value) == ("write_index() writes beside the data when `x` is a "
                                f"directory; pass `path` for other sources. Received: x={rows!r}")
    path = write_index(rows, path=str(tmp_path / "x.index"))
    assert load_index(path).x.layout == "rows"
    with pytest.raises(TypeError, match="pass an array of labels to the dataset instead"):
        write_index(rows, y=np.arange(4), path=str(tmp_path / "y.index"))


def test_the_index_command(tree):
    done = _run("index", tree, "--labels", "inferred")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Wrote {os.path.join(tree, 'keras_npy.index')}: 12 samples, ")
    assert load_index(os.path.join(tree, "keras_npy.index")).class_names == [
        "class_0", "class_1"]
    done = _run("index", os.path.join(tree, "nowhere"))
    assert done.returncode == 1
    assert done.stderr == (f"keras-npy index: error: `x` must name existing files, directories "
                           f"or globs; {os.path.join(tree, 'nowhere')!r} does not exist.\n")
    assert keras_npy.load_index is load_index
