"""``spyeye.injected`` on the default image, checked against the ground truth and pefile's
reading of the committed fixture DLLs."""
from __future__ import annotations

import datetime
import json
import logging
from typing import Dict, List, Tuple

import pefile
import pytest
from volatility3.plugins.windows import pslist, vadinfo

from fixtures.pe_mapper import DLL_DIR, map_image
from spyeye_plugins.spyeye.injected import InjectedImages, closed_list_bases, export_summary, rebase_image, \
    unlisted, verdict
from spyeye_plugins.spyeye.parsers.known_names import known_spyeye_exports
from spyeye_plugins.spyeye.parsers.pe_image import ExportEntry, MappedPE, file_layout_header, inspect_header
from spyeye_plugins.spyeye.vadwalk import VadFacts
from tests.test_bad_images import stderr_lines
from tests.vol_runner import FileCollector, construct, plugin_module, run_cli, run_plugin

PLUGIN = "spyeye.injected.InjectedImages"
MACHINES = {0x14C: "x86", 0x8664: "x64"}


def _regions(rows: List[Dict]) -> Dict[Tuple[int, int], Tuple[Dict, List[Dict]]]:
    """(PID, VAD start) -> (region row, its export rows)."""
    out: Dict[Tuple[int, int], Tuple[Dict, List[Dict]]] = {}
    for row in rows:
        if row["__depth"] == 0:
            current = (row, [])
            out[(row["PID"], row["VAD Start"])] = current
        else:
            assert (row["PID"], row["VAD Start"]) == (current[0]["PID"], current[0]["VAD Start"])
            current[1].append(row)
    return out


@pytest.fixture(scope="module")
def regions(win7_image):
    image, _ = win7_image
    return _regions(run_plugin(image, PLUGIN, {"exports": True}))


@pytest.fixture(scope="module")
def default_rows(win7_image):
    image, _ = win7_image
    return run_plugin(image, PLUGIN)


def _pefile(dll: str) -> pefile.PE:
    return pefile.PE(str(DLL_DIR / dll))


def _pefile_exports(pe: pefile.PE, base: int) -> List[Tuple]:
    return sorted((s.ordinal, s.name.decode() if s.name else None, s.address, base + s.address,
                   s.forwarder.decode() if s.forwarder else None)
                  for s in pe.DIRECTORY_ENTRY_EXPORT.symbols)


def _row_exports(children: List[Dict]) -> List[Tuple]:
    return [(r["Ordinal"], r["Export Name"], r["RVA"], r["Address"], r["Forwarder"]) for r in children]


def _injected_plants(truth) -> Dict[Tuple[int, int], Dict]:
    """Planted images by (PID, VAD start): one entry per region (split plants merged)."""
    out: Dict[Tuple[int, int], Dict] = {}
    for plant in truth["plants"]:
        if plant["label"].startswith("injected-"):
            out.setdefault((plant["pid"], plant["vad_start"]), plant)
    return out


def _pe_plants(truth) -> set:
    """(PID, VAD start) of every plant (any feature's) that puts a PE header at a VAD start."""
    return {(p["pid"], p["vad_start"]) for p in truth["plants"]
            if p["pid"] is not None and p["va"] == p["vad_start"] and p["resident"]
            and inspect_header(bytes.fromhex(p["data"])[:0x1000]).is_pe}


def _unlinked_modules(truth) -> List[Dict]:
    return [m for m in truth["modules"] if not any(m["in_lists"])]


WELL_FORMED = ["injected-explorer-spyplugin", "injected-firefox-spyplugin-x86",
               "injected-iexplore-wiped", "injected-iexplore-pagedout-header",
               "injected-bot-absurd-count"]


@pytest.mark.parametrize("label", WELL_FORMED)
def test_planted_image_flagged_with_reason_pe_facts_and_exact_exports(win7_image, regions, label):
    _, truth = win7_image
    (plant,) = [p for p in truth["plants"] if p["label"] == label]
    pe = _pefile(plant["meta"]["dll"])
    row, children = regions[(plant["pid"], plant["vad_start"])]
    assert row["VAD End"] == plant["vad_end"] and row["Private"] is True
    assert row["Protection"] == "PAGE_EXECUTE_READWRITE" and row["File"] is None
    assert row["Reason"].startswith(plant["meta"]["reason"] + "; ")
    assert row["Machine"] == MACHINES[pe.FILE_HEADER.Machine]
    assert row["DLL Name"] == pe.DIRECTORY_ENTRY_EXPORT.name.decode()
    assert row["Image Base"] == plant["vad_start"]
    assert row["Size"] == pe.OPTIONAL_HEADER.SizeOfImage
    assert row["Timestamp"] == datetime.datetime.fromtimestamp(pe.FILE_HEADER.TimeDateStamp,
                                                               tz=datetime.timezone.utc)
    expected = _pefile_exports(pe, plant["vad_start"])
    assert row["Exports"] == len(expected) == len(children)
    assert _row_exports(children) == expected


@pytest.mark.parametrize("pid,machine,dll", [(3012, "x64", "ordinals_x64.dll"),    # native PEB lists
                                              (2356, "x86", "ordinals_x86.dll")])   # WoW64: PEB32 lists
def test_unlinked_image_vad_flagged_with_lists_and_exact_exports(win7_image, regions, pid, machine, dll):
    _, truth = win7_image
    (module,) = [m for m in _unlinked_modules(truth) if m["pid"] == pid]
    row, children = regions[(pid, module["base"])]
    assert row["Reason"].startswith("image VAD not in load/memory/init order lists; MZ present")
    assert row["Private"] is False and row["Protection"] == "PAGE_EXECUTE_WRITECOPY"
    assert row["File"] == module["path"][2:]
    assert (row["Machine"], row["DLL Name"], row["Size"]) == (machine, "ordinals.dll", module["size"])
    assert _row_exports(children) == _pefile_exports(_pefile(dll), module["base"])


def test_wow64_dlls_in_the_peb32_lists_are_silent(win7_image, regions):
    _, truth = win7_image
    syswow64 = [(m["pid"], m["base"]) for m in truth["modules"] if m["wow64"] and all(m["in_lists"])]
    assert len(syswow64) >= 8 and not set(syswow64) & set(regions)


def test_wiped_magic_reported_as_evidence(win7_image, regions):
    _, truth = win7_image
    (plant,) = [p for p in truth["plants"] if p["label"] == "injected-iexplore-wiped"]
    assert bytes.fromhex(plant["data"])[:2] == b"\0\0"
    row, _ = regions[(plant["pid"], plant["vad_start"])]
    reasons = row["Reason"].split("; ")
    assert {"MZ erased", "PE signature erased", "NT headers at +0x80", "section table valid"} <= set(reasons)


def test_paged_out_image_lists_exports_and_says_what_is_missing(win7_image, regions):
    _, truth = win7_image
    (plant,) = [p for p in truth["plants"] if p["label"] == "injected-iexplore-pagedout-header"]
    row, children = regions[(plant["pid"], plant["vad_start"])]
    assert row["Missing"] == ", ".join(f"{a:#x}-{b:#x}" for a, b in plant["meta"]["paged_out"])
    assert len(children) == 19 and row["Warnings"] == ""


def test_malformed_images_warn_and_give_what_could_be_read(win7_image, caplog):
    image, truth = win7_image
    with caplog.at_level(logging.WARNING):
        found = _regions(run_plugin(image, PLUGIN, {"pid": [3012], "exports": True}))
    absurd, header_only = (next(p for p in truth["plants"] if p["label"] == label)
                           for label in ("injected-bot-absurd-count", "injected-bot-header-only"))
    row, children = found[(3012, absurd["vad_start"])]
    assert row["Warnings"] == "NumberOfFunctions 0x40000000 absurd (table at 0x3028); capped to 19"
    assert len(children) == 19
    row, children = found[(3012, header_only["vad_start"])]
    assert (row["Machine"], row["Size"], row["Exports"], row["DLL Name"]) == ("x64", 0x4000, 0, None)
    assert row["Missing"] == "0x1000-0x4000" and not children
    assert row["Warnings"].split("; ") == ["SizeOfImage 0x4000 exceeds region size 0x1000",
                                           "export directory at 0x2000 outside image",
                                           "import directory at 0x3000 outside image"]
    logged = [r.getMessage() for r in caplog.records if r.name.endswith("spyeye.injected")]
    assert f"PID 3012 image at {header_only['vad_start']:#x}: export directory at 0x2000 outside image" \
        in logged


def test_only_planted_images_reported_and_normal_modules_are_silent(win7_image, regions):
    _, truth = win7_image
    planted = set(_injected_plants(truth)) | {(m["pid"], m["base"]) for m in _unlinked_modules(truth)}
    assert planted <= set(regions) == planted | _pe_plants(truth)
    listed = {(m["pid"], m["base"]) for m in truth["modules"] if all(m["in_lists"])}
    assert (1484, 0x0B100000) in listed         # imgutil.dll, loaded normally
    assert not listed & set(regions)
    assert (1484, 0x2A40000) not in regions     # "MZ" bytes but no PE headers


def test_default_rows_summarise_exports_with_the_verdict_and_have_no_children(win7_image, default_rows, regions):
    assert all(row["__depth"] == 0 for row in default_rows)
    assert "Export Name" not in default_rows[0] and "Known" not in default_rows[0]
    by_key = {(r["PID"], r["VAD Start"]): r for r in default_rows}
    assert set(by_key) == set(regions)
    explorer = by_key[(1484, 0x0B000000)]
    assert (explorer["Exports"], explorer["Export Summary"]) == (19, "19 exports, 19 known SpyEye plugin names")
    assert explorer["Verdict"] == "SpyEye plugin: known plugin DLL name; 19 of 19 exports are SpyEye plugin API"
    ordinals = by_key[(3012, 0x0B000000)]
    assert (ordinals["Export Summary"], ordinals["Verdict"]) == ("5 exports, 0 known SpyEye plugin names",
                                                                 "no SpyEye names")
    for key, (row, children) in regions.items():
        summary = by_key[key]
        if row["Machine"] is None:
            assert summary["Verdict"] is None and summary["Export Summary"] is None
            continue
        known = sum(child["Known"] is not None and child["Known"].startswith("SpyEye") for child in children)
        assert summary["Export Summary"].startswith(f"{len(children)} export")
        assert summary["Verdict"].startswith("SpyEye plugin") == (known > 0 or row["DLL Name"] == "ccgrabber.dll")


def test_compile_times_are_checked_against_the_capture_time(win7_image, default_rows, monkeypatch, caplog):
    image, truth = win7_image
    plugin = construct(image, PLUGIN)
    captured = type(plugin).capture_time(plugin.context, plugin.config["kernel"])
    assert captured == datetime.datetime.fromtimestamp(int(truth["system_time"]), tz=datetime.timezone.utc)
    assert {r["After Capture"] for r in default_rows if r["Timestamp"]} == {False}
    compiled = datetime.datetime(2011, 3, 15, 12, 0, tzinfo=datetime.timezone.utc)   # the fixture DLLs'
    early = compiled - datetime.timedelta(days=1)
    monkeypatch.setattr(type(plugin), "capture_time", classmethod(lambda cls, context, kernel: early))
    with caplog.at_level(logging.WARNING):
        rows = run_plugin(image, PLUGIN, {"pid": [2356]})
    assert [(r["VAD Start"], r["Timestamp"], r["After Capture"]) for r in rows] == [
        (0x0B000000, compiled, True), (0x0B100000, compiled, True)]
    assert (f"PID 2356 image at 0xb000000: compiled {compiled}, after the image was captured ({early}): "
            "TimeDateStamp forged or wrong") in [r.getMessage() for r in caplog.records]


def test_known_spyeye_names_are_tagged(win7_image, regions):
    _, truth = win7_image
    known = known_spyeye_exports()
    for key, plant in _injected_plants(truth).items():
        for child in regions[key][1]:
            if child["Export Name"] in known:
                assert child["Known"] == f"SpyEye plugin export ({known[child['Export Name']].role})"
            else:
                assert child["Known"] is None
    explorer = regions[(1484, 0x0B000000)][1]
    assert sum(r["Known"] is not None for r in explorer) == 19
    verdicts = {key: parent["Verdict"] for key, (parent, _) in regions.items()}
    named = {key for key, verdict in verdicts.items() if verdict and "known plugin DLL name" in verdict}
    assert len(named) >= 4                                       # explorer, firefox, iexplore, bot
    assert named == {key for key, (parent, _) in regions.items() if parent["DLL Name"] == "ccgrabber.dll"}
    assert verdicts[(1484, 0x0C100000)] == "no SpyEye names"     # imgutil.dll, not a SpyEye name
    assert {parent["Known"] for parent, _ in regions.values()} == {None}


def test_all_exec_reports_every_private_executable_vad(win7_image):
    image, truth = win7_image
    found = _regions(run_plugin(image, PLUGIN, {"all_exec": True, "exports": True}))
    linked = {p["pid"] for p in truth["processes"] if p["linked"]}
    private_exec = {(v["pid"], v["start"]) for v in truth["vads"]
                    if v["pid"] in linked and v["private"] and "EXECUTE" in v["protection"]}
    unlinked = {(m["pid"], m["base"]) for m in _unlinked_modules(truth)}
    assert set(found) == private_exec | unlinked
    row, children = found[(1484, 0x2A40000)]
    assert row["Reason"] == "private executable memory; MZ present; e_lfanew 0x0 invalid; no NT headers found"
    assert row["Machine"] is None and row["Exports"] is None and not children


@pytest.mark.parametrize("config,expected", [
    ({"pid": [2356]}, [(2356, 0x0B000000), (2356, 0x0B100000)]),
    ({"name": ["iexplore.exe"]}, [(2172, 0x0B000000), (2172, 0x0B100000)]),
])
def test_pid_and_name_filters(win7_image, config, expected):
    image, _ = win7_image
    assert sorted(_regions(run_plugin(image, PLUGIN, config))) == expected


def test_dumped_images_load_in_pefile_with_the_original_exports(win7_image):
    image, truth = win7_image
    found = _regions(run_plugin(image, PLUGIN, {"dump": True}))
    files = dict(FileCollector.files)
    plants = _injected_plants(truth)
    assert len(files) == len(found) and set(plants) <= set(found)
    for (pid, start), (row, _) in found.items():
        if (pid, start) not in plants:
            continue
        name = row["File output"]
        assert name.startswith(f"pid.{pid}.{start:#x}.") and name in files
        assert row["Dump Note"] == f"ImageBase is already {start:#x}, the VAD start"   # mapped at the VAD
        assert pefile.PE(data=files[name]).OPTIONAL_HEADER.ImageBase == start
        dumped = pefile.PE(data=files[name])
        if "malformed" in plants[(pid, start)]["meta"]:
            continue                            # dumped as found: the export table stays corrupt
        original = _pefile(plants[(pid, start)]["meta"]["dll"])
        assert dumped.DIRECTORY_ENTRY_EXPORT.name == original.DIRECTORY_ENTRY_EXPORT.name
        assert _pefile_exports(dumped, 0) == _pefile_exports(original, 0)
        assert files[name][:2] == b"MZ"


def test_list_candidates_contract(win7_image):
    image, truth = win7_image
    plugin = construct(image, PLUGIN)
    kernel = plugin.context.modules[plugin.config["kernel"]]
    protect = vadinfo.VadInfo.protect_values(plugin.context, kernel.layer_name, kernel.symbol_table_name)
    (proc,) = pslist.PsList.list_processes(plugin.context, plugin.config["kernel"],
                                           filter_func=lambda p: p.UniqueProcessId != 1484)
    cls = type(plugin)
    found = list(cls.list_candidates(plugin.context, plugin.config["kernel"], proc, protect))
    assert [c.vad.start for c in found] == sorted(start for pid, start in _pe_plants(truth) if pid == 1484)
    (candidate,) = [c for c in found if c.vad.start == 0x0B000000]
    assert candidate.layer_name in plugin.context.layers
    assert candidate.reasons[0] == "private executable memory" and candidate.header.is_pe
    assert candidate.pe.dll_name == "ccgrabber.dll" and candidate.missing == []
    every = list(cls.list_candidates(plugin.context, plugin.config["kernel"], proc, protect, all_exec=True))
    assert [c.vad.start for c in every] == sorted(
        v["start"] for v in truth["vads"]
        if v["pid"] == 1484 and v["private"] and "EXECUTE" in v["protection"])
    assert [c.pe is None for c in every if c.vad.start in (0x2A40000, 0x0B000000)] == [True, False]


def test_json_output_nests_exports_under_regions(win7_image, tmp_path):
    image, _ = win7_image
    out = run_cli("-r", "json", "-o", str(tmp_path), "-f", str(image), "spyeye.injected",
               "--pid", "2356", "--dump", "--exports")
    assert "Traceback" not in out.stderr
    row = json.loads(out.stdout)[0]
    assert (row["PID"], row["VAD Start"], row["Machine"], row["DLL Name"]) == \
        (2356, 0x0B000000, "x86", "ccgrabber.dll")
    assert row["Timestamp"] == "2011-03-15T12:00:00+00:00"
    assert [c["Export Name"] for c in row["__children"]][:2] == ["Callback_ChangePostRequest",
                                                                  "Callback_OnAfterLoadingPage"]
    assert (tmp_path / row["File output"]).stat().st_size == 0x6000


@pytest.mark.parametrize("args,line", [
    (["--pid", "99999"], "error: no process with PID 99999 in the active process list"),
    (["--pid", "2356", "31337"], "error: no process with PID 31337 in the active process list"),
    (["--name", "nosuch.exe"], "error: no process named nosuch.exe in the active process list"),
])
def test_unknown_process_fails_with_one_line_and_no_table(win7_image, args, line):
    image, _ = win7_image
    out = run_cli("-f", str(image), "spyeye.injected", *args)
    assert out.returncode == 1 and "PID" not in out.stdout
    assert stderr_lines(out) == [line]


def test_unknown_pid_raises_usage_error_in_process(win7_image):
    image, _ = win7_image
    with pytest.raises(plugin_module("spyeye.output").UsageError, match="no process with PID 99999"):
        construct(image, PLUGIN, {"pid": [99999]}).run()


def _file_layout(mapped: bytes) -> bytes:
    """A mapped image as spyeye.injected writes it before rebasing (raw offset = RVA)."""
    header, size = file_layout_header(mapped[:0x1000], len(mapped))
    return header + mapped[len(header):size]


def test_rebase_applies_relocations_when_memory_still_holds_the_preferred_base():
    raw = (DLL_DIR / "spyplugin_x86.dll").read_bytes()
    assert pefile.PE(data=raw).OPTIONAL_HEADER.ImageBase == 0x10000000
    data, note = rebase_image(_file_layout(map_image(raw)), 0x0B000000)
    assert note == "rebased 0x10000000 -> 0xb000000 (the VAD start): 15 relocations applied"
    loaded = map_image(raw, 0x0B000000)                 # pefile's own relocation of the file
    assert data[0x1000:] == loaded[0x1000:len(data)] != map_image(raw)[0x1000:len(data)]
    assert pefile.PE(data=data).OPTIONAL_HEADER.ImageBase == 0x0B000000


def test_rebase_only_sets_image_base_when_memory_is_already_relocated():
    raw = (DLL_DIR / "spyplugin_x86.dll").read_bytes()
    relocated = bytearray(map_image(raw, 0x0B000000))
    relocated[:0x1000] = map_image(raw)[:0x1000]         # header still names the preferred base
    data, note = rebase_image(_file_layout(bytes(relocated)), 0x0B000000)
    assert note == ("ImageBase 0x10000000 -> 0xb000000 (the VAD start); memory already relocated "
                    "(15 of 15 sampled pointers point into it)")
    assert data[0x1000:] == bytes(relocated[0x1000:len(data)])
    assert pefile.PE(data=data).OPTIONAL_HEADER.ImageBase == 0x0B000000


def test_rebase_without_relocations_sets_the_image_base():
    raw = (DLL_DIR / "spyplugin_x64.dll").read_bytes()
    data, note = rebase_image(_file_layout(map_image(raw)), 0x0B000000)
    assert note == "ImageBase 0x180000000 -> 0xb000000 (the VAD start); no relocations to apply"
    assert pefile.PE(data=data).OPTIONAL_HEADER.ImageBase == 0x0B000000
    assert data[0x1000:] == map_image(raw)[0x1000:len(data)]


def test_loader_list_comparison_exempts_the_exe_from_init_order_only():
    lists = {"load": {0x400000, 0x77A50000}, "memory": {0x400000, 0x77A50000}, "init": {0x77A50000}}
    assert unlisted(0x400000, lists, exe_base=0x400000) == []
    assert unlisted(0x400000, lists, exe_base=None) == ["init"]
    assert unlisted(0x0B000000, lists, exe_base=0x400000) == ["load", "memory", "init"]
    assert unlisted(0x77A50000, {"load": {0x77A50000}}, exe_base=None) == []


@pytest.mark.parametrize("vad,reason", [
    (VadFacts(0x10000, 0x1FFFF, "PAGE_EXECUTE_WRITECOPY", False, "\\Windows\\x.dll", True), None),
    (VadFacts(0x20000, 0x2FFFF, "PAGE_EXECUTE_WRITECOPY", False, "\\Temp\\y.dll", True),
     "image VAD not in load/memory/init order lists"),
    (VadFacts(0x30000, 0x3FFFF, "PAGE_READONLY", False, "\\Windows\\locale.nls"), None),
    (VadFacts(0x40000, 0x4FFFF, "PAGE_EXECUTE_READWRITE", True, None), "private executable memory"),
    (VadFacts(0x50000, 0x5FFFF, "PAGE_EXECUTE_READ", False, None), "executable shared memory (no file)"),
    (VadFacts(0x60000, 0x6FFFF, "PAGE_READWRITE", True, None), "private non-executable memory"),
    (VadFacts(0x70000, 0x7FFFF, "PAGE_READWRITE", False, None), None),
    (VadFacts(0x80000, 0x8FFFF, "PAGE_EXECUTE_WRITECOPY", False, None, True),
     "image VAD (file name unreadable) not in load/memory/init order lists"),
])
def test_which_vads_get_a_look(vad, reason):
    lists = {"load": {0x10000}, "memory": {0x10000}, "init": {0x10000}}
    assert InjectedImages._vad_reason(vad, lists, exe_base=None) == reason


class _Link:
    def __init__(self, flink: int) -> None:
        self.Flink = flink


class _Entry:
    def __init__(self, base: int, flink: int) -> None:
        self.DllBase = base
        self.InLoadOrderLinks = _Link(flink)


class _Head:
    """A LIST_ENTRY at 0x1000 whose walk yields ``entries`` (as to_list would)."""

    def __init__(self, entries) -> None:
        self.Flink = 0x2000 if entries else 0x1000
        self.vol = type("vol", (), {"offset": 0x1000})
        self._entries = entries

    def to_list(self, entry_type, link):
        return iter(self._entries)


def test_loader_list_is_trusted_only_when_its_walk_returns_to_the_head():
    closed = _Head([_Entry(0x77A50000, 0x3000), _Entry(0x77930000, 0x1000)])
    cut = _Head([_Entry(0x77A50000, 0x3000)])           # to_list stopped at an unreadable entry
    assert closed_list_bases(closed, "t!_LDR_DATA_TABLE_ENTRY", "InLoadOrderLinks") == {0x77A50000, 0x77930000}
    assert closed_list_bases(cut, "t!_LDR_DATA_TABLE_ENTRY", "InLoadOrderLinks") is None
    assert closed_list_bases(_Head([]), "t!_LDR_DATA_TABLE_ENTRY", "InLoadOrderLinks") == set()


def test_dump_of_an_image_larger_than_its_vad_stops_at_the_vad(win7_image):
    image, truth = win7_image
    (plant,) = [p for p in truth["plants"] if p["label"] == "injected-bot-header-only"]
    found = _regions(run_plugin(image, PLUGIN, {"dump": True, "pid": [plant["pid"]]}))
    row, _ = found[(plant["pid"], plant["vad_start"])]
    dumped = FileCollector.files[row["File output"]]
    assert row["Size"] > plant["vad_end"] + 1 - plant["vad_start"]          # SizeOfImage says more
    assert len(dumped) == plant["vad_end"] + 1 - plant["vad_start"] and dumped[:2] == b"MZ"


def _image(dll_name, *names) -> MappedPE:
    exports = [ExportEntry(ordinal, name, 0x1000 + ordinal, 0x10001000 + ordinal, None)
               for ordinal, name in enumerate(names, start=1)]
    return MappedPE(0x10000000, inspect_header(b""), dll_name=dll_name, exports=exports)


@pytest.mark.parametrize("pe,summary,decided", [
    (_image("webfakes.dll", "Init", "Start", "Helper"), "3 exports, 2 known SpyEye plugin names",
     "SpyEye plugin: known plugin DLL name; 2 of 3 exports are SpyEye plugin API"),
    (_image("x.dll", "Init"), "1 export, 1 known SpyEye plugin name",
     "SpyEye plugin: 1 of 1 exports are SpyEye plugin API"),
    (_image("CCGRABBER.DLL", None), "1 export, 0 known SpyEye plugin names", "SpyEye plugin: known plugin DLL name"),
    (_image("host.dll", "Init", "TakeGateToCollector3", "TakeWriteData"),
     "3 exports, 1 known SpyEye plugin name, 2 Zeus-derived plugin host names",
     "Zeus-derived plugin host, not SpyEye (2 host exports)"),
    (_image(None), "0 exports", "no SpyEye names"),
])
def test_export_summary_and_verdict(pe, summary, decided):
    assert (export_summary(pe.exports), verdict(pe)) == (summary, decided)
