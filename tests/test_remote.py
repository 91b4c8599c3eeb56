"""Reading `.npy` objects over a real S3 API: moto's server on loopback,
reached by s3fs (fsspec) with dummy credentials; nothing leaves 127.0.0.1."""

import io
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

import keras_npy  # noqa: E402
from keras_npy.read import remote  # noqa: E402

BUCKET = "keras-npy-test"


@pytest.fixture(scope="module")
def s3():
    """`(endpoint, storage_options, boto3 client)` of a moto S3 server on
    127.0.0.1 with one bucket; `AWS_*` set to dummy values meanwhile."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                             "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN",
                                             "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1", AWS_SESSION_TOKEN="testing",
                      AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    options = {"key": "testing", "secret": "testing",
               "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    try:
        yield endpoint, options, client
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _put(client, key, array=None, body=None):
    if body is None:
        buffer = io.BytesIO()
        np.save(buffer, array)
        body = buffer.getvalue()
    client.put_object(Bucket=BUCKET, Key=key, Body=body)
    return f"s3://{BUCKET}/{key}"


def _save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, array)


@pytest.fixture(scope="module")
def data(s3, tmp_path_factory):
    """The same data set in local files and in the bucket: a rows file and
    its labels, per-sample files in class folders, variable-length samples."""
    _, _, client = s3
    local = str(tmp_path_factory.mktemp("local"))
    rng = np.random.default_rng(0)
    arrays = {"rows/x.npy": rng.normal(size=(300, 6)).astype("float32"),
              "rows/y.npy": rng.integers(0, 3, 300)}
    for k in range(24):
        arrays[f"files/{'cat' if k % 3 else 'dog'}/{k:03d}.npy"] = rng.normal(
            size=(5,)).astype("float32")
        arrays[f"seq/{k:03d}.npy"] = rng.integers(0, 99, (int(rng.integers(1, 9)), 2)).astype(
            ">i4")  # not native: converted on the way
    for key, array in arrays.items():
        _save(os.path.join(local, key), array)
        _put(client, key, array)
    return local, f"s3://{BUCKET}"


class Requests:
    """Counts the requests an s3fs filesystem sends (botocore's `before-send`
    event), and the bytes of the ranged GETs."""

    def __init__(self, options):
        import fsspec

        self.fs = fsspec.filesystem("s3", **options)  # the instance the store gets
        self.fs.connect()
        self.fs.s3.meta.events.register("before-send.s3", self._seen)
        self.clear()

    def _seen(self, request, **kwargs):
        ranged = request.headers.get("Range")
        self.sent.append((request.method, request.url,
                          ranged.decode() if isinstance(ranged, bytes) else ranged))

    def clear(self):
        self.sent = []

    def gets(self):
        return [s for s in self.sent if s[0] == "GET" and s[2] is not None]

    def ranged_bytes(self):
        total = 0
        for _, _, header in self.gets():
            first, last = header.split("=")[1].split("-")
            total += int(last) - int(first) + 1
        return total

    def close(self):
        self.fs.s3.meta.events.unregister("before-send.s3", self._seen)


@pytest.fixture
def requests(s3):
    counter = Requests(s3[1])
    yield counter
    counter.close()


def _batches(ds):
    return [ds[i] for i in range(len(ds))]


def _assert_same(found, expected):
    assert len(found) == len(expected)
    for a, b in zip(found, expected):
        a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
        for u, v in zip(a, b):
            assert u.dtype == v.dtype and u.shape == v.shape
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("shuffle", [False, True])
def test_rows_object_gives_the_batches_of_the_local_file(s3, data, shuffle):
    local, url = data
    kwargs = dict(batch_size=32, shuffle=shuffle, seed=4)
    ds = keras_npy.NpyDataset(f"{url}/rows/x.npy", f"{url}/rows/y.npy",
                              storage_options=s3[1], **kwargs)
    expected = keras_npy.NpyDataset(f"{local}/rows/x.npy", f"{local}/rows/y.npy", **kwargs)
    assert ds.file_paths == [f"{url}/rows/x.npy"] and len(ds) == 10
    for epoch in range(2):
        ds.on_epoch_begin() if epoch else None
        expected.on_epoch_begin() if epoch else None
        _assert_same(_batches(ds), _batches(expected))


def test_prefix_of_class_folders_gives_the_batches_of_the_local_folder(s3, data):
    local, url = data
    kwargs = dict(y="inferred", batch_size=5, shuffle=True, seed=1)
    ds = keras_npy.NpyDataset(f"{url}/files", storage_options=s3[1], **kwargs)
    expected = keras_npy.NpyDataset(f"{local}/files", **kwargs)
    assert ds.class_names == ["cat", "dog"] == expected.class_names
    assert ds.file_paths == [p.replace(local, url) for p in expected.file_paths]
    _assert_same(_batches(ds), _batches(expected))


def test_glob_and_list_of_variable_length_objects_are_padded(s3, data):
    local, url = data
    kwargs = dict(batch_size=7, pad_to="longest", pad_value=-1, dtype="int64")
    ds = keras_npy.NpyDataset(f"{url}/seq/*.npy", storage_options=s3[1], **kwargs)
    expected = keras_npy.NpyDataset(f"{local}/seq/*.npy", **kwargs)
    _assert_same(_batches(ds), _batches(expected))
    some = [f"{url}/seq/003.npy", f"{url}/seq/001.npy"]
    listed = keras_npy.NpyDataset(some, storage_options=s3[1], batch_size=2, pad_to=10)
    x = listed[0]
    np.testing.assert_array_equal(x[0, :len(np.load(f"{local}/seq/003.npy"))],
                                  np.load(f"{local}/seq/003.npy"))
    assert x.shape == (2, 10, 2) and x.dtype == np.int32


def test_npy_dataset_and_directory_function_give_the_same_batches(s3, data):
    local, url = data
    kwargs = dict(batch_size=64, shuffle=True, seed=7)
    ds = keras_npy.npy_dataset(f"{url}/rows/x.npy", f"{url}/rows/y.npy",
                               storage_options=s3[1], **kwargs)
    expected = keras_npy.NpyDataset(f"{local}/rows/x.npy", f"{local}/rows/y.npy", **kwargs)
    _assert_same([tuple(t.numpy() for t in b) for b in ds], _batches(expected))
    folder = keras_npy.npy_dataset_from_directory(
        f"{url}/files", batch_size=4, seed=3, storage_options=s3[1], verbose=False)
    local_folder = keras_npy.npy_dataset_from_directory(
        f"{local}/files", batch_size=4, seed=3, verbose=False)
    _assert_same([tuple(t.numpy() for t in b) for b in folder],
                 [tuple(t.numpy() for t in b) for b in local_folder])


def test_fit_reads_batches_from_the_bucket(s3, data):
    import keras

    url = data[1]
    ds = keras_npy.NpyDataset(f"{url}/rows/x.npy", f"{url}/rows/y.npy",
                              storage_options=s3[1], batch_size=50, shuffle=True, seed=0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(ds, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    assert all(np.isfinite(history.history["loss"]))


def test_normalization_layer_of_objects_is_that_of_the_local_files(s3, data):
    local, url = data
    remote_layer = keras_npy.normalization_layer(f"{url}/rows/x.npy", storage_options=s3[1],
                                                 verbose=False)
    local_layer = keras_npy.normalization_layer(f"{local}/rows/x.npy", verbose=False)
    np.testing.assert_array_equal(remote_layer.mean, local_layer.mean)
    np.testing.assert_array_equal(remote_layer.variance, local_layer.variance)


def test_a_header_costs_one_ranged_request_per_object(s3, data, requests):
    url = data[1]
    keras_npy.NpyDataset(f"{url}/seq", storage_options=s3[1], pad_to="longest")
    gets = requests.gets()
    # Each object is smaller than the first request's 4096 bytes: it reads it whole.
    sizes = {f"{k:03d}.npy": os.path.getsize(f"{data[0]}/seq/{k:03d}.npy") for k in range(24)}
    assert sorted((g[1].rsplit("/", 1)[1], g[2]) for g in gets) == [
        (name, f"bytes=0-{size - 1}") for name, size in sorted(sizes.items())]
    # One listing, no request per object but its one ranged GET.
    assert len(requests.sent) == len(gets) + 1


def test_batch_rows_are_coalesced_into_one_request_per_run(s3, data, requests):
    from keras_npy.read import plan

    url = data[1]
    ds = keras_npy.NpyDataset(f"{url}/rows/x.npy", storage_options=s3[1], batch_size=100)
    requests.clear()
    ds[1]
    assert [g[2] for g in requests.gets()] == [f"bytes={128 + 100 * 24}-{128 + 200 * 24 - 1}"]
    # A shuffled batch: its rows sorted, adjacent ones merged, and the smallest
    # gaps within a tenth of the batch's bytes.
    shuffled = keras_npy.NpyDataset(f"{url}/rows/x.npy", storage_options=s3[1],
                                    batch_size=100, shuffle=True, seed=0)
    shuffled[0]  # the object's identity, checked once per process
    local = np.load(f"{data[0]}/rows/x.npy")
    for i in range(len(shuffled)):
        requests.clear()
        x = shuffled[i]
        ids = shuffled._source.order.batch(0, i)
        np.testing.assert_array_equal(x, local[ids])
        runs = len(plan.adjacent_runs(ids)[1])
        assert 1 <= len(requests.gets()) <= runs
        assert requests.ranged_bytes() <= 1.1 * x.nbytes


def test_transfer_counts_only_the_batches_bytes_for_scattered_rows(s3, data, requests):
    from keras_npy.read import plan

    _, _, client = s3
    rng = np.random.default_rng(1)
    big = rng.normal(size=(4000, 256)).astype("float32")  # 1 KiB rows
    url = _put(client, "big/x.npy", big)
    ds = keras_npy.NpyDataset(url, storage_options=s3[1], batch_size=16, shuffle=True,
                              seed=2)
    requests.clear()
    x = ds[0]
    ids = ds._source.order.batch(0, 0)
    np.testing.assert_array_equal(x, big[ids])
    assert len(requests.gets()) <= len(plan.adjacent_runs(ids)[1])
    assert requests.ranged_bytes() <= 1.1 * x.nbytes


def test_block_cache_stays_under_its_limit_and_serves_a_second_pass(s3, data, requests,
                                                                   tmp_path):
    _, _, client = s3
    array = np.arange(3 * 2**19, dtype="float32").reshape(-1, 256)  # 6 MiB: 6 blocks and more
    url = _put(client, "cached/x.npy", array)
    limit = 8 * 2**20
    ds = keras_npy.NpyDataset(url, storage_options=s3[1], batch_size=1024,
                              cache_dir=str(tmp_path / "cache"), cache_bytes=limit)
    first = _batches(ds)
    blocks = sum(e.stat().st_size for e in os.scandir(tmp_path / "cache"))
    assert 0 < blocks <= limit
    requests.clear()
    second = _batches(ds)
    assert requests.gets() == []
    _assert_same(second, first)
    np.testing.assert_array_equal(np.concatenate(second), array)
    small = keras_npy.NpyDataset(url, storage_options=s3[1], batch_size=1024,
                                 cache_dir=str(tmp_path / "small"), cache_bytes=3 * 2**20)
    np.testing.assert_array_equal(np.concatenate(_batches(small)), array)
    assert sum(e.stat().st_size for e in os.scandir(tmp_path / "small")) <= 3 * 2**20


def test_block_cache_serves_per_sample_objects(s3, data, requests, tmp_path):
    local, url = data
    kwargs = dict(y="inferred", batch_size=5, shuffle=True, seed=2)
    ds = keras_npy.NpyDataset(f"{url}/files", storage_options=s3[1],
                              cache_dir=str(tmp_path / "cache"), **kwargs)
    expected = _batches(keras_npy.NpyDataset(f"{local}/files", **kwargs))
    _assert_same(_batches(ds), expected)
    requests.clear()
    _assert_same(_batches(ds), expected)
    assert requests.gets() == []
    assert len(os.listdir(tmp_path / "cache")) == 24  # one block per object


def test_range_file_reads_exact_ranges(s3, data):
    url = f"{data[1]}/rows/x.npy"
    file = remote.RangeFile(url, remote.Store(s3[1]))
    local = open(f"{data[0]}/rows/x.npy", "rb").read()
    assert file.size == len(local) and file.url == url
    assert file.read(100, 50) == local[100:150]
    with pytest.raises(ValueError) as e:
        file.read(file.size - 10, 20)
    assert str(e.value) == (
        f"{url}: expected 20 bytes from byte {file.size - 10}, found 10; the object is "
        "shorter than its header says, or changed after the dataset was built.")


def test_errors_name_the_url(s3, data):
    _, options, client = s3
    url = data[1]
    empty = _put(client, "empty/x.npy", body=b"")
    with pytest.raises(ValueError) as e:
        keras_npy.NpyDataset(empty, storage_options=options)
    assert str(e.value) == (f"{empty}: expected a .npy file starting with the magic string "
                            "b'\\x93NUMPY', found b''.")
    text = _put(client, "text/x.npy", body=b"not an array at all")
    with pytest.raises(ValueError) as e:
        keras_npy.NpyDataset(text, storage_options=options)
    assert str(e.value) == (f"{text}: expected a .npy file starting with the magic string "
                            "b'\\x93NUMPY', found b'not an'.")
    with pytest.raises(ValueError) as e:
        keras_npy.NpyDataset("s3://no-such-bucket-here/x.npy", storage_options=options)
    assert str(e.value) == ("s3://no-such-bucket-here/x.npy: cannot read the object: not found "
                            "(The specified bucket does not exist).")
    with pytest.raises(ValueError) as e:
        keras_npy.NpyDataset(f"{url}/rows/missing.npy", storage_options=options)
    assert str(e.value) == ("`x` must name existing files, directories or globs; "
                            f"'{url}/rows/missing.npy' does not exist.")
    with pytest.raises(ValueError) as e:
        keras_npy.NpyDataset(f"{url}/nothing-here/*.npy", storage_options=options)
    assert str(e.value) == f"`x` names '{url}/nothing-here/*.npy', which has no files."


def test_an_object_shorter_than_its_header_says(s3, data):
    _, options, client = s3
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((10, 4), "float32"))
    url = _put(client, "short/x.npy", body=buffer.getvalue()[:-16])
    with pytest.raises(ValueError) as e:
        keras_npy.NpyDataset(url, storage_options=options)
    assert str(e.value) == (f"{url}: expected 160 data bytes for shape (10, 4) of dtype "
                            "float32, found 144; the file is truncated.")


def test_an_object_changed_after_indexing(s3, data):
    _, options, client = s3
    url = _put(client, "changed/x.npy", np.zeros((10, 4), "float32"))
    ds = keras_npy.NpyDataset(url, storage_options=options, batch_size=5)
    _put(client, "changed/x.npy", np.ones((10, 4), "float32"))  # same size, new ETag
    with pytest.raises(ValueError) as e:
        ds[0]
    assert str(e.value).startswith(
        f"{url}: expected the object as indexed (288 bytes), found 288 bytes with ETag or "
        "version '\"")
    assert str(e.value).endswith(
        "' that differ; the object changed after the dataset was built.")
    url = _put(client, "changed/000.npy", np.zeros((4,), "float32"))
    files = keras_npy.NpyDataset([url], layout="files", storage_options=options, batch_size=1)
    _put(client, "changed/000.npy", np.zeros((5,), "float32"))
    with pytest.raises(ValueError) as e:
        files[0]
    assert str(e.value) == (f"{url}: expected 144 bytes with the header read when the dataset "
                            "was built, found more bytes; the object changed after the dataset "
                            "was built.")


def test_a_denied_request_names_the_url(s3, data):
    _, options, client = s3
    denied = "keras-npy-denied"
    client.create_bucket(Bucket=denied)
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((4, 2), "float32"))
    client.put_object(Bucket=denied, Key="x.npy", Body=buffer.getvalue())
    client.put_bucket_policy(Bucket=denied, Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject",
                       "Resource": f"arn:aws:s3:::{denied}/*"}]}))
    with pytest.raises(ValueError) as e:
        keras_npy.NpyDataset(f"s3://{denied}/x.npy", storage_options=options)
    assert str(e.value) == (f"s3://{denied}/x.npy: cannot read the object: access denied "
                            "(Forbidden).")


def test_storage_arguments_are_checked_at_the_door(s3, data):
    url = f"{data[1]}/rows/x.npy"
    with pytest.raises(TypeError) as e:
        keras_npy.NpyDataset(url, storage_options="anon")
    assert str(e.value) == (
        "`storage_options` must be None or a dict of the filesystem's keyword arguments (as "
        "`fsspec.filesystem` takes them). Received: storage_options='anon'")
    with pytest.raises(ValueError) as e:
        keras_npy.npy_dataset(url, storage_options=s3[1], cache_bytes=10)
    assert str(e.value) == ("`cache_bytes` limits the block cache in `cache_dir`; pass "
                            "`cache_dir` too. Received: cache_bytes=10, cache_dir=None")
    with pytest.raises(ValueError) as e:
        keras_npy.NpyDataset([url, data[0] + "/rows/x.npy"], storage_options=s3[1])
    assert str(e.value) == ("`x` must name local paths or URLs, not both. Received: "
                            f"x={[url, data[0] + '/rows/x.npy']!r}")


def test_crops_and_windows_over_urls_are_refused(s3, data):
    url = f"{data[1]}/rows/x.npy"
    with pytest.raises(ValueError) as e:
        keras_npy.NpyDataset(url, storage_options=s3[1], crop_to=2)
    assert str(e.value) == (f"{url}: `crop_to` is not supported for data read from URLs. "
                            "Received: crop_to=2")
    with pytest.raises(ValueError) as e:
        keras_npy.npy_timeseries_dataset(url, None, sequence_length=4)
    assert str(e.value) == (f"`data` names URLs, which windows are not read from: copy the "
                            f"series to local files first. Received: data={url!r}")


def test_worker_processes_open_their_own_connections(s3, data):
    local, url = data
    kwargs = dict(batch_size=32, shuffle=True, seed=5)
    ds = keras_npy.NpyDataset(f"{url}/rows/x.npy", f"{url}/rows/y.npy",
                              storage_options=s3[1], workers=2, use_multiprocessing=True,
                              **kwargs)
    expected = keras_npy.NpyDataset(f"{local}/rows/x.npy", f"{local}/rows/y.npy", **kwargs)
    import pickle

    store = pickle.loads(pickle.dumps(ds._source.readers["x"].index.store))
    assert store._filesystems == {} and store.storage_options == s3[1]
    _assert_same(_batches(ds), _batches(expected))  # read by the worker processes
    import keras

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(ds, epochs=2, verbose=0)
    assert all(np.isfinite(history.history["loss"]))


def test_a_filesystem_without_async_reads_through_threads(data):
    import fsspec

    local = data[0]
    memory = fsspec.filesystem("memory")
    for key in ("rows/x.npy", "rows/y.npy", "files/cat/001.npy", "files/dog/000.npy"):
        memory.pipe(f"/keras-npy-sync/{key}", open(f"{local}/{key}", "rb").read())
    ds = keras_npy.NpyDataset("memory://keras-npy-sync/rows/x.npy",
                              "memory://keras-npy-sync/rows/y.npy", batch_size=64, shuffle=True,
                              seed=3)
    expected = keras_npy.NpyDataset(f"{local}/rows/x.npy", f"{local}/rows/y.npy",
                                    batch_size=64, shuffle=True, seed=3)
    _assert_same(_batches(ds), _batches(expected))
    files = keras_npy.NpyDataset("memory://keras-npy-sync/files", y="inferred", batch_size=2)
    x, y = files[0]
    np.testing.assert_array_equal(x, np.stack([np.load(f"{local}/files/cat/001.npy"),
                                               np.load(f"{local}/files/dog/000.npy")]))
    assert y.tolist() == [0, 1] and files.class_names == ["cat", "dog"]


def test_a_forked_child_reads_over_connections_of_its_own(s3, data):
    import signal
    import time

    local, url = data
    x = np.load(f"{local}/rows/x.npy")
    ds = keras_npy.NpyDataset(f"{url}/rows/x.npy", storage_options=s3[1], batch_size=10)
    np.testing.assert_array_equal(ds[0], x[:10])  # the parent's filesystem and event loop
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            ok = np.array_equal(ds[7], x[70:80])
        finally:
            os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung for 60 s")
    assert status == 0
    np.testing.assert_array_equal(ds[1], x[10:20])  # the parent's go on


def test_import_keras_npy_does_not_import_fsspec():
    code = ("import sys, keras_npy; keras_npy.NpyDataset; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fsspec', 's3fs')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(keras_npy.__file__)))
    assert out.stdout.strip() == "[]"


def test_a_url_without_fsspec_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "fsspec", None)  # import fsspec fails
    with pytest.raises(ImportError) as e:
        keras_npy.NpyDataset("s3://bucket/x.npy")
    assert str(e.value) == ('Reading URLs needs fsspec (and s3fs for s3://): '
                            'pip install "keras-npy[s3]"')


def _put_archive(client, key, save, **arrays):
    buffer = io.BytesIO()
    save(buffer, **arrays)
    client.put_object(Bucket=BUCKET, Key=key, Body=buffer.getvalue())
    return f"s3://{BUCKET}/{key}"


def test_npz_members_give_the_batches_of_the_local_archive(s3, data, tmp_path):
    _, options, client = s3
    rng = np.random.default_rng(5)
    arrays = {"x": rng.normal(size=(200, 6)).astype("float32"), "y": rng.integers(0, 3, 200)}
    url = _put_archive(client, "npz/d.npz", np.savez, **arrays)
    np.savez(tmp_path / "d.npz", **arrays)
    local = str(tmp_path / "d.npz")
    common = dict(batch_size=32, shuffle=True, seed=4)
    ours = keras_npy.NpyDataset(f"{url}::x", y=f"{url}::y", storage_options=options, **common)
    theirs = keras_npy.NpyDataset(f"{local}::x", y=f"{local}::y", **common)
    assert ours.file_paths == [f"{url}::x"]
    _assert_same(_batches(ours), _batches(theirs))
    tf_batches = list(keras_npy.npy_dataset(f"{url}::x", y=f"{url}::y",
                                            storage_options=options, **common))
    for (x, y), (u, v) in zip(tf_batches, [theirs[i] for i in range(len(theirs))]):
        np.testing.assert_array_equal(x, u)
        np.testing.assert_array_equal(y, v)


def test_per_sample_npz_objects_stored_and_deflated(s3, data, tmp_path):
    _, options, client = s3
    rng = np.random.default_rng(6)
    for k in range(10):
        sample = rng.normal(size=(2 + k % 4, 3)).astype("float32")
        save = np.savez_compressed if k % 2 else np.savez
        _put_archive(client, f"npzfiles/{'a' if k < 5 else 'b'}/{k}.npz", save, x=sample,
                     other=np.zeros(2))
        save(tmp_path / f"{k}.npz", x=sample, other=np.zeros(2))
        os.makedirs(tmp_path / ('a' if k < 5 else 'b'), exist_ok=True)
        os.replace(tmp_path / f"{k}.npz", tmp_path / ('a' if k < 5 else 'b') / f"{k}.npz")
    common = dict(y="inferred", batch_size=4, pad_to="longest", shuffle=True, seed=1)
    ours = keras_npy.NpyDataset(f"s3://{BUCKET}/npzfiles/*/*.npz::x", storage_options=options,
                                **common)
    theirs = keras_npy.NpyDataset(f"{tmp_path}/*/*.npz::x", **common)
    assert ours.class_names == ["a", "b"]
    _assert_same(_batches(ours), _batches(theirs))


def test_a_hostile_npz_object_is_named(s3, data):
    _, options, client = s3
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros(3))
    url = f"s3://{BUCKET}/npz/cut.npz"
    client.put_object(Bucket=BUCKET, Key="npz/cut.npz", Body=buffer.getvalue()[:-10])
    with pytest.raises(ValueError) as e:
        keras_npy.NpyDataset(f"{url}::x", storage_options=options)
    assert str(e.value) == (f"{url}: expected a zip archive (.npz) ending with its central "
                            "directory, found no end record; the file is not a zip archive "
                            "or is truncated.")
