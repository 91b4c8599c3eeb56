"""Crops read from disk (`crop_to`, `crop_position`): only the region's bytes are
read, in both layouts and both front ends."""

import os

import keras
import numpy as np
import pytest
from helpers import save

import keras_npy
from keras_npy import NpyDataset, npy_dataset
from keras_npy.read import local

SHAPE = (20, 16, 3)


@pytest.fixture
def images(tmp_path):
    """`(rows path, files folder, images)`: 12 (20, 16, 3) int32 images whose
    values are their flat positions plus 10**4 times their id, saved as one
    rows file and as one file each."""
    size = int(np.prod(SHAPE))
    whole = (np.arange(12 * size, dtype="int32") % size + 10**4 * np.repeat(
        np.arange(12, dtype="int32"), size)).reshape(12, *SHAPE)
    rows = save(str(tmp_path / "rows.npy"), whole)
    for i, image in enumerate(whole):
        save(str(tmp_path / "files" / "c" / f"{i:02d}.npy"), image)
    return rows, str(tmp_path / "files"), whole


def _where(crop, image):
    """The offsets of `crop` in `image` (its values are positions)."""
    flat = int(crop.reshape(-1)[0] % 10**4)
    return np.unravel_index(flat, image.shape)


@pytest.mark.parametrize("layout", ["rows", "files"])
def test_center_crops_are_keras_center_crops(images, layout, maps):
    rows, folder, whole = images
    source = rows if layout == "rows" else folder
    ds = NpyDataset(source, batch_size=5, crop_to=(9, 6, None))
    batches = [ds[i] for i in range(len(ds))]
    assert [b.shape for b in batches] == [(5, 9, 6, 3), (5, 9, 6, 3), (2, 9, 6, 3)]
    assert batches[0].dtype == np.int32
    expected = keras.ops.convert_to_numpy(
        keras.layers.CenterCrop(9, 6, data_format="channels_last")(whole.astype("float32")))
    np.testing.assert_array_equal(np.concatenate(batches), expected.astype("int32"))
    first_axis = NpyDataset(source, batch_size=12, crop_to=4)[0]
    np.testing.assert_array_equal(first_axis, whole[:, 8:12])


@pytest.mark.parametrize("layout", ["rows", "files"])
def test_random_crops_from_seed_epoch_and_sample(images, layout, maps):
    rows, folder, whole = images
    source = rows if layout == "rows" else folder
    kwargs = dict(batch_size=4, shuffle=True, seed=7, crop_to=(5, None, 2),
                  crop_position="random")
    ds = NpyDataset(source, **kwargs)
    epochs = []
    for _ in range(3):
        found = {}
        for i in range(len(ds)):
            batch = ds[i]
            for sample, crop in zip(ds._source.order.batch(ds.epoch, i).tolist(), batch):
                a, b, c = _where(crop, whole[sample])
                assert b == 0 and c <= 1
                np.testing.assert_array_equal(crop, whole[sample, a:a + 5, :, c:c + 2])
                found[sample] = (a, c)
        assert sorted(found) == list(range(12))
        epochs.append(found)
        ds.on_epoch_end()
    assert epochs[0] != epochs[1] != epochs[2]  # a new region every epoch
    offsets = np.array([v for e in epochs for v in e.values()])
    assert offsets[:, 0].min() >= 0 and offsets[:, 0].max() <= 15
    assert len(set(offsets[:, 0].tolist())) > 6 and set(offsets[:, 1].tolist()) == {0, 1}
    again = NpyDataset(source, **kwargs)
    tf_batches = list(npy_dataset(source, **kwargs).as_numpy_iterator())
    for i, batch in enumerate(tf_batches):  # the same regions, in both front ends
        np.testing.assert_array_equal(batch, again[i])
    np.testing.assert_array_equal(
        NpyDataset(source, **{**kwargs, "batch_size": 12})[0],
        np.concatenate([again[i] for i in range(len(again))]))
    parts = [NpyDataset(source, **kwargs, num_shards=2, shard_index=k)[1] for k in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), again[1])  # shards cut the same crops


@pytest.mark.parametrize("stored", ["<i4", ">i4", "F"])
@pytest.mark.parametrize("layout", ["rows", "files"])
def test_byte_orders_fortran_order_and_casts(tmp_path, stored, layout, maps):
    whole = np.arange(6 * 10 * 8, dtype="int32").reshape(6, 10, 8)
    for i, image in enumerate(whole):
        image = np.asfortranarray(image) if stored == "F" else image.astype(stored)
        save(str(tmp_path / "files" / f"{i}.npy"), image)
    rows = np.asfortranarray(whole) if stored == "F" else whole.astype(stored)
    source = save(str(tmp_path / "rows.npy"), rows) if layout == "rows" else str(
        tmp_path / "files")
    ds = NpyDataset(source, batch_size=6, crop_to=(3, 4), dtype="float32")
    if stored == "F" and layout == "rows" and maps == "preadv":
        with pytest.raises(ValueError, match="rows of a Fortran-order file are strided"):
            ds[0]
        return
    batch = ds[0]
    assert batch.dtype == np.float32 and batch.flags.c_contiguous
    np.testing.assert_array_equal(batch, whole[:, 3:6, 2:6])


def test_only_the_regions_bytes_are_read(images, monkeypatch):
    """Per-sample files: the header and the region's runs, nothing else; rows
    read with preadv: the region's runs."""
    from keras_npy.read import guard, handles

    rows, folder, whole = images
    read = []
    real = os.preadv

    def counted(fd, buffers, offset, *args):
        read.append(sum(memoryview(b).nbytes for b in buffers))
        return real(fd, buffers, offset, *args)

    monkeypatch.setattr(local.os, "preadv", counted)
    crop_bytes = 12 * 6 * 8 * 3 * 4
    ds = NpyDataset(folder, batch_size=12, crop_to=(6, 8, None))
    heads = ds.index.x.data_offsets.sum()
    real_pread, headers = os.pread, []
    monkeypatch.setattr(os, "pread", lambda fd, n, o: headers.append(n) or real_pread(fd, n, o))
    read.clear()
    ds[0]
    assert sum(read) == crop_bytes and len(read) == 12 * 6  # a run per image row of the crop
    assert sum(headers) == heads
    handles.TABLE.clear()
    monkeypatch.setattr(guard._GUARD, "_usable", False)
    read.clear()
    NpyDataset(rows, batch_size=12, crop_to=(6, 8, None))[0]
    assert sum(read) == crop_bytes
    handles.TABLE.clear()


def test_read_ahead_asks_for_the_regions_pages_only(images, monkeypatch):
    rows, folder, _ = images
    asked = []
    monkeypatch.setattr(local, "advise", lambda fd, offset, n: asked.append((offset, n)))
    monkeypatch.setattr(local, "cached", lambda fd, offset: False)
    ds = NpyDataset(folder, batch_size=3, crop_to=(2, 4, None))
    reader = ds._source.readers["x"]
    reader.prefetch(np.arange(3))
    head = int(ds.index.x.data_offsets[0])
    row = 16 * 3 * 4
    # rows 9 and 10 of each image, columns 6 to 9: two runs 16 bytes apart, asked as one
    assert asked == [(head + 9 * row + 6 * 12, row + 4 * 12)] * 3


@pytest.mark.parametrize("front", ["pydataset", "tf"])
def test_a_restored_state_brings_its_seed_to_the_crops(images, front):
    rows, _, _ = images
    kwargs = dict(batch_size=4, shuffle=True, crop_to=(5, 5, None), crop_position="random")
    ds = NpyDataset(rows, **kwargs)  # a seed drawn at random
    ds.on_epoch_end()
    state, expected = ds.get_state(), [ds[i] for i in range(len(ds))]
    restored = NpyDataset(rows, **kwargs) if front == "pydataset" else npy_dataset(rows, **kwargs)
    restored.set_state(state)
    found = ([restored[i] for i in range(len(restored))] if front == "pydataset"
             else list(restored.as_numpy_iterator()))
    for a, b in zip(found, expected):
        np.testing.assert_array_equal(a, b)


def test_errors_name_the_file_and_argument(images, tmp_path):
    rows, folder, _ = images
    save(str(tmp_path / "small" / "a.npy"), np.zeros((20, 16, 3), "int32"))
    save(str(tmp_path / "small" / "b.npy"), np.zeros((8, 16, 3), "int32"))
    small = str(tmp_path / "small" / "b.npy")
    with pytest.raises(ValueError) as info:
        NpyDataset(str(tmp_path / "small"), crop_to=(9, 6, None))
    assert str(info.value) == (
        f"{small}: `crop_to` cuts samples of x to (9, 6, any), larger than this sample, of "
        "shape (8, 16, 3): a crop must fit in every sample (pad the files first, or crop less). "
        "Received: crop_to=(9, 6, None)")
    with pytest.raises(ValueError) as info:
        NpyDataset(rows, crop_to=(9, 17, None))
    assert str(info.value) == (
        f"{rows}: `crop_to` cuts samples of x to (9, 17, any), larger than this sample, of "
        "shape (20, 16, 3): a crop must fit in every sample (pad the files first, or crop "
        "less). "
        "Received: crop_to=(9, 17, None)")
    with pytest.raises(ValueError) as info:
        NpyDataset(str(tmp_path / "small"), crop_to=(None, 6, None))
    a = str(tmp_path / "small" / "a.npy")
    assert str(info.value) == (
        f"Samples of x differ in shape on axis 0: {small} has shape (8, 16, 3), {a} has shape "
        "(20, 16, 3). `crop_to` keeps axis 0 whole; give it a size there too, to cut every "
        "sample to one shape. Received: crop_to=(None, 6, None)")
    cut = NpyDataset(str(tmp_path / "small"), crop_to=(8, 6, None), batch_size=2)[0]
    assert cut.shape == (2, 8, 6, 3)  # samples of several lengths, cut to one
    with pytest.raises(ValueError) as info:
        NpyDataset(rows, crop_to=(9, 6))
    assert str(info.value) == (
        "`crop_to` must give one size per axis of a sample of x (None for an axis kept whole); "
        "the samples have 3 axes. Received: crop_to=(9, 6)")
    for bad in (0, (None, None), "center", (2.5, 3)):
        with pytest.raises(ValueError) as info:
            NpyDataset(rows, crop_to=bad)
        assert str(info.value) == (
            "`crop_to` must be None, a positive int (the first axis), or a tuple of the "
            "sample's shape with positive ints and None (an axis kept whole). "
            f"Received: crop_to={bad!r}")
    with pytest.raises(ValueError) as info:
        NpyDataset(rows, crop_to=4, crop_position="middle")
    assert str(info.value) == ('`crop_position` must be "center" or "random". '
                               "Received: crop_position='middle'")
    with pytest.raises(ValueError) as info:
        NpyDataset(rows, y=rows, crop_to=4, pad_targets=True)
    assert str(info.value) == (
        "`crop_to` cuts the samples of x, not targets, and `pad_targets` pads targets as x is "
        "padded: pass one of them. Received: crop_to=4, pad_targets=True")
    with pytest.raises(ValueError) as info:
        NpyDataset(rows, crop_to=4, pad_to=6)
    assert str(info.value) == ("`crop_to` cuts samples to one shape and `pad_to` pads them; "
                               "pass one of them. Received: crop_to=4, pad_to=6")


def test_a_file_changed_after_the_build_is_named(images):
    _, folder, _ = images
    ds = NpyDataset(folder, batch_size=12, crop_to=(6, 4, None))
    path = ds.file_paths[3]
    np.save(path, np.zeros((20, 16, 4), "int32"))
    with pytest.raises(ValueError) as info:
        ds[0]
    assert str(info.value) == (
        f"{path}: expected dtype int32 and shape (20, 16, 3) as when the dataset was built, "
        "found dtype int32 and shape (20, 16, 4); the file changed after the dataset was "
        "built.")
    with open(path, "r+b") as f:  # the same header, data cut short
        np.save(path, np.zeros((20, 16, 3), "int32"))
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(ValueError) as info:
        ds[0]
    assert str(info.value) == (
        f"{path}: expected 3840 data bytes for shape (20, 16, 3) of dtype int32, found 3740; "
        "the file is truncated. (Indexed with dtype int32 and shape (20, 16, 3); the file "
        "changed after the dataset was built.)")


def test_fit_on_random_crops_and_serve_with_keras_center_crop(images, tmp_path):
    """Training reads random 10x10 crops; the served model crops with Keras'
    own CenterCrop, so it takes whole images."""
    _, folder, whole = images
    labels = np.arange(12) % 2
    ds = NpyDataset(folder, y=labels, batch_size=4, shuffle=True, seed=1, crop_to=(10, 10, None),
                    crop_position="random", dtype="float32")
    model = keras.Sequential([keras.Input((10, 10, 3)), keras.layers.Rescaling(1e-4),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(ds, epochs=2, verbose=0)
    served = keras.Sequential([keras.Input(SHAPE), keras.layers.CenterCrop(10, 10), model])
    served.save(str(tmp_path / "served.keras"))
    reloaded = keras.saving.load_model(str(tmp_path / "served.keras"))
    center = NpyDataset(folder, batch_size=12, crop_to=(10, 10, None), dtype="float32")[0]
    np.testing.assert_allclose(reloaded.predict(whole.astype("float32"), verbose=0),
                               model.predict(center, verbose=0), rtol=1e-5, atol=1e-5)


def test_directory_function_takes_crops(images):
    _, folder, whole = images
    ds = keras_npy.npy_dataset_from_directory(folder, batch_size=12, shuffle=False,
                                              crop_to=(4, 4, 1), verbose=False)
    x, y = next(iter(ds))
    np.testing.assert_array_equal(x.numpy(), whole[:, 8:12, 6:10, 1:2])
