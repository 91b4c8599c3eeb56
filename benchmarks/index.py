"""Index build: walking a tree and reading every header, against the floor of any
reader that touches every file (open, read the first 256 bytes, close)."""

from __future__ import annotations

import os

from benchmarks.common import Results, write_files


def run(results: Results, root: str, num_files: int) -> None:
    from keras_npy import build_index

    folder = write_files(os.path.join(root, "index"), num_files, 1024, num_classes=10)
    paths = list(build_index(folder, y="inferred", verbose=False).x.paths)

    def open_read_close():
        for path in paths:
            with open(path, "rb", buffering=0) as f:
                f.read(256)

    group = results.group(f"index build: {num_files:,} files in 10 class folders; ratio to an "
                          "open+read+close(256 bytes) loop over the same files")
    results.rate(group, "open + read 256 bytes + close loop", "limit", num_files, "files/s",
                 open_read_close, base=True)
    results.rate(group, "build_index (walk, headers, inferred labels)", "keras_npy", num_files,
                 "files/s", lambda: build_index(folder, y="inferred", verbose=False))
