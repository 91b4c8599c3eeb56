"""Batch arrays that are handed out again once nothing holds them.

A new batch-sized array is new pages from the kernel whenever the C allocator
has given freed memory back to the system, as it does with TensorFlow loaded
(64 page faults per new 256 KiB batch, slower than reading the data). A
buffer is reused only when reference counts say that no batch, view,
memoryview or tensor made from it is alive (numpy views, buffer exports,
`tf.convert_to_tensor` and `torch.from_numpy` all hold a reference to the
array whose memory they use, and numpy views of views refer to the buffer
itself). Buffers are 64-byte aligned: TensorFlow and JAX take such arrays as
they are, without a copy.

The last batch array made on a buffer is handed out again, the same object,
when it is still what was asked for (shape, dtype, writable, C order: a
caller may have changed those in place), which costs less than a new array
over the same memory; the entry handed out last is looked at first.

One pool serves every reader of a process (`POOL`), bounded in buffers and
bytes, so that a pipeline kept alive after its dataset is dropped keeps no
buffers of its own. A forked process starts from a copy of it.
"""

from __future__ import annotations

import math
import os
import sys
import threading

import numpy as np

# Batches from this size up are reused, up to this many buffers and bytes.
_REUSE_MIN_BYTES = 64 * 2**10
_REUSE_MAX_BUFFERS = 16
_REUSE_MAX_BYTES = 128 * 2**20
_ALIGN = 64


class BatchBuffers:
    """A pool of batch buffers (see the module docstring)."""

    def __init__(self):
        # Entries `[buffer, batch]`: the owner of the memory, and the last
        # batch array made on its aligned part.
        self._entries, self._lock = [], threading.Lock()
        self._last: list | None = None  # the entry handed out last

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialized C-order array, like `np.empty(shape, dtype)`."""
        with self._lock:
            # The common case first: the last batch asked for again, dropped by now.
            last = self._last
            if last is not None and last[1].shape == shape and _holders(last) == _UNHELD:
                batch = last[1]
                if batch.dtype == dtype and _intact(batch):
                    return batch
        nbytes = math.prod(shape) * dtype.itemsize
        if not _REUSE_MIN_BYTES <= nbytes <= _REUSE_MAX_BYTES // 4:
            return np.empty(shape, dtype)
        with self._lock:
            for entry in self._entries:
                if entry[1].nbytes == nbytes and _holders(entry) == _UNHELD:
                    batch = entry[1]
                    self._last = entry
                    if batch.shape == shape and batch.dtype == dtype and _intact(batch):
                        return batch
                    entry[1] = _batch_on(entry[0], shape, dtype)
                    return entry[1]
            entry = self._last = _new_entry(shape, dtype)
            self._entries.append(entry)
            while (len(self._entries) > _REUSE_MAX_BUFFERS
                   or sum(e[0].nbytes for e in self._entries) > _REUSE_MAX_BYTES):
                del self._entries[0]  # forgotten, not freed, while in use
            return entry[1]

    def __len__(self) -> int:
        return len(self._entries)


def _new_entry(shape: tuple[int, ...], dtype: np.dtype) -> list:
    buffer = np.empty(math.prod(shape) * dtype.itemsize + _ALIGN, np.uint8)
    return [buffer, _batch_on(buffer, shape, dtype)]


def _batch_on(buffer: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The batch array over the 64-byte-aligned part of `buffer`."""
    return np.ndarray(shape, dtype, buffer, -buffer.ctypes.data % _ALIGN)


def _holders(entry: list) -> tuple[int, int]:
    """The reference counts of an entry's buffer and batch array."""
    return sys.getrefcount(entry[0]), sys.getrefcount(entry[1])


def _intact(batch: np.ndarray) -> bool:
    flags = batch.flags
    return flags.writeable and flags.c_contiguous


#: What `_holders` counts for an entry that nothing else holds (measured, not
#: assumed: how a call counts its references differs between Pythons).
_UNHELD = _holders(_new_entry((1,), np.dtype("uint8")))

POOL = BatchBuffers()


def _after_fork_in_child() -> None:
    POOL._lock = threading.Lock()  # a thread of the parent may have held it


os.register_at_fork(after_in_child=_after_fork_in_child)
