"""The read stage: one batch's samples in, one array out, at the disk's pace.

- `engine`: `BatchReader.read(ids)`, the one entry, and `prefetch(ids)`.
- `plan`: which rows of which files go to which slots, and which bytes.
- `windows`: windows of series (`npy_timeseries_dataset`), one copy each.
- `regions`: crops: which region of each sample, and which bytes that is.
- `local`: `preadv` that names the file, and hints to the kernel.
- `remote`: ranged reads of fsspec URLs (`s3://`, ...), many in flight.
- `cache`: a local block cache of what `remote` reads (`cache_dir`).
- `handles`: open files and memory maps of rows files, per process.
- `guard`: memory maps whose reads cannot kill the process.
- `buffers`: batch arrays reused once nothing holds them.
- `copies`: large copies in two halves, on two threads.
- `padding`: samples of different shapes brought to one shape per batch.
- `prefetch`: the read-ahead window over the batches that come next.
"""

from keras_npy.read.engine import BatchReader
from keras_npy.read.padding import Padding
from keras_npy.read.prefetch import ReadAhead

__all__ = ["BatchReader", "Padding", "ReadAhead"]
