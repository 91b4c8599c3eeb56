import os
import pickle

import numpy as np
import pytest

from keras_npy import sources
from keras_npy.sources import find_files


def _touch(root, *relpaths):
    for relpath in relpaths:
        path = os.path.join(root, relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            np.save(f, np.zeros(1))


def _rel(table):
    return [table.relpath(i) for i in range(len(table))]


def test_directory_walk_is_recursive_sorted_and_npy_only(tmp_path):
    _touch(tmp_path, "b/2.npy", "b/10.npy", "a/z/1.npy", "a/0.npy", "top.NPY", "a.npy")
    (tmp_path / "b" / "notes.txt").write_text("not data")
    _touch(tmp_path, ".ipynb_checkpoints/x.npy", "a/.hidden/y.npy")
    table = find_files(str(tmp_path))
    # Sorted by path components: the folder "a" comes before the file "a.npy".
    assert _rel(table) == ["a/0.npy", "a/z/1.npy", "a.npy", "b/10.npy", "b/2.npy", "top.NPY"]
    assert table[0] == os.path.join(str(tmp_path), "a/0.npy")
    assert table.kinds == ["directory"] and table.roots == [str(tmp_path)]


def test_glob_file_and_list_keep_the_given_order(tmp_path):
    _touch(tmp_path, "c1/b.npy", "c1/a.npy", "c2/a.npy", "single.npy")
    table = find_files([str(tmp_path / "single.npy"), str(tmp_path / "c*" / "*.npy")])
    assert table[:] == [str(tmp_path / p) for p in
                        ("single.npy", "c1/a.npy", "c1/b.npy", "c2/a.npy")]
    assert table.kinds == ["file", "glob"]
    assert table.roots == [str(tmp_path), str(tmp_path)]
    assert _rel(table) == ["single.npy", "c1/a.npy", "c1/b.npy", "c2/a.npy"]


def test_recursive_glob(tmp_path):
    _touch(tmp_path, "a/b/c.npy", "a/d.npy", "e.npy")
    table = find_files(str(tmp_path / "a" / "**" / "*.npy"))
    assert _rel(table) == ["b/c.npy", "d.npy"]
    assert table.roots == [str(tmp_path / "a")]


def test_follow_links_and_link_cycles(tmp_path):
    _touch(tmp_path, "data/a/1.npy", "elsewhere/2.npy")
    os.symlink(tmp_path / "elsewhere", tmp_path / "data" / "linked")
    os.symlink(tmp_path / "data", tmp_path / "data" / "a" / "loop")
    root = str(tmp_path / "data")
    assert _rel(find_files(root)) == ["a/1.npy"]
    followed = _rel(find_files(root, follow_links=True))
    assert followed == ["a/1.npy", "linked/2.npy"]  # the loop is entered at most once


def test_path_table_is_compact_and_pickles_small(tmp_path):
    builder = sources.PathTableBuilder()
    root = builder.add_root(str(tmp_path), sources.DIRECTORY)
    for i in range(10_000):
        builder.append(root, f"class_{i % 10}/{i:08d}.npy")
    table = builder.build()
    assert len(table) == 10_000 and table.relpath(1234) == "class_4/00001234.npy"
    assert table.nbytes < 10_000 * (len("class_4/00001234.npy") + 13)
    copy = pickle.loads(pickle.dumps(table))
    assert len(pickle.dumps(table)) < table.nbytes + 1024
    assert copy[9999] == table[9999]
    assert table.take(np.array([3, 1]))[:] == [table[3], table[1]]


def test_non_utf8_file_names_round_trip(tmp_path):
    name = os.fsdecode(b"caf\xe9.npy")  # latin-1 bytes, not valid UTF-8
    _touch(tmp_path, name)
    table = find_files(str(tmp_path))
    assert table[0] == os.path.join(str(tmp_path), name)
    assert os.path.exists(table[0])


@pytest.mark.parametrize("source, error, message", [
    ("missing", ValueError,
     "`x` must name existing files, directories or globs; '{tmp}/missing' does not exist."),
    ("empty", ValueError, "`x` names '{tmp}/empty', which has no .npy files."),
    ("nomatch*.npy", ValueError, "`x` names '{tmp}/nomatch*.npy', which has no files."),
])
def test_bad_sources(tmp_path, source, error, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(error) as info:
        find_files(str(tmp_path / source))
    assert str(info.value) == message.format(tmp=tmp_path)


def test_bad_source_types():
    with pytest.raises(TypeError) as info:
        find_files(["a.npy", 3], name="y")
    assert str(info.value) == ("`y` must be a path, a glob, or a list of these. Received: "
                               "y=['a.npy', 3] (an entry of type int)")
    with pytest.raises(ValueError) as info:
        find_files([])
    assert str(info.value) == ("`x` must name at least one file, directory or glob. "
                               "Received: x=[]")
