"""The `keras-npy` command line (also `python -m keras_npy`)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keras-npy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="generate .npy data on disk and train on it")
    demo.add_argument("--samples", type=int, default=2000, help="samples to generate")
    demo.add_argument("--epochs", type=int, default=3, help="training epochs")
    args = parser.parse_args(argv)
    from keras_npy.demo import run_demo

    result = run_demo(num_samples=args.samples, epochs=args.epochs)
    print(f"Indexed {result['num_samples']} .npy files in {result['class_names']} "
          f"in {result['index_seconds']:.2f} s; trained {args.epochs} epochs in "
          f"{result['fit_seconds']:.2f} s; accuracy {result['accuracy']:.3f}, validation "
          f"accuracy {result['val_accuracy']:.3f}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
