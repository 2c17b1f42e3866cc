"""Benchmark: ``spyeye.triage`` against running the plugins it joins one after another, on the
same image in the same run.

    python bench/bench_triage.py [--image images/bench-large.raw] [--repeat 3] [--cache-path DIR]

Builds the bench-large image first when it is missing. Each round runs triage (writing its
files to a temporary ``-o`` directory; by default and with ``--jobs 2``) and then each joined plugin once (``spyeye.injected``,
``spyeye.apiscore``, ``spyeye.hooks``, ``spyeye.config``, ``spyeye.timeline --correlate``),
interleaved; prints Markdown with the medians and the ratio of triage to the plugins' sum
(the issue's target: at most 0.60)."""
from __future__ import annotations

import argparse
import csv
import io
import statistics
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from bench_hooks import isolated
from common import DEFAULT_IMAGE, ensure_image, measure, vol, warm_page_cache

JOINED = ("spyeye.injected", "spyeye.apiscore", "spyeye.hooks", "spyeye.config", "spyeye.timeline --correlate")


def rows(out: str) -> int:
    return sum(1 for r in csv.DictReader(io.StringIO(out)) if r.get("TreeDepth") == "0")


def bench_image(image: Path, repeat: int, cache: Optional[Path]) -> None:
    warm_page_cache(image)
    with tempfile.TemporaryDirectory() as out_dir:
        cases = {"spyeye.triage": vol("-o", out_dir, "-f", str(image), "spyeye.triage"),
                 "spyeye.triage --jobs 2": vol("-o", out_dir, "-f", str(image), "spyeye.triage", "--jobs", "2")}
        cases.update({name: vol("-f", str(image), *name.split()) for name in JOINED})
        cases["windows.pslist (start-up)"] = vol("-f", str(image), "windows.pslist", suite=False)
        cases = {name: isolated(cmd, cache) for name, cmd in cases.items()}
        walls: Dict[str, List[float]] = {name: [] for name in cases}
        rss: Dict[str, float] = {}
        counts: Dict[str, int] = {}
        for _ in range(repeat):
            for name, cmd in cases.items():
                seconds, peak, out = measure(cmd)
                walls[name].append(seconds)
                rss[name], counts[name] = peak, rows(out)
    median = {name: statistics.median(times) for name, times in walls.items()}
    joined = sum(median[name] for name in JOINED)
    startup = median["windows.pslist (start-up)"]
    print(f"\nimage: {image.name}, {image.stat().st_size / 2**20:.0f} MiB; median of {repeat} interleaved runs\n")
    print("| tool | wall s (median) | all runs | parent rows | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for name in cases:
        print(f"| {name} | {median[name]:.1f} | {', '.join(f'{t:.1f}' for t in walls[name])} | {counts[name]} | "
              f"{rss[name]:.0f} |")
    print(f"| the {len(JOINED)} joined plugins, one after another | {joined:.1f} | | | |")
    net = (median["spyeye.triage"] - startup) / max(joined - len(JOINED) * startup, 1e-3)
    print(f"\ntriage / joined plugins: **{median['spyeye.triage'] / joined:.2f}** wall; "
          f"{net:.2f} net of each run's start-up ({startup:.1f} s, windows.pslist); with --jobs 2 (timeline forked): "
          f"{median['spyeye.triage --jobs 2'] / joined:.2f} wall")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", type=Path, action="append")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache-path", type=Path, help="a Volatility cache of its own (and --offline)")
    args = parser.parse_args()
    for image in args.image or [DEFAULT_IMAGE]:
        bench_image(ensure_image(image), args.repeat, args.cache_path)


if __name__ == "__main__":
    main()
