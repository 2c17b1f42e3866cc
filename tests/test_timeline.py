"""``spyeye.timeline`` on the default image, checked row for row against the ground truth."""
from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from Evtx.Evtx import Evtx as PyEvtx

from fixtures.build import write_image
from fixtures.evtx_writer import CHUNK_SIZE, EvtxRecordSpec, build_chunk, build_file, build_lone_record
from fixtures.kernel import filetime
from fixtures.plants.injected import BASE as CCGRABBER_BASE, SECOND
from fixtures.plants.timeline import (
    AFTER_CAPTURE_RECORD, AFTER_EXIT_CONNECTION, BEFORE_BOOT_CONNECTION, BURST_EXPORTS, CORRUPT_RECORD_ID,
    COMPUTER, FIREFOX_BURST, OTHER_COMPUTER, RTL_USER_THREAD_START, SHELLCODE_VA, clean_win7, export_addresses,
)
from tests.vol_runner import FileCollector, plugin_module, run_cli, run_plugin

PLUGIN = "spyeye.timeline.Timeline"
timeline = plugin_module("spyeye.timeline")  # the module as Volatility loaded it (one plugin class)
vadwalk = plugin_module("spyeye.vadwalk")
UsageError = plugin_module("spyeye.output").UsageError
SOURCES = timeline.SOURCES
MASK48 = (1 << 48) - 1  # Volatility reads pointers masked to the 48-bit address space
Key = Tuple[datetime, str, str, Optional[int]]


def exact(unix: float) -> datetime:
    """The builder's FILETIME for ``unix``, read back to the microsecond."""
    return datetime(1601, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=filetime(unix) // 10)


def iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.fixture(scope="module")
def rows(win7_image) -> List[Dict]:
    image, _ = win7_image
    return run_plugin(image, PLUGIN)


def key(row: Dict) -> Key:
    return (row["Time"], row["Source"], row["Action"], row["PID"])


def _sort(keys: List[Key]) -> List[Key]:
    return sorted(keys, key=lambda k: (k[0], SOURCES.index(k[1]), -1 if k[3] is None else k[3], k[2]))


def _evtx_plants(truth) -> List[Dict]:
    return [p for p in truth["plants"] if p["kind"] in ("evtx-file", "evtx-record")]


def expected_rows(truth) -> List[Key]:
    """Every event the truth implies, in timeline order."""
    out: List[Key] = []
    for proc in truth["processes"]:
        if proc["pid"] != 4:
            out.append((exact(proc["create_time"]), "process", "created", proc["pid"]))
        if proc["exit_time"]:
            out.append((exact(proc["exit_time"]), "process", "exited", proc["pid"]))
    for thread in truth["threads"]:
        out.append((exact(thread["create_time"]), "thread", "created", thread["pid"]))
        if thread["exit_time"]:
            out.append((exact(thread["exit_time"]), "thread", "exited", thread["pid"]))
    for conn in truth["connections"]:
        action = "listening" if conn["state"] in ("LISTENING", "") else "connected"
        out.append((exact(conn["create_time"]), "network", action, conn["pid"]))
    for plant in truth["plants"]:
        if plant["kind"] in ("evtx-file", "evtx-record", "evt-file", "evt-record"):
            corrupt = plant["meta"].get("corrupt", [])
            out += [(iso(r["time"]), "eventlog", "logged", None)   # the holder is not the logger
                    for r in plant["meta"]["records"] if r["record_id"] not in corrupt]
    return _sort(out)


def test_timeline_matches_truth_row_for_row_in_order(win7_image, rows):
    _, truth = win7_image
    got = [key(r) for r in rows]
    assert got == _sort(got), "rows are not in time order"
    assert got == expected_rows(truth)
    assert all(r["Time"].tzinfo == timezone.utc for r in rows)


def test_the_infection_story_reads_in_order_to_the_microsecond(win7_image, rows):
    _, truth = win7_image
    story = [(r["Time"], r["Source"], r["Action"], r["PID"], r["Detail"].split(" (")[0])
             for r in rows if datetime(2011, 11, 27, 10, 0, 1, tzinfo=timezone.utc) <= r["Time"]
             <= datetime(2011, 11, 27, 10, 0, 8, 300000, tzinfo=timezone.utc)
             and r["Source"] in ("process", "network", "eventlog")]
    bot = next(p for p in truth["processes"] if p["pid"] == 3012)
    dropper = next(p for p in truth["processes"] if p["pid"] == 2940)
    t = exact(bot["create_time"])
    assert story == [
        (exact(dropper["create_time"]), "process", "created", 2940, "PPID 1484, EPROCESS at physical "
         f"{dropper['eprocess_phys']:#x}"),
        (exact(dropper["create_time"]), "eventlog", "logged", None, "Security 4688"),
        (t - timedelta(seconds=3), "network", "connected", 2940,
         "TCPv4 192.168.56.101:49160 -> 198.51.100.23:80 CLOSED"),
        (t, "process", "created", 3012, f"PPID 1484, EPROCESS at physical {bot['eprocess_phys']:#x}"),
        (t, "eventlog", "logged", None, "Security 4688"),
        (t, "eventlog", "logged", None, "Security 4688"),
        (t + timedelta(seconds=1), "eventlog", "logged", None, "System 7045"),
        (t + timedelta(seconds=1), "eventlog", "logged", None, "System 7045"),
        (t + timedelta(seconds=1.1), "eventlog", "logged", None, "System 7040"),
        (t + timedelta(seconds=1.25), "eventlog", "logged", None, "System 7036"),
        (t + timedelta(seconds=1.5), "process", "exited", 2940, "PPID 1484, EPROCESS at physical "
         f"{dropper['eprocess_phys']:#x}"),
        (t + timedelta(seconds=1.5), "eventlog", "logged", None, "Security 4689"),
        (t + timedelta(seconds=2.75), "network", "connected", 1484,
         "TCPv4 192.168.56.101:49163 -> 203.0.113.66:80 ESTABLISHED"),
    ]


def test_provenance_marks_exited_unlinked_process_threads_and_closed_connections(win7_image, rows):
    _, truth = win7_image
    by_pid = {p["pid"]: p for p in truth["processes"]}
    for row in (r for r in rows if r["Source"] == "process"):
        linked = by_pid[row["PID"]]["linked"]
        assert row["Provenance"] == ("pslist+psscan" if linked else
                                     "psscan only (exited, not in the active list)")
        assert row["Process"] == by_pid[row["PID"]]["image_file_name"]
    exited = [t for t in truth["threads"] if t["exit_time"]]
    got = {(r["PID"], r["Action"]): r["Provenance"] for r in rows
           if r["Source"] == "thread" and r["Detail"].startswith(f"TID {exited[0]['tid']},")}
    assert got == {(2940, "created"): "thrdscan only (exited, not in the active list)",
                   (2940, "exited"): "thrdscan only (exited, not in the active list)"}
    assert all(r["Provenance"] == "threads+thrdscan" for r in rows
               if r["Source"] == "thread" and r["PID"] != 2940)
    closed = [r for r in rows if r["Source"] == "network" and r["Detail"].endswith("CLOSED")]
    want = {c["offset_phys"] for c in truth["connections"] if c["closed"]}
    assert {int(r["Provenance"].rsplit("@ ", 1)[1], 16) for r in closed} == want and len(want) == 1


def _thread_detail(thread: Dict) -> str:
    start, win32 = thread["start"] & MASK48, thread["win32_start"] & MASK48
    if start == win32:
        return f"TID {thread['tid']}, start {start:#x}"
    if start == RTL_USER_THREAD_START:
        return f"TID {thread['tid']}, Win32 start {win32:#x}"   # ntdll's thunk: no news
    return f"TID {thread['tid']}, start {start:#x}, Win32 start {win32:#x}"


def test_thread_rows_carry_tid_and_start_addresses_without_the_repeated_thunk(win7_image, rows):
    _, truth = win7_image
    details = Counter((r["PID"], r["Time"], r["Detail"]) for r in rows
                      if r["Source"] == "thread" and r["Action"] == "created")
    want = Counter((t["pid"], exact(t["create_time"]), _thread_detail(t)) for t in truth["threads"])
    assert details == want
    dropped = sum(1 for detail in details.elements() if detail[2].split(", ")[1].startswith("Win32"))
    assert dropped == sum(1 for t in truth["threads"] if t["start"] == RTL_USER_THREAD_START) > 40
    exited = [r["Detail"] for r in rows if r["Source"] == "thread" and r["PID"] == 2940]   # read from the
    assert exited == ["TID 460, Win32 start 0x401000"] * 2            # pool-only process's own VADs


def _address(row: Dict) -> Tuple[str, int]:
    match = re.search(r"(@|physical) (0x[0-9a-f]+)", row["Provenance"])
    return ("virtual" if match.group(1) == "@" else "physical"), int(match.group(2), 16)


def _pyevtx(blob: bytes, tmp_path: Path) -> List[Tuple[int, int, datetime, int]]:
    """(file offset, record id, time, event id) of each record python-evtx reads in ``blob``."""
    path = tmp_path / "log.evtx"
    path.write_bytes(blob)
    with PyEvtx(str(path)) as log:
        out = []
        for record in log.records():
            event_id = int(re.search(r"<EventID[^>]*>(\d+)<", record.xml()).group(1))
            out.append((record.offset(), record.record_num(), record.timestamp(), event_id))
    return out


def _close(a: datetime, b: datetime) -> bool:
    return abs(a.replace(tzinfo=None) - b.replace(tzinfo=None)) <= timedelta(microseconds=2)


def test_every_carved_evtx_record_matches_python_evtx(win7_image, rows, tmp_path):
    _, truth = win7_image
    carved = {_address(r): r for r in rows if r["Source"] == "eventlog" and "evtx" in r["Provenance"]}
    checked = set()
    for plant in _evtx_plants(truth):
        blob = bytes.fromhex(plant["data"])
        if plant["kind"] == "evtx-record":  # a lone record is a chunk's first record: read that chunk
            (meta,) = plant["meta"]["records"]
            spec = EvtxRecordSpec(meta["record_id"], iso(meta["time"]), meta["event_id"], meta["provider"],
                                  meta["channel"], meta["computer"], meta["data"], meta["level"],
                                  names=tuple(meta["names"]))
            assert build_lone_record(spec) == blob
            reads = [(0, *rest[1:]) for rest in _pyevtx(build_file([spec]), tmp_path)]
        else:
            reads = _pyevtx(blob, tmp_path)
        where = ("virtual", plant["va"]) if plant["va"] is not None else ("physical", plant["pa"])
        for offset, record_id, stamp, event_id in reads:
            address = (where[0], where[1] + offset)
            if record_id in plant["meta"].get("corrupt", []):
                assert address not in carved
                continue
            row = carved[address]
            assert f"(record {record_id}," in row["Detail"]
            assert row["Detail"].split(" ")[1] == str(event_id)
            assert _close(row["Time"], stamp)
            checked.add(address)
    logged = sum(len(p["meta"]["records"]) - len(p["meta"].get("corrupt", [])) for p in _evtx_plants(truth))
    assert checked == set(carved) and len(checked) == logged >= 6


def test_freed_records_report_physical_offsets_and_holders_report_pid_and_va(win7_image, rows):
    _, truth = win7_image
    freed = {p["label"]: p for p in truth["plants"] if p["kind"] in ("evtx-record", "evt-record")}
    by_address = {_address(r): r for r in rows if r["Source"] == "eventlog"}
    row = by_address[("physical", freed["timeline-freed-7040"]["pa"])]
    assert (row["PID"], row["Process"]) == (None, None) and "no process maps it" in row["Provenance"]
    row = by_address[("virtual", freed["timeline-heap-7045"]["va"])]
    assert (row["PID"], row["Process"]) == (None, None)  # iexplore.exe held it, did not log it
    assert row["Provenance"] == f"evtx record in PID 2172 @ {freed['timeline-heap-7045']['va']:#x}"
    va = freed["timeline-exited-4688"]["va"]  # in the exited, pool-only dropper: its memory is still read
    row = by_address[("virtual", va)]
    assert (row["PID"], row["Provenance"]) == (None, f"evtx record in PID 2940 @ {va:#x}")
    evt = by_address[("physical", freed["timeline-freed-evt"]["pa"])]
    assert evt["Detail"] == "Service Control Manager 7035 (record 77, EVT) on XPBOX: Remote Registry; start"
    log = next(p for p in truth["plants"] if p["kind"] in ("evtx-file", "evt-file") and p["meta"]["log"] == "System")
    name, what = log["label"].removeprefix("timeline-"), {"evtx-file": "evtx chunk", "evt-file": "evt record"}[log["kind"]]
    system = [r for r in rows if f" {name} @ " in r["Provenance"]]
    assert len(system) == 205 and all(r["Provenance"].startswith(f"{what} in PID {log['pid']} {name} @ ")
                                      and r["PID"] is None for r in system)
    assert len({a for a in by_address if a[0] == "physical"}) == 6, "mapped records must not repeat as freed"


# (flag, PID) of the --correlate parent rows on the bundled scenario, in order
STORY_FLAGS = [("before-boot", None), ("other-computer", None),
               ("injected-thread-start", 1484), ("thread-burst", 1484),
               ("connect-after-start", 1484), ("connect-after-start", 1484),
               ("injected-thread-start", 2172), ("thread-burst", 2172),
               ("injected-thread-start", 2356), ("thread-burst", 2356),
               ("after-exit", 2940), ("other-computer", None), ("after-capture", None)]


def test_correlation_flags_fire_on_the_story_and_name_their_rows(win7_image):
    image, truth = win7_image
    flags = run_plugin(image, PLUGIN, {"correlate": True})
    top = [(r["Action"], r["PID"]) for r in flags if r["__depth"] == 0]
    assert top == STORY_FLAGS
    groups = [g for g in _groups(flags) if g[0]["PID"] is not None]
    bot_start = exact(next(p["create_time"] for p in truth["processes"] if p["pid"] == 3012))
    connect = groups[2]
    assert [(r["Source"], r["Action"], r["PID"], r["Time"]) for r in connect[1:]] == [
        ("process", "created", 3012, bot_start),
        ("network", "connected", 1484, bot_start + timedelta(seconds=2.75))]
    assert "connected 2.750 s after cleansweep.exe (3012) started" in connect[0]["Detail"]
    burst = [t for t in truth["threads"] if t["pid"] == 1484 and CCGRABBER_BASE <= t["win32_start"] < SECOND]
    assert [r["Time"] for r in groups[1][1:]] == [exact(t["create_time"]) for t in burst] and len(burst) == 5
    late = groups[-1]
    assert [(r["Source"], r["Action"]) for r in late[1:]] == [("process", "exited"), ("network", "connected")]
    assert late[2]["Time"] == exact(AFTER_EXIT_CONNECTION)


def _groups(flags: List[Dict]) -> List[List[Dict]]:
    groups: List[List[Dict]] = []
    for row in flags:
        if row["__depth"] == 0:
            groups.append([row])
        else:
            groups[-1].append(row)
    return groups


def test_correlation_is_quiet_on_a_scenario_without_the_story(tmp_path_factory):
    image, _ = write_image(clean_win7(), tmp_path_factory.mktemp("clean"))
    timeline = run_plugin(image, PLUGIN, {"source": ["process", "thread", "network"]})
    assert Counter(r["Source"] for r in timeline) == {"process": 13, "thread": 48, "network": 3}
    assert {r["Flags"] for r in timeline} == {""}          # nothing starts in injected code, no odd time
    user_threads = [r["Detail"] for r in timeline if r["Source"] == "thread" and r["PID"] != 4]
    assert user_threads and all(re.fullmatch(r"TID \d+, Win32 start 0x[0-9a-f]+", d) for d in user_threads)
    assert run_plugin(image, PLUGIN, {"correlate": True}) == []
    tight = run_plugin(image, PLUGIN, {"correlate": True, "burst": 3, "burst_window": 1, "startup": 0})
    assert tight and {r["Action"] for r in tight if r["__depth"] == 0} == {"thread-burst"}


def test_source_pid_name_and_time_filters(win7_image, rows):
    image, _ = win7_image
    after, before = "2011-11-27T10:00:05.5", "2011-11-27T10:00:09Z"
    got = run_plugin(image, PLUGIN, {"source": ["network", "thread"], "pid": [1484],
                                     "after": after, "before": before})
    lo, hi = iso(after + "+00:00"), iso(before.replace("Z", "+00:00"))
    want = [r for r in rows if r["Source"] in ("network", "thread") and r["PID"] == 1484
            and lo <= r["Time"] <= hi]
    assert got == want and len(want) == 6
    named = run_plugin(image, PLUGIN, {"source": ["eventlog"], "name": ["iexplore.exe"]})
    assert [r["Detail"].split(":")[0] for r in named] == [
        "System 7045 (record 2003, Service Control Manager) on JOHN-PC"]
    assert [r["Provenance"].split(" @")[0] for r in named] == ["evtx record in PID 2172"]


class BytesLayer:
    """A physical layer over a byte string, for carving without an image."""

    def __init__(self, data: bytes) -> None:
        self.data, self.minimum_address, self.maximum_address = data, 0, len(data) - 1

    def read(self, address: int, length: int, pad: bool = False) -> bytes:
        return self.data[address:address + length]


def _edge_specs() -> List[EvtxRecordSpec]:
    return [EvtxRecordSpec(10 + n, datetime(2011, 11, 27, 10, tzinfo=timezone.utc) + timedelta(seconds=n),
                           7036, "Service Control Manager", "System", "PC", ["svc", "running"])
            for n in range(40)]


def test_carving_windows_report_records_on_window_edges_once():
    specs = _edge_specs()
    chunk, lone = build_chunk(specs), build_lone_record(specs[0])
    layer = BytesLayer(b"\0" * 0x7F00 + chunk + b"\0" * 0x2F0 + lone + b"\0" * 0x20000)
    for window in (0x8000, 0x10000, 0x18000, 0x100000):
        found = list(timeline.carve_windows(vadwalk.read_chunks(layer, 0, layer.maximum_address, window, CHUNK_SIZE)))
        assert [r.record_id for r in found] == [s.record_id for s in specs] + [10], hex(window)
        assert [r.source for r in found] == ["evtx-chunk"] * 40 + ["evtx-record"]


def test_physical_pass_reads_a_chunk_across_its_1mib_windows_once_and_notes_its_frames():
    specs = _edge_specs()
    start = timeline.WINDOW - 0x3000
    layer = BytesLayer(b"\0" * start + build_chunk(specs) + b"\0" * 0x1000)
    frames: set = set()
    found = timeline.Timeline.carve_physical(layer, frames)
    assert [(f.record.record_id, f.record.source) for f in found] == [(s.record_id, "evtx-chunk") for s in specs]
    assert all(f.physical == f.record.offset and f.record.chunk == start for f in found)
    pages = {f.record.offset >> 12 for f in found}
    assert pages <= frames <= set(range(start >> 12, (start + CHUNK_SIZE) >> 12))
    quiet: set = set()
    assert timeline.Timeline.carve_physical(layer, quiet, report=False) == [] and quiet == frames


# --------------------------------------------------------------------------- flags on rows


def _vad(truth, pid: int, address: int) -> Dict:
    return next(v for v in truth["vads"] if v["pid"] == pid and v["start"] <= address <= v["end"])


def _expected_start(truth, thread: Dict) -> Optional[str]:
    """The Flags text the plugin should give a thread of the bundled image, from truth."""
    win32 = thread["win32_start"]
    if not (CCGRABBER_BASE <= win32 < SECOND or SHELLCODE_VA <= win32 < SHELLCODE_VA + 0x10000):
        return None
    vad = _vad(truth, thread["pid"], win32)
    span = f"{vad['start']:#x}-{vad['end']:#x}"
    if SHELLCODE_VA <= win32 < SHELLCODE_VA + 0x10000:
        return f"starts in private executable memory {span} at +{win32 - vad['start']:#x}"
    dll = "spyplugin_x86.dll" if thread["pid"] == 2356 else "spyplugin_x64.dll"
    export = {a: n for n, a in export_addresses(dll, CCGRABBER_BASE).items()}[win32]
    return f"starts in ccgrabber.dll (private executable memory {span}) at {export}"


def test_threads_starting_in_injected_code_name_the_dll_export_or_private_region(win7_image, rows):
    _, truth = win7_image
    got = {(r["PID"], int(r["Detail"].split(",")[0][4:])): r["Flags"] for r in rows
           if r["Source"] == "thread" and r["Action"] == "created" and r["Flags"]}
    want = {(t["pid"], t["tid"]): _expected_start(truth, t) for t in truth["threads"] if _expected_start(truth, t)}
    assert got == want and Counter(pid for pid, _ in want) == {1484: 5, 2172: 5, 2356: 7}
    assert got[(2356, 7016)] == "starts in ccgrabber.dll (private executable memory 0xb000000-0xb005fff) at SpyEye_Start"


def test_correlate_flags_each_process_whose_threads_start_in_injected_code(win7_image):
    image, truth = win7_image
    flags = _groups(run_plugin(image, PLUGIN, {"correlate": True}))
    injected = {g[0]["PID"]: g for g in flags if g[0]["Action"] == "injected-thread-start"}
    assert set(injected) == {1484, 2172, 2356}
    explorer = _vad(truth, 1484, CCGRABBER_BASE)
    assert injected[1484][0]["Detail"] == (
        "5 threads of explorer.exe (1484) start in injected code: ccgrabber.dll (private executable memory "
        f"{explorer['start']:#x}-{explorer['end']:#x}) at " + ", ".join(BURST_EXPORTS[:5]))
    assert injected[2172][0]["Detail"] == ("5 threads of iexplore.exe (2172) start in injected code: private "
                                           "executable memory 0x2a40000-0x2a4ffff at +0x0, +0x40, +0x80")
    assert injected[2356][0]["Detail"].endswith("at " + ", ".join(BURST_EXPORTS))
    for pid, group in injected.items():
        assert group[0]["Provenance"] == f"rests on {len(group) - 1} rows"
        assert all(r["Source"] == "thread" and r["PID"] == pid and r["Flags"].startswith("starts in ")
                   for r in group[1:])


def _bursts(image, **options) -> Dict[int, List[List[Dict]]]:
    groups = _groups(run_plugin(image, PLUGIN, {"correlate": True, "source": ["process", "thread"], **options}))
    out: Dict[int, List[List[Dict]]] = {}
    for group in groups:
        if group[0]["Action"] == "thread-burst":
            out.setdefault(group[0]["PID"], []).append(group)
    return out


def test_burst_defaults_catch_7_threads_in_4_s_and_leave_start_up_alone(win7_image):
    image, truth = win7_image
    bursts = _bursts(image)
    assert {pid: len(groups) for pid, groups in bursts.items()} == {1484: 1, 2172: 1, 2356: 1}
    (firefox,) = bursts[2356]
    assert firefox[0]["Detail"] == ("7 threads created in firefox.exe (2356) within 3.900 s, "
                                    "7 of them in injected code")
    assert [r["Time"] for r in firefox[1:]] == [exact(FIREFOX_BURST + 0.65 * i) for i in range(7)]
    assert 2356 not in _bursts(image, burst_window=1)          # the old default missed it
    without = _bursts(image, startup=0)                          # without the start-up rule, start-ups are bursts
    started = {p["pid"]: exact(p["create_time"]) for p in truth["processes"]}
    assert {pid: groups[0][0]["Time"] - started[pid] for pid, groups in without.items()
            if pid in (1484, 2172, 2356)} == {pid: timedelta(seconds=0.05) for pid in (1484, 2172, 2356)}
    assert without[2356][0][0]["Detail"] == "8 threads created in firefox.exe (2356) within 1.750 s"


def test_rows_after_the_capture_or_before_the_boot_are_flagged(win7_image, rows):
    _, truth = win7_image
    flagged = {(r["Source"], r["Time"]): r["Flags"] for r in rows if "capture" in r["Flags"] or "boot" in r["Flags"]}
    assert flagged == {
        ("eventlog", exact(AFTER_CAPTURE_RECORD)): "after the capture time (+2 days, 0:00:00.500000)",
        ("network", exact(BEFORE_BOOT_CONNECTION)): "before the boot (-3 days, 0:00:00)",
    }
    boot = min(exact(t["create_time"]) for t in truth["threads"] if t["pid"] == 4)
    older = [r for r in rows if r["Source"] == "eventlog" and r["Time"] < boot]
    assert len(older) == 2 and all("boot" not in r["Flags"] for r in older)   # logs outlive a boot
    assert max(r["Time"] for r in rows if not r["Flags"].startswith("after")) <= exact(truth["system_time"])


def test_every_event_log_row_names_its_computer_and_others_are_flagged(win7_image, rows):
    _, truth = win7_image
    records = {(p["va"] or p["pa"]): p for p in truth["plants"] if p["kind"] in ("evtx-record", "evt-record")}
    logged = [r for r in rows if r["Source"] == "eventlog"]
    assert all(re.search(r"\) on [A-Z0-9-]+(: |$)", r["Detail"]) for r in logged)
    assert next(r["Detail"] for r in logged if " 6005 " in r["Detail"]) == "System 6005 (record 1, EventLog) on JOHN-PC"
    foreign = {r["Detail"].split(" on ")[1].split(":")[0]: r["Flags"] for r in logged if "logged on" in r["Flags"]}
    assert foreign == {name: f"logged on {name}, not on this machine ({COMPUTER})"
                       for name in (OTHER_COMPUTER, "XPBOX")}
    assert sum(1 for r in logged if "logged on" in r["Flags"]) == 3
    row = next(r for r in logged if _address(r)[1] == next(a for a, p in records.items()
                                                             if p["label"] == "timeline-freed-foreign-4624"))
    assert row["Detail"] == ("Security 4624 (record 2005, Microsoft-Windows-Security-Auditing) on WKS-ACCT07: "
                             "TargetUserSid=S-1-5-21-4444-5555-6666-500; TargetUserName=administrator; "
                             "TargetDomainName=ACCT; LogonType=3")
    unnamed = next(r for r in logged if "Application 1000 (record 1, Winlogon)" in r["Detail"])
    assert unnamed["Detail"].endswith("on JOHN-PC: User logon notification")   # the template names none


# --------------------------------------------------------------------------- CLI


def test_json_csv_and_body_file_outputs_parse(win7_image, rows, tmp_path):
    image, _ = win7_image
    out = run_cli("-r", "json", "-o", str(tmp_path), "-f", str(image), "spyeye.timeline",
               "--body-file", "spyeye.body")
    assert out.returncode == 0, out.stderr
    parsed = json.loads(out.stdout)
    assert [(iso(r["Time"]), r["Source"], r["Action"], r["PID"]) for r in parsed] == [key(r) for r in rows]
    assert set(parsed[0]) == {"Time", "Source", "Action", "PID", "Process", "Detail", "Flags", "Provenance",
                              "__children"}
    body = (tmp_path / "spyeye.body").read_text().splitlines()
    assert len(body) == len(rows)
    fields = [line.split("|") for line in body]
    assert all(len(f) == 11 for f in fields)
    assert [max(int(t) for t in f[7:]) for f in fields] == [int(r["Time"].timestamp()) for r in rows]
    assert fields[0][1].startswith(f"[{rows[0]['Source']} {rows[0]['Action']}] {rows[0]['Time'].isoformat()}")
    out = run_cli("-r", "csv", "-f", str(image), "spyeye.timeline", "--source", "network")
    table = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [(r["Action"], int(r["PID"])) for r in table] == [(r["Action"], r["PID"]) for r in rows
                                                               if r["Source"] == "network"]


@pytest.mark.parametrize("renderer", ["quick", "pretty", "csv", "json", "jsonl"])
def test_every_renderer_prints_flags_and_the_rows_they_rest_on(win7_image, renderer):
    image, _ = win7_image
    out = run_cli("-r", renderer, "-f", str(image), "spyeye.timeline", "--correlate",
               "--source", "process", "network", "--pid", "2940")
    assert out.returncode == 0 and "Traceback" not in out.stderr
    for text in ("after-exit", "psscan only (exited, not in the active list)",
                 "198.51.100.23:8080", "2011-11-27"):
        assert text in out.stdout, (renderer, text)


@pytest.mark.skipif(shutil.which("mactime") is None, reason="The Sleuth Kit's mactime is not installed")
def test_mactime_reads_the_body_file_one_dated_line_per_row(win7_image, tmp_path):
    image, _ = win7_image
    rows = run_plugin(image, PLUGIN, {"source": ["process", "network"], "body_file": "t.body"})
    (tmp_path / "t.body").write_bytes(FileCollector.files["t.body"])
    out = subprocess.run(["mactime", "-b", str(tmp_path / "t.body"), "-d", "-z", "UTC"],
                         capture_output=True, text=True, check=True)
    lines = list(csv.reader(io.StringIO(out.stdout)))[1:]
    assert len(lines) == len(rows) and all(line[2] == "macb" for line in lines)
    names = [" ".join(f"[{r['Source']} {r['Action']}] {r['Time'].isoformat()} PID "
                      f"{'-' if r['PID'] is None else r['PID']} {r['Process'] or ''} {r['Detail']}"
                      f"{' [' + r['Flags'] + ']' if r['Flags'] else ''} ({r['Provenance']})".split()
                      ).replace("|", "/") for r in rows]
    assert sorted(line[7] for line in lines) == sorted(names)
    dates = [datetime.strptime(line[0], "%a %b %d %Y %H:%M:%S").replace(tzinfo=timezone.utc) for line in lines]
    assert dates == sorted(r["Time"].replace(microsecond=0) for r in rows)


def test_body_file_goes_through_the_plugin_file_handler(win7_image):
    image, _ = win7_image
    rows = run_plugin(image, PLUGIN, {"source": ["process"], "body_file": "p.body"})
    lines = FileCollector.files["p.body"].decode().splitlines()
    assert len(lines) == len(rows) and all(line.count("|") == 10 for line in lines)


def test_corrupt_chunk_and_evt_record_warn_and_keep_the_readable_records(win7_image, rows):
    image, truth = win7_image
    out = run_cli("-f", str(image), "spyeye.timeline", "--source", "eventlog", "--pid", "780")
    assert out.returncode == 0 and "Traceback" not in out.stderr
    assert "chunk event-records CRC mismatch" in out.stderr and "skipped 224 unreadable bytes" in out.stderr
    application = [r for r in rows if "Application.evtx" in r["Provenance"]]
    assert [int(re.search(r"record (\d+)", r["Detail"]).group(1)) for r in application] == [
        n for n in (1, 2, 3, 4) if n != CORRUPT_RECORD_ID]
    out = run_cli("-f", str(image), "spyeye.timeline", "--source", "eventlog", "--before", "2011-11-27")
    assert "StringOffset 0x400 outside record" in out.stderr and "Traceback" not in out.stderr
    assert "record 78, EVT" in out.stdout


@pytest.mark.parametrize("args,message", [
    (["--after", "yesterday"], "error: --after 'yesterday' is not an ISO 8601 time (e.g. 2011-11-27T10:00:05 "
                               "or 2011-11-27T10:00:05+09:00)"),
    (["--after", "2011-11-27T11:00", "--before", "2011-11-27T10:00"],
     "error: --after 2011-11-27T11:00:00+00:00 is later than --before 2011-11-27T10:00:00+00:00"),
])
def test_bad_bounds_fail_with_one_line_and_exit_status_1(win7_image, args, message):
    image, _ = win7_image
    out = run_cli("-f", str(image), "spyeye.timeline", *args)
    assert (out.returncode, out.stderr.strip()) == (1, message) and "Time\t" not in out.stdout


def test_unknown_source_fails_at_the_command_line(win7_image):
    image, _ = win7_image
    out = run_cli("-f", str(image), "spyeye.timeline", "--source", "process", "registry")
    errors = [line for line in out.stderr.splitlines() if "error" in line]
    assert out.returncode == 2 and "Time\t" not in out.stdout and "Traceback" not in out.stderr
    assert errors == ["vol spyeye.timeline.Timeline: error: argument --source: unknown value 'registry' "
                      "(choose from process, thread, network, eventlog)"]
    with pytest.raises(UsageError, match="unknown --source registry"):   # the Python API
        run_plugin(image, PLUGIN, {"source": ["registry"]})


def test_stock_timeliner_picks_up_the_event_log_source(win7_image, rows):
    image, _ = win7_image
    out = run_cli("-r", "json", "-f", str(image), "timeliner", "--plugin-filter", "spyeye")
    assert "matches multiple plugins" not in out.stderr  # `vol timeliner` still names stock timeliner
    ours = [r for r in json.loads(out.stdout) if r["Description"].startswith("EventLog: ")]
    want = [r for r in rows if r["Source"] == "eventlog"]
    assert {r["Plugin"] for r in ours} == {"Timeline"}
    assert sorted(r["Description"][len("EventLog: "):] for r in ours) == sorted(
        f"{r['Detail']} [{r['Provenance']}]" for r in want)


# --------------------------------------------------------------------------- correlation edges


def _at(minute: int, source: str, action: str, pid, process="p.exe", detail="d"):
    return timeline.Event(datetime(2011, 11, 27, 9, minute, tzinfo=timezone.utc), source, action, pid,
                          process, detail, "test")


def test_pid_reuse_does_not_flag_carved_records_after_exit():
    events = [_at(0, "process", "created", 780, "updater.exe", "first"),
              _at(1, "process", "exited", 780, "updater.exe", "first"),
              _at(5, "process", "created", 780, "svchost.exe", "second"),
              _at(3, "eventlog", "logged", 780, "svchost.exe"),        # found in svchost's memory
              _at(3, "network", "connected", 780, "svchost.exe")]      # a real event of PID 780
    flags = timeline.Timeline.correlate(events, 10, 5, 1)
    assert [(f.rule, f.basis[-1].source) for f in flags] == [("after-exit", "network")]


def test_connection_without_owner_is_not_tied_to_a_process_start():
    events = [_at(0, "process", "created", 3012, "cleansweep.exe"),
              _at(0, "network", "connected", None, None, "TCPv4 closed, owner freed")]
    assert timeline.Timeline.correlate(events, 600, 5, 1) == []


def test_evt_record_without_times_is_skipped_and_written_time_stands_in():
    parsers_eventlog = plugin_module("spyeye.parsers.eventlog")
    epoch, written = datetime.fromtimestamp(0, timezone.utc), datetime(2011, 11, 27, 9, tzinfo=timezone.utc)
    record = parsers_eventlog.EvtRecord(offset=0, record_id=7, time_generated=epoch, time_written=written,
                                        event_id=7036, event_id_full=7036, event_type=4, category=0,
                                        source_name="SCM", computer="XP", strings=[], user_sid=None, data=b"")
    found = timeline.Found(record, None, 780, "svchost.exe", "PID 780 @ 0x1000")
    assert timeline.Timeline.record_event(found).time == written
    record.time_written = epoch
    assert timeline.Timeline.record_event(found) is None


def test_body_file_line_stays_one_line_when_log_strings_hold_newlines():
    written = {}

    class Handle(io.BytesIO):
        def __exit__(self, *exc):
            written["body"] = self.getvalue()
            return super().__exit__(*exc)
    plugin = type("FakePlugin", (), {"config": {"body_file": "b"}, "open": lambda self, name: Handle()})()
    event = _at(3, "eventlog", "logged", None, None, "System 7036 (record 9): line1\r\nline2|x\tend")
    timeline.Timeline._write_body(plugin, [event])
    (line,) = written["body"].decode().splitlines()
    fields = line.split("|")
    assert len(fields) == 11 and "line1 line2/x end" in fields[1] and "PID - " in fields[1]


def test_threads_are_named_after_the_process_alive_when_they_started():
    events = [_at(0, "process", "created", 780, "updater.exe", "first"),
              _at(1, "process", "exited", 780, "updater.exe", "first"),
              _at(5, "process", "created", 780, "svchost.exe", "second")]
    owner = timeline.process_at(events, {780: "svchost.exe"})
    assert owner(780, events[0].time + timedelta(seconds=30)) == "updater.exe"
    assert owner(780, events[2].time + timedelta(seconds=1)) == "svchost.exe"
    assert owner(780, events[1].time + timedelta(seconds=60)) == "svchost.exe"    # between lives
    threads = [timeline.Event(events[0].time + timedelta(seconds=50 + i * 0.1), "thread", "created", 780,
                              "updater.exe" if i < 3 else "svchost.exe", f"TID {i}", "t") for i in range(6)]
    assert timeline.Timeline.correlate(threads, 10, 5, 1) == []          # 3 + 3, not one burst of 6


# --------------------------------------------------------------------------- row text and machine name


def test_event_log_values_are_named_capped_and_escaped():
    long = "A" * 150
    text = timeline._values([("TargetUserName", "john"), (None, "bare"), ("CommandLine", long)])
    assert text == f": TargetUserName=john; bare; CommandLine={'A' * (timeline.VALUE_CAP - 1)}\u2026"
    assert timeline._values([]) == ""
    event = _at(3, "eventlog", "logged", None, None, "System 7036 (record 9) on PC: param1=a\tb\r\nc\x1b")
    assert event.values()[5] == "System 7036 (record 9) on PC: param1=a\\tb\\r\\nc\\x1b"


def _found(computer: str, live: bool) -> "timeline.Found":
    record = plugin_module("spyeye.parsers.eventlog").EventRecord(0, "evtx-chunk" if live else "evtx-record",
                                                                   1, None, computer=computer)
    record.chunk = 0 if live else None
    return timeline.Found(record, None, 780, "svchost.exe", "w", "\\Windows\\System32\\winevt\\Logs\\S.evtx"
                          if live else None)


class _EnvProcess:
    """A process whose environment block is read (Peb set) or unreadable (``env`` None)."""

    def __init__(self, env: Optional[Dict[str, str]]) -> None:
        self.Peb, self.env = 0x7FFDF000, env

    def environment_variables(self):
        if self.env is None:
            raise plugin_module("spyeye.timeline").exceptions.InvalidAddressException("layer", 0, "paged out")
        return iter(self.env.items())


def test_this_machine_is_the_environment_s_computername_else_the_live_logs_majority():
    live = [_found("JOHN-PC", True)] * 3 + [_found("WKS-ACCT07", True)]
    stray = [_found("WKS-ACCT07", False)] * 10          # many carved copies from elsewhere do not outvote
    assert timeline.this_computer([], live + stray) == "JOHN-PC"
    assert timeline.this_computer([], stray + [_found("JOHN-PC", False)]) == "WKS-ACCT07"   # no live log: all
    assert timeline.this_computer([], [_found("A", False), _found("B", False)]) is None      # a tie: no verdict
    assert timeline.this_computer([], [_found("john-pc.corp.example", True), _found("JOHN-PC", True)]) == \
        "john-pc.corp.example"                                                  # one machine, two spellings
    procs = [_EnvProcess({"Path": "C:\\Windows", "COMPUTERNAME": "ACCT-PC"}), _EnvProcess(None),
             _EnvProcess({"ComputerName": "ACCT-PC"}), _EnvProcess({"PATH": "x"})]
    assert timeline.this_computer(procs, live) == "ACCT-PC"          # the environment outranks the logs
    assert timeline.this_computer([_EnvProcess(None)], live) == "JOHN-PC"
    assert timeline.same_computer("john-pc.corp.example", "JOHN-PC")
    assert not timeline.same_computer("JOHN-PC2", "JOHN-PC")


def test_thread_detail_drops_only_the_thunk_start():
    class Space:
        def is_thread_start_thunk(self, address):
            return address == 0x77A7C500
    space = Space()
    assert timeline._thread_detail(8, 0x77A7C500, 0xB001057, space) == "TID 8, Win32 start 0xb001057"
    assert timeline._thread_detail(8, 0x401000, 0x401000, space) == "TID 8, start 0x401000"
    assert timeline._thread_detail(8, 0x401000, 0, space) == "TID 8, start 0x401000"
    assert timeline._thread_detail(8, 0x77A7C500, 0xB001057, None) == \
        "TID 8, start 0x77a7c500, Win32 start 0xb001057"             # no VADs to tell where it is


def test_export_at_names_the_export_at_or_before_an_address():
    pe_image = plugin_module("spyeye.parsers.pe_image")
    exports = [pe_image.ExportEntry(1, "Init", 0x1006, 0xB001006, None),
               pe_image.ExportEntry(2, "Start", 0x102A, 0xB00102A, None),
               pe_image.ExportEntry(3, "Fwd", 0x2000, 0xB002000, "kernel32.GetTickCount"),
               pe_image.ExportEntry(4, None, 0x1100, 0xB001100, None)]
    pe = pe_image.MappedPE(0xB000000, None, exports=exports)
    assert timeline.export_at(pe, 0xB00102A) == "Start"
    assert timeline.export_at(pe, 0xB001030) == "Start+0x6"
    assert timeline.export_at(pe, 0xB001100) == "ordinal 4"
    assert timeline.export_at(pe, 0xB002004) == "ordinal 4+0xf04"        # forwarders hold no code
    assert timeline.export_at(pe, 0xB001000) == "RVA 0x1000"


def test_start_up_threads_are_not_a_burst_but_later_ones_are():
    start = datetime(2011, 11, 27, 9, tzinfo=timezone.utc)
    process = timeline.Event(start, "process", "created", 2356, "firefox.exe", "d", "t")
    threads = [timeline.Event(start + timedelta(seconds=0.2 * i), "thread", "created", 2356, "firefox.exe",
                              f"TID {i}", "t") for i in range(8)]
    late = [timeline.Event(start + timedelta(seconds=3600 + 0.65 * i), "thread", "created", 2356,
                           "firefox.exe", f"TID {100 + i}", "t") for i in range(7)]
    flags = timeline.Timeline.correlate([process, *threads, *late], 10, 5, 5, startup=10)
    assert [(f.rule, len(f.basis)) for f in flags] == [("thread-burst", 7)]
    flags = timeline.Timeline.correlate([process, *threads, *late], 10, 5, 5, startup=0)
    assert [(f.rule, len(f.basis)) for f in flags] == [("thread-burst", 8), ("thread-burst", 7)]
