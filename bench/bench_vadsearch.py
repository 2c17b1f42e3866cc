"""Benchmark: spyeye.vadsearch (default engine, and ``--engine yara``) vs
windows.vadyarascan, windows.vadregexscan and raw yara-python over the image
file, same image, same run.

    python bench/bench_vadsearch.py [--os win7-x64|win10-x64|...] [--image images/bench-large.raw] [--repeat 3]

Builds the bench-large image first when it is missing.  Prints Markdown for
bench/RESULTS.md: median wall time of interleaved runs (page cache warmed first), MB/s of VAD data (wall, and net of Volatility's
start-up measured with ``windows.pslist``), peak RSS, hits, the planted
keywords each tool misses, and the ratios the issue sets targets for."""
from __future__ import annotations

import argparse
import csv
import io
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

from common import add_image_options, image_from_args, measure, vol, warm_page_cache

KEYWORDS = ["__CLEANSWEEP__", "cleansweep.exe", "hooked_func", "globpluginspipe", "__SPYNET__",
            "PR_Write", "SPYNET_CHUNK_EDGE", "collector.example.net", "config.bin", "zXeRY3a_PtW"]


def vad_bytes(truth: Dict) -> int:
    """Bytes of committed VAD data in the listed processes."""
    linked = {p["pid"] for p in truth["processes"] if p["linked"] and p["pid"] != 4}
    return sum(v.get("committed_bytes", v["end"] - v["start"] + 1)
               for v in truth["vads"] if v["pid"] in linked)


def planted(truth: Dict) -> Dict[Tuple[int, int], Tuple[str, int]]:
    """(pid, va) -> (label, pa) of every resident keyword in a listed process."""
    linked = {p["pid"] for p in truth["processes"] if p["linked"]}
    out = {}
    for plant in truth["plants"]:
        if plant["pid"] not in linked or not plant["resident"]:
            continue
        data = bytes.fromhex(plant["data"])
        for word in KEYWORDS:
            for needle in (word.encode(), word.encode("utf-16-le")):
                skip = data.find(needle)
                if skip >= 0:
                    va = plant["va"] + skip
                    page = next(p for p in plant["pages"] if p["va"] == va & ~0xFFF)
                    out[(plant["pid"], va)] = (plant["label"], page["pa"] + (va & 0xFFF))
    return out


def vol_hits(out: str, pid_col: str, addr_col: str) -> Set[Tuple[int, int]]:
    rows = csv.DictReader(io.StringIO(out))
    return {(int(r[pid_col]), int(r[addr_col], 16)) for r in rows if r.get(pid_col, "").isdigit()}


def main() -> None:
    parser = argparse.ArgumentParser()
    add_image_options(parser)
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool (median reported)")
    args = parser.parse_args()
    args.image = image_from_args(args)
    truth = json.loads(args.image.with_name(args.image.stem + ".truth.json").read_text())
    rule = "rule kw { strings: " + " ".join(
        f'$k{i} = "{k}" ascii wide' for i, k in enumerate(KEYWORDS)) + " condition: any of them }"
    rule_file = args.image.with_suffix(".bench.yar")
    rule_file.write_text(rule)
    image = str(args.image)
    cases = {
        "spyeye.vadsearch (10 keywords, ascii+utf-16le)":
            (vol("-f", image, "spyeye.vadsearch", "--keyword", *KEYWORDS), ("PID", "Address")),
        "spyeye.vadsearch --engine yara (where Hyperscan is missing)":
            (vol("-f", image, "spyeye.vadsearch", "--engine", "yara", "--keyword", *KEYWORDS), ("PID", "Address")),
        "windows.vadyarascan (same keywords, one rule)":
            (vol("-f", image, "windows.vadyarascan", "--yara-file", str(rule_file)), ("PID", "Offset")),
        "windows.vadregexscan (same keywords, ascii only)":
            (vol("-f", image, "windows.vadregexscan", "--pattern", "|".join(map(re.escape, KEYWORDS))),
             ("PID", "Offset")),
        "raw yara-python over the image file (ceiling)":
            ([sys.executable, "-c", f"import yara; r=yara.compile(filepath={str(rule_file)!r}); "
              f"[print(i.offset) for x in r.match({image!r}) for s in x.strings for i in s.instances]"],
             None),
    }
    warm_page_cache(args.image)
    cases["Volatility start-up + windows.pslist"] = (vol("-f", image, "windows.pslist"), None)
    runs: Dict[str, List[Tuple[float, float, str]]] = {name: [] for name in cases}
    for _ in range(args.repeat):          # interleaved, so the host's drift affects every tool alike
        for name, (cmd, _) in cases.items():
            runs[name].append(measure(cmd))
    median = {name: statistics.median(r[0] for r in results) for name, results in runs.items()}
    startup = median.pop("Volatility start-up + windows.pslist")
    total = vad_bytes(truth) / 1e6
    expected = planted(truth)
    print(f"image: {args.image.name}, {args.image.stat().st_size / 2**20:.0f} MiB, committed VAD data "
          f"of listed processes: {total:.0f} MB, largest VAD "
          f"{max(v['end'] - v['start'] + 1 for v in truth['vads']) / 2**20:.0f} MiB; "
          f"Volatility start-up + pslist: {startup:.1f} s (median); planted keywords: {len(expected)}; "
          f"median of {args.repeat} interleaved runs, page cache warm\n")
    print("| tool | wall s (median) | all runs s | MB/s wall | MB/s net of start-up | peak RSS MiB | hits | planted missed |")
    print("|---|---|---|---|---|---|---|---|")
    rates, misses = {}, {}
    for name, seconds in median.items():
        columns = cases[name][1]
        out = runs[name][-1][2]
        if columns:
            found = vol_hits(out, *columns)
            missed = sorted(label for key, (label, _) in expected.items() if key not in found)
            hits = len(found)
            net = seconds - startup
        else:
            offsets = {int(line) for line in out.split()}
            missed = sorted(label for label, pa in expected.values() if pa not in offsets)
            hits, net = len(offsets), seconds
        rates[name] = (total / seconds, total / net)
        misses[name] = missed
        print(f"| {name} | {seconds:.1f} | {', '.join(f'{r[0]:.1f}' for r in runs[name])} | "
              f"{total / seconds:.0f} | {total / net:.0f} | {max(r[1] for r in runs[name]):.0f} | "
              f"{hits} | {len(missed)} |")
    ours, ours_yara, yarascan, _, ceiling = rates.values()
    print(f"\nratios (wall / net): vadsearch vs vadyarascan {ours[0] / yarascan[0]:.2f}x / "
          f"{ours[1] / yarascan[1]:.2f}x (with --engine yara {ours_yara[0] / yarascan[0]:.2f}x / "
          f"{ours_yara[1] / yarascan[1]:.2f}x); vadsearch vs raw yara {ours[0] / ceiling[0]:.2f}x / "
          f"{ours[1] / ceiling[1]:.2f}x\n")
    for name, missed in misses.items():
        print(f"- {name} misses: {', '.join(missed) or 'none'}")


if __name__ == "__main__":
    main()
