"""Real-code evaluation of ``spyeye.apiscore``: score every DLL and ``.pyd`` inside the
Windows wheels of a fixed list of well-known PyPI packages, each mapped as if injected.

    python bench/eval_realcode.py [--cache DIR] [--max-bytes N] [--offline] [--headerless]

Wheels are fetched with ``pip download --only-binary=:all: --no-deps --platform P
--python-version 3.11`` for P in win_amd64 and win32, and cached under ``--cache`` (default
``$SPYEYE_BENCH_CACHE`` or ``~/.cache/spyeye-bench``, outside the repository); ``--offline``
uses only what is cached. Each image is laid out as the loader maps it
(``fixtures/pe_mapper.py``) and scored by the same pure code the plugin runs on a flagged
image (entry point and exports, ``parsers/api_traits.analyse``). The planted resolvers
(``fixtures/shellcode``) are scored alongside as the positive control. Prints Markdown.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Iterator, List, NamedTuple, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fixtures.pe_mapper import map_image  # noqa: E402
from spyeye_plugins.spyeye.parsers import api_traits  # noqa: E402
from spyeye_plugins.spyeye.parsers.pe_image import parse_mapped_image  # noqa: E402

PLATFORMS = ("win_amd64", "win32")
PYTHON = "3.11"
COMMON = (
    "aiohttp==3.14.5", "bcrypt==5.0.0", "bitarray==3.12.3", "brotli==1.2.1", "cffi==2.1.1",
    "charset-normalizer==3.5.3", "contourpy==1.3.3", "coverage==7.18.0", "cython==3.3.1",
    "frozenlist==1.8.0", "lxml==6.2.0", "lz4==4.4.5", "markupsafe==3.0.4", "mmh3==5.3.1",
    "msgpack==1.2.4", "multidict==7.2.1", "numpy==2.4.6", "pillow==13.0.0", "propcache==0.5.4",
    "pycryptodome==4.5.0", "pymongo==4.20.1", "pynacl==1.6.2", "pyodbc==5.5.0", "pyrsistent==0.20.0",
    "pywin32==312", "pyyaml==6.0.4", "pyzmq==27.3.0", "regex==2026.12.2", "simplejson==4.3.0",
    "sqlalchemy==2.1.9", "ujson==6.1.0", "websockets==17.4", "wrapt==2.5.2", "xxhash==4.1.0",
    "yarl==1.25.1", "zstandard==0.25.0",
)
PACKAGES = {
    "win_amd64": COMMON + ("cryptography==50.0.2", "greenlet==3.5.6", "kiwisolver==1.5.1", "matplotlib==3.11.2",
                           "pandas==3.1.1", "psutil==7.2.2", "zope.interface==8.7"),
    "win32": COMMON + ("cryptography==48.0.1", "kiwisolver==1.4.7", "matplotlib==3.7.5", "pandas==2.0.3",
                       "psutil==7.1.1", "zope.interface==5.5.1"),
}
"""Fixed list, pinned: the newest release of each with a CPython 3.11 wheel for the platform
when the list was made (greenlet has no win32 wheel; yarl's win32 wheel is pure Python)."""
MAX_IMAGE = 64 << 20


class Image(NamedTuple):
    package: str
    platform: str
    name: str
    data: bytes


class Result(NamedTuple):
    image: Image
    score: Optional[int]
    confidence: str
    traits: str
    function: str
    size: int
    instructions: int
    seconds: float


def default_cache() -> Path:
    return Path(os.environ.get("SPYEYE_BENCH_CACHE") or Path.home() / ".cache" / "spyeye-bench")


def download(cache: Path, package: str, platform: str, offline: bool) -> Optional[Path]:
    """The cached wheel of ``package`` for ``platform``, downloaded when missing."""
    target = cache / platform
    target.mkdir(parents=True, exist_ok=True)
    name, _, version = package.partition("==")
    stem = f"{name.replace('-', '_').replace('.', '_').lower()}-{version}-"
    cached = [w for w in target.glob("*.whl") if w.name.lower().replace(".", "_").startswith(stem.replace(".", "_"))]
    if cached or offline:
        return cached[0] if cached else None
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--no-deps",
                           "--platform", platform, "--python-version", PYTHON, "-d", str(target), package],
                          capture_output=True, text=True)
    if proc.returncode:
        return None
    return download(cache, package, platform, offline=True)


def images(wheel: Path, package: str, platform: str) -> Iterator[Image]:
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if info.filename.lower().endswith((".dll", ".pyd")) and info.file_size <= MAX_IMAGE:
                yield Image(package, platform, info.filename, archive.read(info))


def score_image(image: Image, max_bytes: int, headerless: bool = False) -> Result:
    """Map the file as the loader would and score it as the plugin scores a flagged image
    (``headerless``: as a private region without a PE header, by linear sweep)."""
    start = time.process_time()
    try:
        mapped = map_image(image.data)
    except Exception as exc:  # noqa: BLE001 - a malformed file is reported, not fatal
        return Result(image, None, "N/A", f"unmappable: {exc}", "", len(image.data), 0, 0.0)
    analysis = score_mapped(mapped, max_bytes, headerless=headerless)
    seconds = time.process_time() - start
    if analysis is None:
        return Result(image, None, "N/A", "not an x86/x64 PE", "", len(mapped), 0, seconds)
    return Result(image, analysis.score, analysis.confidence, ",".join(analysis.traits),
                  analysis.function or "", len(mapped), analysis.instructions, seconds)


def score_mapped(mapped: bytes, max_bytes: int, base: Optional[int] = None,
                 headerless: bool = False) -> Optional[api_traits.Analysis]:
    """The plugin's analysis of a mapped image (``base``: its header ImageBase by default)."""
    pe = parse_mapped_image(lambda off, n: mapped[off:off + n], len(mapped), base or 0)
    if pe.machine not in ("x86", "x64"):
        return None
    if base is None:
        pe = parse_mapped_image(lambda off, n: mapped[off:off + n], len(mapped), pe.header_image_base)
    bits = 64 if pe.machine == "x64" else 32
    if headerless:
        return api_traits.analyse(mapped[:max_bytes], pe.base, bits, None, max_bytes)
    return api_traits.analyse_image(mapped[:max_bytes], pe, bits, max_bytes)


def planted(max_bytes: int) -> List[tuple]:
    """(name, score) of every planted resolver blob, scored by linear sweep as in the image."""
    out = []
    for blob in sorted((ROOT / "fixtures" / "shellcode").glob("*.bin")):
        if blob.stem.split("_")[0] in ("ror13", "rol7xor", "crc32"):
            bits = 64 if blob.stem.endswith("x64") else 32
            out.append((blob.name, api_traits.analyse(blob.read_bytes(), 0x0C000000, bits, None, max_bytes).score))
    return out


def report(results: List[Result], missing: List[str], plants: List[tuple], seconds: float) -> None:
    scored = [r for r in results if r.score is not None]
    scores = [r.score for r in scored]
    print(f"{len(results)} images ({len(scored)} scored, {len(results) - len(scored)} N/A) from "
          f"{len({(r.image.package, r.image.platform) for r in results})} wheels of "
          f"{len({r.image.package.partition('==')[0] for r in results})} packages, "
          f"{sum(r.size for r in results) / 2**20:.0f} MiB mapped, "
          f"{sum(r.instructions for r in results)} instructions decoded; analysis CPU {seconds:.0f} s\n")
    if missing:
        print(f"no wheel: {', '.join(missing)}\n")
    if scores:
        low = sum(s <= 20 for s in scores)
        print(f"score <= 20: {low} of {len(scores)} ({100.0 * low / len(scores):.1f}%); "
              f"> 45: {sum(s > 45 for s in scores)}; max {max(scores)}\n")
    print("| score | images |\n|---|---|")
    for value, count in sorted(Counter(scores).items()):
        print(f"| {value} | {count} |")
    print("\n| confidence | images |\n|---|---|")
    for word, count in sorted(Counter(r.confidence for r in results).items()):
        print(f"| {word} | {count} |")
    print("\nhighest-scoring images:\n\n| package | platform | file | KiB | score | traits | function |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(scored, key=lambda r: -r.score)[:10]:
        print(f"| {r.image.package} | {r.image.platform} | {r.image.name} | {r.size // 1024} | {r.score} | "
              f"{r.traits} | {r.function} |")
    print("\nplanted resolvers (positive control):\n\n| blob | score |\n|---|---|")
    for name, value in plants:
        print(f"| {name} | {value} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=default_cache())
    parser.add_argument("--max-bytes", type=lambda v: int(v, 0), default=api_traits.DEFAULT_MAX_BYTES)
    parser.add_argument("--offline", action="store_true", help="use only cached wheels")
    parser.add_argument("--headerless", action="store_true",
                        help="score each image as headerless code (linear sweep), not from its exports")
    parser.add_argument("--list", type=Path, help="also write one TSV line per image here")
    args = parser.parse_args()
    results: List[Result] = []
    missing: List[str] = []
    for platform in PLATFORMS:
        for package in PACKAGES[platform]:
            wheel = download(args.cache, package, platform, args.offline)
            if wheel is None:
                missing.append(f"{package} ({platform})")
                continue
            results += [score_image(image, args.max_bytes, args.headerless) for image in images(wheel, package, platform)]
    seconds = sum(r.seconds for r in results)
    if args.list:
        with open(args.list, "w") as handle:
            for r in results:
                digest = hashlib.sha256(r.image.data).hexdigest()[:16]
                handle.write(f"{r.image.package}\t{r.image.platform}\t{r.image.name}\t{r.size}\t{r.score}\t"
                             f"{r.confidence}\t{r.traits}\t{r.function}\t{r.instructions}\t{r.seconds:.2f}\t{digest}\n")
    report(results, missing, planted(args.max_bytes), seconds)


if __name__ == "__main__":
    main()
