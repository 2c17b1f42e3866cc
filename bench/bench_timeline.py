"""Benchmark: spyeye.timeline (all sources, event-log carving included) vs stock
``vol timeliner`` on the same image, in the same run.

    python bench/bench_timeline.py [--image images/bench-large.raw] [--repeat 3]

Builds the bench-large image first when it is missing.  Stock timeliner runs
without ``-p spyeye_plugins`` (only its own sources); a third case runs it with
the suite loaded, so it also calls our event-log source.  Prints a Markdown
table (median wall time, peak RSS, rows) and the ratio ours / stock."""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
VOL = str(Path(sys.executable).parent / "vol")


def run(cmd: List[str]) -> Tuple[float, float, int]:
    """(seconds, peak RSS MiB, CSV data rows) of one child process."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    rss_kb = int(proc.stderr.strip().splitlines()[-1])
    rows = max(0, len([line for line in proc.stdout.splitlines() if line.strip()]) - 1)
    return elapsed, rss_kb / 1024, rows


def cases(image: Path) -> Dict[str, List[str]]:
    ours = ["-p", str(ROOT / "spyeye_plugins")]
    stock = ["-s", str(ROOT / "symbols")]
    return {
        "spyeye.timeline (process, thread, network, eventlog)":
            [VOL, "-q", *ours, "-r", "csv", "-f", str(image), "spyeye.timeline"],
        "stock timeliner (its own sources)":
            [VOL, "-q", *stock, "-r", "csv", "-f", str(image), "timeliner"],
        "stock timeliner with the suite loaded (+ our event-log source)":
            [VOL, "-q", *ours, "-r", "csv", "-f", str(image), "timeliner"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", type=Path, default=ROOT / "images" / "bench-large.raw")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median reported)")
    args = parser.parse_args()
    if not args.image.exists():
        subprocess.run([sys.executable, "-m", "fixtures", "build", "--scenario", "bench-large",
                        "--out", str(args.image.parent)], check=True, cwd=ROOT)
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
