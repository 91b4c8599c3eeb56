"""Read-ahead: the next batches' bytes on their way into the page cache.

The order of an epoch is known in advance (a pure function of seed, epoch,
split and shard), so when batches are asked for in order, the bytes of the
batches that come next are handed to the kernel (`BatchReader.prefetch`:
`posix_fadvise(WILLNEED)` per stretch of bytes, which starts the reads and
returns). The disk then has many reads in flight without a thread per read,
and data that is not in memory arrives at the disk's pace.

The window ahead of the batch being read holds at most `budget` bytes (pages
counted whole: a scattered 1 KiB row costs a 4 KiB page), past what one batch
needs at once (with the block shuffle, the whole window of blocks it draws
from), and `MAX_BATCHES_AHEAD` batches. It moves only while batches are asked for in
order (`i` after `i - 1`, or within the window: parallel readers may overtake
each other); a batch asked for out of order (Keras' `fit` shuffles whole
batches of a `PyDataset` by default) resets it, and nothing is read ahead for
batches that may not be asked for: such a batch's own reads are started
together instead (`BatchReader.read(..., advise=True)`).

The window is filled by one thread per process (`_Advisor`), so that the
thread that reads batches does not wait on the system calls that only start
reads (a few microseconds each, one per scattered row); a batch that the
window has not reached yet has its own reads started by its reader.

Probes cost a system call or two per batch, so once `WARM_AFTER` batches in
a row were found in the page cache, the window is dropped and one batch in
`PROBE_STRIDE`, a few batches ahead, is probed instead: reading from memory
then costs the read-ahead a comparison per batch. A probe that finds a batch
on disk starts the window again.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
import weakref

#: Batches the window may hold, whatever their size.
MAX_BATCHES_AHEAD = 256
#: Batches found in the page cache in a row after which the data is taken to
#: be there, and while it is, one batch in `PROBE_STRIDE`, `PROBE_DISTANCE`
#: batches ahead, is probed.
WARM_AFTER = 8
PROBE_STRIDE = 16
PROBE_DISTANCE = 4
_PAGE = 4096


class ReadAhead:
    """The read-ahead window of one batch source, in one process.

    Args:
        budget: the bytes the window may hold. `0` reads nothing ahead.
    """

    def __init__(self, budget: int):
        self.budget = budget
        self._lock = threading.Lock()
        self._epoch = self._last = None
        self._until = self._since = 0  # batches before this one are in the window or were read
        self._window: collections.deque = collections.deque()  # [batch, bytes, alive]
        self._bytes = 0
        self._cached_streak = 0
        self._warm, self._next_probe, self._fresh = False, 0, True
        #: The most bytes the window held at once, the pages it asked for, and
        #: the batches it took in (some of whose pages may have been cached).
        self.peak_bytes = self.pages_advised = self.batches_ahead = 0

    def __reduce__(self):  # a copy (a worker process) starts with an empty window
        return (ReadAhead, (self.budget,))

    def settle(self, timeout: float = 30.0) -> None:
        """Waits until the window is filled as far as it will be (for tests);
        raises `TimeoutError` if it is still being filled after `timeout`."""
        if not _ADVISOR.settle(self, timeout):
            raise TimeoutError(f"the read-ahead window was still being filled after {timeout} s")

    def after(self, epoch: int, first: int, count: int, num_batches: int, ids_of,
              readers) -> bool:
        """Batches `first` to `first + count - 1` of `epoch` are being read: moves
        the window past them and fills it. `ids_of(epoch, j, fresh)` gives what
        reading batch `j` ahead reads (`fresh`: for the first batch of a window,
        with nothing read ahead before it); `readers` read them. Returns
        whether those batches were in the window (their bytes asked for, or
        found cached, already)."""
        if self.budget <= 0:
            return False
        last = first + count - 1
        if self._warm and epoch == self._epoch and first == self._last + 1 and (
                last < self._next_probe):  # the common case: in memory, in order
            self._last = last
            return True
        if self._warm and (first == self._last + 1 if epoch == self._epoch else first == 0):
            return self._warm_after(epoch, last, num_batches, ids_of, readers)
        with self._lock:
            same = epoch == self._epoch
            # Parallel readers (tf.data's) may ask for a batch of the window after
            # a later one: it was read ahead all the same.
            covered = same and self._since <= first and last < self._until
            if not (covered or (same and first == self._last + 1)):
                self._reset(epoch, last)
                if first != 0:  # out of order: nothing is read ahead
                    return False
            self._last = max(self._last, last)
            while self._window and self._window[0][0] <= self._last:
                entry = self._window.popleft()
                self._bytes -= entry[1]
                entry[2] = False
            self._until = max(self._until, self._last + 1)
        _ADVISOR.fill(self, num_batches, ids_of, readers)
        return covered

    def _warm_after(self, epoch: int, last: int, num_batches: int, ids_of, readers) -> bool:
        """In order, with the data in the page cache: probes a batch now and
        then (no lock: a race costs a probe more or less)."""
        new_epoch = epoch != self._epoch
        self._epoch, self._last = epoch, last
        if last < self._next_probe and not new_epoch:
            return True
        self._next_probe = last + PROBE_STRIDE
        j = min(last + PROBE_DISTANCE, num_batches - 1)
        ids = ids_of(epoch, j, True) if j > last else ()
        if len(ids) and sum(reader.prefetch(ids, epoch) for reader in readers):
            with self._lock:  # on disk after all: a window from here on
                self._warm, self._cached_streak = False, 0
                self._reset(epoch, last)
        return True

    def _reset(self, epoch: int, last: int) -> None:
        self._epoch, self._last, self._until = epoch, last, last + 1
        self._since = last + 1  # batches from here on are read ahead
        self._fresh = True  # the next batch claimed starts the window
        for entry in self._window:
            entry[2] = False
        self._window.clear()
        self._bytes = 0

    def _fill(self, num_batches: int, ids_of, readers) -> None:
        """Adds the next batches to the window while it has room; the system
        calls are made outside the lock, one batch claimed at a time."""
        while True:
            with self._lock:
                if self._warm or not (self._until < num_batches and self._bytes < self.budget
                                      and len(self._window) < MAX_BATCHES_AHEAD):
                    return
                epoch, j, fresh = self._epoch, self._until, self._fresh
                entry = [j, 0, True]  # batch, bytes, still in the window
                self._window.append(entry)
                self._until, self._fresh = self._until + 1, False
            ids = ids_of(epoch, j, fresh)
            nbytes = sum(reader.nbytes(ids) for reader in readers)
            pages = sum(reader.prefetch(ids, epoch) for reader in readers)
            with self._lock:
                self.pages_advised += pages
                self.batches_ahead += 1
                if len(ids):  # a batch whose bytes were read ahead with an earlier one: no probe
                    self._cached_streak = self._cached_streak + 1 if pages == 0 else 0
                if self._cached_streak >= WARM_AFTER:  # in memory: no window
                    self._warm, self._next_probe = True, 0
                    self._reset(self._epoch, self._last)
                    return
                if entry[2]:
                    entry[1] = max(nbytes, pages * _PAGE)
                    self._bytes += entry[1]
                    self.peak_bytes = max(self.peak_bytes, self._bytes)


class _Advisor:
    """The thread of this process that fills read-ahead windows: `fill` queues
    a window (once, while it is queued) and returns at once. A window is held
    weakly: a dataset dropped meanwhile is not kept alive for it."""

    def __init__(self):
        self._pid, self._thread = None, None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._queued: set[int] = set()
        self._running: set[int] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    def fill(self, window: ReadAhead, num_batches: int, ids_of, readers) -> None:
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's thread is not here
                self._start()
            if id(window) in self._queued:
                return
            self._queued.add(id(window))
        self._queue.put((weakref.ref(window), num_batches, ids_of, readers))

    def settle(self, window: ReadAhead, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(
                lambda: id(window) not in self._queued | self._running, timeout)

    def _start(self) -> None:
        self._pid, self._queue = os.getpid(), queue.SimpleQueue()
        self._queued, self._running = set(), set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._run, name="keras_npy-read-ahead",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            ref, num_batches, ids_of, readers = self._queue.get()
            window = ref()
            if window is None:
                continue
            with self._lock:  # a fill asked for from now on is queued again
                self._queued.discard(id(window))
                self._running.add(id(window))
            try:
                window._fill(num_batches, ids_of, readers)
            except Exception:  # a hint failed (a file gone): the read names the file
                pass
            with self._idle:
                self._running.discard(id(window))
                self._idle.notify_all()
            del window, ids_of, readers


_ADVISOR = _Advisor()
