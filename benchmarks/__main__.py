"""keras_npy benchmarks: the limits, the recipes people use, and keras_npy, in one run.

    python -m benchmarks                 # full: ~20 minutes, ~14 GB of temporary files
    python -m benchmarks --quick         # a few minutes
    python -m benchmarks.plot results.json results.png

Every figure is measured from the page cache (each reader makes one untimed pass first),
but those of the cold groups, whose every pass starts with the files it reads evicted
(posix_fadvise DONTNEED; the system's caches are never dropped); each is the median over
--repeats passes with [min-max]; a group's figures are timed in rounds
(each once per round, after a pause) and divided by its base (the first "limit" of the
group) round by round: see `common.Results`. Each group runs in a new
Python process (what one group leaves behind, threads, heap or files, does not slow the
next; --one-process to run them all in this one). Results print group by group, then as
one table, and are written as JSON (--json).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from benchmarks import (cold, common, crops, files, fit, index, limits, memory, npz, pack,
                        remote, resume, rows, scale, sequences, windows)


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    chosen = [g for g in GROUPS if g in set(args.only.split(","))] if args.only else GROUPS
    if not args.one_process and (len(chosen) > 1 or len(_backends(chosen[0])) > 1):
        return _each_group_alone(args, chosen)
    quick = args.quick
    size = args.size * (0.125 if quick else 1.0)
    results = common.Results(1 if quick else args.repeats)
    tf = None if args.no_tf else _tensorflow()
    started = time.perf_counter()
    scaling = None
    with tempfile.TemporaryDirectory(dir=args.temp_dir) as root:
        num_files = max(500, int(20_000 * size))
        num_rows = max(8192, int(262_144 * size))
        big_rows = max(8192, int(2**20 * size) // 1024 * 1024)  # 1 GiB of 1 KiB rows
        if "limits" in chosen:
            limits.run(results, root, max(16, int(256 * size)), num_files)
        if "index" in chosen:
            index.run(results, root, num_files * 5)
            index.simulated(results, root, max(10**4, int(10**7 * size)))
        if "rows" in chosen:
            rows.run(results, root, big_rows, tf)
        if "files" in chosen:
            for file_size, vary in ((1024, False), (12 * 1024, False), (1024, True)):
                files.run(results, root, num_files, file_size, vary, tf,
                          with_workers=file_size == 1024 and not vary)
        elif "memory" in chosen:  # it measures the index of the 1 KiB files
            common.write_files(os.path.join(root, "files_1024_False"), num_files, 1024)
        if "cold" in chosen:
            cold.run(results, root, big_rows, max(16, int(256 * size)), num_files, tf)
        if "fit" in chosen:
            fit.run(results, root, num_rows, tf)
        if "sequences" in chosen:
            sequences.run(results, root, max(sequences.BATCH, int(512 * size)))
        if "memory" in chosen:
            memory.run(results, root, args.memory_gib or (0.5 if quick else 5.0),
                       os.path.join(root, "files_1024_False"))
        if "scale" in chosen:
            scaling = scale.run(results, root,
                                args.scale_max or (10_000 if quick else 1_000_000))
        if "resume" in chosen:
            resume.run(results, root, 10_000 if quick else 1_000_000)
        if "windows" in chosen:  # a (10^6, 14) float32 series
            windows.run(results, root, max(8192, int(10**6 * size)), tf)
        if "crops" in chosen:  # samples of 4 MiB, as files and as one rows file
            crops.run(results, root, max(2 * crops.BATCH, int(192 * size)))
        if "npz" in chosen:  # 256 MiB of 1 KiB rows, in an .npz and an .npy
            npz.run(results, root, num_rows, num_files // 4)
        if "pack" in chosen:  # 1 KiB per-sample files against their pack, cold
            pack.run(results, root, num_files)
        if "remote" in chosen and importlib.util.find_spec("moto"):  # 16 MiB of 1 KiB rows
            remote.run(results, root, max(8 * remote.BATCH, int(16_384 * size)))
        results.finish()  # the last group's rates, while its files are there
    return _report(args, time.perf_counter() - started,
                   [dataclasses.asdict(f) for f in results.figures], scaling)


def _each_group_alone(args, chosen: list[str]) -> dict:
    """Runs every group in a process of its own and merges what they write."""
    started, figures, scaling = time.perf_counter(), [], None
    passed = _argv_of(args)
    with tempfile.TemporaryDirectory() as folder:
        for group in chosen:
            for backend in _backends(group):
                out = os.path.join(folder, f"{group}_{backend}.json")
                env = dict(os.environ, **({"KERAS_BACKEND": backend} if backend else {}))
                # TensorFlow and PyTorch in one process can crash (SIGSEGV seen with
                # torch 2.14): a process of another backend leaves TensorFlow out.
                no_tf = ["--no-tf"] if backend not in (None, "tensorflow") else []
                subprocess.run([sys.executable, "-m", "benchmarks", "--one-process", "--only",
                                group, "--json", out, "--no-table", *passed, *no_tf],
                               check=True, env=env)
                with open(out) as f:
                    part = json.load(f)
                figures += part["figures"]
                scaling = part["scale"] or scaling
    return _report(args, time.perf_counter() - started, figures, scaling)


def _backends(group: str) -> list[str | None]:
    """The Keras backends a group runs on, each in a process of its own: every
    installed one for `sequences`; the environment's (`None`) for the others."""
    if group != "sequences":
        return [None]
    return [b for b in ("tensorflow", "jax", "torch") if importlib.util.find_spec(b)]


def _argv_of(args) -> list[str]:
    """The arguments that every group's process gets as they are."""
    passed = ["--size", str(args.size), "--repeats", str(args.repeats)]
    passed += ["--quick"] * args.quick + ["--no-tf"] * args.no_tf
    for name in ("memory_gib", "scale_max", "temp_dir"):
        value = getattr(args, name)
        if value is not None:
            passed += ["--" + name.replace("_", "-"), str(value)]
    return passed


def _report(args, seconds: float, figures: list[dict], scaling) -> dict:
    report = {"machine": _machine(), "arguments": vars(args), "seconds": seconds,
              "figures": figures, "scale": scaling}
    if not args.no_table:
        print("\n" + format_table(figures))
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\n{len(figures)} figures in {seconds:.0f} s, written to {args.json}")
    return report


GROUPS = ("limits", "index", "rows", "files", "cold", "fit", "sequences", "memory", "scale",
          "resume", "windows", "crops", "npz", "pack", "remote")


def format_table(figures: list[dict]) -> str:
    """A Markdown table of every figure, grouped."""
    lines = ["| group | kind | what | median | [min-max] | vs base |", "|---|---|---|---|---|---|"]
    for f in figures:
        group = f["group"].split(":")[0]
        spread = "" if f["low"] == f["high"] else (
            f"{common._number(f['low'])}-{common._number(f['high'])}")
        ratio = "" if f["ratio"] is None else f"{f['ratio']:.2f}x"
        lines.append(f"| {group} | {f['kind']} | {f['name'].strip()} | "
                     f"{common._number(f['median'])} {f['unit']} | {spread} | {ratio} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="an eighth of the data, one pass each, scale to 10^4 (a few "
                             "minutes, ~2 GB of temporary files)")
    parser.add_argument("--size", type=float, default=1.0,
                        help="multiplies the data sizes (default 1: 20,000 files, 262,144 rows)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (default 3)")
    parser.add_argument("--memory-gib", type=float, default=None,
                        help="GiB streamed by the memory figure (default 5; 0.5 with --quick)")
    parser.add_argument("--scale-max", type=int, default=None,
                        help="largest sample count of the scale figures (default 10^6; 10^4 "
                        "with --quick)")
    parser.add_argument("--json", default="benchmark_results.json", help="where to write JSON")
    parser.add_argument("--temp-dir", default=None, help="where the data is generated")
    parser.add_argument("--no-tf", action="store_true", help="skip everything tf.data")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated groups to run, of {', '.join(GROUPS)}")
    parser.add_argument("--one-process", action="store_true",
                        help="run every group in this process, not each in a new one")
    parser.add_argument("--no-table", action="store_true", help=argparse.SUPPRESS)
    return parser


def _tensorflow():
    try:
        import tensorflow as tf
    except ImportError:
        return None
    return tf


def _machine() -> dict:
    import keras
    import numpy

    versions = {"python": platform.python_version(), "numpy": numpy.__version__,
                "keras": keras.__version__, "backend": keras.backend.backend()}
    tf = sys.modules.get("tensorflow")  # when this run imported it
    if tf is not None:
        versions["tensorflow"] = tf.__version__
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "memory_gib": _memory_gib(), **versions}


def _memory_gib() -> float:
    with open("/proc/meminfo") as f:
        return round(int(f.readline().split()[1]) / 2**20, 1)


if __name__ == "__main__":
    main()
