"""Reading batches ahead of use, in worker threads or processes, in order.

`NpyDataset` does this itself instead of handing `workers` to Keras'
enqueuer, because that enqueuer keeps the batches it had prepared when an
epoch is cut short (as Keras' JAX and PyTorch trainers do when they peek at
one batch to build the model) and serves them first in the next epoch, whose
indices restart at 0: samples are then seen twice or not at all, depending on
timing. Here every request names its `(epoch, i)`; work for another epoch is
dropped, so what `ds[i]` returns never depends on timing.

Processes receive the batch source once, when they start (paths and compact
arrays, a few kilobytes), and stay up across epochs; each opens its own files.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor

# The batch source of a worker process, installed once by the pool's initializer
# (the pattern of Keras' own worker pools); never set in the main process.
_WORKER_SOURCE = None


def _install(source) -> None:
    global _WORKER_SOURCE
    _WORKER_SOURCE = source


def _read_in_worker(epoch: int, i: int):
    return _WORKER_SOURCE.batch(epoch, i)


class ReadAhead:
    """Computes batch `(epoch, i)` and the `depth` batches after it ahead of use.

    Args:
        source: an object with `batch(epoch, i)`, picklable for processes.
        workers: worker threads or processes.
        use_multiprocessing: whether workers are processes.
        depth: how many batches to prepare ahead of the one asked for.
    """

    def __init__(self, source, workers: int, use_multiprocessing: bool, depth: int):
        self.source, self.workers = source, workers
        self.use_multiprocessing, self.depth = use_multiprocessing, depth
        self._executor = None
        self._pending: dict[tuple[int, int], Future] = {}
        self._lock = threading.Lock()

    def get(self, epoch: int, i: int, num_batches: int):
        """Batch `i` of `epoch`; schedules the next `depth` batches."""
        with self._lock:
            future = self._pending.pop((epoch, i), None) or self._submit(epoch, i)
            wanted = {(epoch, j) for j in range(i + 1, min(i + 1 + self.depth, num_batches))}
            for key in list(self._pending):
                if key not in wanted:  # another epoch, or skipped: drop it
                    self._pending.pop(key).cancel()
            for key in sorted(wanted - self._pending.keys()):
                self._pending[key] = self._submit(*key)
        return future.result()

    def close(self) -> None:
        """Stops the workers; a later `get` starts new ones."""
        with self._lock:
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None

    def _submit(self, epoch: int, i: int) -> Future:
        if self._executor is None:
            self._executor = self._start()
        if self.use_multiprocessing:
            return self._executor.submit(_read_in_worker, epoch, i)
        return self._executor.submit(self.source.batch, epoch, i)

    def _start(self):
        if not self.use_multiprocessing:
            return ThreadPoolExecutor(self.workers, thread_name_prefix="keras_npy")
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(),
                                   initializer=_install, initargs=(self.source,))

    def __reduce__(self):  # a copy starts its own workers, lazily
        return (ReadAhead, (self.source, self.workers, self.use_multiprocessing, self.depth))

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to stop
            pass
