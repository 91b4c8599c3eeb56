"""Rows over S3: moto's S3 server on loopback, reached through s3fs, batch 256 of
1 KiB rows. NpyDataset's batches against the limit of the same client library:
the same byte ranges, fetched as raw ranged GETs, 64 in flight (`cat_ranges`),
data dropped. And the bytes the requests ask for against the bytes the batches
hold (counted from each GET's Range header, by botocore's `before-send` event).

What this measures is the client's overhead per request and per byte over a
server that answers at once (loopback, Python's moto): the request count and
the planning, not a network. A real S3 adds latency per request, which the
same requests in flight hide in both columns alike.
"""

from __future__ import annotations

import io
import logging
import os

import numpy as np

from benchmarks.common import ROW, Results, each

BATCH = 256
#: Batches timed per pass: a shuffled batch of 1 KiB rows is ~250 requests, and
#: moto answers a few hundred a second.
MAX_BATCHES = 16
BUCKET = "keras-npy-bench"


def run(results: Results, root: str, rows: int) -> None:
    server, options = _server()
    try:
        url = _upload(options, rows)
        for shuffle in (False, True):
            _group(results, url, options, rows, shuffle)
        results.finish()  # while the server is up
    finally:
        server.stop()


def _server():
    from moto.server import ThreadedMotoServer

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        os.environ[key] = "testing"  # dummy: nothing leaves 127.0.0.1
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    return server, {"key": "testing", "secret": "testing",
                    "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}


def _upload(options: dict, rows: int) -> str:
    import boto3

    client = boto3.client("s3", endpoint_url=options["client_kwargs"]["endpoint_url"],
                          region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    array = np.random.default_rng(0).normal(size=(rows, ROW)).astype("float32")
    buffer = io.BytesIO()
    np.save(buffer, array)
    client.put_object(Bucket=BUCKET, Key="rows.npy", Body=buffer.getvalue())
    return f"s3://{BUCKET}/rows.npy"


class _Counter:
    """Bytes asked for by ranged GETs of an s3fs filesystem."""

    def __init__(self, fs):
        self.fs, self.nbytes, self.requests = fs, 0, 0
        fs.s3.meta.events.register("before-send.s3", self._seen)

    def _seen(self, request, **kwargs):
        header = request.headers.get("Range")
        if request.method == "GET" and header is not None:
            header = header.decode() if isinstance(header, bytes) else header
            first, last = header.split("=")[1].split("-")
            self.nbytes += int(last) - int(first) + 1
            self.requests += 1

    def close(self):
        self.fs.s3.meta.events.unregister("before-send.s3", self._seen)


def _group(results: Results, url: str, options: dict, rows: int, shuffle: bool) -> None:
    import fsspec

    from keras_npy import NpyDataset
    from keras_npy.read import plan, remote

    what = "global shuffle" if shuffle else "sequential"
    group = results.group(f"remote rows, {what}, batch {BATCH}: ({rows:,}, {ROW}) float32 on "
                          "moto S3 (loopback) via s3fs; ratio to raw ranged GETs of the same "
                          "bytes, 64 in flight", rounds=3)
    ds = NpyDataset(url, batch_size=BATCH, drop_remainder=True, shuffle=shuffle, seed=0,
                    storage_options=options, verbose=False)
    count = min(len(ds), MAX_BATCHES)
    samples = count * BATCH
    reader = ds._source.readers["x"]
    fs = fsspec.filesystem("s3", **options)  # the instance the dataset reads through
    fs.connect()
    path, first = fs._strip_protocol(url), int(reader.index.data_offsets[0])
    ranges = []  # the ranges NpyDataset asks for, batch by batch
    for i in range(count):
        starts, ends = [], []
        for part in plan.plan_rows(reader._rows.starts, ds._source.order.batch(0, i)):
            offsets, lengths = remote.row_ranges(part, reader.index.row_nbytes)
            starts += (first + offsets).tolist()
            ends += (first + offsets + lengths).tolist()
        ranges.append((starts, ends))

    def raw_gets():
        for starts, ends in ranges:
            fs.cat_ranges([path] * len(starts), starts, ends, batch_size=64)

    results.rate(group, "raw ranged GETs of the same bytes, 64 in flight (s3fs cat_ranges)",
                 "limit", samples, "samples/s", raw_gets, base=True)
    results.rate(group, f"NpyDataset ds[i] over s3://, shuffle={shuffle}", "keras_npy",
                 samples, "samples/s", lambda: each(ds.__getitem__, range(count)))
    results.finish()
    counter = _Counter(fs)
    try:
        each(ds.__getitem__, range(count))
    finally:
        counter.close()
    held = samples * ROW * 4
    results.value(group, "bytes requested / bytes the batches hold", "keras_npy",
                  counter.nbytes / held, "ratio")
    results.value(group, "ranged GETs per batch", "keras_npy", counter.requests / count,
                  "requests")
