"""Reading whole batches ahead of use, in worker threads or processes, in order.

`NpyDataset` does this itself instead of handing `workers` to Keras'
enqueuer, because that enqueuer keeps the batches it had prepared when an
epoch is cut short (as Keras' JAX and PyTorch trainers do when they peek at
one batch to build the model) and serves them first in the next epoch, whose
indices restart at 0: samples are then seen twice or not at all, depending on
timing. Here every request names its `(epoch, i)`; work for another epoch is
dropped, so what `ds[i]` returns never depends on timing.

Worker processes are started with `forkserver` where the platform has it
(else `spawn`, as in a process forked from the one that imported keras_npy,
where the forkserver is the parent's), never by forking the training process: JAX, PyTorch and
TensorFlow run threads that a fork would copy in the middle of their work
(JAX warns that this "will likely lead to a deadlock"). As with any
multiprocessing start method but `fork`, a script that uses
`use_multiprocessing=True` must guard its entry point with
`if __name__ == "__main__":`. Processes receive the batch source once, when
they start (paths and compact arrays), stay up across epochs, and open their
own files. The page cache is shared, so the process that asks for batches
also reads ahead for the workers (`BatchSource.advise_ahead`).

A pool belongs to the process that started it: in a forked child, the first
request starts a pool of the child's own (the parent's threads do not exist
there). A worker process that dies breaks its pool: the request fails with
`BrokenProcessPool`, and the next request starts a new pool.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

# The batch source of a worker process, installed once by the pool's initializer
# (the pattern of Keras' own worker pools); never set in the main process.
_WORKER_SOURCE = None


#: Seconds between a worker's checks that the process it reads for is alive.
OWNER_CHECK_SECONDS = 1.0


def _install(source, owner: int) -> None:
    global _WORKER_SOURCE
    _WORKER_SOURCE = source
    threading.Thread(target=_exit_without, args=(owner,), name="keras_npy-owner",
                     daemon=True).start()


def _exit_without(owner: int) -> None:
    """Ends this worker once `owner` is gone. A worker waits on a queue whose
    writing end it holds itself, so an owner killed (or `os._exit`) without
    closing its pool would leave it waiting forever; its parent is the
    forkserver, not the owner, so the kernel's parent-death signal does not
    apply."""
    while True:
        time.sleep(OWNER_CHECK_SECONDS)
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:  # alive (a process of another user has its pid)
            pass


def _read_in_worker(epoch: int, i: int):
    return _WORKER_SOURCE.read(epoch, i, 1)


#: The process that imported this module. A process forked from it shares its
#: forkserver's bookkeeping, which only that process can use.
_IMPORTED_IN = os.getpid()


def start_method() -> str:
    """The start method of worker processes: `forkserver` where the platform
    has it, `spawn` elsewhere and in processes forked after import."""
    if "forkserver" in multiprocessing.get_all_start_methods() and os.getpid() == _IMPORTED_IN:
        return "forkserver"
    return "spawn"


class BatchWorkers:
    """Computes batch `(epoch, i)` and the `depth` batches after it ahead of use.

    Args:
        source: a `BatchSource`, picklable for processes.
        workers: worker threads or processes.
        use_multiprocessing: whether workers are processes.
        depth: how many batches to prepare ahead of the one asked for.
    """

    def __init__(self, source, workers: int, use_multiprocessing: bool, depth: int):
        self.source, self.workers = source, workers
        self.use_multiprocessing, self.depth = use_multiprocessing, depth
        self._executor, self._pid = None, os.getpid()
        self._pending: dict[tuple[int, int], Future] = {}
        self._lock = threading.Lock()

    def get(self, epoch: int, i: int, num_batches: int):
        """Batch `i` of `epoch`; schedules the next `depth` batches."""
        self._own_process()
        try:
            future = self._schedule(epoch, i, num_batches)
            self.source.advise_ahead(epoch, i, 1)
            return future.result()
        except BrokenProcessPool as e:
            self.close()
            raise BrokenProcessPool(
                f"A worker process died while batch {i} of epoch {epoch} was read ({e}). The "
                "next batch asked for starts new worker processes.") from e

    def _schedule(self, epoch: int, i: int, num_batches: int) -> Future:
        with self._lock:
            future = self._pending.pop((epoch, i), None) or self._submit(epoch, i)
            wanted = {(epoch, j) for j in range(i + 1, min(i + 1 + self.depth, num_batches))}
            for key in list(self._pending):
                if key not in wanted:  # another epoch, or skipped: drop it
                    self._pending.pop(key).cancel()
            for key in sorted(wanted - self._pending.keys()):
                self._pending[key] = self._submit(*key)
        return future

    def close(self) -> None:
        """Stops the workers; a later `get` starts new ones."""
        with self._lock:
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None

    def _own_process(self) -> None:
        """In a forked child, forgets the parent's pool: its threads and
        processes belong to the parent."""
        if self._pid != os.getpid():
            self._pid, self._executor, self._pending = os.getpid(), None, {}
            self._lock = threading.Lock()

    def _submit(self, epoch: int, i: int) -> Future:
        if self._executor is None:
            self._executor = self._start()
        if self.use_multiprocessing:
            return self._executor.submit(_read_in_worker, epoch, i)
        return self._executor.submit(self.source.read, epoch, i, 1)

    def _start(self):
        if not self.use_multiprocessing:
            return ThreadPoolExecutor(self.workers, thread_name_prefix="keras_npy")
        return ProcessPoolExecutor(self.workers,
                                   mp_context=multiprocessing.get_context(start_method()),
                                   initializer=_install, initargs=(self.source, os.getpid()))

    def __reduce__(self):  # a copy starts its own workers, lazily
        return (BatchWorkers, (self.source, self.workers, self.use_multiprocessing,
                               self.depth))

    def __del__(self):
        try:
            if self._pid == os.getpid():
                self.close()
        except Exception:  # interpreter shutdown: nothing left to stop
            pass
