"""What every benchmark script shares: the image, running a child process with
its time and peak memory, and the ``vol`` command line."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = ROOT / "images" / "bench-large.raw"


def ensure_image(image: Path) -> Path:
    """Build the bench-large image at ``image`` when it is missing."""
    if not image.exists():
        subprocess.run([sys.executable, "-m", "fixtures", "build", "--scenario", "bench-large",
                        "--out", str(image.parent)], check=True, cwd=ROOT)
    return image


def warm_page_cache(image: Path) -> None:
    """Read the image once, so the first tool measured does not pay for the disk alone."""
    with open(image, "rb") as handle:
        while handle.read(16 << 20):
            pass


def measure(cmd: List[str]) -> Tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of a child process; exits if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return elapsed, int(proc.stderr.strip().splitlines()[-1]) / 1024, proc.stdout


def vol(*args: str, suite: bool = True) -> List[str]:
    """``vol -q -r csv`` with the project's symbols and, with ``suite``, its plugins."""
    plugins = ["-p", str(ROOT / "spyeye_plugins")] if suite else []
    return [str(Path(sys.executable).parent / "vol"), "-q", *plugins, "-s", str(ROOT / "symbols"),
            "-r", "csv", *args]
