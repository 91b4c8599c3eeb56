"""`BlockCache`: a local cache of remote objects' bytes, in fixed-size blocks.

The `cache_dir` of the front ends (see `read.remote`): ranges read from URLs
are served from blocks of `BLOCK_BYTES` kept as files in a local folder, keyed
by `(URL, identity, block number)`, so that a second epoch, or another
dataset of the same objects, makes no request. Past the limit (`cache_bytes`)
the least recently used blocks are deleted.
"""

from __future__ import annotations

import collections
import hashlib
import os
import threading

import numpy as np

#: Bytes of a block (the last block of an object is its remainder).
BLOCK_BYTES = 2**20


class BlockCache:
    """A local cache of objects' bytes in fixed-size blocks, one file per
    block in `directory`, keyed by `(URL, identity, block number)`: a changed
    object has other keys. Past `limit` bytes the least recently used blocks
    are deleted. Safe for threads; processes sharing a folder each keep their
    own count (a block another process wrote is used, and counted, when
    found). The blocks already in the folder are counted when it is opened.

    Args:
        directory: the folder (made if missing).
        limit: the most bytes the blocks may hold.
    """

    def __init__(self, directory: str, limit: int):
        self.directory, self.limit = directory, limit
        os.makedirs(directory, exist_ok=True)
        self._lock = threading.Lock()
        self._blocks: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.nbytes = 0
        names = [e for e in os.scandir(directory) if e.name.endswith(".block")]
        for entry in sorted(names, key=lambda e: e.stat().st_mtime_ns):
            self._blocks[entry.name] = entry.stat().st_size
            self.nbytes += entry.stat().st_size
        self._evict()

    def read(self, fetch, urls, offsets, buffers, identities) -> int:
        """Fills `buffers[k]` with the bytes of `urls[k]` from `offsets[k]`
        (an object of `identities[k]`: `(size, tag)`) out of the blocks:
        missing blocks are fetched with `fetch(urls, offsets, lengths,
        buffers)` (runs of adjacent missing blocks of an object as one range,
        all at once) and stored. Returns the bytes fetched."""
        wanted = {}  # block name -> (url, identity, block number)
        for url, offset, buffer, identity in zip(urls, offsets, buffers, identities):
            for number in self._numbers(offset, len(buffer)):
                wanted[self._name(url, identity, number)] = (url, identity, number)
        blocks = {name: self._get(name) for name in wanted}
        missing = sorted((wanted[n] for n, data in blocks.items() if data is None),
                         key=lambda m: (m[0], m[2]))
        fetched = self._fetch_blocks(fetch, missing, blocks)
        for url, offset, buffer, identity in zip(urls, offsets, buffers, identities):
            self._copy_out(url, identity, offset, buffer, blocks)
        return fetched

    @staticmethod
    def _numbers(offset: int, nbytes: int) -> range:
        if nbytes == 0:
            return range(0)
        return range(offset // BLOCK_BYTES, (offset + nbytes - 1) // BLOCK_BYTES + 1)

    @staticmethod
    def _name(url: str, identity, number: int) -> str:
        key = f"{url}\0{identity[0]}\0{identity[1]}\0{number}".encode()
        return hashlib.blake2b(key, digest_size=16).hexdigest() + ".block"

    def _fetch_blocks(self, fetch, missing: list, blocks: dict) -> int:
        runs = []  # [url, identity, first block, count]
        for url, identity, number in missing:
            last = runs[-1] if runs else None
            if last and last[0] == url and last[2] + last[3] == number:
                last[3] += 1
            else:
                runs.append([url, identity, number, 1])
        if not runs:
            return 0
        urls, offsets, buffers = [], [], []
        for url, identity, first, count in runs:
            start = first * BLOCK_BYTES
            end = min(identity[0], (first + count) * BLOCK_BYTES)
            if end <= start:
                raise ValueError(f"{url}: expected bytes from {start}, found an object of "
                                 f"{identity[0]} bytes.")
            urls.append(url), offsets.append(start), buffers.append(np.empty(end - start, np.uint8))
        fetched = fetch(urls, offsets, [len(b) for b in buffers], buffers)
        for (url, identity, first, count), buffer in zip(runs, buffers):
            for k in range(count):
                data = buffer[k * BLOCK_BYTES:(k + 1) * BLOCK_BYTES].tobytes()
                name = self._name(url, identity, first + k)
                blocks[name] = data
                self._put(name, data)
        return fetched

    def _copy_out(self, url, identity, offset: int, buffer: np.ndarray, blocks: dict) -> None:
        done = 0
        for number in self._numbers(offset, len(buffer)):
            data = blocks[self._name(url, identity, number)]
            start = offset + done - number * BLOCK_BYTES
            take = min(len(buffer) - done, len(data) - start)
            if take <= 0:
                raise ValueError(f"{url}: expected {len(buffer)} bytes from byte {offset}, "
                                 f"found an object of {identity[0]} bytes; the object is "
                                 "shorter than its header says.")
            buffer[done:done + take] = np.frombuffer(data, np.uint8, take, start)
            done += take

    def _get(self, name: str) -> bytes | None:
        try:
            with open(os.path.join(self.directory, name), "rb") as f:
                data = f.read()
        except OSError:
            return None
        with self._lock:
            if name not in self._blocks:  # written by another process
                self._blocks[name] = len(data)
                self.nbytes += len(data)
            self._blocks.move_to_end(name)
        return data

    def _put(self, name: str, data: bytes) -> None:
        path = os.path.join(self.directory, name)
        temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with open(temporary, "wb") as f:
                f.write(data)
            os.replace(temporary, path)  # readers see a whole block or none
        except OSError:  # a full disk costs the cache, not the training run
            try:
                os.remove(temporary)
            except OSError:
                pass
            return
        with self._lock:
            self.nbytes += len(data) - self._blocks.pop(name, 0)
            self._blocks[name] = len(data)
            self._evict()

    def _evict(self) -> None:
        """Deletes least recently used blocks while past the limit (lock held)."""
        while self.nbytes > self.limit and self._blocks:
            name, size = self._blocks.popitem(last=False)
            self.nbytes -= size
            try:
                os.remove(os.path.join(self.directory, name))
            except OSError:
                pass  # deleted by another process
