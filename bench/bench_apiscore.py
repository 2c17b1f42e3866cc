"""Benchmark: spyeye.apiscore vs windows.malfind on the same image in the same run, and the
analysis alone (no Volatility) on buffers of compiled code, random bytes and zeros.

    python bench/bench_apiscore.py [--image images/bench-large.raw]

Builds the bench-large image first when it is missing. Prints Markdown: wall time, regions,
MB read (each region up to --max-bytes), MB actually decoded (zero runs are skipped),
MB/s of decoded code (wall, and net of Volatility's start-up measured with
``windows.pslist``), peak RSS, and the ratio to malfind."""
from __future__ import annotations

import argparse
import csv
import io
import random
import sys
import time
from pathlib import Path
from typing import Dict

from common import DEFAULT_IMAGE, ROOT, ensure_image, measure, vol  # noqa: E402

sys.path.insert(0, str(ROOT))

from spyeye_plugins.spyeye.parsers import api_traits  # noqa: E402
from spyeye_plugins.spyeye.parsers.api_hashes import HashIndex  # noqa: E402

MIB = 1 << 20


def totals(out: str) -> Dict[str, float]:
    rows = [r for r in csv.DictReader(io.StringIO(out)) if r.get("TreeDepth") == "0"]
    return {"regions": len(rows), "read": sum(int(r["Analysed"]) for r in rows) / 1e6,
            "decoded": sum(int(r["Decoded"]) for r in rows) / 1e6,
            "instructions": sum(int(r["Instructions"]) for r in rows),
            "high": sum(r["Score"].isdigit() and int(r["Score"]) >= 70 for r in rows)}


def parser_only() -> None:
    """MB/s of api_traits.analyse (CPU time) on 1 MiB buffers, no Volatility."""
    HashIndex.default()
    shellcode = ROOT / "fixtures" / "shellcode"
    buffers = {
        "compiled x64 .text (repeated)": ((shellcode / "compiled_x64.bin").read_bytes() * 40, 64),
        "compiled x86 .text (repeated)": ((shellcode / "compiled_x86.bin").read_bytes() * 40, 32),
        "random bytes, x64": (random.Random(1).randbytes(MIB), 64),
        "zeros, x64": (bytes(MIB), 64),
    }
    print("\n| analysis alone, 1 MiB buffer | CPU s | MB/s | instructions | score |")
    print("|---|---|---|---|---|")
    for name, (code, bits) in buffers.items():
        code = code[:MIB]
        start = time.process_time()
        result = api_traits.analyse(code, 0x140001000, bits, max_bytes=len(code))
        seconds = time.process_time() - start
        print(f"| {name} | {seconds:.2f} | {len(code) / 1e6 / seconds if seconds else float('inf'):.2f} | "
              f"{result.instructions} | {'N/A' if result.score is None else result.score} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    args = parser.parse_args()
    ensure_image(args.image)
    image = str(args.image)
    startup, _, _ = measure(vol("-f", image, "windows.pslist"))
    cases = {
        "spyeye.apiscore (default regions)": vol("-f", image, "spyeye.apiscore"),
        "spyeye.apiscore --all-exec": vol("-f", image, "spyeye.apiscore", "--all-exec"),
        "spyeye.apiscore --all-exec --max-bytes 0x10000": vol("-f", image, "spyeye.apiscore", "--all-exec",
                                                              "--max-bytes", "0x10000"),
    }
    print(f"image: {args.image.name}, {args.image.stat().st_size / 2**20:.0f} MiB; "
          f"Volatility start-up + pslist: {startup:.1f} s\n")
    print("| run | wall s | regions | MB read | MB decoded | instructions | MB/s decoded (wall / net) "
          "| peak RSS MiB | score >= 70 |")
    print("|---|---|---|---|---|---|---|---|---|")
    walls = {}
    for name, cmd in cases.items():
        seconds, rss, out = measure(cmd)
        t = totals(out)
        walls[name] = seconds
        net = max(seconds - startup, 1e-3)
        print(f"| {name} | {seconds:.1f} | {t['regions']} | {t['read']:.1f} | {t['decoded']:.2f} | "
              f"{t['instructions']} | {t['decoded'] / seconds:.2f} / {t['decoded'] / net:.2f} | {rss:.0f} | "
              f"{t['high']} |")
    seconds, rss, out = measure(vol("-f", image, "windows.malfind"))
    malfind_rows = sum(1 for r in csv.DictReader(io.StringIO(out)) if r.get("TreeDepth") == "0")
    walls["windows.malfind"] = seconds
    print(f"| windows.malfind | {seconds:.1f} | {malfind_rows} | - | - | - | - | {rss:.0f} | - |")
    print("\nwall-time ratio to windows.malfind (same image, same run; net of start-up in brackets):")
    malfind_net = max(walls["windows.malfind"] - startup, 1e-3)
    for name in cases:
        print(f"- {name}: {walls[name] / walls['windows.malfind']:.2f}x "
              f"({max(walls[name] - startup, 1e-3) / malfind_net:.2f}x)")
    parser_only()


if __name__ == "__main__":
    main()
