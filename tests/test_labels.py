import numpy as np
import pytest

from keras_npy import labels, sources


def _table(tmp_path, kind, relpaths):
    builder = sources.PathTableBuilder()
    root = builder.add_root(str(tmp_path), kind)
    for relpath in relpaths:
        builder.append(root, relpath)
    return builder.build()


def test_infer_classes_sorted_or_in_the_given_order(tmp_path):
    table = _table(tmp_path, sources.DIRECTORY, ["b/1.npy", "a/x/2.npy", "b/3.npy", "c/4.npy"])
    found, names = labels.infer_classes(table, None)
    assert names == ["a", "b", "c"] and found.tolist() == [1, 0, 1, 2]
    assert found.dtype == np.int32
    found, names = labels.infer_classes(table, ["c", "a", "b"])
    assert names == ["c", "a", "b"] and found.tolist() == [2, 1, 2, 0]


def test_class_of_a_globbed_file_is_its_parent_folder(tmp_path):
    table = _table(tmp_path, sources.GLOB, ["a/x/2.npy", "b/1.npy"])
    assert [labels.class_folder(table, i) for i in range(2)] == ["x", "b"]


@pytest.mark.parametrize("label_mode", ["int", "categorical", "binary", None])
def test_valid_label_modes(label_mode):
    labels.check_label_mode(label_mode, ["a", "b"])


def test_check_label_array_keeps_the_dtype():
    y = labels.check_label_array(np.array([0.5, 1.5], "float16"), 2)
    assert y.dtype == np.float16
    with pytest.raises(ValueError) as info:
        labels.check_label_array(3, 1, x_name="x['a']")
    assert str(info.value) == ("`y` must have one label per sample of `x['a']`: expected 1, "
                               "found a scalar.")
