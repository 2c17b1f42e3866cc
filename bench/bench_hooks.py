"""Benchmark: spyeye.hooks vs windows.malfind on the same image in the same run, and the
entry classifier alone (no Volatility) on the fixture DLLs' exported functions.

    python bench/bench_hooks.py [--image images/bench-large.raw] [--image other.raw] [--repeat 3]
                                [--cache-path /tmp/volcache]

Builds the bench-large image first when it is missing. Prints Markdown: wall time (median of
``--repeat`` interleaved runs), rows, peak RSS, and the ratio to malfind, also net of
Volatility's start-up (measured with ``windows.pslist``)."""
from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from common import DEFAULT_IMAGE, ROOT, ensure_image, measure, vol, warm_page_cache  # noqa: E402

sys.path.insert(0, str(ROOT))

from fixtures.pe_mapper import DLL_DIR, map_image  # noqa: E402
from spyeye_plugins.spyeye.parsers import hooks  # noqa: E402
from spyeye_plugins.spyeye.parsers.pe_image import parse_mapped_image  # noqa: E402


def parent_rows(out: str) -> int:
    return sum(1 for r in csv.DictReader(io.StringIO(out)) if r.get("TreeDepth") == "0")


def classifier_only(rounds: int = 200) -> None:
    """Entries per second of classify_entry + syscall_stub over every exported function of the
    fixture DLLs (CPU time, pages already in memory)."""
    entries = []
    for path in sorted(DLL_DIR.glob("*.dll")):
        image = map_image(path.read_bytes())
        base = 0x1000_0000

        def read(address: int, length: int, image=image) -> bytes:
            rva = address - base
            return image[rva:rva + length] if 0 <= rva and rva + length <= len(image) else None
        bits = hooks.table_location(image[:0x1000], lambda r, n, i=image: i[r:r + n], len(image)).bits
        pe = parse_mapped_image(lambda r, n, i=image: i[r:r + n] if r + n <= len(i) else None, len(image), base)
        entries += [(read, e.address, bits) for e in pe.exports if e.forwarder is None]
    start = time.process_time()
    for _ in range(rounds):
        for read, address, bits in entries:
            hooks.classify_entry(read, address, bits)
            hooks.syscall_stub(read(address, 32) or b"", bits)
    seconds = time.process_time() - start
    count = rounds * len(entries)
    print(f"\nclassifier alone: {count} function entries ({len(entries)} exports x {rounds}) in "
          f"{seconds:.2f} s CPU = {count / seconds:,.0f} entries/s")


def isolated(cmd: List[str], cache: Optional[Path]) -> List[str]:
    """``cmd`` with its own Volatility cache and no symbol download, so that other Volatility
    runs sharing ``~/.cache/volatility3`` cannot make the kernel's symbol lookup fail."""
    if cache is None:
        return cmd
    cache.mkdir(parents=True, exist_ok=True)
    return [cmd[0], "--offline", "--cache-path", str(cache), *cmd[1:]]


def bench_image(image: Path, repeat: int, cache: Optional[Path]) -> None:
    warm_page_cache(image)
    cases = {"spyeye.hooks": vol("-f", str(image), "spyeye.hooks"),
             "spyeye.hooks --all": vol("-f", str(image), "spyeye.hooks", "--all"),
             "windows.malfind": vol("-f", str(image), "windows.malfind", suite=False),
             "windows.pslist (start-up)": vol("-f", str(image), "windows.pslist", suite=False)}
    cases = {name: isolated(cmd, cache) for name, cmd in cases.items()}
    walls: Dict[str, List[float]] = {name: [] for name in cases}
    rss: Dict[str, float] = {}
    rows: Dict[str, int] = {}
    for _ in range(repeat):
        for name, cmd in cases.items():
            seconds, peak, out = measure(cmd)
            walls[name].append(seconds)
            rss[name], rows[name] = peak, parent_rows(out)
    median = {name: statistics.median(times) for name, times in walls.items()}
    startup = median["windows.pslist (start-up)"]
    print(f"\nimage: {image.name}, {image.stat().st_size / 2**20:.0f} MiB; median of {repeat} interleaved runs\n")
    print("| tool | wall s (median) | all runs | rows | peak RSS MiB | ratio to malfind (wall / net of start-up) |")
    print("|---|---|---|---|---|---|")
    malfind, malfind_net = median["windows.malfind"], max(median["windows.malfind"] - startup, 1e-3)
    for name in cases:
        ratio = f"{median[name] / malfind:.2f}x / {max(median[name] - startup, 1e-3) / malfind_net:.2f}x"
        print(f"| {name} | {median[name]:.1f} | {', '.join(f'{t:.1f}' for t in walls[name])} | {rows[name]} | "
              f"{rss[name]:.0f} | {ratio if name.startswith('spyeye') else '-'} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", type=Path, action="append")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache-path", type=Path, help="a Volatility cache of its own (and --offline)")
    args = parser.parse_args()
    for image in args.image or [DEFAULT_IMAGE]:
        bench_image(ensure_image(image), args.repeat, args.cache_path)
    classifier_only()


if __name__ == "__main__":
    main()
