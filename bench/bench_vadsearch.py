"""Benchmark: spyeye.vadsearch vs windows.vadyarascan, windows.vadregexscan and
raw yara-python over the image file, same image, same run.

    python bench/bench_vadsearch.py [--image images/bench-large.raw]

Builds the bench-large image first when it is missing.  Prints a Markdown
table (wall time, MB/s of VAD data, peak RSS, hits) for bench/RESULTS.md."""
from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEYWORDS = ["__CLEANSWEEP__", "cleansweep.exe", "hooked_func", "globpluginspipe", "__SPYNET__",
            "PR_Write", "SPYNET_CHUNK_EDGE", "collector.example.net", "config.bin", "zXeRY3a_PtW"]


def run(cmd) -> tuple:
    """(seconds, peak RSS MiB, stdout) of a child process."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    rss_kb = int(proc.stderr.strip().splitlines()[-1])
    return elapsed, rss_kb / 1024, proc.stdout


def vol(*args) -> list:
    return [str(Path(sys.executable).parent / "vol"), "-q", "-p", str(ROOT / "spyeye_plugins"), *args]


def vad_bytes(image: Path) -> int:
    truth = json.loads(image.with_name(image.stem + ".truth.json").read_text())
    linked = {p["pid"] for p in truth["processes"] if p["linked"] and p["pid"] != 4}
    return sum(v["end"] - v["start"] + 1 for v in truth["vads"] if v["pid"] in linked)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", type=Path, default=ROOT / "images" / "bench-large.raw")
    args = parser.parse_args()
    if not args.image.exists():
        subprocess.run([sys.executable, "-m", "fixtures", "build", "--scenario", "bench-large",
                        "--out", str(args.image.parent)], check=True, cwd=ROOT)
    rule = "rule kw { strings: " + " ".join(
        f'$k{i} = "{k}" ascii wide' for i, k in enumerate(KEYWORDS)) + " condition: any of them }"
    rule_file = args.image.with_suffix(".bench.yar")
    rule_file.write_text(rule)
    regex = "|".join(re.escape(k) for k in KEYWORDS)
    total = vad_bytes(args.image) / 1e6
    cases = {
        "spyeye.vadsearch (10 keywords, ascii+utf-16le)":
            vol("-r", "csv", "-f", str(args.image), "spyeye.vadsearch", "--keyword", *KEYWORDS),
        "windows.vadyarascan (same keywords, one rule)":
            vol("-r", "csv", "-f", str(args.image), "windows.vadyarascan", "--yara-file", str(rule_file)),
        "windows.vadregexscan (same keywords, ascii only)":
            vol("-r", "csv", "-f", str(args.image), "windows.vadregexscan", "--pattern", regex),
        "raw yara-python over the image file (ceiling)":
            [sys.executable, "-c", f"import yara,sys; r=yara.compile(filepath={str(rule_file)!r}); "
             f"m=r.match({str(args.image)!r}); print(sum(len(i.instances) for x in m for i in x.strings))"],
    }
    print(f"image: {args.image.name}, {args.image.stat().st_size / 2**20:.0f} MiB, "
          f"VAD data of listed processes: {total:.0f} MB\n")
    print("| tool | wall s | MB/s (VAD data) | peak RSS MiB | hits |")
    print("|---|---|---|---|---|")
    base = None
    for name, cmd in cases.items():
        seconds, rss, out = run(cmd)
        lines = [l for l in out.splitlines() if l.strip()]
        hits = lines[-1] if name.startswith("raw") else max(0, len(lines) - 1)
        rate = total / seconds
        base = base or rate
        print(f"| {name} | {seconds:.1f} | {rate:.0f} | {rss:.0f} | {hits} |")


if __name__ == "__main__":
    main()
