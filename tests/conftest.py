"""Shared fixtures: the default synthetic image, built once per test run."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

# A private Volatility cache for this test session, set before Volatility is imported (its
# constants read XDG_CACHE_HOME once) and inherited by every ``vol`` subprocess: runs that
# share a cache can make Volatility delete a symbol file (upstream issue 1255).
PRIVATE_CACHE = tempfile.mkdtemp(prefix="spyeye-tests-cache-")
os.environ["XDG_CACHE_HOME"] = PRIVATE_CACHE
if "volatility3.framework.constants" in sys.modules:        # imported early by a plugin: repoint it
    sys.modules["volatility3.framework.constants"].CACHE_PATH = os.path.join(PRIVATE_CACHE, "volatility3")
from typing import Dict, Tuple

import pytest

from fixtures.build import write_image
from fixtures.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
# a real Windows 7 SP1 x64 kernel ISF: $SPYEYE_WIN7_ISF, else the one ../shared held
REAL_WIN7_ISF = Path(os.environ.get("SPYEYE_WIN7_ISF") or SHARED / "reference" / "symbols" / "windows" /
                     "ntkrnlmp.pdb" / "3844DBB920174967BE7AA4A2C20430FA-2.json.xz")  # in a <dir>/windows/ntkrnlmp.pdb/ tree


def pytest_unconfigure(config) -> None:
    shutil.rmtree(PRIVATE_CACHE, ignore_errors=True)


def _build(tmp_path_factory, name: str, isf=None) -> Tuple[Path, Dict]:
    out = tmp_path_factory.mktemp(name)
    image, truth = write_image(SCENARIOS["spyeye-win7"](), out, isf)
    return image, json.loads(truth.read_text())


@pytest.fixture(scope="session")
def win7_image(tmp_path_factory) -> Tuple[Path, Dict]:
    """(image path, ground truth) of the default scenario, project ISF."""
    return _build(tmp_path_factory, "win7")


@pytest.fixture(scope="session")
def win7_real_isf_image(tmp_path_factory) -> Tuple[Path, Dict]:
    """The same scenario built against the real Windows 7 SP1 x64 ISF."""
    if not REAL_WIN7_ISF.exists():
        pytest.skip(f"no real Windows 7 SP1 x64 ISF at {REAL_WIN7_ISF} (set SPYEYE_WIN7_ISF)")
    return _build(tmp_path_factory, "win7real", REAL_WIN7_ISF)


# --- Windows 10 x64 (19041) images: fixtures.profiles "win10-x64" ---------------------------

# the real 19041 kernel ISF (10.0.19041.2965): $SPYEYE_WIN10_ISF, else the one ../shared holds
REAL_WIN10_ISF = Path(os.environ.get("SPYEYE_WIN10_ISF") or SHARED / "reference" / "symbols" / "windows" /
                      "ntkrnlmp.pdb" / "89284D0CA6ACC8274B9A44BD5AF9290B-1.json.xz")


def _build_os(tmp_path_factory, name: str, os_name: str, isf=None) -> Tuple[Path, Dict]:
    out = tmp_path_factory.mktemp(name)
    image, truth = write_image(SCENARIOS["spyeye"](os_name), out, isf)
    return image, json.loads(truth.read_text())


@pytest.fixture(scope="session")
def win10_image(tmp_path_factory) -> Tuple[Path, Dict]:
    """(image path, ground truth) of the default scenario on Windows 10 19041 x64, project ISF."""
    return _build_os(tmp_path_factory, "win10", "win10-x64")


@pytest.fixture(scope="session")
def win10_real_isf_image(tmp_path_factory) -> Tuple[Path, Dict]:
    """The same Windows 10 scenario built against the real 19041 kernel ISF."""
    if not REAL_WIN10_ISF.exists():
        pytest.skip(f"no real Windows 10 19041 x64 ISF at {REAL_WIN10_ISF} (set SPYEYE_WIN10_ISF)")
    return _build_os(tmp_path_factory, "win10real", "win10-x64", REAL_WIN10_ISF)


# --- Windows 7 SP1 x86 images: fixtures.profiles "win7-x86" (project table only: no real x86 ISF) ---

@pytest.fixture(scope="session")
def win7_x86_image(tmp_path_factory) -> Tuple[Path, Dict]:
    """(image path, ground truth) of the default scenario on Windows 7 SP1 x86 (non-PAE)."""
    return _build_os(tmp_path_factory, "win7x86", "win7-x86")


@pytest.fixture(scope="session")
def xp_x86_image(tmp_path_factory) -> Tuple[Path, Dict]:
    """(image path, ground truth) of the default scenario on Windows XP SP3 x86 (non-PAE)."""
    return _build_os(tmp_path_factory, "xpx86", "xp-x86")
