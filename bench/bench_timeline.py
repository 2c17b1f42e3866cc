"""Benchmark: spyeye.timeline (all sources, event-log carving included) vs stock
``vol timeliner`` on the same image, in the same run.

    python bench/bench_timeline.py [--os win7-x64|win10-x64|...] [--image images/bench-large.raw] [--repeat 3]

Builds the bench-large image first when it is missing.  Stock timeliner runs
without ``-p spyeye_plugins`` (only its own sources); a third case runs it with
the suite loaded, so it also calls our event-log source.  Prints a Markdown
table (median wall time, peak RSS, rows) and the ratio ours / stock."""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Dict, List, Tuple

from common import add_image_options, image_from_args, measure, vol



def run(cmd: List[str]) -> Tuple[float, float, int]:
    """(seconds, peak RSS MiB, CSV data rows) of one child process."""
    elapsed, rss, out = measure(cmd)
    return elapsed, rss, max(0, len([line for line in out.splitlines() if line.strip()]) - 1)


def cases(image: Path) -> Dict[str, List[str]]:
    return {
        "spyeye.timeline (process, thread, network, eventlog)": vol("-f", str(image), "spyeye.timeline"),
        "stock timeliner (its own sources)": vol("-f", str(image), "timeliner", suite=False),
        "stock timeliner with the suite loaded (+ our event-log source)": vol("-f", str(image), "timeliner"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    add_image_options(parser)
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median reported)")
    args = parser.parse_args()
    args.image = image_from_args(args)
    results: Dict[str, List[Tuple[float, float, int]]] = {name: [] for name in cases(args.image)}
    for _ in range(args.repeat):      # interleaved, so machine load affects every case alike
        for name, cmd in cases(args.image).items():
            results[name].append(run(cmd))
    size = args.image.stat().st_size >> 20
    print(f"image: {args.image.name}, {size} MiB; median of {args.repeat} interleaved runs\n")
    print("| tool | wall s (median) | all runs s | peak RSS MiB | rows |")
    print("|---|---|---|---|---|")
    medians = {}
    for name, runs in results.items():
        medians[name] = statistics.median(r[0] for r in runs)
        print(f"| {name} | {medians[name]:.1f} | {', '.join(f'{r[0]:.1f}' for r in runs)} | "
              f"{max(r[1] for r in runs):.0f} | {runs[-1][2]} |")
    ours, stock = list(medians.values())[:2]
    print(f"\nratio spyeye.timeline / stock timeliner: {ours / stock:.2f} (target <= 1.0)")


if __name__ == "__main__":
    main()
