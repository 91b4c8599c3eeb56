"""Turns the JSON of `python -m benchmarks` into the README's picture: for each
throughput group, a bar per reader on a log scale, the group's limit as a line;
and, beside it (`index.png`), what a process waits before its first batch with
10^6 files: reading every header, or loading the index file.

    python -m benchmarks.plot benchmark_results.json benchmarks/results.png
"""

from __future__ import annotations

import argparse
import json
import os
import re

COLORS = {"limit": "#555555", "baseline": "#d98c3f", "keras_npy": "#2a7ab9"}


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    groups: dict[str, list[dict]] = {}
    for figure in report["figures"]:
        if figure["unit"].endswith("/s") and not figure["group"].startswith("limits"):
            groups.setdefault(figure["group"], []).append(figure)
    heights = [len(figures) for figures in groups.values()]
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, 0.42 * sum(heights) + 1.1 * len(groups)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (title, figures) in zip(axes[:, 0], groups.items()):
        names = [f["name"] for f in figures][::-1]
        medians = [f["median"] for f in figures][::-1]
        errors = [[f["median"] - f["low"] for f in figures][::-1],
                  [f["high"] - f["median"] for f in figures][::-1]]
        ax.barh(names, medians, xerr=errors, color=[COLORS[f["kind"]] for f in figures][::-1])
        limit = next((f for f in figures if f["kind"] == "limit"), None)
        if limit is not None:
            ax.axvline(limit["median"], color=COLORS["limit"], linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlim(min(f["low"] for f in figures) / 3, max(f["high"] for f in figures) * 1.5)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(title.split(";")[0], fontsize=9, loc="left")
        ax.set_xlabel(figures[0]["unit"], fontsize=8)
        ax.tick_params(labelsize=7)
    machine = report["machine"]
    fig.suptitle(f"keras_npy (blue), what people use (orange), limits (grey); "
                 f"{machine['cpus']} CPUs; from the page cache, but for the groups named cold",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=110)


def plot_index(report: dict, path: str) -> bool:
    """The index build and index-file load times of the largest scale size
    (and of the simulated index file), in seconds on a log scale; `False`
    when the report has no such figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [f for f in report["figures"]
              if (f["group"].startswith("scale") and f["unit"] == "s"
                  and "epoch" not in f["name"] and f["name"].strip().startswith("1,000,000"))
              or (f["group"].startswith("index file of") and f["unit"] == "s")]
    if not chosen:
        return False
    names = [f["name"].strip() if f["group"].startswith("scale") else
             f"{re.search(r'of ([0-9,]+) samples', f['group']).group(1)} samples: "
             f"{f['name']} (simulated, no files)" for f in chosen]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(chosen) + 1.2))
    ax.barh(names[::-1], [f["median"] for f in chosen][::-1],
            xerr=[[f["median"] - f["low"] for f in chosen][::-1],
                  [f["high"] - f["median"] for f in chosen][::-1]],
            color=[COLORS["limit"] if "build" in n else COLORS["keras_npy"]
                   for n in names][::-1])
    ax.set_xscale("log")
    ax.set_xlabel("seconds before the first batch (log scale)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title("1 KiB files, page cache: reading every header (grey), loading the index "
                 "file (blue)", fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_path")
    parser.add_argument("png_path")
    args = parser.parse_args()
    with open(args.json_path) as f:
        report = json.load(f)
    plot(report, args.png_path)
    print(f"wrote {args.png_path}")
    index_path = os.path.join(os.path.dirname(args.png_path), "index.png")
    if plot_index(report, index_path):
        print(f"wrote {index_path}")


if __name__ == "__main__":
    main()
