"""What every benchmark script shares: the image, running a child process with
its time and peak memory, and the ``vol`` command line."""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))      # the builder's profiles, for ``--os`` and the image's name

from fixtures import profiles, scenarios  # noqa: E402

DEFAULT_OS = profiles.DEFAULT


def image_name(os: str = DEFAULT_OS) -> str:
    """The file name ``python -m fixtures build --scenario bench-large --os OS`` writes
    (``bench-large.raw``, ``bench-large-win10.raw`` …)."""
    return f"{scenarios.bench_large_name(os)}.raw"


def default_image(os: str = DEFAULT_OS) -> Path:
    return ROOT / "images" / image_name(os)


DEFAULT_IMAGE = default_image()


def ensure_image(image: Path, os: str = DEFAULT_OS) -> Path:
    """Build the bench-large image for ``os`` in ``image``'s directory when ``image`` is missing.
    The builder chooses the file name, so ``image`` must be named as it names it."""
    if not image.exists():
        if image.name != image_name(os):
            raise SystemExit(f"{image} is missing and cannot be built under that name: the builder "
                             f"writes bench-large for {os} as {image_name(os)} "
                             f"(use --image {image.parent / image_name(os)})")
        subprocess.run([sys.executable, "-m", "fixtures", "build", "--scenario", "bench-large",
                        "--os", os, "--out", str(image.parent)], check=True, cwd=ROOT)
        if not image.exists():
            raise SystemExit(f"the builder did not write {image}; see its output above for the name it used")
    return image


def add_image_options(parser: argparse.ArgumentParser) -> None:
    """``--os`` (the builder's profiles) and ``--image`` (default ``images/`` + the OS's name)."""
    parser.add_argument("--os", default=DEFAULT_OS, choices=sorted(profiles.PROFILES),
                        help=f"OS profile of the bench-large image to build when it is missing "
                             f"(as `python -m fixtures build --os`; default {DEFAULT_OS})")
    parser.add_argument("--image", type=Path, default=None,
                        help=f"the image (default images/{image_name()} for {DEFAULT_OS}, "
                             f"images/bench-large-<short>.raw otherwise, e.g. {image_name('win10-x64')})")


def image_from_args(args: argparse.Namespace) -> Path:
    """The image ``add_image_options``' options name, built when missing."""
    return ensure_image(args.image or default_image(args.os), args.os)


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
