import os
import pickle
import sys
import tracemalloc

import numpy as np
import pytest

from keras_npy import index as index_lib
from keras_npy import sources
from keras_npy.header import NpyHeader
from keras_npy.index import FileIndex, RowIndex, build_index
from helpers import save as _save


def _read_sample(index, i):
    """Reads sample i from what the index says alone (C-order files)."""
    file_ids, offsets = index.locate(np.array([i]))
    shape = tuple(index.sample_shapes(np.array([i]))[0])
    count = int(np.prod(shape))
    flat = np.fromfile(index.paths[file_ids[0]], index.dtype, count, offset=offsets[0])
    return flat.reshape(shape)


@pytest.fixture
def variable_files(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for c, name in enumerate(["dog", "cat", "bird"]):
        for j in range(4):
            array = rng.normal(size=(3 + j + c, 2)).astype("float32")
            arrays[_save(str(tmp_path / "data" / name / f"{j}.npy"), array)] = (array, name)
    return str(tmp_path / "data"), arrays


def test_files_layout_records_each_file(variable_files):
    root, arrays = variable_files
    index = build_index(root, y="inferred")
    assert isinstance(index.x, FileIndex) and index.x.layout == "files"
    assert index.num_samples == 12 and index.x.sample_ndim == 2
    assert index.x.sample_shape == (None, 2)
    assert index.class_names == ["bird", "cat", "dog"]
    expected_paths = sorted(arrays, key=lambda p: p.split(os.sep))
    assert index.x.paths[:] == expected_paths
    for i, path in enumerate(expected_paths):
        array, name = arrays[path]
        np.testing.assert_array_equal(_read_sample(index.x, i), array)
        assert index.y[i] == index.class_names.index(name)
        assert tuple(index.x.shapes[i]) == array.shape
    assert index.y.dtype == np.int32
    assert index.x.data_offsets.dtype == np.uint32
    assert not index.x.fortran_order.any()


def test_rows_layout_concatenates_files_in_name_order(tmp_path):
    parts = [np.arange(i * 100, i * 100 + 8 * n).reshape(n, 8).astype(">i4")
             for i, n in enumerate([5, 0, 7, 3])]
    for i, part in enumerate(parts):
        _save(str(tmp_path / "rows" / f"x_{i:03d}.npy"), part)
    index = build_index(str(tmp_path / "rows"), layout="rows")
    assert isinstance(index.x, RowIndex)
    assert index.num_samples == 15 and index.x.sample_shape == (8,)
    assert index.x.dtype == np.dtype(">i4")
    assert list(index.x.row_starts) == [0, 5, 5, 12, 15]
    assert list(index.x.num_rows) == [5, 0, 7, 3]
    whole = np.concatenate(parts)
    for i in range(15):
        np.testing.assert_array_equal(_read_sample(index.x, i), whole[i])
    file_ids, offsets = index.x.locate(np.array([14, 0, 5]))
    assert list(file_ids) == [3, 0, 2]
    assert list(offsets) == [128 + 2 * 32, 128, 128]
    assert index.x.sample_shapes(np.array([1, 2])).tolist() == [[8], [8]]


def test_auto_layout(tmp_path):
    path = _save(str(tmp_path / "x.npy"), np.zeros((10, 3), "float32"))
    assert build_index(path).x.layout == "rows"
    assert build_index(str(tmp_path)).x.layout == "files"
    assert build_index(str(tmp_path / "*.npy")).x.layout == "files"
    assert build_index([path]).x.layout == "files"
    assert build_index(path, layout="files").x.sample_shape == (10, 3)


def test_fortran_files_are_flagged(tmp_path):
    _save(str(tmp_path / "a.npy"), np.zeros((4, 3)))
    _save(str(tmp_path / "b.npy"), np.asfortranarray(np.zeros((4, 3))))
    index = build_index(str(tmp_path))
    assert index.x.fortran_order.tolist() == [False, True]
    rows = build_index(str(tmp_path), layout="rows")
    assert rows.x.fortran_order.tolist() == [False, True]


def test_dtype_mismatch_names_both_files(tmp_path):
    a = _save(str(tmp_path / "x" / "0000.npy"), np.zeros(3, "float32"))
    b = _save(str(tmp_path / "x" / "0042.npy"), np.zeros(3, "int64"))
    with pytest.raises(ValueError) as info:
        build_index(str(tmp_path / "x"))
    assert str(info.value) == f"{b}: expected dtype float32 like {a}, found int64."
    with pytest.raises(ValueError) as info:
        build_index(str(tmp_path / "x"), layout="rows")
    assert str(info.value) == f"{b}: expected dtype float32 like {a}, found int64."


def test_byte_order_mismatch_is_a_dtype_mismatch(tmp_path):
    a = _save(str(tmp_path / "0.npy"), np.zeros(3, "<f4"))
    b = _save(str(tmp_path / "1.npy"), np.zeros(3, ">f4"))
    with pytest.raises(ValueError) as info:
        build_index(str(tmp_path))
    assert str(info.value) == f"{b}: expected dtype float32 like {a}, found >f4."


def test_row_shape_mismatch_names_both_files(tmp_path):
    a = _save(str(tmp_path / "x_0.npy"), np.zeros((4, 3, 2)))
    b = _save(str(tmp_path / "x_1.npy"), np.zeros((4, 3, 5)))
    with pytest.raises(ValueError) as info:
        build_index(str(tmp_path), layout="rows")
    assert str(info.value) == (f"{b}: expected rows of shape (3, 2) like {a}, found rows of "
                               "shape (3, 5).")


def test_zero_dimensional_rows_file(tmp_path):
    path = _save(str(tmp_path / "x.npy"), np.float32(3))
    with pytest.raises(ValueError) as info:
        build_index(path)
    assert str(info.value) == (f"{path}: expected an array whose rows are samples, found a "
                               "0-dimensional array.")


def test_rank_mismatch_between_sample_files(tmp_path):
    a = _save(str(tmp_path / "a.npy"), np.zeros((4, 3)))
    b = _save(str(tmp_path / "b.npy"), np.zeros((4, 3, 1)))
    with pytest.raises(ValueError) as info:
        build_index(str(tmp_path))
    assert str(info.value) == (f"{b}: expected a sample of 2 dimensions like {a} (shape "
                               "(4, 3)), found shape (4, 3, 1).")


def test_a_malformed_file_is_reported_at_build_time(tmp_path):
    _save(str(tmp_path / "a.npy"), np.zeros(3))
    bad = tmp_path / "b.npy"
    bad.write_bytes(b"not numpy at all")
    with pytest.raises(ValueError) as info:
        build_index(str(tmp_path))
    assert str(info.value) == (f"{bad}: expected a .npy file starting with the magic string "
                               "b'\\x93NUMPY', found b'not nu'.")


def test_dict_inputs(tmp_path):
    a = _save(str(tmp_path / "a.npy"), np.zeros((6, 2), "float32"))
    b = _save(str(tmp_path / "b.npy"), np.zeros((6, 5), "int8"))
    index = build_index({"audio": a, "meta": b}, y=np.arange(6))
    assert list(index.inputs) == ["audio", "meta"]
    assert index.inputs["meta"].sample_shape == (5,) and index.num_samples == 6
    c = _save(str(tmp_path / "c.npy"), np.zeros((7, 5), "int8"))
    with pytest.raises(ValueError) as info:
        build_index({"audio": a, "meta": c})
    assert str(info.value) == ("Every input of `x` must have the same number of samples: "
                               f"expected 6 like x['audio'] ({a}), found 7 in x['meta'] ({c}).")
    with pytest.raises(ValueError) as info:
        build_index({})
    assert str(info.value) == ("A dict `x` must map input names (strings) to sources, and "
                               "name at least one input. Received: x={}")


def test_label_array(tmp_path):
    path = _save(str(tmp_path / "x.npy"), np.zeros((4, 2)))
    index = build_index(path, y=[[1.0], [2.0], [3.0], [4.0]])
    assert index.y.shape == (4, 1) and index.class_names is None
    with pytest.raises(ValueError) as info:
        build_index(path, y=[1, 2, 3])
    assert str(info.value) == "`y` must have one label per sample of `x`: expected 4, found 3."
    with pytest.raises(TypeError) as info:
        build_index(path, y=np.array([None] * 4))
    assert str(info.value) == ("`y` must be numeric labels (bool, integer, float or complex). "
                               "Received: y with dtype object")


def test_label_rows_in_files_aligned_with_x(tmp_path):
    xs = [_save(str(tmp_path / "x" / f"x_{i}.npy"), np.zeros((n, 3))) for i, n in
          enumerate([4, 6])]
    ys = [_save(str(tmp_path / "y" / f"y_{i}.npy"), np.arange(n)) for i, n in
          enumerate([4, 6])]
    index = build_index(str(tmp_path / "x"), y=str(tmp_path / "y"), layout="rows")
    assert isinstance(index.y, RowIndex) and index.y.num_samples == 10
    index = build_index(str(tmp_path / "x"), y=ys, layout="rows")
    assert index.y.paths[:] == ys
    _save(ys[1], np.arange(5))
    with pytest.raises(ValueError) as info:
        build_index(str(tmp_path / "x"), y=str(tmp_path / "y"), layout="rows")
    assert str(info.value) == f"{ys[1]}: expected 6 rows, one per row of {xs[1]}, found 5."
    with pytest.raises(ValueError) as info:
        build_index(str(tmp_path / "x"), y=ys[1], layout="rows")
    assert str(info.value) == (
        f"`y` must have one row per sample of `x`: expected 10 rows (the samples of {xs[0]} "
        f"and 1 more files), found 5 (in {ys[1]}).")


def test_one_label_file_for_a_directory_of_samples(tmp_path):
    for i in range(3):
        _save(str(tmp_path / "x" / f"{i}.npy"), np.zeros(i + 1))
    y = _save(str(tmp_path / "y.npy"), np.array([0, 1, 1]))
    index = build_index(str(tmp_path / "x"), y=y)
    assert index.x.layout == "files" and index.y.layout == "rows"


def test_per_sample_target_files_matched_by_relative_path(tmp_path):
    for rel in ["a/1.npy", "a/2.npy", "b/1.npy"]:
        _save(str(tmp_path / "x" / rel), np.zeros((5, 2)))
    for rel in ["b/1.npy", "a/2.npy", "a/1.npy", "c/extra.npy"]:
        _save(str(tmp_path / "y" / rel), np.full(3, len(rel)))
    index = build_index(str(tmp_path / "x"), y=str(tmp_path / "y"))
    assert isinstance(index.y, FileIndex)
    assert index.y.paths[:] == [str(tmp_path / "y" / r) for r in ["a/1.npy", "a/2.npy",
                                                                   "b/1.npy"]]
    os.remove(tmp_path / "y" / "a" / "2.npy")
    with pytest.raises(ValueError) as info:
        build_index(str(tmp_path / "x"), y=str(tmp_path / "y"))
    assert str(info.value) == (f"{tmp_path}/x/a/2.npy: expected a target file "
                               f"{tmp_path}/y/a/2.npy in `y`, found none.")


def test_inferred_labels_with_user_class_order(variable_files):
    root, arrays = variable_files
    index = build_index(root, y="inferred", class_names=["dog", "cat", "bird"])
    assert index.class_names == ["dog", "cat", "bird"]
    names = [arrays[p][1] for p in index.x.paths]
    assert [index.class_names[label] for label in index.y] == names


def test_inferred_from_globs_uses_the_parent_folder(variable_files):
    root, _ = variable_files
    index = build_index(os.path.join(root, "*", "*.npy"), y="inferred")
    assert index.class_names == ["bird", "cat", "dog"]
    assert np.bincount(index.y).tolist() == [4, 4, 4]


@pytest.mark.parametrize("class_names, message", [
    (["dog", "cat"], "`class_names` must list every class folder; found folder 'bird' "
                     "({root}/bird/0.npy), which is not in class_names=['dog', 'cat']."),
    (["dog", "cat", "bird", "fish"], "`class_names` lists 'fish', but there is no folder of "
                                     "that name. Found folders: ['bird', 'cat', 'dog']."),
])
def test_class_names_must_match_the_folders(variable_files, class_names, message):
    root, _ = variable_files
    with pytest.raises(ValueError) as info:
        build_index(root, y="inferred", class_names=class_names)
    assert str(info.value) == message.format(root=root)


def test_an_empty_class_folder_is_a_class_as_in_keras(variable_files):
    root, _ = variable_files
    os.makedirs(os.path.join(root, "ant"))  # empty: no sample, still a class
    os.makedirs(os.path.join(root, ".hidden"))  # hidden: not a class
    index = build_index(root, y="inferred")
    assert index.class_names == ["ant", "bird", "cat", "dog"]
    assert np.bincount(index.y, minlength=4).tolist() == [0, 4, 4, 4]
    ordered = build_index(root, y="inferred", class_names=["dog", "ant", "cat", "bird"])
    assert np.bincount(ordered.y, minlength=4).tolist() == [4, 0, 4, 4]


@pytest.mark.parametrize("follow_links", [False, True])
def test_a_link_that_loops_is_an_error_that_names_it(tmp_path, follow_links):
    _save(str(tmp_path / "a" / "0.npy"), np.zeros(3))
    os.symlink("loop.npy", tmp_path / "a" / "loop.npy")
    os.symlink("self", tmp_path / "a" / "self")
    for looping in ("loop.npy", "self"):  # met in name order
        if looping == "self" and not follow_links:
            assert build_index(str(tmp_path)).num_samples == 1  # a link to a folder: not entered
            continue
        with pytest.raises(ValueError) as info:
            build_index(str(tmp_path), follow_links=follow_links)
        assert str(info.value) == (f"{tmp_path / 'a' / looping}: cannot read the directory "
                                   "entry: Too many levels of symbolic links.")
        os.remove(tmp_path / "a" / looping)


def test_rows_without_data_are_refused_whatever_their_number(tmp_path):
    path = str(tmp_path / "empty_rows.npy")
    text = b"{'descr': '<f4', 'fortran_order': False, 'shape': (10000000000000, 0), }"
    with open(path, "wb") as f:  # 10^13 empty rows in a file of 84 bytes
        f.write(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text)
    with pytest.raises(ValueError) as info:
        build_index(path)
    assert str(info.value) == (f"{path}: expected rows that hold data, found 10000000000000 "
                               "rows of shape (0,).")


def test_inferred_labels_need_class_folders(tmp_path):
    path = _save(str(tmp_path / "loose.npy"), np.zeros((3,)))
    _save(str(tmp_path / "a" / "1.npy"), np.zeros((3,)))
    with pytest.raises(ValueError) as info:
        build_index(str(tmp_path), y="inferred")
    assert str(info.value) == (f"{path}: with y=\"inferred\", expected every file to be in a "
                               f"class folder of {tmp_path}, found it directly in {tmp_path}.")
    with pytest.raises(ValueError) as info:
        build_index(path, y="inferred")
    assert str(info.value) == (
        '`y="inferred"` takes the class of each sample from its folder, so `x` must be in '
        f'the files layout; found layout "rows" for x ({path}).')


def test_inferred_labels_with_dict_inputs_must_agree(tmp_path):
    for modality in ["a", "b"]:
        for c in ["x", "y"]:
            _save(str(tmp_path / modality / c / "0.npy"), np.zeros(2))
    index = build_index({"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}, y="inferred")
    assert index.class_names == ["x", "y"] and index.y.tolist() == [0, 1]
    os.rename(tmp_path / "b" / "y", tmp_path / "b" / "z")
    with pytest.raises(ValueError) as info:
        build_index({"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}, y="inferred")
    assert str(info.value) == ("With a dict `x` and y=\"inferred\", every input must have the "
                               "same classes in the same order; b disagrees with a.")


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(layout="columns"), ValueError,
     '`layout` must be one of "auto", "files" or "rows". Received: layout=\'columns\''),
    (dict(label_mode="onehot"), ValueError,
     '`label_mode` argument must be one of "int", "categorical", "binary", or None. '
     "Received: label_mode='onehot'"),
    (dict(y="inferred", label_mode="binary"), ValueError,
     'When passing `label_mode="binary"`, there must be exactly 2 class_names. Received: '
     "class_names=['bird', 'cat', 'dog']"),
    (dict(class_names=["a"]), ValueError,
     'You can only pass `class_names` if `y="inferred"`. Received: y=None, and '
     "class_names=['a']"),
    (dict(y="inferred", class_names="dog"), TypeError,
     "`class_names` must be a list of strings. Received: class_names='dog'"),
    (dict(y="inferred", class_names=["dog", "dog"]), ValueError,
     "`class_names` must not repeat a name. Received: class_names=['dog', 'dog']"),
    (dict(y={"out": "y.npy"}), TypeError,
     '`y` must be None, "inferred", labels, or .npy path(s); multi-output dicts are not '
     "supported. Received: y={'out': 'y.npy'}"),
])
def test_bad_arguments(variable_files, kwargs, error, message):
    root, _ = variable_files
    with pytest.raises(error) as info:
        build_index(root, **kwargs)
    assert str(info.value) == message


def test_threaded_scan_gives_the_same_index_and_errors(tmp_path, monkeypatch):
    for i in range(50):
        _save(str(tmp_path / "d" / f"{i:03d}.npy"), np.zeros((i % 7, 2), "int16"))
    serial = build_index(str(tmp_path / "d"))
    monkeypatch.setattr(index_lib, "_CHUNK", 4)
    monkeypatch.setattr(index_lib, "_THREADED_ABOVE_SECONDS_PER_FILE", 0.0)
    threaded = build_index(str(tmp_path / "d"))
    np.testing.assert_array_equal(threaded.x.shapes, serial.x.shapes)
    assert threaded.x.paths[:] == serial.x.paths[:]
    bad = _save(str(tmp_path / "d" / "037.npy"), np.zeros((3, 2), "int32"))
    with pytest.raises(ValueError) as info:
        build_index(str(tmp_path / "d"))
    assert str(info.value) == (f"{bad}: expected dtype int16 like {tmp_path}/d/000.npy, "
                               "found int32.")


def test_progress_bar_on_long_scans_only(tmp_path, monkeypatch, capsys):
    for i in range(20):
        _save(str(tmp_path / "d" / f"{i}.npy"), np.zeros(2))
    build_index(str(tmp_path / "d"))
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(index_lib, "_PROGRESS_AFTER_SECONDS", 0.0)
    build_index(str(tmp_path / "d"), verbose=False)
    assert capsys.readouterr().out == ""
    build_index(str(tmp_path / "d"))  # not on a terminal: nothing
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    build_index(str(tmp_path / "d"))
    assert "\r20/20 files, " in capsys.readouterr().out


def test_index_pickles_without_arrays_of_data(tmp_path):
    path = _save(str(tmp_path / "x.npy"), np.zeros((100_000, 16), "float32"))
    index = build_index(path, y=path)
    assert len(pickle.dumps(index)) < 4096
    files = build_index(str(tmp_path / "*.npy"))
    assert pickle.loads(pickle.dumps(files)).x.paths[:] == [path]


def test_one_million_samples_index_in_under_100_megabytes(tmp_path):
    """Builds a files-layout index of 10^6 synthetic entries (class folders, 2-D
    samples of varying length, inferred labels) through the same builders as a
    directory scan, and measures what stays allocated."""
    n = 1_000_000
    tracemalloc.start()
    try:
        builder = sources.PathTableBuilder()
        root = builder.add_root(str(tmp_path), sources.DIRECTORY)
        for i in range(n):
            builder.append(root, f"class_{i % 10}/{i:07d}.npy")
        paths = builder.build()
        del builder
        headers = (NpyHeader(paths[i], (1, 0), np.dtype("float32"), (100 + i % 50, 40),
                             False, 128) for i in range(n))
        x = FileIndex.from_headers(paths, headers)
        from keras_npy import labels
        y, class_names = labels.infer_classes(paths, None)
        index = index_lib.DatasetIndex(x, y, class_names)
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert index.num_samples == n and class_names == [f"class_{c}" for c in range(10)]
    assert index.x.sample_shape == (None, 40)
    print(f"index: {index.nbytes / n:.1f} bytes/sample, {retained / 2**20:.1f} MiB retained, "
          f"{peak / 2**20:.1f} MiB peak while building")
    assert index.nbytes < 100 * 2**20
    assert retained < 100 * 2**20
