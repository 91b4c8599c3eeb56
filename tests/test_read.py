"""The read engine: the samples of a batch in, the right array out, or an error
that names the file. Every test of rows runs with the rows copied from
guarded memory maps and with maps unavailable (read with preadv)."""

import os
import pickle

import numpy as np
import pytest

from keras_npy.index import index_source
from keras_npy.read import BatchReader, Padding, guard, handles, local
from helpers import evict as _evict, save as _save
from helpers import wait_until_resident as _wait_until_cached



@pytest.fixture
def rows(tmp_path):
    parts = [np.arange(n * 6, dtype="float32").reshape(n, 3, 2) + 1000 * k
             for k, n in enumerate([9, 1, 0, 12])]
    for k, part in enumerate(parts):
        _save(str(tmp_path / "rows" / f"x_{k}.npy"), part)
    return index_source(str(tmp_path / "rows"), layout="rows"), np.concatenate(parts)


ROW_BATCHES = {
    "a run in one file": range(10, 22),
    "a run across files": range(5, 15),
    "consecutive ids as an array": np.arange(0, 9),
    "reversed": np.arange(21, -1, -1),
    "shuffled in one file": np.array([21, 10, 15, 12, 20, 11, 19, 13, 18]),
    "shuffled across files": np.array([19, 3, 4, 5, 0, 8, 7, 2, 21, 20, 9, 10]),
    "a row twice": np.array([3, 3, 12, 3]),
    "one row": np.array([9]),
    "none": np.array([], np.int64),
}


@pytest.mark.parametrize("ids", list(ROW_BATCHES.values()), ids=list(ROW_BATCHES))
def test_rows_come_back_as_numpy_indexing_gives_them(rows, maps, ids):
    index, whole = rows
    reader = BatchReader(index, Padding())
    for advise in (False, True):
        batch = reader.read(ids, advise)
        np.testing.assert_array_equal(batch, whole[np.asarray(ids, np.int64)])
        assert batch.dtype == np.float32 and batch.shape == (len(ids), 3, 2)
        assert batch.flags.writeable and batch.flags.c_contiguous


def test_each_batch_is_its_own_array(rows, maps):
    index, whole = rows
    reader = BatchReader(index, Padding())
    first = reader.read(range(10, 22))
    second = reader.read(range(10, 22))
    assert not np.shares_memory(first, second)
    first[:] = -1  # a batch changed by its user changes nothing else
    np.testing.assert_array_equal(reader.read(range(10, 22)), whole[10:22])
    np.testing.assert_array_equal(second, whole[10:22])


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_byte_order_and_memory_order_of_rows(tmp_path, maps, order, byteorder):
    whole = np.array(np.arange(60).reshape(10, 6), dtype=byteorder + "i4", order=order)
    index = index_source(_save(str(tmp_path / "x.npy"), whole))
    reader = BatchReader(index, Padding())
    for ids in (np.array([9, 0, 4, 5]), range(2, 8)):
        if order == "F" and maps == "preadv":
            with pytest.raises(ValueError) as info:
                reader.read(ids)
            assert str(info.value) == (
                f"{index.paths[0]}: rows of a Fortran-order file are strided and are read "
                "from a memory map, which this platform cannot guard; save the array in C "
                "order (np.ascontiguousarray).")
            continue
        batch = reader.read(ids)
        np.testing.assert_array_equal(batch, whole[np.asarray(ids)])
        assert batch.dtype == np.dtype("int32") and batch.flags.c_contiguous


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_byte_order_and_memory_order_of_files(tmp_path, order, byteorder):
    arrays = [np.array(np.arange(12).reshape(3, 4) * k, dtype=byteorder + "f8", order=order)
              for k in range(3)]
    for k, a in enumerate(arrays):
        _save(str(tmp_path / "d" / f"{k}.npy"), a)
    index = index_source(str(tmp_path / "d"))
    batch = BatchReader(index, Padding()).read(np.array([2, 0]))
    np.testing.assert_array_equal(batch, np.stack([arrays[2], arrays[0]]))
    assert batch.dtype == np.dtype("float64")


@pytest.mark.parametrize("dtype", ["<f8", ">f8", ">i2", ">f16", "<c32", ">c32", "|b1"])
def test_every_dtype_of_a_scalar_sample_is_read(tmp_path, dtype):
    # 0-d per-sample files of every byte order, long doubles among them.
    values = [np.array(k % 2 if dtype == "|b1" else k + 0.5 * (dtype[1] in "fc"), dtype)
              for k in range(4)]
    for k, value in enumerate(values):
        _save(str(tmp_path / "s" / f"{k}.npy"), value)
    index = index_source(str(tmp_path / "s"))
    batch = BatchReader(index, Padding()).read(np.array([3, 0, 2]))
    assert batch.shape == (3,) and batch.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(batch, np.array([values[3], values[0], values[2]]))


@pytest.mark.parametrize("dtype", [">f16", ">c32", ">i8"])
def test_every_dtype_of_rows_is_read(tmp_path, maps, dtype):
    whole = (np.arange(40) * 1.5).astype(dtype).reshape(20, 2)
    index = index_source(_save(str(tmp_path / "x.npy"), whole))
    reader = BatchReader(index, Padding())
    for ids in (range(3, 17), np.array([19, 2, 7])):
        np.testing.assert_array_equal(reader.read(ids), whole[np.asarray(ids)])


@pytest.fixture
def ragged(tmp_path):
    arrays = [np.full((n, 2), n, "int16") for n in (3, 1, 5)]
    for k, a in enumerate(arrays):
        a[:, 1] = np.arange(len(a))  # so that pre/post cuts are visible
        _save(str(tmp_path / "r" / f"{k}.npy"), a)
    return index_source(str(tmp_path / "r")), arrays


def test_pad_to_longest_post_and_pre(ragged):
    index, arrays = ragged
    batch = BatchReader(index, Padding("longest", pad_value=-7)).read(np.array([0, 1]))
    assert batch.dtype == np.int16 and batch.shape == (2, 3, 2)
    assert batch[1].tolist() == [[1, 0], [-7, -7], [-7, -7]]
    assert batch[0].tolist() == arrays[0].tolist()
    pre = BatchReader(index, Padding("longest", padding="pre")).read(np.array([1, 0]))
    assert pre[0].tolist() == [[0, 0], [0, 0], [1, 0]]


def test_pad_to_multiple_of(ragged):
    index, _ = ragged
    reader = BatchReader(index, Padding("longest", pad_to_multiple_of=4))
    assert reader.read(np.array([0, 1])).shape == (2, 4, 2)
    assert reader.read(np.array([2])).shape == (1, 8, 2)  # the fixed axis is not padded
    assert reader.element_shape() == (None, 2)


@pytest.mark.parametrize("truncating, kept", [("post", [0, 1, 2, 3]), ("pre", [1, 2, 3, 4])])
def test_fixed_length_pads_and_truncates(ragged, truncating, kept):
    index, _ = ragged
    reader = BatchReader(index, Padding(4, truncating=truncating, pad_value=9))
    batch = reader.read(np.array([2, 1]))
    assert batch.shape == (2, 4, 2) and reader.element_shape() == (4, 2)
    assert batch[0, :, 1].tolist() == kept
    assert batch[1].tolist() == [[1, 0], [9, 9], [9, 9], [9, 9]]


def test_tuple_pad_to_and_casting(ragged):
    index, _ = ragged
    reader = BatchReader(index, Padding((2, 3)), dtype="float32")
    batch = reader.read(np.array([1, 2]))
    assert batch.dtype == np.float32
    assert batch.tolist() == [[[1, 0, 0], [0, 0, 0]], [[5, 0, 0], [5, 1, 0]]]


def test_rows_padded_to_a_fixed_length(rows, maps):
    index, whole = rows
    batch = BatchReader(index, Padding((5, None))).read(np.array([3, 1]))
    assert batch.shape == (2, 5, 2)
    np.testing.assert_array_equal(batch[:, :3], whole[[3, 1]])
    assert not batch[:, 3:].any()


def test_varying_shapes_without_pad_to(ragged):
    index, _ = ragged
    with pytest.raises(ValueError) as info:
        BatchReader(index, Padding(), name="x")
    assert str(info.value) == (
        f"Samples of x differ in shape on axis 0: {index.paths[1]} has shape (1, 2), "
        f"{index.paths[2]} has shape (5, 2). Pass `pad_to` to pad them to one shape per "
        "batch: pad_to=\"longest\", an int, or a tuple. Received: pad_to=None")


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(pad_to="max"), ValueError, '`pad_to` must be None, "longest", a non-negative int, or '
     "a tuple of non-negative ints and None. Received: pad_to='max'"),
    (dict(pad_to="longest", pad_to_multiple_of=0), ValueError,
     "`pad_to_multiple_of` must be None or a positive integer. Received: pad_to_multiple_of=0"),
    (dict(pad_to=8, pad_to_multiple_of=4), ValueError,
     '`pad_to_multiple_of` rounds up lengths padded with pad_to="longest"; pass both. '
     "Received: pad_to=8"),
    (dict(padding="left"), ValueError,
     "`padding` must be \"pre\" or \"post\". Received: padding='left'"),
    (dict(truncating=None), ValueError,
     "`truncating` must be \"pre\" or \"post\". Received: truncating=None"),
    (dict(pad_value="0"), TypeError, "`pad_value` must be a number. Received: pad_value='0'"),
])
def test_bad_padding_arguments(kwargs, error, message):
    from keras_npy.spec import BatchSpec

    with pytest.raises(error) as info:
        BatchSpec(**kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("pad_value, dtype", [(0.5, "int16"), (70000, "int16"),
                                              (1e40, "float32"), (-1, "uint8")])
def test_pad_value_must_fit_the_dtype(tmp_path, pad_value, dtype):
    for k, n in enumerate((2, 3)):
        _save(str(tmp_path / "d" / f"{k}.npy"), np.zeros((n, 2), dtype))
    index = index_source(str(tmp_path / "d"))
    with pytest.raises(ValueError) as info:
        BatchReader(index, Padding("longest", pad_value=pad_value))
    assert str(info.value) == (f"`pad_value` must be representable in the data's dtype "
                               f"{dtype}. Received: pad_value={pad_value!r}")


def test_pad_to_tuple_of_the_wrong_rank(ragged):
    index, _ = ragged
    with pytest.raises(ValueError) as info:
        BatchReader(index, Padding((3,)))
    assert str(info.value) == ("`pad_to` must have one entry per axis of a sample of x, which "
                               "has 2. Received: pad_to=(3,)")


def test_short_reads_are_resumed_byte_exact(tmp_path, monkeypatch, maps):
    """preadv may return fewer bytes than asked; the rest is read from where it
    stopped, counted in bytes whatever the buffer."""
    arrays = [np.arange(k * 100, k * 100 + 60, dtype="f8").reshape(10, 6) for k in range(3)]
    for k, array in enumerate(arrays):
        np.save(tmp_path / f"{k}.npy", array)
    real = os.preadv

    def at_most_100_bytes(fd, buffers, offset, *flags):
        first = memoryview(buffers[0]).cast("B")[:100]
        return real(fd, [first], offset, *flags)

    monkeypatch.setattr(local.os, "preadv", at_most_100_bytes)
    files = BatchReader(index_source(str(tmp_path), layout="files", verbose=False), Padding())
    np.testing.assert_array_equal(files.read(np.array([2, 0, 1])), np.stack(arrays)[[2, 0, 1]])
    rows = BatchReader(index_source(str(tmp_path), layout="rows", verbose=False), Padding())
    whole = np.concatenate(arrays)
    for ids in (range(3, 25), np.array([29, 0, 14, 15, 16])):
        np.testing.assert_array_equal(rows.read(ids), whole[np.asarray(ids)])


def test_more_rows_than_one_preadv_takes(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "_IOV_MAX", 3)
    monkeypatch.setattr(guard._GUARD, "_usable", False)
    whole = np.arange(40, dtype="int64").reshape(20, 2)
    index = index_source(_save(str(tmp_path / "x.npy"), whole))
    ids = np.array([0, 1, 2, 3, 4, 5, 6, 7, 19, 18, 17, 16, 15, 14, 13, 12])
    np.testing.assert_array_equal(BatchReader(index, Padding()).read(ids), whole[ids])


def test_an_empty_batch(rows, ragged):
    for index in (rows[0], ragged[0]):
        batch = BatchReader(index, Padding("longest")).read(np.array([], np.int64))
        assert batch.shape[0] == 0 and batch.dtype == index.dtype.newbyteorder("=")


def test_reader_pickles_without_open_files(rows, maps):
    index, whole = rows
    reader = BatchReader(index, Padding())
    reader.read(range(10, 22))  # opens and maps a file, remembered for the next run
    copy = pickle.loads(pickle.dumps(reader))
    assert copy._rows._last is None and len(pickle.dumps(reader)) < 4096
    np.testing.assert_array_equal(copy.read(np.array([10])), whole[[10]])


def test_a_forked_process_reads_the_same_rows(rows, maps):
    index, whole = rows
    reader = BatchReader(index, Padding())
    reader.read(np.arange(9))
    reader.read(np.array([5, 1]))
    pid = os.fork()
    if pid == 0:  # the child reads through what it inherited, and opens what it did not
        ok = False
        try:
            ok = (reader.read(np.array([5, 1])).tolist() == whole[[5, 1]].tolist()
                  and reader.read(range(0, 9)).tolist() == whole[:9].tolist()
                  and reader.read(range(10, 22)).tolist() == whole[10:22].tolist())
        finally:
            os._exit(0 if ok else 1)
    assert os.waitpid(pid, 0)[1] == 0
    np.testing.assert_array_equal(reader.read(range(10, 22)), whole[10:22])


def test_prefetch_asks_for_what_is_not_in_the_page_cache(tmp_path, maps):
    whole = np.arange(4096 * 256, dtype="float32").reshape(4096, 256)  # 4 MiB of 1 KiB rows
    path = _save(str(tmp_path / "x.npy"), whole)
    os.sync()  # written back: eviction below then really drops the pages
    reader = BatchReader(index_source(path), Padding())
    scattered = np.random.default_rng(0).permutation(4096)[:64]
    _evict(path)
    assert reader.prefetch(scattered) == 1025  # a small file: all of it, for the epoch
    _wait_until_cached(path, [128, 128 + 4 * 2**20 - 1])
    reader.limit_read_ahead(2**20)  # a budget under the file: its rows only
    _evict(path)
    pages = reader.prefetch(scattered)
    assert 64 <= pages <= 64 * 5 < 1025  # a row's pages, or a gap under 16 KiB; not the file
    _wait_until_cached(path, [128 + int(r) * 1024 for r in scattered])
    assert reader.prefetch(scattered) == 0  # found in the page cache: nothing asked
    np.testing.assert_array_equal(reader.read(scattered), whole[scattered])
    _evict(path)
    assert reader.prefetch(range(1024, 2048)) == 257  # one stretch of 1 MiB, 257 pages
    _wait_until_cached(path, [128 + 1024 * 1024, 128 + 2048 * 1024 - 1])


def test_large_runs_copied_on_two_threads_from_many_threads(tmp_path, maps):
    from concurrent.futures import ThreadPoolExecutor

    whole = np.arange(8192 * 256, dtype="float32").reshape(8192, 256)  # 8 MiB of 1 KiB rows
    reader = BatchReader(index_source(_save(str(tmp_path / "x.npy"), whole)), Padding())

    def read(k):  # runs of 1-2 MiB, split between the caller and the helper when free
        start = (k * 997) % 6000
        ids = range(start, start + 1024 + k % 1024)
        return np.array_equal(reader.read(ids), whole[start:ids.stop])

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(read, range(64)))
