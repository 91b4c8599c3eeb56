"""What several test files share (on the path through `pythonpath` in setup.cfg)."""

import os

import numpy as np


def free_ports(count):
    """`count` distinct free TCP ports of 127.0.0.1 (held together while
    chosen, so none is handed out twice)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def numbered_data(folder, num_samples):
    """Writes `folder/x.npy`, (num_samples, 4) float32 samples whose first
    feature is their id (what multi-process tests record), and `y.npy`, a
    target of the other features; returns `folder` as a string."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(num_samples, 4)).astype("float32")
    x[:, 0] = np.arange(num_samples)
    save(os.path.join(folder, "x.npy"), x)
    y = x @ np.array([0.01, 1.0, -1.0, 0.5], "float32") + rng.normal(size=num_samples)
    save(os.path.join(folder, "y.npy"), y.astype("float32"))
    return str(folder)


def save(path, array, **kwargs):
    """`np.save(path, array)`, making the folder first; returns `path`."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, array, **kwargs)
    return path


def resident(path, offsets):
    """Whether the bytes at `offsets` of `path` are in the page cache, by
    `mincore` on a map that is never touched: a probe that reads (even
    `RWF_NOWAIT`) starts the kernel reading what it misses."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    size = os.path.getsize(path)
    pages = -(-size // mmap.PAGESIZE)
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)  # writable: has an address
    try:
        anchor = ctypes.c_char.from_buffer(m)
        vec = ctypes.create_string_buffer(pages)
        if libc.mincore(ctypes.addressof(anchor), size, vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        del anchor
        return [bool(vec.raw[o // mmap.PAGESIZE] & 1) for o in offsets]
    finally:
        m.close()


def evict(path, timeout=5.0):
    """Drops the pages of `path` from the page cache (`posix_fadvise(DONTNEED)`
    after closing keras_npy's maps, which keep them in). The kernel may hold
    some for a moment (in a per-CPU batch): this checks, and tries again; a
    system that will not let them go cannot run a test of cold data."""
    import gc
    import time

    import pytest
    from keras_npy.read import handles

    handles.TABLE.clear()
    gc.collect()  # datasets of earlier tests, with maps of their own
    every = list(range(0, os.path.getsize(path), 4096))
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        if not any(resident(path, every)):
            return
        if time.monotonic() > deadline:
            pytest.skip(f"the system keeps pages of {path} in its cache: no cold data")
        time.sleep(0.02)


def wait_until_resident(path, offsets, timeout=10.0):
    """Waits until the kernel, reading in the background, has the bytes at
    `offsets` of `path` in the page cache; fails after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not all(resident(path, offsets)):
        assert time.monotonic() < deadline, "the bytes asked for never arrived"
        time.sleep(0.01)
