"""The `keras-npy` command line (also `python -m keras_npy`).

Commands: `inspect` a tree of `.npy` files, write its `index` once for every
process to load, `pack` its per-sample files into a few row files (shards)
that `NpyDataset(DST)` loads in one call, compute its `stats` for a
normalization layer, `bench` how fast it reads, and run the `demo`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import sys
import tempfile


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns the exit status (1 when `inspect` finds
    problems or the data cannot be read, 2 for bad arguments)."""
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as error:  # bad data or arguments, named in the message
        print(f"keras-npy {args.command}: error: {error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keras-npy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"keras-npy {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="what a tree of .npy files holds, and "
                                  "every file that is wrong (exit status 1 if any)")
    inspect.add_argument("path", help="a directory, glob or .npy file")
    _add_layout_option(inspect)
    _add_source_options(inspect)
    inspect.set_defaults(run=_inspect)

    stats = commands.add_parser("stats", help="streaming mean and variance, saved for "
                                "keras_npy.normalization_layer")
    stats.add_argument("path", help="a directory, glob or .npy file")
    stats.add_argument("--axis", type=_axis, default=-1,
                       help="the axes that keep a mean each, as keras.layers.Normalization's "
                       "(e.g. -1, '1,2' or 'none'); default -1")
    stats.add_argument("--output", "-o", default="stats.npz",
                       help="the .npz file to write; default stats.npz")
    stats.add_argument("--force", "-f", action="store_true",
                       help="overwrite the output file if it exists")
    _add_layout_option(stats)
    _add_source_options(stats)
    stats.set_defaults(run=_stats)

    index = commands.add_parser("index", help="read every header once and write the index "
                                "that every dataset of the data (every process) then loads")
    index.add_argument("path", help="a directory (or, with --output, a glob or .npy file)")
    index.add_argument("--labels", choices=("none", "inferred"), default="none",
                       help="inferred: the class of each file is its folder under the "
                       "directory (as y=\"inferred\"); default none")
    _add_class_names_option(index)
    index.add_argument("--output", "-o", default=None,
                       help="the index file to write; default PATH/keras_npy.index, which "
                       "datasets of PATH made with the same arguments load by themselves")
    _add_layout_option(index)
    _add_source_options(index)
    index.set_defaults(run=_index)

    pack = commands.add_parser("pack", help="rewrite a directory of per-sample .npy files "
                               "as a few row files (shards) that NpyDataset(DST) loads")
    pack.add_argument("src", help="a directory of .npy files, one sample per file")
    pack.add_argument("dst", help="the directory to write: absent, empty, or an unfinished "
                      "pack of SRC (the pack resumes)")
    pack.add_argument("--shard-size", default="256MiB",
                      help="bytes of samples per shard, e.g. 256MiB, 1GB or 4096; default "
                      "256MiB")
    pack.add_argument("--labels", choices=("inferred", "none"), default="inferred",
                      help="inferred (default): the class of each file is its folder under "
                      "SRC, packed as y-NNNNN.npy; none: no labels")
    _add_class_names_option(pack)
    pack.add_argument("--force", "-f", action="store_true",
                      help="overwrite a DST that holds something else (its pack files)")
    pack.add_argument("--no-verify", action="store_true",
                      help="skip comparing every packed sample with its source file")
    _add_source_options(pack)
    pack.set_defaults(run=_pack)

    bench = commands.add_parser("bench", help="samples/s and MB/s of your data through "
                                "NpyDataset and npy_dataset, next to the raw read rate")
    bench.add_argument("path", help="a directory, glob or .npy file")
    bench.add_argument("--batch-size", type=int, default=32, help="default 32")
    bench.add_argument("--batches", type=int, default=200,
                       help="batches read per pass; default 200")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_layout_option(bench)
    _add_source_options(bench)
    bench.set_defaults(run=_bench)

    demo = commands.add_parser("demo", help="generate .npy data on disk, train on it with "
                               "both front ends, export and serve the model")
    demo.add_argument("--samples", type=_positive, default=2000,
                      help="samples to generate; default 2000")
    demo.add_argument("--epochs", type=_positive, default=3,
                      help="training epochs per front end; default 3")
    demo.set_defaults(run=_demo)
    return parser


def _version() -> str:
    from keras_npy import __version__

    return __version__


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}")
    return value


def _add_class_names_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--class-names", type=lambda t: t.split(","), default=None,
                        help="with --labels inferred, the class folders in label order, "
                        "separated by commas")


def _add_layout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", choices=("auto", "files", "rows"), default="auto",
                        help="files: a sample per file; rows: the rows of the files are the "
                        "samples; auto (default): rows for a single .npy file, files "
                        "otherwise")


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--follow-links", action="store_true",
                        help="enter links to folders while walking")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _axis(text: str):
    if text.lower() == "none":
        return None
    try:
        axes = tuple(int(a) for a in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer, integers separated by commas, or 'none'; found {text!r}")
    return axes[0] if len(axes) == 1 else axes


def _inspect(args) -> int:
    from keras_npy.inspection import format_report, inspect_source

    report = inspect_source(args.path, layout=args.layout, follow_links=args.follow_links,
                            verbose=not args.quiet)
    print(format_report(report))
    return 1 if report.problems else 0


def _index(args) -> int:
    import time

    from keras_npy.index_file import load_index, write_index

    started = time.perf_counter()
    path = write_index(args.path, "inferred" if args.labels == "inferred" else None,
                       args.output, layout=args.layout, class_names=args.class_names,
                       follow_links=args.follow_links, verbose=not args.quiet)
    built = time.perf_counter() - started
    started = time.perf_counter()
    index = load_index(path)
    loaded = time.perf_counter() - started
    print(f"Wrote {path}: {index.num_samples:,} samples, {os.path.getsize(path) / 2**20:,.1f} "
          f"MiB; built in {built:.1f} s, loads in {loaded * 1000:.0f} ms.")
    return 0


def _pack(args) -> int:
    import time

    from keras_npy.packing import MANIFEST, pack

    started = time.perf_counter()
    manifest = pack(args.src, args.dst, shard_size=args.shard_size,
                    labels=None if args.labels == "none" else "inferred",
                    class_names=args.class_names, force=args.force, verify=not args.no_verify,
                    follow_links=args.follow_links, verbose=not args.quiet)
    shards = len(manifest["shards"])
    classes = manifest["class_names"]
    print(f"Packed {manifest['num_samples']:,} samples ({manifest['layout']}, dtype "
          f"{manifest['dtype']}) into {shards} shard{'s' * (shards != 1)} in {args.dst}"
          f"{f', {len(classes)} classes' if classes else ''}"
          f"{'' if args.no_verify else ', verified'}, in {time.perf_counter() - started:.1f} s. "
          f"Load it with keras_npy.NpyDataset({args.dst!r}) ({MANIFEST}).")
    return 0


def _stats(args) -> int:
    # The loader without its front ends: no Keras (nor TensorFlow) to import.
    from keras_npy.batches import source_of
    from keras_npy.spec import BatchSpec
    from keras_npy.statistics import sample_statistics, save_statistics

    if not args.output.endswith(".npz"):  # what np.savez writes, and what is read back
        args.output += ".npz"
    if os.path.exists(args.output) and not args.force:
        raise ValueError(f"{args.output} exists; pass --force to overwrite it, or --output "
                         "to write another file.")
    spec = BatchSpec(pad_to="longest", num_shards=1)  # every sample, whatever the run
    source = source_of(args.path, None, spec, layout=args.layout,
                       follow_links=args.follow_links, verbose=not args.quiet)
    num_samples = source.order.num_samples
    mean, variance = sample_statistics(source.index.x, source.order.sample_ids, args.axis,
                                       verbose=not args.quiet)
    save_statistics(args.output, mean, variance, args.axis, num_samples,
                    source.index.x.sample_shape)
    print(f"{args.path}: {num_samples:,} samples; axis={args.axis!r}: mean and "
          f"variance of shape {mean.shape} written to {args.output}")
    with _numpy_print_options():
        print(f"mean: {mean}\nvariance: {variance}")
    print(f"Use: keras_npy.normalization_layer({args.output!r}, axis={args.axis!r})")
    return 0


def _bench(args) -> int:
    _import_backends_quietly()
    from keras_npy.bench import bench_source, format_bench

    result = bench_source(args.path, batch_size=args.batch_size, max_batches=args.batches,
                          layout=args.layout, follow_links=args.follow_links)
    print(json.dumps(result) if args.json else format_bench(result, args.path))
    return 0


def _demo(args) -> int:
    _import_backends_quietly()
    from keras_npy.demo import format_demo, run_demo

    print(format_demo(run_demo(num_samples=args.samples, epochs=args.epochs, verbose=2)))
    return 0


# How TensorFlow's C++ libraries log: absl's banner, then "I0000 00:00:1700000000.123456
# 4242 port.cc:153] oneDNN ...", the first letter the severity (INFO, WARNING, ERROR, FATAL).
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called"
_ABSL_LINE = re.compile(r"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] ")


def _import_backends_quietly() -> None:
    """Imports Keras and TensorFlow (when installed) for `bench` and `demo`
    without TensorFlow's start-up notices."""
    with _start_up_notices_held_back():
        import keras  # noqa: F401  (and the backend that KERAS_BACKEND names)
        if importlib.util.find_spec("tensorflow") is not None:  # for npy_dataset
            import tensorflow  # noqa: F401


@contextlib.contextmanager
def _start_up_notices_held_back():
    """Holds back, from what is written to stderr inside, the C++ log lines
    that `TF_CPP_MIN_LOG_LEVEL` excludes; other lines pass. The level
    defaults to 2 in this process: no INFO or WARNING lines.

    TensorFlow's libraries log some notices (oneDNN's) while they load, before
    they read the level: file descriptor 2 is captured, and written back
    without those lines.
    """
    level = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    hidden = "IWEF"[:int(level)] if level.isdigit() else ""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not _is_hidden(line, hidden)))


def _is_hidden(line: str, severities: str) -> bool:
    if line.startswith(_ABSL_BANNER):
        return bool(severities)
    match = _ABSL_LINE.match(line)
    return match is not None and match.group(1) in severities


def _numpy_print_options():
    import numpy as np

    return np.printoptions(precision=4, threshold=20, edgeitems=3, linewidth=100)


if __name__ == "__main__":
    sys.exit(main())
