"""The limits: what the machine does with no library in the way."""

from __future__ import annotations

import os

import numpy as np

from benchmarks.common import Results, open_read_close, write_files, written


def run(results: Results, root: str, size_mib: int, num_files: int) -> None:
    group = results.group(f"limits: memcpy and sequential preadv of {size_mib} MiB, "
                          f"open+read+close of {num_files:,} 1 KiB files (page cache)")
    nbytes = size_mib * 2**20
    source, target = np.ones(nbytes, np.uint8), np.empty(nbytes, np.uint8)
    results.rate(group, "memcpy of a large array", "limit", nbytes / 1e9, "GB/s",
                 lambda: np.copyto(target, source))
    path = os.path.join(root, "limit.bin")
    with open(path, "wb") as f:
        f.write(source.tobytes())
    written()
    chunk = bytearray(2**20)

    def sequential_preadv():
        fd = os.open(path, os.O_RDONLY)
        try:
            for offset in range(0, nbytes, len(chunk)):
                os.preadv(fd, [chunk], offset)
        finally:
            os.close(fd)

    results.rate(group, "sequential os.preadv, 1 MiB at a time", "limit", nbytes / 1e9, "GB/s",
                 sequential_preadv)
    folder = write_files(os.path.join(root, "limit_files"), num_files, 1024)
    paths = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in sorted(fs)]
    results.rate(group, "open+read+close loop over 1 KiB files", "limit", len(paths),
                 "files/s", lambda: [open_read_close(p) for p in paths])
