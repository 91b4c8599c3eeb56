import os
import pickle
import weakref

import numpy as np
import pytest

from keras_npy import read as read_lib
from keras_npy.index import index_source
from keras_npy.read import BatchReader, Padding
from helpers import save as _save


@pytest.fixture
def rows(tmp_path):
    parts = [np.arange(n * 6, dtype="float32").reshape(n, 3, 2) + 1000 * k
             for k, n in enumerate([9, 1, 0, 12])]
    for k, part in enumerate(parts):
        _save(str(tmp_path / "rows" / f"x_{k}.npy"), part)
    return index_source(str(tmp_path / "rows"), layout="rows"), np.concatenate(parts)


@pytest.fixture
def count_preadv(monkeypatch):
    calls = []
    real = os.preadv

    def counting(fd, buffers, offset):
        calls.append(len(buffers))
        return real(fd, buffers, offset)

    monkeypatch.setattr(read_lib.os, "preadv", counting)
    return calls


def test_sequential_rows_are_one_preadv_per_file(rows, count_preadv, monkeypatch):
    monkeypatch.setattr(read_lib, "_UNMAP_AFTER_BYTES", 0)  # no map is kept
    index, whole = rows
    reader = BatchReader(index, Padding())
    batch = reader.read(np.arange(0, 9))
    np.testing.assert_array_equal(batch, whole[:9])
    assert count_preadv == [1] and batch.dtype == np.float32
    count_preadv.clear()
    # Rows 5-8 and 9 are short runs, gathered from a memory map; 10-21 one preadv.
    np.testing.assert_array_equal(reader.read(np.arange(5, 22)), whole[5:22])
    assert count_preadv == [1]
    count_preadv.clear()
    np.testing.assert_array_equal(reader.read_run(10, 12), whole[10:22])
    assert count_preadv == [1]


def test_sequential_rows_of_a_kept_map_are_copied_from_it(rows, count_preadv):
    index, whole = rows  # files small enough that their maps are kept
    reader = BatchReader(index, Padding())
    np.testing.assert_array_equal(reader.read(np.arange(0, 9)), whole[:9])
    np.testing.assert_array_equal(reader.read_run(10, 12), whole[10:22])
    np.testing.assert_array_equal(reader.read(np.arange(10, 22), consecutive=True),
                                  whole[10:22])
    assert count_preadv == [] and sorted(reader._maps._kept) == [0, 3]


def test_a_batch_from_a_kept_map_checks_the_file_size_once(rows, monkeypatch):
    index, whole = rows
    reader = BatchReader(index, Padding())
    reader.read(np.arange(10, 22))  # makes the maps of files 3 and 0
    reader.read(np.arange(9))
    real, calls = read_lib.os.lseek, []
    monkeypatch.setattr(read_lib.os, "lseek", lambda *a: calls.append(a) or real(*a))
    np.testing.assert_array_equal(reader.read(np.arange(10, 22), consecutive=True),
                                  whole[10:22])
    np.testing.assert_array_equal(reader.read_run(0, 9), whole[:9])  # another file
    assert len(calls) == 2


@pytest.mark.parametrize("kept", [True, False])
def test_read_run_reads_as_it_read_last(rows, count_preadv, monkeypatch, kept):
    index, whole = rows  # files of 9, 1, 0 and 12 rows
    if not kept:
        monkeypatch.setattr(read_lib, "_UNMAP_AFTER_BYTES", 0)
    reader = BatchReader(index, Padding())
    for first, count in [(0, 9), (10, 8), (12, 10), (0, 8), (1, 8), (13, 9)]:
        np.testing.assert_array_equal(reader.read_run(first, count),
                                      whole[first:first + count])
    assert count_preadv == ([] if kept else [1] * 6)
    assert reader._maps.run[:3] == (read_lib._forks, 10, 22)  # file 3, read last
    assert (reader._maps.run[3] is reader._maps._kept[3]) if kept else reader._maps.run[3] is None
    if not kept:  # a short read says which file changed (a map is checked in a child below)
        with open(index.paths[3], "r+b") as f:
            f.truncate(128 + 24 * 2)
        with pytest.raises(ValueError, match="expected 216 bytes at offset 200, found 0; the "
                                             "file changed after the dataset was built"):
            reader.read_run(13, 9)


def _in_a_child(check) -> int:
    """Runs `check` in a forked process (a read past the end of a memory map
    kills its process): 0 when it returned True, 1 when not, else the signal."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if check() else 1
        finally:
            os._exit(code)
    status = os.waitpid(pid, 0)[1]
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)


@pytest.mark.parametrize("how", ["read_run", "consecutive", "shuffled", "view", "view_run"])
def test_a_file_cut_short_after_its_map_was_made(rows, how):
    index, whole = rows

    def check():  # in a child, for reading past the end of a map would kill pytest
        reader = BatchReader(index, Padding())
        read = {"read_run": lambda: reader.read_run(10, 12),
                "consecutive": lambda: reader.read(np.arange(10, 22), consecutive=True),
                "shuffled": lambda: reader.read(np.array([21, 10, 15, 12, 20, 11, 19, 13, 18])),
                "view": lambda: np.array(reader.read(np.arange(10, 22), True, view=True)),
                "view_run": lambda: np.array(reader.read_run(10, 12, view=True))}[how]
        first = read()
        assert reader._maps._maps  # the rows came from the file's memory map
        with open(index.paths[3], "r+b") as f:
            f.truncate(128 + 24 * 2)
        with pytest.raises(ValueError) as info:  # which file changed, and how
            read()
        return (first.reshape(-1, 3, 2)[0] == whole[21 if how == "shuffled" else 10]).all() \
            and str(info.value) == (f"{index.paths[3]}: expected 288 bytes at offset 128, "
                                    "found 48; the file changed after the dataset was built."
                                    if how in ("read_run", "consecutive") else
                                    f"{index.paths[3]}: expected a file of 416 bytes, found "
                                    "176; the file changed after the dataset was built.")

    assert _in_a_child(check) == 0


def test_shuffled_rows_come_back_in_batch_order(rows, count_preadv):
    index, whole = rows
    ids = np.array([19, 3, 4, 5, 0, 8, 7, 2, 21, 20, 9, 10])
    batch = BatchReader(index, Padding()).read(ids)
    np.testing.assert_array_equal(batch, whole[ids])
    assert count_preadv == []  # every run is short: all gathered


def test_preadv_scatters_runs_to_their_slots(rows, count_preadv, monkeypatch):
    monkeypatch.setattr(read_lib, "_MIN_RUN_ROWS", 1)
    index, whole = rows
    ids = np.array([19, 3, 4, 5, 0, 8, 7, 2, 21, 20])
    np.testing.assert_array_equal(BatchReader(index, Padding()).read(ids), whole[ids])
    # Runs: 0, 2-5 (slots 7, 1, 2, 3: two buffers), 7-8 (slots 6, 5), 19-21 (3 slots).
    assert sorted(count_preadv) == [1, 2, 2, 3]


def test_more_rows_than_iov_max(tmp_path, monkeypatch, count_preadv):
    monkeypatch.setattr(read_lib, "_IOV_MAX", 3)
    monkeypatch.setattr(read_lib, "_MIN_RUN_ROWS", 1)
    monkeypatch.setattr(read_lib, "_UNMAP_AFTER_BYTES", 0)  # no kept map to copy from
    whole = np.arange(40, dtype="int64").reshape(20, 2)
    index = index_source(_save(str(tmp_path / "x.npy"), whole))
    ids = np.arange(19, -1, -1)  # reversed: one run of 20 rows into 20 slots, none adjacent
    np.testing.assert_array_equal(BatchReader(index, Padding()).read(ids), whole[ids])
    assert count_preadv == [3] * 6 + [2]


def test_rows_of_one_file_with_a_kept_map_are_gathered_from_it(tmp_path, count_preadv):
    whole = np.arange(40, dtype="int64").reshape(20, 2)
    index = index_source(_save(str(tmp_path / "x.npy"), whole))
    reader = BatchReader(index, Padding())
    for ids in (np.arange(19, -1, -1), np.array([3, 4, 5, 6, 7, 8, 9, 10, 0]),
                np.random.default_rng(0).permutation(20)):  # dense or not
        np.testing.assert_array_equal(reader.read(ids), whole[ids])
    assert count_preadv == [] and list(reader._maps._kept) == [0]


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_byte_order_and_memory_order_of_rows(tmp_path, order, byteorder):
    whole = np.array(np.arange(60).reshape(10, 6), dtype=byteorder + "i4", order=order)
    index = index_source(_save(str(tmp_path / "x.npy"), whole))
    reader = BatchReader(index, Padding())
    ids = np.array([9, 0, 4, 5])
    batch = reader.read(ids)
    np.testing.assert_array_equal(batch, whole[ids])
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


def test_rows_padded_to_a_fixed_length(rows):
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
    with pytest.raises(error) as info:
        Padding(**kwargs)
    assert str(info.value) == message


def test_pad_value_must_fit_the_dtype(ragged):
    index, _ = ragged
    with pytest.raises(ValueError) as info:
        BatchReader(index, Padding("longest", pad_value=0.5))
    assert str(info.value) == ("`pad_value` must be representable in the data's dtype int16. "
                               "Received: pad_value=0.5")
    with pytest.raises(ValueError) as info:
        BatchReader(index, Padding("longest", pad_value=70000))
    assert str(info.value) == ("`pad_value` must be representable in the data's dtype int16. "
                               "Received: pad_value=70000")


def test_pad_to_tuple_of_the_wrong_rank(ragged):
    index, _ = ragged
    with pytest.raises(ValueError) as info:
        BatchReader(index, Padding((3,)))
    assert str(info.value) == ("`pad_to` must have one entry per axis of a sample of x, which "
                               "has 2. Received: pad_to=(3,)")


def test_a_file_that_changed_after_indexing(rows):
    index, _ = rows
    with open(index.paths[3], "r+b") as f:
        f.truncate(128 + 24 * 2)
    with pytest.raises(ValueError) as info:
        BatchReader(index, Padding()).read(np.arange(10, 22))
    assert str(info.value) == (f"{index.paths[3]}: expected 288 bytes at offset 128, found 48; "
                               "the file changed after the dataset was built.")


def test_reader_pickles_without_open_files(rows):
    index, whole = rows
    reader = BatchReader(index, Padding())
    reader.read(np.arange(3))  # opens a file
    reader.read_run(0, 9)
    copy = pickle.loads(pickle.dumps(reader))
    assert copy._fds._fds == {} and copy._maps.run is None and copy._buffers._last is None
    np.testing.assert_array_equal(copy.read(np.array([10])), whole[[10]])


def test_a_forked_process_opens_and_maps_its_own_files(rows):
    index, whole = rows
    reader = BatchReader(index, Padding())
    reader.read(np.arange(9))
    reader.read(np.array([5, 1]))  # a gather: a memory map
    reader.read_run(0, 9)  # which `read_run` copies from next
    parent_fds, parent_maps = dict(reader._fds._fds), dict(reader._maps._maps)
    pid = os.fork()
    if pid == 0:  # the child: the parent's tables are not used, reads are right
        ok = False
        try:
            ok = (reader.read(np.array([5, 1])).tolist() == whole[[5, 1]].tolist()
                  and reader.read(np.arange(9)).tolist() == whole[:9].tolist()
                  and reader.read_run(0, 9).tolist() == whole[:9].tolist()
                  and reader._maps.run[3] is reader._maps._maps[0]
                  and reader._maps.run[4] == reader._fds._fds[reader._row_paths[0]]
                  and reader._maps._maps[0] is not parent_maps[0]
                  and reader._fds._fds.keys() == parent_fds.keys()
                  and set(reader._fds._fds.values()).isdisjoint(parent_fds.values()))
        finally:
            os._exit(0 if ok else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert reader._fds._fds == parent_fds  # the parent's are untouched
    np.testing.assert_array_equal(reader.read(np.arange(9)), whole[:9])


def test_batch_buffers_are_reused_only_when_nothing_holds_them(tmp_path):
    x = np.arange(4096 * 64, dtype="float32").reshape(4096, 64)  # 256 KiB batches of 1024
    index = index_source(_save(str(tmp_path / "x.npy"), x), layout="rows")
    reader = BatchReader(index, Padding())
    shuffled = np.random.default_rng(0).permutation(4096)

    def batch(k):  # shuffled (a gather) and in order (a preadv), in turn
        start = k % 4 * 1024
        return reader.read(shuffled[start:start + 1024]) if k % 2 else reader.read_run(
            start, 1024)

    def expected_batch(k):
        start = k % 4 * 1024
        return x[shuffled[start:start + 1024]] if k % 2 else x[start:start + 1024]

    first = batch(0)
    address = first.__array_interface__["data"][0]
    del first
    again = batch(1)  # nothing held the first: its memory serves again
    assert again.__array_interface__["data"][0] == address
    held = [again, again[10:].reshape(-1), memoryview(batch(2)), np.frombuffer(batch(3))]
    expected = [expected_batch(1), expected_batch(2), expected_batch(3)]
    for k in range(4, 40):  # batches read while those are alive leave them alone
        got = batch(k)
        np.testing.assert_array_equal(got, expected_batch(k))
        assert not any(np.shares_memory(got, np.asarray(h)) for h in held)
    np.testing.assert_array_equal(held[0], expected[0])
    np.testing.assert_array_equal(held[1], expected[0][10:].reshape(-1))
    np.testing.assert_array_equal(np.asarray(held[2]), expected[1])
    np.testing.assert_array_equal(held[3], expected[2].view("float64").reshape(-1))
    assert len(reader._buffers._entries) <= read_lib._REUSE_MAX_BUFFERS
    small = reader.read_run(0, 10)  # small batches are plain new arrays
    assert small.base is None


def test_a_batch_array_nothing_holds_is_handed_out_again_as_it_was(tmp_path):
    x = np.arange(4096 * 64, dtype="float32").reshape(4096, 64)  # 256 KiB batches of 1024
    index = index_source(_save(str(tmp_path / "x.npy"), x), layout="rows")
    reader = BatchReader(index, Padding())
    first = reader.read_run(0, 1024)
    seen = weakref.ref(first)  # no reference: the batch is dropped below
    del first
    again = reader.read_run(1024, 1024)
    assert again is seen()  # the same array object, with the new rows
    np.testing.assert_array_equal(again, x[1024:2048])
    # A batch changed in place is not handed out as it is now: the next batch
    # over its memory is a new, proper array.
    changes = [lambda b: setattr(b, "shape", (-1,)),
               lambda b: setattr(b, "dtype", np.dtype("int32")),
               lambda b: b.setflags(write=False)]
    for k, change in enumerate(changes):
        change(again)
        seen = weakref.ref(again)
        del again
        again = reader.read_run(k * 1024, 1024)
        assert again is not seen()
        assert again.shape == (1024, 64) and again.dtype == np.float32
        assert again.flags.writeable and again.flags.c_contiguous
        np.testing.assert_array_equal(again, x[k * 1024:(k + 1) * 1024])


def test_maps_are_kept_up_to_a_total(rows, count_preadv, monkeypatch):
    index, whole = rows  # files of 9, 1, 0 and 12 rows of 24 bytes
    monkeypatch.setattr(read_lib, "_KEEP_MAPS_BYTES", 20 * 24)  # room for file 0 or 3
    reader = BatchReader(index, Padding())
    for _ in range(2):
        np.testing.assert_array_equal(reader.read_run(0, 9), whole[:9])
        np.testing.assert_array_equal(reader.read_run(10, 12), whole[10:22])
    assert list(reader._maps._kept) == [0] and count_preadv == [1, 1]  # file 3 by preadv
    ids = np.array([21, 10, 15, 12, 20, 11, 19, 13, 18])
    np.testing.assert_array_equal(reader.read(ids), whole[ids])  # gathered from a map
    assert list(reader._maps._kept) == [0] and 3 in reader._maps._maps


def test_maps_are_made_anew_only_for_files_larger_than_what_they_may_hold(rows,
                                                                         monkeypatch):
    index, whole = rows  # files of 9, 1, 0 and 12 rows of 24 bytes
    monkeypatch.setattr(read_lib, "_UNMAP_AFTER_BYTES", 10 * 24)
    reader = BatchReader(index, Padding())
    ids = np.array([8, 0, 4])  # scattered rows of file 0 (9 rows): gathered from its map
    later = np.array([21, 10, 15])  # ... and of file 3 (12 rows)
    np.testing.assert_array_equal(reader.read(ids), whole[ids])
    np.testing.assert_array_equal(reader.read(later), whole[later])
    first_small, first_large = reader._maps._maps[0], reader._maps._maps[3]
    for _ in range(4):  # 15 rows gathered from each: more than a map may hold
        np.testing.assert_array_equal(reader.read(ids), whole[ids])
        np.testing.assert_array_equal(reader.read(later), whole[later])
    assert reader._maps._maps[0] is first_small  # 9 rows: kept
    assert reader._maps._maps[3] is not first_large  # 12 rows: made anew


def test_maps_not_kept_are_all_dropped_after_what_they_may_hold_in_all(rows, monkeypatch):
    index, whole = rows
    monkeypatch.setattr(read_lib, "_UNMAP_AFTER_BYTES", 10 * 24)
    monkeypatch.setattr(read_lib, "_KEEP_MAPS_BYTES", 0)  # no map is kept
    reader = BatchReader(index, Padding())
    ids, later = np.array([8, 0, 4]), np.array([21, 10, 15])  # 72 bytes of file 0, of 3
    np.testing.assert_array_equal(reader.read(ids), whole[ids])
    np.testing.assert_array_equal(reader.read(later), whole[later])
    assert set(reader._maps._maps) == {0, 3}
    for _ in range(3):  # 360 bytes gathered in all: file 0's map goes too
        np.testing.assert_array_equal(reader.read(later), whole[later])
    assert set(reader._maps._maps) == {3}


def test_an_empty_batch(rows, ragged):
    for index in (rows[0], ragged[0]):
        batch = BatchReader(index, Padding("longest")).read(np.array([], np.int64))
        assert batch.shape[0] == 0 and batch.dtype == index.dtype.newbyteorder("=")


def test_views_of_consecutive_rows(rows, tmp_path):
    index, whole = rows
    reader = BatchReader(index, Padding())
    view = reader.read(np.arange(10, 20), consecutive=True, view=True)
    np.testing.assert_array_equal(view, whole[10:20])
    assert not view.flags.writeable and not view.flags.owndata
    run = reader.read_run(10, 10, view=True)  # the same, without the checks of `read`
    np.testing.assert_array_equal(run, whole[10:20])
    assert not run.flags.writeable and np.shares_memory(run, view)
    across_files = reader.read(np.arange(5, 15), view=True)  # two files: read, not viewed
    np.testing.assert_array_equal(across_files, whole[5:15])
    assert across_files.flags.writeable
    swapped = index_source(_save(str(tmp_path / "b.npy"), whole.astype(">f4")))
    copy = BatchReader(swapped, Padding()).read(np.arange(3), view=True)
    assert copy.dtype == np.dtype("float32") and copy.flags.writeable
    np.testing.assert_array_equal(copy, whole[:3])


def test_short_reads_are_resumed_byte_exact(tmp_path, monkeypatch):
    """preadv may return fewer bytes than asked; the rest is read from where it stopped,
    counted in bytes whatever the buffer (a float64 batch row here)."""
    arrays = [np.arange(k * 100, k * 100 + 60, dtype="f8").reshape(10, 6) for k in range(3)]
    for k, array in enumerate(arrays):
        np.save(tmp_path / f"{k}.npy", array)
    real = os.preadv

    def at_most_100_bytes(fd, buffers, offset):
        first = memoryview(buffers[0]).cast("B")[:100]
        return real(fd, [first], offset)

    monkeypatch.setattr(read_lib.os, "preadv", at_most_100_bytes)
    reader = BatchReader(index_source(str(tmp_path), layout="files", verbose=False), Padding())
    np.testing.assert_array_equal(reader.read(np.array([2, 0, 1])), np.stack(arrays)[[2, 0, 1]])


def test_read_run_reads_within_a_file_and_declines_otherwise(rows, count_preadv, tmp_path):
    index, whole = rows
    reader = BatchReader(index, Padding())
    assert reader.plain_rows
    np.testing.assert_array_equal(reader.read_run(10, 12), whole[10:22])  # the 4th file
    assert count_preadv == []  # copied from its kept map (preadv: tested above)
    assert reader.read_run(5, 8) is None  # rows 5-12 span three files
    assert reader.read_run(0, 7) is None  # shorter than a run worth a system call
    fortran = _save(str(tmp_path / "f.npy"), np.asfortranarray(np.ones((20, 3), "f4")))
    assert BatchReader(index_source(fortran), Padding()).read_run(0, 10) is None
    cast = BatchReader(index, Padding(), dtype="float64")
    assert not cast.plain_rows


def test_unshuffled_epochs_of_rows_equal_the_array_through_read_run(rows):
    from keras_npy.batches import build_batch_source

    index, whole = rows
    source = build_batch_source(index.paths.roots[0], layout="rows", batch_size=8)
    batches = [source.batch(0, i) for i in range(source.order.num_batches)]
    np.testing.assert_array_equal(np.concatenate(batches), whole)
