"""The full damage sweep: every damage kind x every plugin of the suite (x renderers).

    python bench/bench_damage.py [--out DIR] [--kinds K ...] [--renderers quick json]
                                 [--timeout 120] [--jobs 2] [--seed 18]

Builds the default image (``spyeye-win7``) into DIR when it is missing, makes one damaged
copy per kind (``fixtures/damage.py``), runs each plugin on the clean image and on every
copy as a ``vol`` child process (its own Volatility cache) and prints a Markdown table per
renderer: ok / warning / error (non-zero exit) / traceback / hang (killed at the timeout),
then the wall time of each plugin on the huge-VAD damages against the clean image, and
the peak RSS of all runs."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fixtures.damage import KINDS, make_damaged  # noqa: E402

PLUGINS = {
    "info": ["spyeye.info"],
    "vadsearch": ["spyeye.vadsearch", "--keyword", "cleansweep.exe", "__HUGE_VAD_KEYWORD__"],
    "config": ["spyeye.config"],
    "injected": ["spyeye.injected"],
    "apiscore": ["spyeye.apiscore"],
    "timeline": ["spyeye.timeline"],
    "hooks": ["spyeye.hooks"],
}
HUGE = ("vad-end-huge", "vad-span-2^47", "vad-all-user")


def run(image: Path, plugin: List[str], renderer: str, timeout: float, cache: str) -> Dict:
    """One child ``vol`` run: status, seconds, peak RSS MiB, first warning."""
    cmd = ["/usr/bin/time", "-f", "%M", str(Path(sys.executable).parent / "vol"), "-q", "-p",
           str(ROOT / "spyeye_plugins"), "-r", renderer, "-f", str(image), *plugin]
    env = dict(os.environ, XDG_CACHE_HOME=cache, PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"status": "hang", "seconds": timeout, "rss": 0.0, "note": ""}
    seconds = time.perf_counter() - start
    lines = proc.stderr.strip().splitlines()
    rss = int(lines.pop()) / 1024 if lines and lines[-1].isdigit() else 0.0
    warnings = [line for line in lines if line.startswith("WARNING") and "framework.symbols" not in line]
    if "Traceback" in proc.stderr:
        status = "traceback"
    elif proc.returncode:
        status = "error"
    else:
        status = "warning" if warnings else "ok"
    note = (lines[-1] if status in ("error", "traceback") and lines else warnings[0] if warnings else "")
    return {"status": status, "seconds": seconds, "rss": rss, "note": note[:200]}


def ensure_clean(out: Path) -> Tuple[Path, Path]:
    image, truth = out / "spyeye-win7.raw", out / "spyeye-win7.truth.json"
    if not image.exists() or not truth.exists():
        subprocess.run([sys.executable, "-m", "fixtures", "build", "--out", str(out)], check=True, cwd=ROOT)
    return image, truth


def table(results: Dict[Tuple[str, str, str], Dict], kinds: List[str], renderer: str) -> str:
    rows = [f"| kind ({renderer}) | " + " | ".join(PLUGINS) + " |", "|---" * (len(PLUGINS) + 1) + "|"]
    for kind in kinds:
        rows.append(f"| {kind} | " + " | ".join(results[(kind, name, renderer)]["status"] for name in PLUGINS) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "spyeye-damage")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS))
    parser.add_argument("--renderers", nargs="+", default=["quick"])
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=18)
    args = parser.parse_args()
    image, truth = ensure_clean(args.out)
    manifest = make_damaged(image, truth, args.out / "damaged", args.kinds, args.seed)
    images = {"clean": image, **{kind: Path(entry["image"]) for kind, entry in manifest.items()}}
    kinds = list(images)
    cache = tempfile.mkdtemp(prefix="spyeye-bench-cache-")
    jobs = [(kind, name, renderer) for renderer in args.renderers for kind in kinds for name in PLUGINS]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {job: pool.submit(run, images[job[0]], PLUGINS[job[1]], job[2], args.timeout, cache)
                   for job in jobs}
        results = {job: future.result() for job, future in futures.items()}
    for renderer in args.renderers:
        print(table(results, kinds, renderer), "\n")
    counts: Dict[str, int] = {}
    for result in results.values():
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    print(f"{len(results)} runs: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in
                                              ("ok", "warning", "error", "traceback", "hang")))
    print(f"peak RSS of any run: {max(r['rss'] for r in results.values()):.0f} MiB\n")
    first = args.renderers[0]
    huge = [kind for kind in HUGE if kind in images]
    print("| plugin | clean s | " + " | ".join(f"{kind} s" for kind in huge) + " |")
    print("|---" * (len(huge) + 2) + "|")
    for name in PLUGINS:
        cells = [f"{results[(kind, name, first)]['seconds']:.1f}" for kind in ["clean", *huge]]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nnon-ok notes:")
    for (kind, name, renderer), result in sorted(results.items()):
        if result["status"] in ("error", "traceback", "hang"):
            print(f"- {kind} {name} {renderer}: {result['status']}: {result['note']}")
    (args.out / "bench_damage.json").write_text(json.dumps(
        {"|".join(key): value for key, value in results.items()}, indent=1))


if __name__ == "__main__":
    main()
