"""`.npz` archives as sources: members read in place, deflated ones inflated,
and hostile archives refused by name."""

import io
import os
import struct
import zipfile

import keras
import numpy as np
import pytest

import keras_npy
from keras_npy import npz
from keras_npy.header import read_header


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _zip(path, members, method=zipfile.ZIP_STORED):
    """A plain archive (no zip64 fields) of `{name: bytes}`; returns `path`."""
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return str(path)


def _entries(path):
    """`{name: (local header offset, central entry offset)}` of an archive."""
    data = open(path, "rb").read()
    at = data.rfind(b"PK\x05\x06")
    count, size, offset = struct.unpack_from("<HLL", data, at + 10)
    found, pos = {}, offset
    for _ in range(count):
        nlen, elen, clen = struct.unpack_from("<3H", data, pos + 28)
        name = data[pos + 46:pos + 46 + nlen].decode()
        found[name] = (struct.unpack_from("<L", data, pos + 42)[0], pos)
        pos += 46 + nlen + elen + clen
    return found


def _patch(path, offset, fmt, value):
    data = bytearray(open(path, "rb").read())
    struct.pack_into(fmt, data, offset, value)
    open(path, "wb").write(bytes(data))


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(103, 4)).astype("float32"),
            "z": rng.normal(size=(103, 2, 3)).astype("float32"),
            "y": rng.integers(0, 3, size=103)}


def _same(a, b):
    assert len(a) == len(b)
    for i in range(len(a)):
        for u, v in zip(keras.tree.flatten(a[i]), keras.tree.flatten(b[i])):
            np.testing.assert_array_equal(u, v)


# Rows.


@pytest.mark.parametrize("saver", [np.savez, "zip64"])
def test_rows_of_members_equal_npy_files(tmp_path, arrays, maps, saver, monkeypatch):
    if saver == "zip64":  # zip64 sizes, offsets and end record, as archives past 4 GiB have
        monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 64)
        saver = np.savez
    saver(tmp_path / "d.npz", **arrays)
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array)
    archive = str(tmp_path / "d.npz")
    ours = keras_npy.NpyDataset(f"{archive}::x", y=f"{archive}::y", batch_size=16,
                                shuffle=True, seed=3)
    files = keras_npy.NpyDataset(str(tmp_path / "x.npy"), y=str(tmp_path / "y.npy"),
                                 batch_size=16, shuffle=True, seed=3)
    _same(ours, files)
    assert ours.file_paths == [f"{archive}::x"]


def test_dict_of_members_for_a_multi_input_model(tmp_path, arrays):
    np.savez(tmp_path / "d.npz", **arrays)
    archive = str(tmp_path / "d.npz")
    ds = keras_npy.NpyDataset({"x": f"{archive}::x", "z": f"{archive}::z"},
                              y=f"{archive}::y", batch_size=32)
    (inputs, y) = ds[1]
    np.testing.assert_array_equal(inputs["x"], arrays["x"][32:64])
    np.testing.assert_array_equal(inputs["z"], arrays["z"][32:64])
    np.testing.assert_array_equal(y, arrays["y"][32:64])
    a = keras.Input((4,), name="x")
    b = keras.Input((2, 3), name="z")
    out = keras.layers.Dense(3)(keras.layers.Concatenate()([a, keras.layers.Flatten()(b)]))
    model = keras.Model({"x": a, "z": b}, out)
    model.compile("adam", "sparse_categorical_crossentropy")
    history = model.fit(ds, epochs=2, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"]).all()


def test_tf_dataset_of_members(tmp_path, arrays):
    np.savez(tmp_path / "d.npz", **arrays)
    archive = str(tmp_path / "d.npz")
    ds = keras_npy.npy_dataset(f"{archive}::x", y=f"{archive}::y", batch_size=50)
    batches = list(ds.as_numpy_iterator())
    assert [len(b[0]) for b in batches] == [50, 50, 3]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), arrays["x"])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), arrays["y"])


def test_an_archive_of_one_array_by_its_path(tmp_path, arrays):
    np.savez(tmp_path / "one.npz", arrays["x"])
    ds = keras_npy.NpyDataset(str(tmp_path / "one.npz"), batch_size=103)
    np.testing.assert_array_equal(ds[0], arrays["x"])
    assert read_header(str(tmp_path / "one.npz")).shape == (103, 4)


def test_windows_and_crops_of_members(tmp_path, arrays):
    np.savez(tmp_path / "d.npz", **arrays)
    archive = str(tmp_path / "d.npz")
    ds = keras_npy.npy_timeseries_dataset(f"{archive}::x", None, sequence_length=10,
                                          batch_size=8, format="pydataset")
    expected = keras.utils.timeseries_dataset_from_array(arrays["x"], None, 10, batch_size=8)
    for ours, theirs in zip([ds[i] for i in range(len(ds))], expected.as_numpy_iterator()):
        np.testing.assert_array_equal(ours, theirs)
    crops = keras_npy.NpyDataset(f"{archive}::z", batch_size=103, crop_to=(1, 2))
    np.testing.assert_array_equal(crops[0], arrays["z"][:, :1, 0:2])


def test_deflated_rows_are_refused(tmp_path, arrays):
    np.savez_compressed(tmp_path / "c.npz", **arrays)
    member = f"{tmp_path / 'c.npz'}::x"
    with pytest.raises(ValueError) as e:
        keras_npy.NpyDataset(member)
    assert str(e.value) == (
        f"{member}: the member is compressed (np.savez_compressed), and rows of a deflated "
        "stream cannot be read in place: reading any row would inflate every row before it. "
        "Save the array once uncompressed (np.savez, or np.save of np.load(archive)[name]).")


def test_naming_members(tmp_path, arrays):
    np.savez(tmp_path / "d.npz", **arrays)
    archive = str(tmp_path / "d.npz")
    with pytest.raises(ValueError) as e:
        keras_npy.NpyDataset(archive)
    assert str(e.value) == (
        f"{archive}: the archive holds 3 arrays ('x', 'z', 'y'); name one as "
        f"'{archive}::<name>', e.g. '{archive}::x'.")
    with pytest.raises(ValueError) as e:
        keras_npy.NpyDataset(f"{archive}::w")
    assert str(e.value) == f"{archive}: expected a member named 'w', found only 'x', 'z', 'y'."
    with pytest.raises(ValueError) as e:
        keras_npy.NpyDataset(str(tmp_path / "gone.npz::x"))
    assert str(e.value) == ("`x` must name existing files, directories or globs; "
                            f"{str(tmp_path / 'gone.npz')!r} does not exist.")


# Per-sample archives.


def _sample_archives(root, compressed_every=2):
    """Class folders of per-sample archives (stored and deflated, each with an
    `x` of its own length and another array), and the same as .npy files."""
    rng = np.random.default_rng(1)
    for c in ("cat", "dog"):
        os.makedirs(root / "npz" / c)
        os.makedirs(root / "npy" / c)
        for i in range(9):
            sample = rng.normal(size=(4 + i, 3)).astype("float32")
            np.save(root / "npy" / c / f"{i}.npy", sample)
            save = np.savez_compressed if i % compressed_every == 0 else np.savez
            save(root / "npz" / c / f"{i}.npz", other=np.zeros(5), x=sample)


@pytest.mark.parametrize("options", [
    dict(pad_to="longest"), dict(pad_to=6, padding="pre"),
    dict(crop_to=(4, 2), crop_position="random")])
def test_per_sample_archives_equal_npy_files(tmp_path, options):
    _sample_archives(tmp_path)
    common = dict(y="inferred", batch_size=5, shuffle=True, seed=7, **options)
    ours = keras_npy.NpyDataset(f"{tmp_path / 'npz'}::x", **common)
    files = keras_npy.NpyDataset(str(tmp_path / "npy"), **common)
    assert ours.class_names == ["cat", "dog"]
    assert ours.file_paths[0] == f"{tmp_path / 'npz' / 'cat' / '0.npz'}::x"
    _same(ours, files)
    ours.on_epoch_end()
    files.on_epoch_end()
    _same(ours, files)
    tf_batches = list(keras_npy.npy_dataset(f"{tmp_path / 'npz'}::x", **common))
    files = keras_npy.NpyDataset(str(tmp_path / "npy"), **common)  # epoch 0 again
    assert len(tf_batches) == len(files)
    for (x, y), (u, v) in zip(tf_batches, [files[i] for i in range(len(files))]):
        np.testing.assert_array_equal(x, u)
        np.testing.assert_array_equal(y, v)


def test_glob_of_archives_and_fit(tmp_path):
    _sample_archives(tmp_path)
    ds = keras_npy.npy_dataset_from_directory(
        str(tmp_path / "npz" / "*" / "*.npz") + "::x", batch_size=4, pad_to=8, seed=1,
        format="pydataset", verbose=False)
    assert ds.num_samples == 18
    model = keras.Sequential([keras.Input((8, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(ds, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_index_file_keeps_members(tmp_path):
    _sample_archives(tmp_path)
    source = f"{tmp_path / 'npz'}::x"
    written = keras_npy.write_index(source, "inferred", str(tmp_path / "ix"),
                                               verbose=False)
    loaded = keras_npy.load_index(written)
    ds = keras_npy.NpyDataset.from_index(loaded, batch_size=6, pad_to="longest")
    files = keras_npy.NpyDataset(str(tmp_path / "npy"), y="inferred", batch_size=6,
                                 pad_to="longest")
    _same(ds, files)


def test_a_deflated_member_that_changed_is_named(tmp_path):
    _sample_archives(tmp_path)
    ds = keras_npy.NpyDataset(f"{tmp_path / 'npz'}::x", batch_size=18, pad_to="longest")
    path = tmp_path / "npz" / "cat" / "0.npz"
    np.savez_compressed(path, other=np.zeros(5), x=np.zeros((4, 3), "float64"))
    with pytest.raises(ValueError) as e:
        ds[0]
    assert str(e.value).startswith(f"{path}::x: expected dtype float32 and shape (4, 3) as "
                                   "when the dataset was built, found dtype float64")


def test_corrupt_deflated_bytes_are_named(tmp_path):
    sample = np.arange(600, dtype="float32").reshape(200, 3)
    path = tmp_path / "s.npz"
    np.savez_compressed(path, x=sample)
    ds = keras_npy.NpyDataset([f"{path}::x"], batch_size=1)
    start = read_header(f"{path}::x").member.start
    data = bytearray(path.read_bytes())
    data[start + 40:start + 60] = bytes(20)  # same size and header: the data are garbage
    stat = os.stat(path)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ValueError) as e:
        ds[0]
    assert str(e.value).startswith(f"{path}::x: ")
    assert "the archive is corrupt" in str(e.value)


# Hostile archives.


def _error(path):
    with pytest.raises(ValueError) as e:
        read_header(path)
    return str(e.value)


def test_member_names_outside_the_archive(tmp_path):
    path = _zip(tmp_path / "a.npz", {"../x.npy": _npy(np.zeros(3))})
    assert _error(path) == (
        f"{path}: member '../x.npy' has a name that points outside the archive (absolute, "
        "'..', '\\' or NUL); such archives are refused.")
    path = _zip(tmp_path / "b.npz", {"/etc/x.npy": _npy(np.zeros(3))})
    assert _error(path).startswith(f"{path}: member '/etc/x.npy' has a name that points")


def test_overlapping_members(tmp_path):
    path = _zip(tmp_path / "a.npz", {"a.npy": _npy(np.zeros(3)), "b.npy": _npy(np.ones(3))})
    local, central = _entries(path)["a.npy"]
    size = len(_npy(np.zeros(3))) + 40
    for offset in (local + 18, local + 22, central + 20, central + 24):
        _patch(path, offset, "<L", size)
    end = local + 30 + len("a.npy") + size  # from its local header to its data's end
    assert _error(f"{path}::a") == (
        f"{path}: member 'a.npy' (bytes {local} to {end}) overlaps member 'b.npy'; "
        "the archive is corrupt or crafted.")


def test_a_directory_that_disagrees_with_local_headers(tmp_path):
    path = _zip(tmp_path / "a.npz", {"a.npy": _npy(np.zeros(3))})
    local, _ = _entries(path)["a.npy"]
    _patch(path, local + 14, "<L", 1234)  # the local header's CRC-32
    message = _error(path)
    assert message.startswith(f"{path}: member 'a.npy': its local header (name 'a.npy', "
                              "method 0, 152 bytes, CRC 0x000004d2) disagrees with the "
                              "central directory (method 0, 152 bytes, CRC ")
    assert message.endswith("); the archive is corrupt or crafted.")


def test_zip64_fields_without_their_extra_field(tmp_path):
    path = _zip(tmp_path / "a.npz", {"a.npy": _npy(np.zeros(3))})
    _, central = _entries(path)["a.npy"]
    _patch(path, central + 20, "<L", 0xFFFFFFFF)
    assert _error(path) == (f"{path}: member 'a.npy' declares zip64 sizes but has no zip64 "
                            "extra field; the archive is corrupt.")


def test_huge_declared_sizes(tmp_path):
    path = _zip(tmp_path / "a.npz", {"a.npy": _npy(np.zeros(1000))}, zipfile.ZIP_DEFLATED)
    local, central = _entries(path)["a.npy"]
    compressed = struct.unpack_from("<L", open(path, "rb").read(), central + 20)[0]
    for offset in (local + 22, central + 24):
        _patch(path, offset, "<L", 2**31)
    assert _error(path) == (
        f"{path}: member 'a.npy' declares {2**31} bytes inflated from {compressed} "
        "compressed, more than deflate can make (1032 to 1); such archives are refused.")
    path = _zip(tmp_path / "b.npz", {"a.npy": _npy(np.zeros(3))})
    local, central = _entries(path)["a.npy"]
    for offset in (local + 18, local + 22, central + 20, central + 24):
        _patch(path, offset, "<L", 2**31)
    assert _error(path).startswith(f"{path}: member 'a.npy' (bytes {local} to "
                                   f"{local + 35 + 2**31}) overlaps the central directory")


def test_a_member_whose_header_lies_about_its_size(tmp_path):
    data = _npy(np.zeros(3))
    path = _zip(tmp_path / "a.npz", {"a.npy": data[:-8]})
    assert _error(path) == (f"{path}: expected 24 data bytes for shape (3,) of dtype float64, "
                            "found 16; the member is truncated.")


def test_truncated_and_foreign_archives(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros(3))
    data = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:-10])
    path = str(tmp_path / "cut.npz")
    assert _error(path) == (f"{path}: expected a zip archive (.npz) ending with its central "
                            "directory, found no end record; the file is not a zip archive "
                            "or is truncated.")
    (tmp_path / "tiny.npz").write_bytes(b"PK")
    path = str(tmp_path / "tiny.npz")
    assert _error(path) == (f"{path}: expected a zip archive (.npz), found a file of 2 bytes, "
                            "too short for one.")


def test_encrypted_pickled_and_duplicated_members(tmp_path):
    path = _zip(tmp_path / "a.npz", {"a.npy": _npy(np.zeros(3))})
    _, central = _entries(path)["a.npy"]
    _patch(path, central + 8, "<H", 1)
    assert _error(path) == (f"{path}: member 'a.npy' is encrypted; encrypted archives are "
                            "refused.")
    path = tmp_path / "p.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    assert _error(f"{path}::x") == (
        f"{path}::x: expected a numeric dtype (bool, integer, float or complex), found object "
        "(pickled) data; such files are refused.")
    path = str(tmp_path / "dup.npz")
    with pytest.warns(UserWarning):  # zipfile warns of the duplicate name, and writes it
        _zip(path, {"a.npy": _npy(np.zeros(3))})
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr("a.npy", _npy(np.ones(3)))
    assert _error(path) == f"{path}: member 'a.npy' appears twice in the archive."


def test_split_names():
    assert npz.split("d.npz::x") == ("d.npz", "x")
    assert npz.split("d.NPZ::x") == ("d.NPZ", "x")
    assert npz.split("d.npy") == ("d.npy", None)
    assert npz.split("odd::name.npy") == ("odd::name.npy", None)
    assert npz.physical("/a/d.npz::x") == "/a/d.npz"


def test_a_local_header_that_swallows_another_member(tmp_path):
    # Member b's local header and data lie inside a's local extra field, which
    # a's directory entry does not show: the spans from local headers overlap.
    b = _npy(np.ones(3))
    path = str(tmp_path / "a.npz")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(zipfile.ZipInfo("a.npy"), _npy(np.zeros(3)))
        archive.writestr(zipfile.ZipInfo("b.npy"), b)
    entries = _entries(path)
    data = bytearray(open(path, "rb").read())
    a_local, _ = entries["a.npy"]
    b_local, b_central = entries["b.npy"]
    a_data = bytes(data[a_local + 35:b_local])
    b_member = bytes(data[b_local:b_local + 35 + len(b)])
    extra = struct.pack("<2H", 0xCAFE, len(b_member)) + b_member
    fixed = bytearray(data[a_local:a_local + 35])
    struct.pack_into("<H", fixed, 28, len(extra))
    rebuilt = bytes(fixed) + extra + a_data
    struct.pack_into("<L", data, b_central + 42, a_local + 35 + 4)  # b inside a's extra field
    tail = bytes(data[b_local + 35 + len(b):])
    shift = len(rebuilt) - (b_local + 35 + len(b) - a_local)
    out = bytearray(bytes(data[:a_local]) + rebuilt + tail)
    at = out.rfind(b"PK\x05\x06")
    struct.pack_into("<L", out, at + 16, struct.unpack_from("<L", out, at + 16)[0] + shift)
    open(path, "wb").write(bytes(out))
    message = _error(f"{path}::a")
    assert message.startswith(f"{path}: member 'a.npy' (bytes {a_local} to ")
    assert message.endswith("overlaps member 'b.npy'; the archive is corrupt or crafted.")


def test_a_member_declaring_no_bytes_is_not_inflated(tmp_path):
    path = _zip(tmp_path / "a.npz", {"a.npy": _npy(np.zeros(10**6))}, zipfile.ZIP_DEFLATED)
    local, central = _entries(path)["a.npy"]
    for offset in (local + 22, central + 24):
        _patch(path, offset, "<L", 0)
    assert _error(path) == (f"{path}: expected a .npy file starting with the magic string "
                            "b'\\x93NUMPY', found b''.")
