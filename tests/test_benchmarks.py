"""The benchmark suite runs end to end at a tiny size and writes what the README shows.
Nothing here asserts a speed: figures are checked for presence and consistency only."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_suite_writes_every_group_and_the_plot(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--size", "0.2",
                           "--memory-gib", "0.1", "--scale-max", "1000", "--json", str(out),
                           "--temp-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    groups = [f["group"].split(":")[0] for f in report["figures"]]
    for expected in ["limits", "index build", "rows, sequential, batch 256",
                     "rows, sequential, batch 1024", "rows, global shuffle, batch 256",
                     "files of 1 KiB, fixed length", "files of 12 KiB, fixed length",
                     "files of 1 KiB, variable length, padded", "cold rows, sequential, batch 256",
                     "cold rows, global shuffle, batch 256", "cold rows, block shuffle, batch 256",
                     "cold files, shuffled", "cold model.fit", "cold memory", "model.fit",
                     "sequences (tensorflow)", "sequences (jax)", "sequences (torch)",
                     "memory", "scale", "windows, memory", "windows, warm, batch 128, length 120",
                     "windows, cold, stride 120", "windows, cold, stride 1",
                     "crops, cold, per-sample files", "crops, cold, rows file",
                     "npz rows, warm, sequential, batch 256", "npz rows, cold, global shuffle, "
                     "batch 256", "npz files, warm, batch 256",
                     "pack, cold, shuffled, fixed length",
                     "pack, cold, shuffled, variable length",
                     "remote rows, sequential, batch 256",
                     "remote rows, global shuffle, batch 256"]:
        assert expected in groups, expected
    names = {f["name"] for f in report["figures"]}
    assert {"NpyDataset ds[i]", "npy_dataset, in a tf.function", "npy_dataset",
            "list_files + numpy_function(np.load), parallel + padded_batch",
            "tf.data floor: a batch made in the graph, no read",
            "PyDataset bound: one constant batch, no read",
            "NpyDataset's batches through Keras' PyDataset path",
            "NpyDataset, sequential, 256 MiB files: RssFile (mapped page cache)",
            "cold random 1 KiB preads, 64 threads", "NpyDataset ds[i], shuffle=\"block\"",
            "block shuffle: pairs of a batch from one block of 1024 rows",
            "NpyDataset, block shuffle: RssAnon growth",
            "os.open + os.readv + os.close loop, one buffer",
            "torch DataLoader over a memmap, index-array sampler",
            "Grain MapDataset over a memmap source",
            "NpyDataset ds[i], 2 worker processes"} <= names
    for figure in report["figures"]:
        assert figure["low"] <= figure["median"] <= figure["high"], figure
        if figure["kind"] != "limit" and figure["unit"].endswith("/s") and (
                not figure["group"].startswith("limits")):
            assert figure["ratio"] is not None and figure["ratio"] > 0, figure
    assert "| group | kind | what | median | [min-max] | vs base |" in done.stdout
    png = tmp_path / "results.png"
    plotted = subprocess.run([sys.executable, "-m", "benchmarks.plot", str(out), str(png)],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert plotted.returncode == 0, plotted.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
