"""Files that change under a reader: an error that names the file, never a crash,
a hang, a leak, or garbage. Reads that could kill the process (a memory map of
a file cut short) run in a child process, so that a failure is a failed test,
not a dead test run."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_npy.index import index_source
from keras_npy.read import BatchReader, Padding, guard, handles
from helpers import save as _save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



@pytest.fixture
def rows(tmp_path):
    parts = [np.arange(n * 6, dtype="float32").reshape(n, 3, 2) + 1000 * k
             for k, n in enumerate([9, 12])]
    for k, part in enumerate(parts):
        _save(str(tmp_path / "rows" / f"x_{k}.npy"), part)
    return index_source(str(tmp_path / "rows"), layout="rows"), np.concatenate(parts)


def _truncated_message(path):
    return (f"{path}: expected 288 data bytes for shape (12, 3, 2) of dtype float32, found 48; "
            "the file is truncated. (The file changed after the dataset was built.)")


BATCHES = {"a run": range(10, 21), "consecutive ids": np.arange(10, 21),
           "shuffled": np.array([20, 9, 15, 12, 19, 11]), "across files": range(5, 15)}


@pytest.mark.parametrize("ids", list(BATCHES.values()), ids=list(BATCHES))
def test_a_rows_file_cut_short_after_indexing(rows, maps, ids):
    index, _ = rows
    with open(index.paths[1], "r+b") as f:
        f.truncate(128 + 24 * 2)
    with pytest.raises(ValueError) as info:
        BatchReader(index, Padding()).read(ids)
    assert str(info.value) == _truncated_message(index.paths[1])


def _in_a_child(check) -> int:
    """Runs `check` in a forked process: 0 when it returned True, 1 when not,
    else minus the signal that killed it."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if check() else 1
        finally:
            os._exit(code)
    status = os.waitpid(pid, 0)[1]
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)


@pytest.mark.parametrize("ids", list(BATCHES.values()), ids=list(BATCHES))
def test_a_rows_file_cut_short_after_its_map_was_made(rows, maps, ids):
    index, whole = rows

    def check():
        reader = BatchReader(index, Padding())
        first = reader.read(ids)
        assert maps == "preadv" or handles.TABLE._files  # read through a map
        with open(index.paths[1], "r+b") as f:
            f.truncate(128 + 24 * 2)
        with pytest.raises(ValueError) as info:
            reader.read(ids)
        return (np.array_equal(first, whole[np.asarray(ids)])
                and str(info.value) == _truncated_message(index.paths[1]))

    assert _in_a_child(check) == 0


_TRUNCATE_WHILE_READING = textwrap.dedent("""
    import os, sys, threading, time
    import numpy as np
    from keras_npy.index import index_source
    from keras_npy.read import BatchReader, Padding, guard

    path, seconds = sys.argv[1], float(sys.argv[2])
    whole = np.load(path)
    size = os.path.getsize(path)
    half = 128 + (size - 128) // 2
    with open(path, "rb") as f:
        f.seek(half)
        tail = f.read()
    reader = BatchReader(index_source(path), Padding())
    stop = threading.Event()

    def truncate_and_restore():
        fd = os.open(path, os.O_WRONLY)
        while not stop.is_set():
            os.ftruncate(fd, half)
            time.sleep(0.0005)
            os.pwrite(fd, tail, half)
            time.sleep(0.0005)
        os.close(fd)

    thread = threading.Thread(target=truncate_and_restore)
    thread.start()
    rng = np.random.default_rng(0)
    n, ok, errors = len(whole), 0, 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        for ids in (range(n - 600, n - 344), rng.integers(0, n, 256), np.arange(n - 300, n),
                    range(n - 2100, n - 52)):  # 2 MiB: copied in halves on two threads
            try:
                batch = reader.read(ids)
            except ValueError as e:
                assert str(e).startswith(path + ": "), str(e)
                errors += 1
                continue
            if not np.array_equal(batch, whole[np.asarray(ids)]):
                print("garbage", flush=True)
                sys.exit(3)
            ok += 1
    stop.set()
    thread.join()
    print(ok, errors, guard.available(), flush=True)
""")


def test_truncating_a_file_under_running_reads_never_crashes_or_returns_garbage(tmp_path):
    """A thread cuts a file short and restores it every millisecond while
    batches of every kind are read from it: each read returns the right rows
    or an error that names the file (a read of a memory map past the end of
    its file would kill the process)."""
    path = _save(str(tmp_path / "x.npy"),
                 np.random.default_rng(1).random((16384, 256), dtype="float32"))
    done = subprocess.run([sys.executable, "-c", _TRUNCATE_WHILE_READING, path, "3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-3000:])
    ok, errors, guarded = done.stdout.split()
    assert int(ok) > 0 and int(errors) > 0 and guarded == "True"


def test_a_fault_outside_keras_npy_maps_still_kills_as_before(tmp_path):
    """The guard mends faults in its own maps only: any other SIGBUS keeps its
    old meaning (here, the default: the process dies)."""
    path = _save(str(tmp_path / "x.npy"), np.ones((4096, 256), "float32"))
    script = textwrap.dedent(f"""
        import mmap, os
        import numpy as np
        from keras_npy.index import index_source
        from keras_npy.read import BatchReader, Padding, guard
        BatchReader(index_source({path!r}), Padding()).read(range(0, 8))
        assert guard.installed()
        with open({path!r}, "r+b") as f:
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            f.truncate(4096)
            print("reading", flush=True)
            m[2**20]
        print("survived", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == -signal.SIGBUS and done.stdout == "reading\n", done


def test_the_guard_takes_sigbus_back_from_a_newer_handler(rows):
    import faulthandler

    assert guard.available()
    was_enabled = faulthandler.is_enabled()
    faulthandler.enable()  # installs its own SIGBUS handler over ours
    try:
        assert guard.installed()  # ours again, chained to faulthandler's
        index, whole = rows

        def check():
            reader = BatchReader(index, Padding())
            reader.read(range(10, 21))
            with open(index.paths[1], "r+b") as f:
                f.truncate(128 + 24 * 2)
            with pytest.raises(ValueError):
                reader.read(range(10, 21))
            return True

        assert _in_a_child(check) == 0
    finally:
        if not was_enabled:
            faulthandler.disable()
        guard.installed()


def test_a_rows_file_replaced_by_another_array(rows, maps):
    index, whole = rows
    np.save(index.paths[1], np.zeros((12, 3, 2), "int32"))  # same size, another dtype
    with pytest.raises(ValueError) as info:
        BatchReader(index, Padding()).read(range(10, 12))
    assert str(info.value) == (
        f"{index.paths[1]}: expected an array of dtype float32 and shape (12, 3, 2) as when "
        "the dataset was built, found dtype int32 and shape (12, 3, 2); the file changed "
        "after the dataset was built.")


def test_a_rows_file_rewritten_alike_is_read(rows, maps):
    index, whole = rows
    new = whole[9:] * 2
    np.save(index.paths[1], new)  # same header, new values, a new modification time
    np.testing.assert_array_equal(BatchReader(index, Padding()).read(range(9, 21)), new)


@pytest.fixture
def samples(tmp_path):
    arrays = [np.full((4, 2), k, "float32") for k in range(3)]
    for k, a in enumerate(arrays):
        _save(str(tmp_path / "d" / f"{k}.npy"), a)
    return index_source(str(tmp_path / "d")), arrays


@pytest.mark.parametrize("replacement, found", [
    (np.zeros((8, 2), "float64"), "dtype float64 and shape (8, 2)"),  # larger, another dtype
    (np.zeros((4, 2), "int32"), "dtype int32 and shape (4, 2)"),  # the same size
    (np.zeros((2, 2), "float32"), "dtype float32 and shape (2, 2)"),  # smaller
])
def test_a_per_sample_file_replaced_by_another_array(samples, replacement, found):
    index, _ = samples
    np.save(index.paths[1], replacement)
    with pytest.raises(ValueError) as info:
        BatchReader(index, Padding()).read(np.array([0, 1]))
    assert str(info.value) == (
        f"{index.paths[1]}: expected dtype float32 and shape (4, 2) as when the dataset was "
        f"built, found {found}; the file changed after the dataset was built.")


def test_a_per_sample_file_cut_short_or_removed(samples):
    index, _ = samples
    with open(index.paths[1], "r+b") as f:
        f.truncate(130)
    with pytest.raises(ValueError) as info:
        BatchReader(index, Padding()).read(np.array([1]))
    assert str(info.value) == (
        f"{index.paths[1]}: expected 32 data bytes for shape (4, 2) of dtype float32, found "
        "2; the file is truncated. (Indexed with dtype float32 and shape (4, 2); the file "
        "changed after the dataset was built.)")
    os.remove(index.paths[2])
    with pytest.raises(ValueError) as info:
        BatchReader(index, Padding()).read(np.array([2]))
    assert str(info.value) == f"{index.paths[2]}: cannot open the file: No such file or directory."


def test_a_per_sample_file_rewritten_alike_is_read(samples):
    index, arrays = samples
    np.save(index.paths[1], arrays[1] + 5)
    batch = BatchReader(index, Padding()).read(np.array([1, 0]))
    np.testing.assert_array_equal(batch, np.stack([arrays[1] + 5, arrays[0]]))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_open_files_and_maps_are_bounded_per_process(tmp_path, monkeypatch):
    monkeypatch.setattr(handles, "MAX_OPEN_FILES", 8)
    handles.TABLE.clear()
    before = _open_fds()
    readers = []
    for k in range(30):  # readers kept alive, as pipelines that TensorFlow keeps
        path = _save(str(tmp_path / f"x_{k}.npy"), np.full((64, 4), k, "float32"))
        reader = BatchReader(index_source(path), Padding())
        np.testing.assert_array_equal(reader.read(range(0, 64))[:, 0], k)
        np.testing.assert_array_equal(reader.read(np.array([63, 0, 5]))[:, 0], k)
        readers.append(reader)
        # A descriptor per open file, and the one Python's mmap keeps for its map.
        assert len(handles.TABLE) <= 8 and _open_fds() <= before + 2 * 8
    for k, reader in enumerate(readers):  # evicted files are opened again, and checked
        np.testing.assert_array_equal(reader.read(range(0, 64))[:, 0], k)
    handles.TABLE.clear()
    assert _open_fds() == before


def test_a_per_sample_file_rewritten_with_other_header_bytes_of_the_same_meaning(samples):
    index, arrays = samples
    with open(index.paths[1], "wb") as f:  # format 2.0: other bytes, the same array
        np.lib.format.write_array(f, arrays[1] * 3, version=(2, 0))
    batch = BatchReader(index, Padding()).read(np.array([0, 1, 2]))
    np.testing.assert_array_equal(batch, np.stack([arrays[0], arrays[1] * 3, arrays[2]]))
