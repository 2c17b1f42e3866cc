"""Event-log carvers: generated EVTX cross-checked with python-evtx, corruption, EVT, real data."""

from __future__ import annotations

import random
import struct
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from Evtx.Evtx import Evtx as PyEvtx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.evtx_writer import (
    CHUNK_HEADER_SIZE, CHUNK_SIZE, EVENT_XMLNS, FILE_HEADER_SIZE, EvtxRecordSpec, build_chunk,
    build_evt_record, build_file, build_lone_record,
)
from spyeye_plugins.spyeye.parsers.eventlog import (
    EventRecord, carve_evt, carve_evtx, filetime_to_datetime,
)

REALDATA = Path(__file__).resolve().parents[2].parent / "shared" / "realdata"
NS = {"e": EVENT_XMLNS}
T0 = datetime(2024, 3, 5, 12, 0, 0, 123456, tzinfo=timezone.utc)
BASE = 0x7FF6_1234_0000
CRC_NOTE = "chunk event-records CRC mismatch"
ChunkAndSpecs = tuple[bytes, list[EvtxRecordSpec]]
FileAndSpecs = tuple[Path, list[EvtxRecordSpec]]


def _specs(count: int, first_id: int = 100, data_len: int = 3) -> list[EvtxRecordSpec]:
    """Deterministic events; every fifth has a different number of Data values."""
    return [
        EvtxRecordSpec(
            record_id=first_id + n,
            time=T0 + timedelta(seconds=37 * n, microseconds=911 * n),
            event_id=(4624, 4688, 7045)[n % 3],
            provider=("Microsoft-Windows-Security-Auditing", "Service Control Manager")[n % 2],
            channel=("Security", "System")[n % 2],
            computer="WS-SPYEYE01",
            data=[f"value-{n}-{k}" * (1 + k) for k in range(data_len + (n % 5 == 0))],
            level=n % 5,
        )
        for n in range(count)
    ]


def _assert_matches(record: EventRecord, spec: EvtxRecordSpec) -> None:
    got = (record.record_id, record.time, record.event_id, record.level, record.provider,
           record.channel, record.computer, record.data)
    assert got == (spec.record_id, spec.time, spec.event_id, spec.level, spec.provider,
                   spec.channel, spec.computer, spec.data)


def _record_offsets(chunk: bytes) -> list[int]:
    """Chunk-relative offsets of the records, walked by their size fields."""
    free = struct.unpack_from("<I", chunk, 0x30)[0]
    offsets, pos = [], CHUNK_HEADER_SIZE
    while pos < free:
        offsets.append(pos)
        pos += struct.unpack_from("<I", chunk, pos + 4)[0]
    return offsets


def _pyevtx_rows(path: Path) -> list[tuple[int, int, datetime, ET.Element]]:
    """(record_num, raw header FILETIME, timestamp, XML root) per record, via python-evtx."""
    with PyEvtx(str(path)) as log:
        return [(r.record_num(), r.unpack_qword(0x10), r.timestamp(), ET.fromstring(r.xml()))
                for r in log.records()]


def _xml_time(root: ET.Element) -> datetime:
    return datetime.fromisoformat(root.find("e:System/e:TimeCreated", NS).get("SystemTime"))


def _close(a: datetime, b: datetime) -> bool:
    """python-evtx converts FILETIME through a float: allow 2 microseconds."""
    return abs(a - b) <= timedelta(microseconds=2)


# --------------------------------------------------------------------------- (a) round trip


@pytest.fixture(scope="module")
def evtx_file(tmp_path_factory: pytest.TempPathFactory) -> FileAndSpecs:
    specs = _specs(260)
    specs[7] = replace(specs[7], header_time=False)
    path = tmp_path_factory.mktemp("evtx") / "generated.evtx"
    path.write_bytes(build_file(specs))
    return path, specs


def test_generated_file_verifies_in_python_evtx(evtx_file: FileAndSpecs) -> None:
    path, specs = evtx_file
    with PyEvtx(str(path)) as log:
        header = log.get_file_header()
        chunks = list(log.chunks())
        assert header.verify() and header.chunk_count() == len(chunks) >= 2
        assert all(chunk.verify() for chunk in chunks)
        firsts = [chunk.log_first_record_number() for chunk in chunks]
        lasts = [chunk.log_last_record_number() for chunk in chunks]
        numbers = [chunk.file_first_record_number() for chunk in chunks]
    assert firsts[0] == 100 and lasts[-1] == 359
    assert [first - 99 for first in firsts] == numbers
    assert [last + 1 for last in lasts[:-1]] == firsts[1:]
    assert path.stat().st_size == FILE_HEADER_SIZE + len(chunks) * CHUNK_SIZE


def test_python_evtx_and_carver_agree(evtx_file: FileAndSpecs) -> None:
    path, specs = evtx_file
    rows = _pyevtx_rows(path)
    carved = list(carve_evtx(path.read_bytes(), base=BASE))
    assert len(rows) == len(carved) == len(specs)
    for (number, raw_time, stamp, root), record, spec in zip(rows, carved, specs):
        assert number == record.record_id == spec.record_id
        assert root.find("e:System/e:EventID", NS).text == str(spec.event_id)
        assert root.find("e:System/e:Provider", NS).get("Name") == spec.provider
        assert [d.text or "" for d in root.findall("e:EventData/e:Data", NS)] == spec.data
        expected = stamp if raw_time else _xml_time(root)
        assert _close(record.time, expected)
        assert raw_time == 0 or filetime_to_datetime(raw_time) == record.time
        _assert_matches(record, spec)
        assert record.source == "evtx-chunk"
        assert BASE + FILE_HEADER_SIZE <= record.offset < BASE + path.stat().st_size


def test_zero_header_time_falls_back_to_xml(evtx_file: FileAndSpecs) -> None:
    path, specs = evtx_file
    carved = {r.record_id: r for r in carve_evtx(path.read_bytes())}
    assert carved[107].time == specs[7].time and carved[107].time_source == "xml"
    assert carved[107].warnings == ["record header FILETIME is 0; time taken from TimeCreated"]
    assert all(r.warnings == [] and r.time_source == "header" for i, r in carved.items() if i != 107)


def test_to_dict_is_plain() -> None:
    record = next(carve_evtx(build_lone_record(_specs(1)[0]), base=0x1000))
    assert record.to_dict() == {
        "offset": 0x1000, "source": "evtx-record", "record_id": 100,
        "time": "2024-03-05T12:00:00.123456+00:00", "time_source": "header", "event_id": 4624,
        "level": 0, "provider": "Microsoft-Windows-Security-Auditing", "channel": "Security",
        "computer": "WS-SPYEYE01", "data": ["value-0-0", "value-0-1value-0-1",
                                             "value-0-2value-0-2value-0-2", "value-0-3" * 4],
        "warnings": [], "chunk": None, "names": [None] * 4}


# --------------------------------------------------------------------------- (b) lone records


def test_lone_records_in_random_padding() -> None:
    rng = random.Random(7)
    specs = _specs(3, first_id=5000)  # 4, 3, 3 Data values: record 2 reuses record 1's template
    chunk = build_chunk(specs)
    cut = [chunk[o:o + struct.unpack_from("<I", chunk, o + 4)[0]] for o in _record_offsets(chunk)]
    pieces = [rng.randbytes(3001), build_lone_record(specs[0]), rng.randbytes(517), cut[1],
              rng.randbytes(1234), cut[2], rng.randbytes(64), build_lone_record(specs[2])]
    starts = [sum(map(len, pieces[:n])) for n in (1, 3, 5, 7)]
    carved = list(carve_evtx(b"".join(pieces), base=BASE))
    assert [r.offset - BASE for r in carved] == starts
    assert all(r.source == "evtx-record" for r in carved)
    _assert_matches(carved[0], specs[0])
    _assert_matches(carved[3], specs[2])
    assert carved[0].warnings == carved[3].warnings == []
    for record, spec in zip(carved[1:3], specs[1:]):
        assert (record.record_id, record.time) == (spec.record_id, spec.time)
        assert (record.event_id, record.provider, record.computer, record.data) == (None, None, None, [])
    assert carved[1].warnings == ["element names outside the record (chunk not available)"]
    assert len(carved[2].warnings) == 1 and "reference into a chunk" in carved[2].warnings[0]


def test_chunk_in_memory_is_not_double_counted() -> None:
    rng = random.Random(11)
    specs = _specs(40)
    lone = build_lone_record(_specs(1, first_id=9)[0])
    data = rng.randbytes(4096) + build_chunk(specs) + lone + rng.randbytes(100)
    carved = list(carve_evtx(data, base=BASE))
    assert [r.record_id for r in carved] == [s.record_id for s in specs] + [9]
    assert [r.source for r in carved] == ["evtx-chunk"] * 40 + ["evtx-record"]
    assert [r.chunk for r in carved] == [BASE + 4096] * 40 + [None]
    assert carved[0].offset == BASE + 4096 + CHUNK_HEADER_SIZE
    assert carved[-1].offset == BASE + 4096 + CHUNK_SIZE


def test_window_split_reports_absolute_offsets() -> None:
    specs = _specs(30)
    data = random.Random(3).randbytes(5000) + build_chunk(specs)
    whole = [(r.offset, r.record_id) for r in carve_evtx(data, base=BASE)]
    halves = [(r.offset, r.record_id) for r in carve_evtx(data[4096:], base=BASE + 4096)]
    assert whole == halves and len(whole) == 30


# --------------------------------------------------------------------------- (c) corruption


@pytest.fixture(scope="module")
def chunk_and_specs() -> ChunkAndSpecs:
    specs = [replace(s, data=s.data[:3]) for s in _specs(40)]
    return build_chunk(specs), specs


def test_flipped_bytes_in_middle_of_chunk(chunk_and_specs: ChunkAndSpecs) -> None:
    chunk, specs = chunk_and_specs
    offsets = _record_offsets(chunk)
    damaged = bytearray(chunk)
    size20 = struct.unpack_from("<I", chunk, offsets[20] + 4)[0]
    damaged[offsets[20] + size20 - 4] ^= 0xFF            # trailing size copy of record 20
    damaged[offsets[25] + 4 + 30:offsets[25] + 4 + 34] = b"\xff" * 4  # record 25 BinXML
    carved = list(carve_evtx(bytes(damaged)))
    assert [r.record_id for r in carved] == [s.record_id for n, s in enumerate(specs) if n != 20]
    assert all(CRC_NOTE in r.warnings for r in carved)
    by_id = {r.record_id: r for r in carved}
    assert by_id[121].warnings[1].startswith("skipped")
    assert by_id[125].event_id is None and by_id[125].time == specs[25].time
    assert any(w.startswith("BinXML not decoded") for w in by_id[125].warnings)
    for n, spec in enumerate(specs):
        if n not in (20, 25):
            _assert_matches(by_id[spec.record_id], spec)


def test_zeroed_page_and_truncation(chunk_and_specs: ChunkAndSpecs) -> None:
    chunk, specs = chunk_and_specs
    offsets = _record_offsets(chunk)
    holed = chunk[:0x2000] + b"\0" * 0x1000 + chunk[0x3000:]
    sizes = [struct.unpack_from("<I", chunk, o + 4)[0] for o in offsets]
    lost = {n for n, (o, size) in enumerate(zip(offsets, sizes)) if o < 0x3000 and o + size > 0x2000}
    carved = list(carve_evtx(holed))
    assert len(lost) >= 3
    assert {r.record_id for r in carved} == {s.record_id for n, s in enumerate(specs) if n not in lost}
    for record in carved:
        assert CRC_NOTE in record.warnings
        _assert_matches(record, specs[record.record_id - 100])
    cut = offsets[9] + 50
    truncated = list(carve_evtx(chunk[:cut]))
    assert [r.record_id for r in truncated] == [s.record_id for s in specs[:9]]
    assert all(f"chunk truncated at {cut:#x}; records CRC not checked" in r.warnings for r in truncated)
    assert list(carve_evtx(chunk[:0x1F0])) == []


def test_corrupt_chunk_header_still_yields_records(chunk_and_specs: ChunkAndSpecs) -> None:
    chunk, specs = chunk_and_specs
    damaged = chunk[:0x40] + b"\xee" * 8 + chunk[0x48:]
    carved = list(carve_evtx(damaged))
    assert len(carved) == len(specs)
    assert all(r.source == "evtx-chunk" and "chunk header CRC mismatch" in r.warnings for r in carved)
    _assert_matches(carved[-1], specs[-1])


# --------------------------------------------------------------------------- (d) legacy EVT


def test_evt_records_carved_with_exact_fields() -> None:
    sid = struct.pack("<BB6sIIIII", 1, 5, (5).to_bytes(6, "big"), 21, 1111, 2222, 3333, 1001)
    first = build_evt_record(41, 1_300_000_000, 0xC0000000 | 7036, "Service Control Manager", "XPBOX",
                        ["SpyEye Loader", "running"], sid, b"\x01\x02\x03")
    second = build_evt_record(42, 1_300_000_100, 4624, "Security", "XPBOX", [], None, b"")
    header = struct.pack("<I4s10I", 0x30, b"LfLe", 1, 1, 0x30, 0x30, 43, 41, 0x80000, 1, 0, 0x30)
    eof = struct.pack("<I4I5I", 0x28, 0x11111111, 0x22222222, 0x33333333, 0x44444444, 0x30, 0x30,
                      43, 41, 0x28)
    junk = random.Random(5).randbytes(77)
    data = header + junk + first + second + eof
    carved = list(carve_evt(data, base=BASE))
    assert [r.offset - BASE for r in carved] == [0x30 + 77, 0x30 + 77 + len(first)]
    one, two = carved
    assert one.to_dict() == {
        "offset": BASE + 0x30 + 77, "record_id": 41,
        "time_generated": "2011-03-13T07:06:40+00:00", "time_written": "2011-03-13T07:06:41+00:00",
        "event_id": 7036, "event_id_full": 0xC0000000 | 7036, "event_type": 2, "category": 7,
        "source_name": "Service Control Manager", "computer": "XPBOX",
        "strings": ["SpyEye Loader", "running"], "user_sid": "S-1-5-21-1111-2222-3333-1001",
        "data": "010203", "source": "evt-record", "warnings": []}
    assert (two.record_id, two.event_id, two.source_name, two.strings, two.user_sid, two.data) == (
        42, 4624, "Security", [], None, b"")


def test_evt_torn_record_is_rejected_and_bad_offsets_warn() -> None:
    good = build_evt_record(7, 1_200_000_000, 10, "Src", "PC", ["a", "b"], None, b"")
    torn = good[:-4] + b"\0\0\0\0"
    bad_offset = bytearray(good)
    struct.pack_into("<I", bad_offset, 36, len(good) + 100)
    carved = list(carve_evt(torn + bytes(bad_offset)))
    assert len(carved) == 1 and carved[0].offset == len(torn)
    assert carved[0].strings == []
    assert carved[0].warnings == [f"StringOffset {len(good) + 100:#x} outside record"]


# --------------------------------------------------------------------------- (e) real data


EVTX_SAMPLES = ["rsevtx_Security_short_selected.evtx", "rsevtx_new-user-security.evtx",
                "pyevtx_issue_38.evtx", "attack_Sysmon_meterpreter_ReflectivePEInjection_to_notepad.evtx"]


@pytest.mark.shared
@pytest.mark.parametrize("name", EVTX_SAMPLES)
def test_realdata_evtx_matches_python_evtx(name: str) -> None:
    path = REALDATA / "evtx" / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    expected = [(n, stamp if raw else _xml_time(root), root) for n, raw, stamp, root in _pyevtx_rows(path)]
    carved = [r for r in carve_evtx(path.read_bytes()) if r.source == "evtx-chunk"]
    assert [r.record_id for r in carved] == [n for n, _, _ in expected]
    for record, (_, stamp, root) in zip(carved, expected):
        assert _close(record.time, stamp)
        assert record.event_id == int(root.find("e:System/e:EventID", NS).text)
        assert record.provider == root.find("e:System/e:Provider", NS).get("Name")
        assert record.computer == root.find("e:System/e:Computer", NS).text


@pytest.mark.shared
def test_realdata_zero_header_time_uses_xml_time() -> None:
    path = REALDATA / "evtx" / EVTX_SAMPLES[3]
    if not path.is_file():
        pytest.skip(f"{path} not present")
    last = [r for r in carve_evtx(path.read_bytes()) if r.source == "evtx-chunk"][-1]
    assert (last.record_id, last.time_source) == (13, "xml")
    assert _close(last.time, datetime(2019, 7, 3, 20, 39, 31, 707859, tzinfo=timezone.utc))


@pytest.mark.shared
@pytest.mark.parametrize("name,count,first,last", [
    ("Application", 67, "2026-01-11T12:29:31+00:00", "2026-01-11T22:34:03+00:00"),
    ("Security", 49, "2026-01-11T12:31:47+00:00", "2026-01-11T22:29:59+00:00"),
    ("System", 95, "2026-01-11T12:26:51+00:00", "2026-01-11T22:31:19+00:00"),
])
def test_realdata_evt_counts_match_provenance(name: str, count: int, first: str, last: str) -> None:
    path = REALDATA / "evt" / f"evtparser_w2k3_{name}.evt"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    carved = list(carve_evt(path.read_bytes()))
    times = [r.time_generated for r in carved]
    assert len(carved) == count and sorted(r.record_id for r in carved) == list(range(1, count + 1))
    assert (min(times).isoformat(), max(times).isoformat()) == (first, last)
    assert {r.computer for r in carved} == {"MACHINENAME", "WIN2003S-CF42A4"}
    assert all(r.warnings == [] and r.source_name for r in carved)


# --------------------------------------------------------------------------- (f) fuzzing


FUZZ = settings(max_examples=40, deadline=timedelta(seconds=3),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_FUZZ_CHUNK = build_chunk(_specs(25))
_FUZZ_LONE = build_lone_record(_specs(1)[0])


def _check_records(data: bytes, base: int) -> None:
    for record in carve_evtx(data, base):
        assert base <= record.offset < base + len(data) and record.record_id > 0
        assert isinstance(record.warnings, list) and record.to_dict()["offset"] == record.offset
    for evt in carve_evt(data, base):
        assert base <= evt.offset < base + len(data)


@FUZZ
@given(st.binary(max_size=4096), st.integers(0, 2**48))
def test_fuzz_random_bytes(data: bytes, base: int) -> None:
    _check_records(data, base)
    _check_records(b"ElfChnk\0" + data + b"**\0\0" + data + b"LfLe" + data, base)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, CHUNK_SIZE - 1), st.integers(0, 255)), max_size=40),
       st.integers(0x100, CHUNK_SIZE))
def test_fuzz_mutated_chunk(mutations: list[tuple[int, int]], cut: int) -> None:
    chunk = bytearray(_FUZZ_CHUNK)
    for index, value in mutations:
        chunk[index] = value
    _check_records(bytes(chunk[:cut]), BASE)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(_FUZZ_LONE) - 1), st.integers(0, 255)), max_size=12))
def test_fuzz_mutated_lone_record_and_evt(mutations: list[tuple[int, int]]) -> None:
    lone = bytearray(_FUZZ_LONE)
    evt = bytearray(build_evt_record(1, 0, 1, "S", "C", ["x"] * 3, None, b"dd"))
    for index, value in mutations:
        lone[index] = value
        evt[index % len(evt)] = value
    _check_records(bytes(lone) + bytes(evt), 0)


def test_record_outside_the_chunk_header_range_is_flagged_as_left_over() -> None:
    chunk = bytearray(build_chunk(_specs(4)))
    struct.pack_into("<QQ", chunk, 0x18, 100, 102)            # the header claims records 100-102 only
    carved = {r.record_id: r for r in carve_evtx(bytes(chunk))}
    assert sorted(carved) == [100, 101, 102, 103]
    note = "record id outside the chunk header's range 100-102 (left over from an older chunk?)"
    assert [i for i, r in carved.items() if note in r.warnings] == [103]


def test_evt_records_over_64_kib_are_not_carved() -> None:
    big = bytearray(0x10004)
    struct.pack_into("<I4s", big, 0, len(big), b"LfLe")
    struct.pack_into("<I", big, len(big) - 4, len(big))
    assert list(carve_evt(bytes(big))) == []


# --------------------------------------------------------------------------- EventData names


def test_named_event_data_is_read_with_its_names_and_python_evtx_agrees(tmp_path: Path) -> None:
    names = ("SubjectUserName", "NewProcessId", "NewProcessName")
    named = EvtxRecordSpec(1, T0, 4688, "Microsoft-Windows-Security-Auditing", "Security", "WS-SPYEYE01",
                           ["john", "0xbc4", "C:\\cleansweep.exe\\cleansweep.exe"], 0, names=names)
    bare = replace(named, record_id=2, data=["a", "b"], names=())
    path = tmp_path / "named.evtx"
    path.write_bytes(build_file([named, bare, replace(named, record_id=3)]))
    carved = [r for r in carve_evtx(path.read_bytes()) if r.source == "evtx-chunk"]
    assert [r.fields() for r in carved] == [list(zip(names, named.data)), [(None, "a"), (None, "b")],
                                            list(zip(names, named.data))]
    for (_, _, _, root), record in zip(_pyevtx_rows(path), carved):   # the third reuses the template
        data = root.findall("e:EventData/e:Data", NS)
        assert [(d.get("Name"), d.text) for d in data] == record.fields()
    lone = next(carve_evtx(build_lone_record(named)))
    assert lone.names == list(names)


@pytest.mark.shared
def test_realdata_security_events_name_their_fields() -> None:
    path = REALDATA / "evtx" / "pyevtx_security.evtx"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    carved = [r for r in carve_evtx(path.read_bytes()) if r.source == "evtx-chunk"]
    logons = [r for r in carved if r.event_id == 4624]
    assert len(logons) == 583 and all(r.names[:6] == ["SubjectUserSid", "SubjectUserName", "SubjectDomainName",
                                                      "SubjectLogonId", "TargetUserSid", "TargetUserName"]
                                      for r in logons)
    assert all(len(r.names) == len(r.data) for r in carved)
    system = REALDATA / "evtx" / "pyevtx_system.evtx"
    backups = [r for r in carve_evtx(system.read_bytes()) if r.event_id == 105]   # UserData: element names
    assert len(backups) == 2 and all(r.names == ["Channel", "BackupPath"] for r in backups)
