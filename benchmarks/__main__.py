"""keras_npy benchmarks: the limits, the recipes people use, and keras_npy, in one run.

    python -m benchmarks                 # full: ~18 minutes here, ~11 GB of temporary files
    python -m benchmarks --quick         # about a minute
    python -m benchmarks.plot results.json results.png

Every figure is measured from the page cache (each reader makes one untimed pass first),
as the median over --repeats passes with [min-max], and divided by its group's base
(the first "limit" of the group) measured in the same run. Results print as they come,
then as one table, and are written as JSON (--json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time

from benchmarks import common, files, fit, index, limits, memory, rows, scale


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    quick = args.quick
    size = args.size * (0.125 if quick else 1.0)
    results = common.Results(1 if quick else args.repeats)
    tf = None if args.no_tf else _tensorflow()
    started = time.perf_counter()
    scaling = None
    with tempfile.TemporaryDirectory(dir=args.temp_dir) as root:
        num_files = max(500, int(20_000 * size))
        num_rows = max(8192, int(262_144 * size))
        chosen = set(args.only.split(",")) if args.only else set(GROUPS)
        if "limits" in chosen:
            limits.run(results, root, max(16, int(256 * size)), num_files)
        if "index" in chosen:
            index.run(results, root, num_files * 5)
        if "rows" in chosen:
            rows.run(results, root, num_rows, tf)
        for file_size, vary in ((1024, False), (12 * 1024, False), (1024, True)):
            if "files" in chosen or "memory" in chosen:  # memory measures the 1 KiB index
                files.run(results, root, num_files, file_size, vary, tf)
        if "fit" in chosen:
            fit.run(results, root, num_rows, tf)
        if "memory" in chosen:
            memory.run(results, root, args.memory_gib or (0.5 if quick else 5.0),
                       os.path.join(root, "files_1024_False"))
        if "scale" in chosen:
            scaling = scale.run(results, root,
                                args.scale_max or (10_000 if quick else 1_000_000))
    report = {"machine": _machine(), "arguments": vars(args), "seconds": time.perf_counter() -
              started, "figures": [dataclasses.asdict(f) for f in results.figures],
              "scale": scaling}
    print("\n" + format_table(report["figures"]))
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\n{len(results.figures)} figures in {report['seconds']:.0f} s, written to {args.json}")
    return report


GROUPS = ("limits", "index", "rows", "files", "fit", "memory", "scale")


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
                        help="an eighth of the data, one pass each, scale to 10^4 (~1 minute)")
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
    tf = _tensorflow()
    if tf is not None:
        versions["tensorflow"] = tf.__version__
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "memory_gib": _memory_gib(), **versions}


def _memory_gib() -> float:
    with open("/proc/meminfo") as f:
        return round(int(f.readline().split()[1]) / 2**20, 1)


if __name__ == "__main__":
    main()
