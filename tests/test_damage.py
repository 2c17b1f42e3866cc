"""Damaged images (issue 18): every plugin, as ``vol`` runs it, on copies of the default image
damaged by ``fixtures/damage.py``: no traceback, no hang (a subprocess timeout), exit status
0, the expected warning, and what lies outside the damage found exactly as on the clean image
and in the ground truth.  The kinds are the ones with distinct code paths (an impossible
huge VAD, garbage page tables, a cyclic VAD tree, an absurd PE header, a broken EVTX chunk);
``bench/bench_damage.py`` runs the full sweep.  Also the parsers' side of the two silent
losses, without images."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pefile
import pytest

from fixtures.damage import make_damaged
from fixtures.evtx_writer import CHUNK_HEADER_SIZE, EvtxRecordSpec, build_chunk
from spyeye_plugins.spyeye.parsers.eventlog import carve_evtx
from spyeye_plugins.spyeye.parsers.pe_image import inspect_header, parse_mapped_image
from tests.vol_runner import ROOT

TIMEOUT = 120           # seconds: a hang fails the test; not a speed bound
DLL_DIR = ROOT / "fixtures" / "dlls"
PLUGINS = {
    "info": ["spyeye.info"],
    "vadsearch": ["spyeye.vadsearch", "--keyword", "C:\\cleansweep.exe\\config.bin", "__HUGE_VAD_KEYWORD__",
                  "cleansweep.exe"],
    "config": ["spyeye.config"],
    "injected": ["spyeye.injected"],
    "apiscore": ["spyeye.apiscore"],
    "timeline": ["spyeye.timeline"],
    "hooks": ["spyeye.hooks"],
}
# kind -> (plugins run on it, warning every plugin but info gives, PID the damage is in)
# (the plugins that read page tables or walk VADs on the kinds that reach them: the test
# module stays within about two minutes; the sweep runs every plugin on every kind)
KINDS: Dict[str, Tuple[List[str], Optional[str], Optional[int]]] = {
    "vad-end-huge": (list(PLUGINS), "impossible VAD 0x100000000-0xfffffffffff (ends past the user address "
                                    "limit 0x7fffffeffff; overlaps the next VAD at 0x7fefd8a0000)", 3012),
    "pd-random": (["vadsearch", "config", "injected", "timeline", "hooks"], None, 3012),
    "vad-cycle": (["vadsearch", "config", "injected"], "the process counts 14", 3012),
    "pe-counts": (["injected"], "NumberOfSections 0xffff absurd", 1484),
    "evtx-free-space": (["timeline"], "runs past the chunk's free-space offset 0x210", None),
    "process-cycle": (["injected"], ("The active process list does not close forward (Flink): after 13 processes, "
                                   "PID 1484 (explorer.exe) leads to PID 268 (smss.exe) again (a cycle)"), None),
}


def _vol(image: Path, args: List[str]) -> subprocess.CompletedProcess:
    vol = Path(sys.executable).parent / "vol"
    env = dict(os.environ, PYTHONWARNINGS="ignore")     # XDG_CACHE_HOME: the session's (conftest)
    return subprocess.run([str(vol), "-q", "-p", str(ROOT / "spyeye_plugins"), "-r", "json", "-f", str(image),
                           *args], capture_output=True, text=True, env=env, timeout=TIMEOUT)


def _flat(rows: List[Dict], depth: int = 0) -> List[Dict]:
    out = []
    for row in rows:
        children = row.pop("__children", [])
        out.append(dict(row, __depth=depth))
        out += _flat(children, depth + 1)
    return out


@pytest.fixture(scope="module")
def manifest(win7_image, tmp_path_factory) -> Dict[str, Dict]:
    """The damaged copies of the default image (``fixtures/damage.py``'s manifest)."""
    image, truth = win7_image
    return make_damaged(image, image.with_name(f"{truth['scenario']}.truth.json"),
                        tmp_path_factory.mktemp("damaged"), list(KINDS))


@pytest.fixture(scope="module")
def runs(win7_image, manifest) -> Dict[Tuple[str, str], Dict]:
    """(kind or "clean", plugin) -> {"out": CompletedProcess or None (hang), "rows": [...]},
    two ``vol`` runs at a time."""
    image, _ = win7_image
    jobs = [("clean", name) for name in PLUGINS] + [(kind, name) for kind, (names, _, _) in KINDS.items()
                                                     for name in names]
    images = {"clean": image, **{kind: Path(entry["image"]) for kind, entry in manifest.items()}}

    def one(job):
        try:
            out = _vol(images[job[0]], PLUGINS[job[1]])
        except subprocess.TimeoutExpired:
            return {"out": None, "rows": []}
        try:
            rows = _flat(json.loads(out.stdout)) if out.returncode == 0 else []
        except json.JSONDecodeError:
            rows = []
        return {"out": out, "rows": rows}
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(jobs, pool.map(one, jobs)))


CASES = [(kind, name) for kind, (names, _, _) in KINDS.items() for name in names]


@pytest.mark.parametrize("kind,name", [("clean", name) for name in PLUGINS] + CASES)
def test_every_plugin_ends_cleanly_with_the_expected_warning(runs, kind, name):
    result = runs[(kind, name)]
    out = result["out"]
    assert out is not None, f"{name} on {kind}: no answer within {TIMEOUT} s (hang)"
    assert "Traceback" not in out.stderr and out.returncode == 0, out.stderr[-3000:]
    assert result["rows"], out.stdout[-500:]
    warning = KINDS[kind][1] if kind in KINDS else None
    if kind == "clean":     # the damage warnings never fire on a sound image
        assert not any(w in out.stderr for w in ("impossible VAD", "the process counts", "--max-vad-size",
                                                   "does not close")), out.stderr
    if warning and name != "info":
        assert warning in out.stderr, out.stderr[-3000:]


def _comparable(row: Dict) -> str:
    return json.dumps(row, sort_keys=True)


@pytest.mark.parametrize("kind,name", [case for case in CASES if KINDS[case[0]][2] is not None])
def test_rows_outside_the_damaged_process_are_those_of_the_clean_image(runs, kind, name):
    """Every plugin reports every other process exactly as on the clean image."""
    pid = KINDS[kind][2]
    clean = [_comparable(r) for r in runs[("clean", name)]["rows"] if r.get("PID") != pid]
    damaged = [_comparable(r) for r in runs[(kind, name)]["rows"] if r.get("PID") != pid]
    assert clean and damaged == clean


def _plant(truth, label: str) -> Dict:
    return next(p for p in truth["plants"] if p["label"] == label)


@pytest.mark.parametrize("kind", ["vad-end-huge", "vad-cycle"])
def test_keywords_in_the_damaged_process_are_still_found(win7_image, runs, kind):
    _, truth = win7_image
    found = {(r["PID"], r["Address"], r["Pattern"], r["VAD Start"], r["VAD End"])
             for r in runs[(kind, "vadsearch")]["rows"]}
    huge, ascii_ = _plant(truth, "bot-huge-vad"), _plant(truth, "bot-ascii")
    expected = {(ascii_["pid"], ascii_["va"], "C:\\cleansweep.exe\\config.bin", ascii_["vad_start"],
                 ascii_["vad_end"])}
    # in the cut VAD, whose row keeps the range the VAD claims
    end = 0xFFFFFFFFFFF if kind == "vad-end-huge" else huge["vad_end"]
    expected.add((huge["pid"], huge["va"], "__HUGE_VAD_KEYWORD__", huge["vad_start"], end))
    assert expected <= found


def test_vad_cycle_names_what_the_tree_lost(win7_image, runs):
    out = runs[("vad-cycle", "vadsearch")]["out"]
    pid = _plant(win7_image[1], "bot-ascii")["pid"]
    assert f"PID {pid}: the VAD tree gave " in out.stderr and "a damaged or cyclic tree?" in out.stderr


@pytest.mark.parametrize("kind", ["vad-end-huge", "pd-random", "vad-cycle"])
def test_artifacts_of_the_damaged_process_outside_the_damage_are_decoded(win7_image, manifest, runs, kind):
    _, truth = win7_image
    rows, lost = runs[(kind, "config")]["rows"], set(manifest[kind]["affected_plants"])
    for label in ("spyeye-config-c1-utf16", "spyeye-config-config-image"):
        plant = _plant(truth, label)
        assert label not in lost and any(
            r["PID"] == plant["pid"] and r["Address"] == plant["va"] and r["Kind"] == plant["meta"]["artifact"]
            and r["__depth"] == 0 for r in rows), label
    images = {(r["PID"], r["VAD Start"]) for r in runs[(kind, "injected")]["rows"]}
    for label in ("injected-bot-absurd-count", "injected-bot-header-only"):
        plant = _plant(truth, label)
        assert ((plant["pid"], plant["vad_start"]) in images) is (label not in lost), label
    if kind == "vad-cycle":        # the lost subtree holds these two: the test above can fail
        assert {"injected-bot-absurd-count", "injected-bot-header-only"} <= lost


def test_pe_with_absurd_section_count_is_listed_with_a_warning_and_its_exports(win7_image, runs):
    _, truth = win7_image
    plant = _plant(truth, "injected-explorer-spyplugin")
    directory = pefile.PE(str(DLL_DIR / plant["meta"]["dll"])).DIRECTORY_ENTRY_EXPORT
    (row,) = [r for r in runs[("pe-counts", "injected")]["rows"]
              if r["PID"] == plant["pid"] and r["VAD Start"] == plant["vad_start"]]
    assert row["DLL Name"] == directory.name.decode() and row["Exports"] == len(directory.symbols) == 19
    assert "section table invalid: NumberOfSections 0xffff absurd" in row["Warnings"]
    assert "NumberOfSections 0xffff absurd" in row["Reason"]


def test_evtx_chunk_with_free_space_inside_its_first_record_keeps_that_record(win7_image, runs):
    _, truth = win7_image
    plant = _plant(truth, "timeline-System.evtx")
    first = plant["meta"]["records"][0]
    rows = runs[("evtx-free-space", "timeline")]["rows"]
    mine = [r for r in rows if r["Source"] == "eventlog" and f"(record {first['record_id']}," in r["Detail"]
            and first["provider"] in r["Detail"]]
    assert mine and all(r["Time"].startswith(first["time"][:19]) for r in mine), mine
    clean = [r for r in runs[("clean", "timeline")]["rows"] if r["Source"] == "eventlog"]
    assert len([r for r in rows if r["Source"] == "eventlog"]) == len(clean)


# --------------------------------------------------------------------------- parsers, no image


def _pe_header(sections: int) -> bytes:
    page = bytearray(0x1000)
    page[0:2] = b"MZ"
    struct.pack_into("<I", page, 0x3C, 0x80)
    page[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<HHIIIHH", page, 0x84, 0x8664, sections, 0x4E000000, 0, 0, 0xF0, 0x2022)
    opt = 0x98
    struct.pack_into("<H", page, opt, 0x20B)
    struct.pack_into("<Q", page, opt + 24, 0x180000000)
    struct.pack_into("<II", page, opt + 32, 0x1000, 0x200)
    struct.pack_into("<I", page, opt + 56, 0x3000)
    struct.pack_into("<I", page, opt + 108, 16)
    struct.pack_into("<8sIIII", page, opt + 0xF0, b".text", 0x1000, 0x1000, 0x200, 0x400)
    return bytes(page)


@pytest.mark.parametrize("count,listed", [(1, True), (0xFFFF, True), (0, True)])
def test_pe_parser_keeps_headers_under_an_intact_signature_whatever_the_section_count(count, listed):
    page = _pe_header(count)
    header = inspect_header(page)
    assert header.is_pe is listed and header.machine == "x64"
    pe = parse_mapped_image(lambda rva, n: (page + bytes(0x2000))[rva:rva + n], 0x3000, 0x180000000)
    assert pe.size_of_image == 0x3000 and pe.machine == "x64"
    absurd = count != 1
    assert any(f"NumberOfSections {count:#x} absurd" in w for w in pe.warnings) is absurd


def test_pe_scan_without_signature_still_rejects_absurd_section_counts():
    page = bytearray(_pe_header(0xFFFF))
    page[0:2], page[0x80:0x84] = b"\0\0", b"\0\0\0\0"
    assert not inspect_header(bytes(page)).is_pe


def _chunk(free: int) -> Tuple[bytes, List[EvtxRecordSpec]]:
    """A chunk of five records whose header (CRC recomputed) puts the free space at ``free``."""
    specs = [EvtxRecordSpec(record_id=40 + n, time=datetime(2011, 11, 27, 10, n, tzinfo=timezone.utc),
                            event_id=7045, provider="Service Control Manager", channel="System",
                            computer="JOHN-PC", data=[f"value {n}"], level=4) for n in range(5)]
    chunk = bytearray(build_chunk(specs))
    struct.pack_into("<I", chunk, 0x30, free)
    struct.pack_into("<I", chunk, 0x7C, zlib.crc32(bytes(chunk[:0x78] + chunk[0x80:CHUNK_HEADER_SIZE])))
    return bytes(chunk), specs


@pytest.mark.parametrize("free", [CHUNK_HEADER_SIZE + 0x10, CHUNK_HEADER_SIZE + 1, CHUNK_HEADER_SIZE])
def test_chunk_records_are_recovered_whatever_its_free_space_offset_says(free):
    chunk, specs = _chunk(free)
    carved = list(carve_evtx(chunk))
    assert [r.record_id for r in carved] == [s.record_id for s in specs]
    assert [r.time for r in carved] == [s.time for s in specs]
    first = carved[0]
    assert first.warnings[0] == (f"runs past the chunk's free-space offset {free:#x}" if free > CHUNK_HEADER_SIZE
                                 else f"in chunk slack at {CHUNK_HEADER_SIZE:#x} (beyond free-space offset)")
