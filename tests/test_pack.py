"""`keras_npy.pack`: per-sample files packed into shards, and read back by
`NpyDataset(dst)` as exactly the batches of the files they came from."""

import io
import json
import os
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_npy
from keras_npy import NpyDataset, packing
from keras_npy.read import handles
from helpers import save as _save


@pytest.fixture(autouse=True)
def _no_open_files_shared():
    handles.TABLE.clear()  # packs rewritten in place are opened anew
    yield
    handles.TABLE.clear()


def _ragged_tree(root, count=30, seed=0):
    """Three class folders of (length, 3) float32 samples, lengths 1 to 9."""
    rng = np.random.default_rng(seed)
    for k in range(count):
        _save(str(root / "abc"[k % 3] / f"{k:02d}.npy"),
              rng.normal(size=(int(rng.integers(1, 10)), 3)).astype("float32"))
    return str(root)


def _fixed_tree(root, count=24, shape=(256,), dtype="float32"):
    """Two class folders of samples of one shape (1 KiB of float32 each)."""
    rng = np.random.default_rng(1)
    for k in range(count):
        _save(str(root / ("cat" if k < count // 2 else "dog") / f"{k:02d}.npy"),
              rng.normal(size=shape).astype(dtype))
    return str(root)


def _epochs(ds, count=2):
    batches = []
    for _ in range(count):
        batches.extend(ds[i] for i in range(len(ds)))
        ds.on_epoch_end()
    return batches


def _assert_same_batches(source, packed, y="inferred", batch_size=5, **kwargs):
    a = NpyDataset(source, y, batch_size=batch_size, **kwargs)
    b = NpyDataset(packed, batch_size=batch_size, **kwargs)
    assert (len(b), b.num_samples, b.class_names) == (len(a), a.num_samples, a.class_names)
    for got, expected in zip(_epochs(b), _epochs(a), strict=True):
        got, expected = (got, expected) if isinstance(got, tuple) else ((got,), (expected,))
        for g, e in zip(got, expected, strict=True):
            assert (g.dtype, g.shape) == (e.dtype, e.shape)
            np.testing.assert_array_equal(g, e)


def _files(folder):
    """Every file of `folder` and its bytes."""
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize("kwargs", [
    {}, {"shuffle": True, "seed": 4}, {"label_mode": "categorical", "shuffle": True, "seed": 1},
    {"validation_split": 0.25, "subset": "training", "shuffle": True, "seed": 2},
    {"validation_split": 0.25, "subset": "validation", "seed": 2}, {"label_mode": None},
    {"shuffle": "block", "seed": 3, "shuffle_block_size": 4, "shuffle_window": 2}])
def test_a_fixed_shape_pack_gives_the_batches_of_its_files(tmp_path, kwargs):
    source = _fixed_tree(tmp_path / "src")
    manifest = keras_npy.pack(source, str(tmp_path / "dst"), shard_size="5KiB", verbose=False)
    assert (manifest["layout"], manifest["num_samples"], manifest["class_names"]) == (
        "fixed", 24, ["cat", "dog"])
    _assert_same_batches(source, str(tmp_path / "dst"), **kwargs)


def test_fixed_shards_are_split_by_size_with_aligned_labels(tmp_path):
    source = _fixed_tree(tmp_path / "src", count=10)
    dst = tmp_path / "dst"
    manifest = keras_npy.pack(source, str(dst), shard_size=4096, verbose=False)
    assert sorted(os.listdir(dst)) == ["keras_npy_pack.json"] + [
        f"{role}-{k:05d}.npy" for role in "xy" for k in range(3)]
    assert [s["num_samples"] for s in manifest["shards"]] == [4, 4, 2]
    assert [np.load(dst / f"x-{k:05d}.npy").shape for k in range(3)] == [
        (4, 256), (4, 256), (2, 256)]
    labels = np.concatenate([np.load(dst / f"y-{k:05d}.npy") for k in range(3)])
    assert labels.dtype == np.int32 and labels.tolist() == [0] * 5 + [1] * 5
    x = np.load(dst / "x-00001.npy")
    np.testing.assert_array_equal(x[0], np.load(os.path.join(source, "cat", "04.npy")))
    assert json.loads((dst / "keras_npy_pack.json").read_text()) == manifest
    ds = NpyDataset(str(dst))
    assert repr(ds.index.x) == "RowIndex(10 rows of shape (256,) and dtype float32 in 3 files)"
    assert ds.file_paths == [str(dst / f"x-{k:05d}.npy") for k in range(3)]


@pytest.mark.parametrize("kwargs", [
    {"pad_to": "longest"},
    {"pad_to": "longest", "pad_to_multiple_of": 4, "shuffle": True, "seed": 7},
    {"pad_to": 5, "padding": "pre", "truncating": "pre", "pad_value": -1.5},
    {"pad_to": 5, "padding": "post", "truncating": "post", "shuffle": True, "seed": 0},
    {"pad_to": (6, 3), "padding": "pre"},
    {"pad_to": "longest", "bucket_boundaries": [3, 6], "shuffle": True, "seed": 5},
    {"pad_to": "longest", "validation_split": 0.2, "subset": "training", "shuffle": True,
     "seed": 9, "dtype": "float64"},
    {"pad_to": 4, "label_mode": "categorical", "drop_remainder": True},
    {"pad_to": "longest", "num_shards": 2, "shard_index": 1, "shuffle": True, "seed": 2,
     "batch_size": 6},
    {"pad_to": 6, "shuffle": "block", "seed": 1, "shuffle_block_size": 3, "workers": 2}])
def test_a_ragged_pack_gives_the_batches_of_its_files(tmp_path, kwargs, maps):
    source = _ragged_tree(tmp_path / "src")
    manifest = keras_npy.pack(source, str(tmp_path / "dst"), shard_size=300, verbose=False)
    assert (manifest["layout"], manifest["flat"], manifest["sample_shape"]) == (
        "ragged", False, [None, 3])
    assert len(manifest["shards"]) > 3
    _assert_same_batches(source, str(tmp_path / "dst"), **kwargs)


def test_ragged_files_hold_values_and_offsets(tmp_path):
    source = tmp_path / "src"
    for k, n in enumerate([2, 0, 3]):
        _save(str(source / "a" / f"{k}.npy"), np.full((n, 2), k, "int16"))
    dst = tmp_path / "dst"
    keras_npy.pack(str(source), str(dst), verbose=False)
    assert sorted(os.listdir(dst)) == ["keras_npy_pack.json", "offsets-00000.npy",
                                       "values-00000.npy", "y-00000.npy"]
    np.testing.assert_array_equal(np.load(dst / "values-00000.npy"),
                                  [[0, 0], [0, 0], [2, 2], [2, 2], [2, 2]])
    offsets = np.load(dst / "offsets-00000.npy")
    assert offsets.dtype == np.int64 and offsets.tolist() == [0, 2, 2, 5]
    ds = NpyDataset(str(dst), pad_to="longest", pad_value=-1, label_mode=None)
    np.testing.assert_array_equal(ds[0][:, :, 0], [[0, 0, -1], [-1, -1, -1], [2, 2, 2]])
    assert repr(ds.index.x) == ("RaggedIndex(3 samples of shape (None, 2) and dtype int16 "
                                "in 1 file)")


def test_samples_varying_on_other_axes_are_flattened_with_their_shapes(tmp_path, maps):
    rng = np.random.default_rng(3)
    source = tmp_path / "src"
    for k in range(17):  # big-endian, some Fortran-order: packed C-order, native
        sample = rng.integers(0, 99, size=(int(rng.integers(1, 4)), int(rng.integers(1, 4)), 2))
        sample = sample.astype(">i4")
        _save(str(source / f"{k:02d}.npy"), np.asfortranarray(sample) if k % 3 else sample)
    dst = tmp_path / "dst"
    manifest = keras_npy.pack(str(source), str(dst), labels=None, shard_size=100,
                              verbose=False)
    assert (manifest["layout"], manifest["flat"], manifest["dtype"]) == ("ragged", True, "<i4")
    shapes = np.load(dst / "shapes-00000.npy")
    assert shapes.shape[1] == 3 and np.load(dst / "values-00000.npy").ndim == 1
    for kwargs in ({"pad_to": "longest"}, {"pad_to": (2, 2, 2), "padding": "pre"},
                   {"pad_to": "longest", "shuffle": True, "seed": 1}):
        _assert_same_batches(str(source), str(dst), y=None, **kwargs)


def test_fit_on_a_packed_set_and_the_same_tf_data_batches(tmp_path):
    source = _ragged_tree(tmp_path / "src")
    dst = str(tmp_path / "dst")
    keras_npy.pack(source, dst, shard_size="256B", verbose=False)
    ds = NpyDataset(dst, pad_to=8, batch_size=4, shuffle=True, seed=0)
    model = keras.Sequential([keras.Input((8, 3)), keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    history = model.fit(ds, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    assert model.predict(ds, verbose=0).shape == (30, 3)
    pytest.importorskip("tensorflow")
    tf_ds = keras_npy.npy_dataset(dst, pad_to="longest", batch_size=4, shuffle=True, seed=2)
    same = NpyDataset(dst, pad_to="longest", batch_size=4, shuffle=True, seed=2)
    for k, (x, y) in enumerate(tf_ds):
        np.testing.assert_array_equal(x.numpy(), same[k][0])
        np.testing.assert_array_equal(y.numpy(), same[k][1])
    assert k == len(same) - 1


def test_state_statistics_and_labels_of_a_pack(tmp_path):
    source = _ragged_tree(tmp_path / "src")
    dst = str(tmp_path / "dst")
    keras_npy.pack(source, dst, verbose=False)
    ds = NpyDataset(dst, pad_to="longest", shuffle=True, seed=3, batch_size=4)
    ds.on_epoch_end()
    state = json.loads(json.dumps(ds.get_state()))
    again = NpyDataset(dst, pad_to="longest", shuffle=True, batch_size=4)
    again.set_state(state)
    np.testing.assert_array_equal(again[2][0], ds[2][0])
    mean, variance = NpyDataset(source, pad_to="longest").statistics()
    packed_mean, packed_variance = NpyDataset(dst, pad_to="longest").statistics()
    np.testing.assert_allclose(packed_mean, mean)
    np.testing.assert_allclose(packed_variance, variance)
    labels = np.arange(30) % 5
    with_y = NpyDataset(dst, labels, pad_to="longest", batch_size=30)
    assert with_y[0][1].tolist() == labels.tolist() and with_y.class_names is None
    assert NpyDataset(dst, "inferred", class_names=["a", "b", "c"],
                      pad_to=4).class_names == ["a", "b", "c"]
    with pytest.raises(ValueError) as info:
        NpyDataset(dst, "inferred", class_names=["c", "b", "a"])
    assert str(info.value) == ("`class_names` must be the pack's class names, ['a', 'b', 'c'], "
                               "in that order (they are fixed when packing). "
                               "Received: class_names=['c', 'b', 'a']")
    with pytest.raises(ValueError) as info:
        NpyDataset(dst, crop_to=2)
    assert str(info.value) == (
        f"`crop_to` reads regions of per-sample files and rows files; the variable-length "
        f"samples of a pack ({dst}/values-00000.npy) are read whole: pad or truncate them with "
        "`pad_to` instead. Received: crop_to=2")
    with pytest.raises(ValueError) as info:
        NpyDataset(dst)
    assert str(info.value) == (
        f"Samples of x differ in shape on axis 0: {dst}/values-00000.npy (sample 24 of the "
        f"file) has shape (1, 3), {dst}/values-00000.npy (sample 6 of the file) has shape "
        "(9, 3). Pass `pad_to` to pad them to one shape per batch: pad_to=\"longest\", an int, "
        "or a tuple. Received: pad_to=None")


def test_a_pack_without_labels(tmp_path):
    source = _ragged_tree(tmp_path / "src", count=6)
    dst = str(tmp_path / "dst")
    manifest = keras_npy.pack(source, dst, labels=None, verbose=False)
    assert manifest["class_names"] is None
    assert sorted(os.listdir(dst)) == ["keras_npy_pack.json", "offsets-00000.npy",
                                       "values-00000.npy"]
    batch = NpyDataset(dst, pad_to="longest")[0]
    assert isinstance(batch, np.ndarray) and batch.shape[0] == 6
    with pytest.raises(ValueError) as info:
        NpyDataset(dst, "inferred")
    assert str(info.value) == (f"{dst}: y=\"inferred\" takes the labels of the pack, but it "
                               "was packed without labels (labels=None).")


def _interrupt_after(monkeypatch, shards, error=KeyboardInterrupt):
    """Makes `_write_shard` raise after writing `shards` shards; returns the
    list of what `dst` held at each call (before the shard is written)."""
    original, seen = packing._write_shard, []

    def write_shard(index, plan, dst, k, start, stop):
        seen.append(sorted(os.listdir(dst)))
        if len(seen) > shards:
            raise error("interrupted")
        return original(index, plan, dst, k, start, stop)

    monkeypatch.setattr(packing, "_write_shard", write_shard)
    return seen


def test_packing_is_atomic_and_resumes_as_if_never_interrupted(tmp_path, monkeypatch):
    source = _ragged_tree(tmp_path / "src")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    keras_npy.pack(source, str(whole), shard_size=200, verbose=False)
    seen = _interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        keras_npy.pack(source, str(cut), shard_size=200, verbose=False)
    finals = [name for listing in seen for name in listing if not name.startswith(".")]
    assert finals == []  # no final name, and no manifest, before the end
    assert sorted(os.listdir(cut)) == [".keras_npy_pack.progress.json"] + sorted(
        f".{role}-{k:05d}.npy.part" for role in ("offsets", "values", "y") for k in range(3))
    assert not packing.is_pack(str(cut))
    monkeypatch.undo()
    calls = _interrupt_after(monkeypatch, 1000)
    keras_npy.pack(source, str(cut), shard_size=200, verbose=False)
    total = len(json.loads((whole / "keras_npy_pack.json").read_text())["shards"])
    assert len(calls) == total - 3  # the recorded shards were checked and kept
    assert _files(cut) == _files(whole)


def test_a_damaged_recorded_shard_is_written_again(tmp_path, monkeypatch):
    source = _fixed_tree(tmp_path / "src")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    keras_npy.pack(source, str(whole), shard_size="4KiB", verbose=False)
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        keras_npy.pack(source, str(cut), shard_size="4KiB", verbose=False)
    part = cut / ".x-00001.npy.part"
    data = bytearray(part.read_bytes())
    data[-1] ^= 0xFF
    part.write_bytes(bytes(data))
    monkeypatch.undo()
    calls = _interrupt_after(monkeypatch, 1000)
    keras_npy.pack(source, str(cut), shard_size="4KiB", verbose=False)
    assert len(calls) == 6 - 1  # shard 0 kept; shard 1 (damaged) and 2 to 5 written
    assert _files(cut) == _files(whole)


def test_a_killed_pack_resumes_as_if_never_interrupted(tmp_path):
    source = _ragged_tree(tmp_path / "src")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    keras_npy.pack(source, str(whole), shard_size=200, verbose=False)
    script = textwrap.dedent(f"""
        import os, signal
        from keras_npy import packing
        original, calls = packing._write_shard, []
        def write_shard(*args):
            calls.append(1)
            shard = original(*args)
            if len(calls) == 3:  # written, not yet recorded: killed
                os.kill(os.getpid(), signal.SIGKILL)
            return shard
        packing._write_shard = write_shard
        packing.pack({source!r}, {str(cut)!r}, shard_size=200, verbose=False)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    progress = json.loads((cut / ".keras_npy_pack.progress.json").read_text())
    assert [s["index"] for s in progress["shards"]] == [0, 1]
    assert not packing.is_pack(str(cut))
    keras_npy.pack(source, str(cut), shard_size=200, verbose=False)
    assert _files(cut) == _files(whole)


def test_verify_names_the_first_source_file_that_differs(tmp_path):
    source = _ragged_tree(tmp_path / "src")
    dst = tmp_path / "dst"
    keras_npy.pack(source, str(dst), shard_size=200, verbose=False, verify=False)
    before = _files(dst)
    changed = os.path.join(source, "b", "07.npy")  # the same header, other data
    sample = np.load(changed)
    np.save(changed, sample + 1)
    with pytest.raises(ValueError) as info:  # the same command again: the pack is checked
        keras_npy.pack(source, str(dst), shard_size=200, verbose=False)
    place = NpyDataset(str(dst), pad_to="longest").index.x.describe(
        NpyDataset(source, pad_to="longest").file_paths.index(changed))
    assert str(info.value) == (
        f"{changed}: holds other data than its packed copy ({place}); the pack is corrupt, or "
        "this file changed while it was packed. Pack it again with force=True (--force).")
    assert _files(dst) == before
    np.save(changed, sample)
    keras_npy.pack(source, str(dst), shard_size=200, verbose=False)  # verified


def test_verify_catches_a_corrupt_shard_and_label(tmp_path):
    source = _fixed_tree(tmp_path / "src", count=8)
    dst = tmp_path / "dst"
    keras_npy.pack(source, str(dst), shard_size="4KiB", verbose=False, verify=False)
    shard = dst / "x-00001.npy"
    data = bytearray(shard.read_bytes())
    data[-4 * 256 * 2 + 5] ^= 0x40  # sample 2 of the shard: source file 06
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError) as info:
        keras_npy.pack(source, str(dst), shard_size="4KiB", verbose=False)
    assert str(info.value) == (
        f"{source}/dog/06.npy: holds other data than its packed copy ({dst}/x-00001.npy, row 2); "
        "the pack is corrupt, or this file changed while it was packed. Pack it again with "
        "force=True (--force).")
    first = os.path.join(source, "cat", "02.npy")
    keras_npy.pack(source, str(dst), shard_size="4KiB", verbose=False, force=True)
    labels = np.load(dst / "y-00000.npy")
    labels[2] = 1
    np.save(dst / "y-00000.npy", labels)
    with pytest.raises(ValueError) as info:
        keras_npy.pack(source, str(dst), shard_size="4KiB", verbose=False)
    assert str(info.value) == (f"{first}: expected label 0 in the pack {dst}, found 1; the pack "
                               "is corrupt. Pack it again with force=True (--force).")


def test_a_finished_pack_run_again_is_left_as_it_is(tmp_path):
    source = _ragged_tree(tmp_path / "src", count=6)
    dst = tmp_path / "dst"
    first = keras_npy.pack(source, str(dst), verbose=False)
    times = {name: os.stat(dst / name).st_mtime_ns for name in os.listdir(dst)}
    assert keras_npy.pack(source, str(dst), verbose=False) == first
    assert {name: os.stat(dst / name).st_mtime_ns for name in os.listdir(dst)} == times


def test_a_destination_that_holds_something_else_is_refused_unless_forced(tmp_path):
    source = _ragged_tree(tmp_path / "src", count=6)
    dst = tmp_path / "dst"
    _save(str(dst / "mine.npy"), np.zeros(3))
    (dst / "notes.txt").write_text("keep")
    with pytest.raises(ValueError) as info:
        keras_npy.pack(source, str(dst), verbose=False)
    assert str(info.value) == (f"{dst}: expected an empty directory or an unfinished pack of "
                               f"{source}, found 2 other entries (mine.npy, notes.txt). Pass "
                               "force=True (--force) to overwrite it.")
    keras_npy.pack(source, str(dst), verbose=False, force=True)
    assert (dst / "notes.txt").read_text() == "keep"
    with pytest.raises(ValueError) as info:
        keras_npy.pack(source, str(dst), shard_size=100, verbose=False)
    assert str(info.value) == (
        f"{dst}: expected an empty directory or an unfinished pack of {source}, found a pack "
        "(keras_npy_pack.json) of this source with other options (shard_size=268435456, not "
        "100). "
        "Pass force=True (--force) to overwrite it.")
    other = _ragged_tree(tmp_path / "other", count=3)
    with pytest.raises(ValueError) as info:
        keras_npy.pack(other, str(dst), verbose=False)
    assert str(info.value) == (
        f"{dst}: expected an empty directory or an unfinished pack of {other}, found a pack "
        f"(keras_npy_pack.json) of another source, {source}. Pass force=True (--force) to "
        "overwrite it.")
    keras_npy.pack(source, str(dst), shard_size=100, verbose=False, force=True)
    assert sorted(n for n in os.listdir(dst) if n.startswith("values-"))[-1] != "values-00000.npy"


@pytest.mark.parametrize("arguments, message", [
    (dict(src="missing"), "`src` must be a directory of .npy files; {tmp}/missing does not "
     "exist. Received: src='{tmp}/missing'"),
    (dict(src="file.npy"), "`src` must be a directory of .npy files; {tmp}/file.npy is not a "
     "directory. Received: src='{tmp}/file.npy'"),
    (dict(dst="file.npy"), "`dst` must be a directory to write the pack into; {tmp}/file.npy "
     "is a file. Received: dst='{tmp}/file.npy'"),
    (dict(dst="src/packed"), "`dst` must not be inside `src`: its shards would be read as "
     "samples the next time. Received: src='{tmp}/src', dst='{tmp}/src/packed'"),
    (dict(shard_size="big"), '`shard_size` must be a positive number of bytes, as an int or a '
     'string such as "256MiB" or "1GB". Received: shard_size=\'big\''),
    (dict(shard_size=0), '`shard_size` must be a positive number of bytes, as an int or a '
     'string such as "256MiB" or "1GB". Received: shard_size=0'),
    (dict(shard_size="12 parsecs"), '`shard_size` must be a positive number of bytes, as an '
     'int or a string such as "256MiB" or "1GB". Received: shard_size=\'12 parsecs\''),
    (dict(labels="folders"), '`labels` must be "inferred" or None. Received: labels=\'folders\''),
])
def test_bad_arguments(tmp_path, arguments, message):
    _ragged_tree(tmp_path / "src", count=3)
    _save(str(tmp_path / "file.npy"), np.zeros(2))
    given = {"src": "src", "dst": "dst", **arguments}
    src, dst = (str(tmp_path / given.pop(k)) for k in ("src", "dst"))
    with pytest.raises(ValueError) as info:
        keras_npy.pack(src, dst, verbose=False, **given)
    assert str(info.value) == message.format(tmp=tmp_path)
    with pytest.raises(TypeError) as info:
        keras_npy.pack(str(tmp_path / "src"), 3)
    assert str(info.value) == "`dst` must be a path to a directory. Received: dst=3"


def test_shard_sizes():
    assert [packing.parse_size(s) for s in ("256MiB", "1GB", "4096", "1.5k", "2 KiB", 7)] == [
        256 * 2**20, 10**9, 4096, 1536, 2048, 7]


def test_samples_that_cannot_be_packed_together_are_named(tmp_path):
    source = tmp_path / "src"
    _save(str(source / "a" / "0.npy"), np.zeros((2, 3), "float32"))
    _save(str(source / "a" / "1.npy"), np.zeros((4, 3), "float64"))
    with pytest.raises(ValueError) as info:
        keras_npy.pack(str(source), str(tmp_path / "dst"), verbose=False)
    assert str(info.value) == (f"{source}/a/1.npy: expected dtype float32 like "
                               f"{source}/a/0.npy, found float64.")
    _save(str(source / "a" / "1.npy"), np.zeros((4,), "float32"))
    with pytest.raises(ValueError) as info:
        keras_npy.pack(str(source), str(tmp_path / "dst"), verbose=False)
    assert str(info.value) == (f"{source}/a/1.npy: expected a sample of 2 dimensions like "
                               f"{source}/a/0.npy (shape (2, 3)), found shape (4,).")


def test_a_values_file_cut_short_is_named(tmp_path, maps):
    source = _ragged_tree(tmp_path / "src", count=12)
    dst = tmp_path / "dst"
    keras_npy.pack(source, str(dst), verbose=False)
    ds = NpyDataset(str(dst), pad_to="longest", batch_size=4)
    ds[0]
    values = dst / "values-00000.npy"
    header = keras_npy.read_header(values)
    data = values.stat().st_size - header.data_offset
    with open(values, "r+b") as f:
        f.truncate(values.stat().st_size - 8)
    handles.TABLE.clear()
    with pytest.raises(ValueError) as info:
        ds[2]
    assert str(info.value) == (
        f"{values}: expected {data} data bytes for shape {header.shape} of dtype float32, found "
        f"{data - 8}; the file is truncated. (The file changed after the dataset was built.)")


def test_a_malformed_manifest_or_shard_is_named(tmp_path):
    source = _ragged_tree(tmp_path / "src", count=6)
    dst = tmp_path / "dst"
    keras_npy.pack(source, str(dst), verbose=False)
    np.save(dst / "offsets-00000.npy", np.array([0, 3, 2, 40], np.int64))
    with pytest.raises(ValueError) as info:
        NpyDataset(str(dst), pad_to="longest")
    length = np.load(dst / "values-00000.npy", mmap_mode="r").shape[0]
    assert str(info.value) == (f"{dst}/offsets-00000.npy: expected offsets rising from 0 to "
                               f"{length} (the length of its values file), found "
                               "[0, 3, 2, 40].")
    (dst / "keras_npy_pack.json").write_text(json.dumps({"format": "keras_npy.pack",
                                                         "version": 9}))
    with pytest.raises(ValueError) as info:
        NpyDataset(str(dst))
    assert str(info.value) == (f"{dst}/keras_npy_pack.json: expected a keras_npy pack manifest "
                               "(format 'keras_npy.pack', version 1), found version 9; a newer "
                               "keras_npy wrote it.")


def test_the_pack_command_runs_without_keras_or_tensorflow(tmp_path):
    """`keras-npy pack` (packing and verifying) imports neither Keras nor a
    backend: the command starts in a fraction of a second."""
    source = _ragged_tree(tmp_path / "src", count=6)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "keras_npy", "pack",
                           source, str(tmp_path / "dst"), "-q"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert "keras_npy.packing" in imported
    assert sorted(m for m in imported if m.split(".")[0] in {
        "keras", "tensorflow", "jax", "torch"}) == []
    assert done.stdout.startswith("Packed 6 samples (ragged, dtype <f4) into 1 shard in ")


def test_a_progress_line_on_a_terminal(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    source = _fixed_tree(tmp_path / "src", count=8)
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setattr(keras_npy.index, "_PROGRESS_AFTER_SECONDS", -1.0)  # at once
    keras_npy.pack(source, str(tmp_path / "dst"), shard_size="4KiB")
    lines = screen.getvalue().split("\n")
    assert lines[0].startswith("\rpacking: 0.0/0.0 MiB, ") and lines[0].endswith(" MiB/s")
    assert lines[1].startswith("\rverifying: 0.0/0.0 MiB, ") and lines[2] == ""
    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    keras_npy.pack(source, str(tmp_path / "quiet"), verbose=False)
    assert quiet.getvalue() == ""
