"""The read-ahead: batches asked for in order have the next ones on their way from
disk (many reads in flight, within the budget); batches asked for out of order
have nothing read ahead for them; data in memory costs it next to nothing.
"Cold" data is made by evicting the file's pages (posix_fadvise DONTNEED) after
dropping the process' own maps of it."""

import os

import numpy as np
import pytest

from keras_npy import NpyDataset
from keras_npy.read import prefetch
from helpers import evict as _evict, resident as _cached, save as _save
from helpers import wait_until_resident as _wait_until_cached

ROW = 1024  # bytes: 256 float32
BATCH = 256  # rows: 256 KiB batches


@pytest.fixture
def cold_file(tmp_path):
    """`(path, array)`: 8 MiB of 1 KiB rows, written back to disk."""
    x = np.random.default_rng(0).random((8192, 256), dtype="float32")
    path = _save(str(tmp_path / "x.npy"), x)
    os.sync()
    return path, x


def _batch_offsets(i):
    """Bytes in the second and the last but one page of batch `i` (its first
    and last pages are shared with its neighbours)."""
    return [128 + i * BATCH * ROW + 4096, 128 + (i + 1) * BATCH * ROW - 4097]


def _window(batches, batch_bytes):
    """What a window of `batches` batches holds: each counted in whole pages
    (the data starts 128 bytes into the file)."""
    return batches * -(-(128 + batch_bytes) // 4096) * 4096


def test_in_order_reads_have_the_next_batches_in_flight_within_the_budget(cold_file):
    path, x = cold_file
    ds = NpyDataset(path, batch_size=BATCH, read_ahead_bytes=8 * BATCH * ROW)
    _evict(path)
    np.testing.assert_array_equal(ds[0], x[:BATCH])
    ahead = ds._source.read_ahead
    ahead.settle()  # filled by the read-ahead thread
    assert ahead.batches_ahead == 8  # batches 1-8 asked for at once, within the budget
    # (a page shared with a batch read or asked for before is not counted twice)
    assert _window(7, BATCH * ROW) < ahead.peak_bytes <= _window(8, BATCH * ROW)
    # The kernel reads them in the background, while this thread reads nothing.
    _wait_until_cached(path, [o for i in range(1, 9) for o in _batch_offsets(i)])
    assert _cached(path, _batch_offsets(12)) == [False, False]  # beyond the budget
    for i in range(1, len(ds)):  # the window moves with the reads
        np.testing.assert_array_equal(ds[i], x[i * BATCH:(i + 1) * BATCH])
        ahead.settle()  # (a reader faster than the thread reads its batch itself)
    # Every batch after the first was taken into the window before it was read.
    # (Pages are not counted: the kernel may have read some of them already.)
    assert ahead.batches_ahead == len(ds) - 1
    assert ahead.pages_advised >= 8 * BATCH * ROW // 4096  # the first window's, at least


def test_out_of_order_reads_read_nothing_ahead(cold_file):
    path, x = cold_file
    ds = NpyDataset(path, batch_size=BATCH, read_ahead_bytes=8 * BATCH * ROW)
    _evict(path)
    for i in (5, 2, 9, 30, 1):  # fit's shuffle of whole batches
        np.testing.assert_array_equal(ds[i], x[i * BATCH:(i + 1) * BATCH])
    ds._source.read_ahead.settle()
    assert ds._source.read_ahead.peak_bytes == 0
    assert _cached(path, _batch_offsets(6) + _batch_offsets(10)) == [False] * 4
    np.testing.assert_array_equal(ds[2], x[2 * BATCH:3 * BATCH])  # then in order again:
    np.testing.assert_array_equal(ds[3], x[3 * BATCH:4 * BATCH])  # the window fills
    ds._source.read_ahead.settle()
    assert _window(7, BATCH * ROW) < ds._source.read_ahead.peak_bytes <= _window(8, BATCH * ROW)


def test_a_shuffled_batch_nothing_read_ahead_starts_its_reads_together(cold_file):
    path, x = cold_file
    ds = NpyDataset(path, batch_size=BATCH, shuffle=True, seed=0, read_ahead_bytes=0)
    ids = np.sort(ds._source.order.batch(0, 3))
    _evict(path)
    pages = ds._source.readers["x"].prefetch(ids)
    assert pages >= BATCH  # each row's page asked for, in one go
    _wait_until_cached(path, [128 + int(r) * ROW for r in ids])
    np.testing.assert_array_equal(np.sort(ds[3], axis=0), np.sort(x[ids], axis=0))


def test_data_in_memory_keeps_no_window(cold_file):
    path, x = cold_file
    ds = NpyDataset(path, batch_size=64)
    for i in range(len(ds)):  # the file is in the page cache: probes find it there
        np.testing.assert_array_equal(ds[i], x[i * 64:(i + 1) * 64])
    ahead = ds._source.read_ahead
    ahead.settle()
    assert ahead._warm and ahead.pages_advised == 0 and not ahead._window
    _evict(path)  # gone from memory: the next probe sees it, and reads ahead again
    ds.on_epoch_end()
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds[i], x[i * 64:(i + 1) * 64])
    ahead.settle()
    assert ahead.pages_advised > 0


@pytest.mark.parametrize("shuffle", [False, True, "block"])
def test_streaming_cold_data_past_the_budget_keeps_anonymous_memory_flat(tmp_path, shuffle):
    x = np.lib.format.open_memmap(str(tmp_path / "big.npy"), "w+", "float32", (65536, 256))
    x[::1024] = 1  # 64 MiB, mostly holes on disk
    x.flush()
    del x
    path = str(tmp_path / "big.npy")
    os.sync()
    ds = NpyDataset(path, batch_size=BATCH, shuffle=shuffle, seed=0,
                    read_ahead_bytes=4 * 2**20)
    _evict(path)
    ds[0]
    before = peak = _rss_anon()
    for i in range(1, len(ds)):
        ds[i]
        peak = max(peak, _rss_anon())
    # Read ahead through the page cache, not into memory of our own: anonymous
    # memory stays under the budget plus a few batches (what planning a window
    # of blocks takes: its ids), though 16 times the budget streams by.
    assert peak - before < 4 * 2**20 + 4 * BATCH * ROW
    ds._source.read_ahead.settle()
    # The window holds the budget, past what a batch needs at once: the block
    # shuffle's window of 32 blocks of 1 MiB, read whole; a page or two for each
    # row of a shuffled batch.
    needed = {False: BATCH * ROW + 4096, True: BATCH * 2 * 4096,
              "block": 32 * 2**20 + 33 * 4096}[shuffle]
    assert ds._source.read_ahead.peak_bytes <= 4 * 2**20 + needed


def _rss_anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024


def test_the_block_shuffle_reads_whole_blocks_ahead(cold_file):
    path, x = cold_file
    ds = NpyDataset(path, batch_size=BATCH, shuffle="block", seed=1, shuffle_block_size=512,
                    shuffle_window=2, read_ahead_bytes=2 * 2**20)
    _evict(path)
    first = ds[0]  # draws from the 2 blocks of window 0: both are read whole
    blocks = np.unique(ds._source.order.window_ids(0, 0) // 512)
    assert len(blocks) == 2
    _wait_until_cached(path, [o for b in blocks.tolist()
                              for o in (128 + b * 512 * ROW, 128 + (b + 1) * 512 * ROW - 1)])
    rows = np.concatenate([first] + [ds[i] for i in range(1, len(ds))])
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, x.tolist()))


def test_the_budget_of_zero_reads_nothing_ahead(cold_file):
    path, x = cold_file
    ds = NpyDataset(path, batch_size=BATCH, read_ahead_bytes=0)
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds[i], x[i * BATCH:(i + 1) * BATCH])
    ds._source.read_ahead.settle()
    assert ds._source.read_ahead.peak_bytes == 0


def test_the_window_is_bounded_in_batches(cold_file, monkeypatch):
    path, _ = cold_file
    monkeypatch.setattr(prefetch, "MAX_BATCHES_AHEAD", 3)
    ds = NpyDataset(path, batch_size=8)
    _evict(path)
    ds[0]
    ds._source.read_ahead.settle()
    assert 3 * 8 * ROW <= ds._source.read_ahead.peak_bytes <= _window(3, 8 * ROW)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="needs root, to read as another user")
def test_a_file_this_user_may_not_write_is_probed_by_reads(tmp_path):
    """Linux's mincore reports every page of a file cached to a process that
    neither owns nor may write it: such files are probed another way, or
    nothing would ever be read ahead for them."""
    import shutil
    import tempfile

    from keras_npy.index import index_source
    from keras_npy.read import BatchReader, Padding

    folder = tempfile.mkdtemp(dir="/tmp")  # reachable by another user, unlike tmp_path
    try:
        os.chmod(folder, 0o755)
        path = _save(os.path.join(folder, "x.npy"),
                     np.zeros((4096, 256), "float32"))  # 4 MiB of 1 KiB rows, root's
        os.chmod(path, 0o644)
        os.sync()
        _evict(path)
        pid = os.fork()
        if pid == 0:
            ok = False
            try:
                os.setgid(65534)
                os.setuid(65534)  # nobody: may read the file, not write it
                reader = BatchReader(index_source(path), Padding())
                ok = reader.prefetch(range(1024, 2048)) == 257  # asked for, not "cached"
            finally:
                os._exit(0 if ok else 1)
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        shutil.rmtree(folder)
