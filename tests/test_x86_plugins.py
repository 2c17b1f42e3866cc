"""The suite's plugins on the Windows 7 SP1 x86 image (issue 14 part 6).

Each plugin runs once per 32-bit image (``x86_image``: Windows 7 SP1 x86, then XP SP3; module-scoped fixtures); the Windows 7 x64 image
tests' own checks then run on those rows (``CHECKS``), so both builds assert the same
ground-truth facts: two-level paging under the page reader, 4-byte pointers in every list and
VAD, x86 PE images and x86 disassembly in every process (firefox.exe, WoW64 on x64, is native
here).  Where the x64 check names an x64 value, the check below states the x86 one."""
from __future__ import annotations

import inspect
from datetime import datetime, timezone
from typing import Dict, List

import pytest

import tests.test_apiscore as apiscore
import tests.test_hooks as hooks
import tests.test_injected as injected
import tests.test_spyeye_config as config
import tests.test_timeline as timeline
import tests.test_triage as triage
import tests.test_vadsearch as vadsearch
import tests.test_vadwalk as vadwalk
from fixtures.plants.timeline import export_addresses, rtl_user_thread_start
from tests.vol_runner import FileCollector, run_cli, run_plugin


# --- one run per plugin ----------------------------------------------------------------------
@pytest.fixture(scope="module", params=["win7_x86_image", "xp_x86_image"], ids=["win7x86", "xpx86"])
def x86_image(request):
    """Each 32-bit build in turn: the module's checks run on Windows 7 SP1 x86, then XP SP3."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def timeline_rows(x86_image) -> List[Dict]:
    return run_plugin(x86_image[0], timeline.PLUGIN)


@pytest.fixture(scope="module")
def timeline_flags(x86_image) -> List[Dict]:
    return run_plugin(x86_image[0], timeline.PLUGIN, {"correlate": True})


@pytest.fixture(scope="module")
def vadsearch_hits(x86_image) -> List[Dict]:
    return run_plugin(x86_image[0], "spyeye.vadsearch.VadSearch",
                      {"keyword": vadsearch.KEYWORDS, "compare_physical": True, "hexdump": True})


@pytest.fixture(scope="module")
def config_found(x86_image) -> Dict:
    return config._artifacts(run_plugin(x86_image[0], config.PLUGIN))


@pytest.fixture(scope="module")
def injected_regions(x86_image) -> Dict:
    return injected._regions(run_plugin(x86_image[0], injected.PLUGIN, {"exports": True}))


@pytest.fixture(scope="module")
def apiscore_rows(x86_image) -> List[Dict]:
    return run_plugin(x86_image[0], apiscore.PLUGIN, {"pid": [1484, 2356], "verbose": True})


@pytest.fixture(scope="module")
def every_hook(x86_image) -> List:
    return hooks._tree(run_plugin(x86_image[0], hooks.PLUGIN, {"all": True}))


@pytest.fixture(scope="module")
def planted(x86_image) -> List[Dict]:
    return x86_image[1]["hooks"]


@pytest.fixture(scope="module")
def triage_run(x86_image):
    rows = run_plugin(x86_image[0], triage.PLUGIN)
    files = dict(FileCollector.files)
    tree: List = []
    for row in rows:
        if row["__depth"] == 0:
            tree.append((row, []))
        else:
            tree[-1][1].append(row)
    return tree, files


# --- the Windows 7 image tests' checks, on the Windows 10 rows -------------------------------
# (module, check): the check's parameters are filled from the fixture of the same name, with
# win7_image -> x86_image and the per-module names in RENAMED.
RENAMED = {
    timeline: {"rows": "timeline_rows"},
    vadsearch: {"hits": "vadsearch_hits"},
    config: {"found": "config_found"},
    injected: {"regions": "injected_regions"},
    apiscore: {"default_rows": "apiscore_rows"},
    triage: {"triage": "triage_run"},
}
CHECKS = [
    (vadwalk, "test_vad_facts_match_volatility_helpers_for_every_vad"),
    (vadwalk, "test_image_flag_and_sizes_from_the_truth"),
    (vadwalk, "test_every_process_counts_the_vads_its_tree_gives"),
    (timeline, "test_timeline_matches_truth_row_for_row_in_order"),
    (timeline, "test_thread_rows_carry_tid_and_start_addresses_without_the_repeated_thunk"),
    (timeline, "test_threads_starting_in_injected_code_name_the_dll_export_or_private_region"),
    (timeline, "test_every_carved_evtx_record_matches_python_evtx"),
    (timeline, "test_freed_records_report_physical_offsets_and_holders_report_pid_and_va"),
    (timeline, "test_rows_after_the_capture_or_before_the_boot_are_flagged"),
    (timeline, "test_every_event_log_row_names_its_computer_and_others_are_flagged"),
    (vadsearch, "test_every_resident_plant_found_with_process_vad_addresses_and_context"),
    (vadsearch, "test_straddling_hits_found_flagged_scattered_and_missed_by_linear_scan"),
    (vadsearch, "test_paged_out_keyword_is_not_reported"),
    (vadsearch, "test_chunk_edge_hit_reported_exactly_once"),
    (vadsearch, "test_shared_mapping_reported_once_per_process"),
    (vadsearch, "test_freed_memory_hit_listed_without_owner"),
    (config, "test_c1_blocks_decode_to_exact_fields"),
    (config, "test_c1_at_page_offset_b20_noted_and_weighted"),
    (config, "test_framed_records_decode_to_exact_fields"),
    (config, "test_damaged_record_gives_readable_fields_and_warnings"),
    (config, "test_checkin_decoded"),
    (config, "test_mutex_and_pipe_names_found_one_row_each"),
    (config, "test_config_image_decoded_once"),
    (config, "test_webinject_decoded"),
    (injected, "test_planted_image_flagged_with_reason_pe_facts_and_exact_exports"),
    (injected, "test_unlinked_image_vad_flagged_with_lists_and_exact_exports"),
    (injected, "test_only_planted_images_reported_and_normal_modules_are_silent"),
    (injected, "test_known_spyeye_names_are_tagged"),
    (apiscore, "test_every_planted_resolver_scores_at_least_70_with_its_traits_and_apis"),
    (apiscore, "test_evidence_rows_name_the_hash_pushes_and_their_apis"),
    (apiscore, "test_evidence_rows_name_the_function_each_trait_was_found_in"),
    (hooks, "test_every_planted_hook_is_reported_with_module_function_kind_and_technique"),
    (hooks, "test_every_planted_target_and_its_region"),
    (hooks, "test_jumps_into_injected_dll_name_the_export_at_the_target"),
    (hooks, "test_clean_processes_have_no_high_confidence_row"),
    (hooks, "test_no_row_other_than_the_planted_hooks_is_high"),
    (triage, "test_one_row_per_process_with_parent_and_times"),
    (triage, "test_verdicts"),
    (triage, "test_every_expected_reason_names_its_plugin"),
    (triage, "test_exited_dropper_is_suspicious_on_timeline_evidence"),
    (triage, "test_hook_rows_are_the_planted_hooks"),
    (triage, "test_injected_rows_are_the_planted_images"),
    (triage, "test_config_rows_are_the_planted_artifacts"),
    (triage, "test_timeline_rows"),
]


X86_VALUES = {"x64": "x86", "ordinals_x64.dll": "ordinals_x86.dll"}
"""Parameters of the x64 cases, as the x86 image has them (every process is x86 there)."""

X86_NAMES = {  # module -> {name in the x64 test module: its x86 value}
    timeline: {"RTL_USER_THREAD_START": rtl_user_thread_start(32),   # every thread starts in the x86 ntdll
               "export_addresses": lambda dll, base: export_addresses(dll.replace("_x64", "_x86"), base)},
}


def _expand(checks):
    """Each check once per parametrize case of its Windows 7 test (x64 values made x86)."""
    for module, name in checks:
        check = getattr(module, name)
        marks = [m for m in getattr(check, "pytestmark", []) if m.name == "parametrize"]
        if not marks:
            yield pytest.param(module, name, {}, id=f"{module.__name__.rsplit('.', 1)[1]}::{name}")
            continue
        (mark,) = marks
        names = [n.strip() for n in mark.args[0].split(",")] if isinstance(mark.args[0], str) else mark.args[0]
        for case in mark.args[1]:
            values = tuple(X86_VALUES.get(v, v) if isinstance(v, str) else v
                           for v in (case if isinstance(case, tuple) else (case,)))
            yield pytest.param(module, name, dict(zip(names, values)),
                               id=f"{module.__name__.rsplit('.', 1)[1]}::{name}[{'-'.join(map(str, values))}]")


XP_OWN = {  # checks stating Windows 7's .evtx texts: XP's .Evt records are checked by the tests named
    "test_every_event_log_row_names_its_computer_and_others_are_flagged": "test_xp_event_log_rows_name_their_computer",
    "test_exited_dropper_is_suspicious_on_timeline_evidence": "test_xp_exited_dropper_is_suspicious_on_timeline_evidence",
}


@pytest.mark.parametrize("module, name, given", list(_expand(CHECKS)))
def test_windows7_x64_check_holds_on_x86(request, monkeypatch, x86_image, module, name, given):
    if x86_image[1]["os"] == "xp-x86" and name in XP_OWN:
        pytest.skip(f"XP logs .Evt records: {XP_OWN[name]}")
    for attribute, value in X86_NAMES.get(module, {}).items():
        monkeypatch.setattr(module, attribute, value)
    check = getattr(module, name)
    fixtures = {"win7_image": "x86_image", **RENAMED.get(module, {})}
    args = {p: given[p] if p in given else request.getfixturevalue(fixtures.get(p, p))
            for p in inspect.signature(check).parameters}
    check(**args)


# --- the checks whose x64 values differ ------------------------------------------------------
@pytest.mark.parametrize("image_fixture, windows", [("win7_x86_image", "6.1 build 7601"),
                                                    ("xp_x86_image", "5.1 build 2600")])
def test_info_reports_the_32bit_build(request, image_fixture, windows):
    image, truth = request.getfixturevalue(image_fixture)
    rows = {r["Property"]: r["Value"] for r in run_plugin(image, "spyeye.info.Info")}
    assert rows["Windows"] == windows
    assert rows["Bitness"] == "32-bit"
    assert rows["Processes (active list)"] == str(sum(p["linked"] for p in truth["processes"]))
    assert rows["WoW64 processes"] == "0"
    assert rows["Kernel symbols"].endswith(f"{truth['pdb']['guid']}-{truth['pdb']['age']}.json.xz")


def test_xpnet_refuses_windows_7_x86_in_one_line(win7_x86_image):
    out = run_cli("-f", str(win7_x86_image[0]), "spyeye.xpnet", "--pid", "1484")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert [line for line in out.stderr.splitlines() if "error" in line] == [
        "error: spyeye.xpnet reads Windows XP x86 network objects; this image is Windows 6.1 "
        "(use windows.netscan)"]


def test_native_system_dlls_in_the_peb_lists_are_silent(x86_image, injected_regions):
    """x86 has no WoW64: the x86 system DLLs are in the native PEB lists, and silent."""
    _, truth = x86_image
    listed = [(m["pid"], m["base"]) for m in truth["modules"] if all(m["in_lists"])]
    assert not any(m["wow64"] for m in truth["modules"])
    assert len(listed) >= 8 and not set(listed) & set(injected_regions)


X86_NEGATIVE_SCORES = {  # label: (score, traits, the function whose window scored)
    "apiscore-iat_calls-x86": (0, "", None), "apiscore-compiled-x86": (5, "hash_loop", "sub_c040270"),
    "apiscore-benign-dll-x86": (10, "no_import_table", None),   # ordinals_x86.dll imports nothing
}


def test_normal_code_and_the_compiled_dll_score_low_in_x86(x86_image, apiscore_rows):
    _, truth = x86_image
    negatives = apiscore._plants(truth, "negative")
    assert sorted(p["label"] for p in negatives) == sorted(
        ["apiscore-iat_calls-x86", "apiscore-compiled-x86"] * 2 + ["apiscore-benign-dll-x86"])
    for plant in negatives:
        row = apiscore._row(apiscore_rows, plant)
        assert (row["Score"], row["Traits"], row["Function"]) == X86_NEGATIVE_SCORES[plant["label"]], plant["label"]
        assert (row["Confidence"], row["APIs"], row["Mode"]) == ("low", "", "x86")


def test_mapped_x86_dll_is_decoded_from_its_entry_point_and_exports(x86_image, apiscore_rows):
    _, truth = x86_image
    row = apiscore._row(apiscore_rows, apiscore._plant(truth, "apiscore-benign-dll-x86"))
    assert row["Method"] == "entry points" and row["Instructions"] > 10 and row["Mode"] == "x86"
    assert "PE signature" in row["Reason"] and "machine x86" in row["Reason"]


def test_syscall_number_change_shows_both_numbers_of_native_x86_stubs(every_hook, planted):
    changed = [p for p in planted if p["technique"] == "syscall_number"]
    assert [p["pid"] for p in changed] == [1484]
    for plant in changed:
        _, children = hooks._find(every_hook, plant)
        numbers = [c["Detail"] for c in children if c["Evidence"] == "syscall number"]
        assert numbers == [f"{plant['syscall']['patched_number']:#x}, other copies {plant['syscall']['number']:#x} "
                           f"(x86 native stub)"], hooks._label(plant)


def test_syscall_jmp_hooks_sit_over_each_stub_form(x86_image, planted):
    """explorer's native stub is patched over ``mov edx, 7FFE0300h; call [edx]`` (entry + 5),
    and the patched bytes are a jump and two nops in the process's memory."""
    image, _ = x86_image
    (plant,) = [p for p in planted if p["technique"] == "syscall_jmp" and p["pid"] == 1484]
    assert plant["patch_address"] == plant["entry"] + 5
    assert bytes.fromhex(plant["original"]) == b"\xba\x00\x03\xfe\x7f\xff\x12"
    assert bytes.fromhex(plant["patch"])[0] == 0xE9 and bytes.fromhex(plant["patch"])[5:] == b"\x90\x90"


def _evt_records(blob: bytes):
    """(offset, record number, TimeGenerated, event ID) of each record of an ``.Evt`` file,
    walked by its own lengths from the 0x30-byte header to the EOF record."""
    import struct
    pos, out = 0x30, []
    while True:
        length, magic, number, generated, _, event_id = struct.unpack_from("<I4sIIII", blob, pos)
        if magic != b"LfLe":
            return out
        out.append((pos, number, datetime.fromtimestamp(generated, timezone.utc), event_id & 0xFFFF))
        pos += length


def test_xp_event_logs_are_evt_files_carved_from_services_exe(x86_image, timeline_rows):
    """XP: SysEvent/SecEvent/AppEvent.Evt mapped by services.exe, each record a row at its
    address with its number, event ID and whole-second time; the damaged record left out."""
    _, truth = x86_image
    logs = [p for p in truth["plants"] if p["kind"] == "evt-file"]
    if truth["os"] != "xp-x86":
        assert not logs
        pytest.skip("Windows 7 keeps .evtx logs (the x64 checks above)")
    assert sorted(p["label"] for p in logs) == ["timeline-AppEvent.Evt", "timeline-SecEvent.Evt", "timeline-SysEvent.Evt"]
    rows = {r["Provenance"]: r for r in timeline_rows if r["Source"] == "eventlog"}
    for log in logs:
        name, corrupt = log["label"].removeprefix("timeline-"), log["meta"].get("corrupt", [])
        records = _evt_records(bytes.fromhex(log["data"]))
        assert [n for _, n, _, _ in records] == [r["record_id"] for r in log["meta"]["records"]]
        for offset, number, when, event_id in records:
            row = rows.get(f"evt record in PID 496 {name} @ {log['va'] + offset:#x}")
            if number in corrupt:
                assert row is None
                continue
            assert (row["Time"], row["PID"]) == (when, None)
            assert f" {event_id} (record {number}, EVT) on JOHN-PC" in row["Detail"]
    security = sorted(r["Detail"].split(" (")[0] for r in rows.values() if "SecEvent.Evt" in r["Provenance"])
    assert security == ["Security 528", "Security 592", "Security 592"]


def _xp_only(x86_image) -> None:
    if x86_image[1]["os"] != "xp-x86":
        pytest.skip("Windows 7 keeps .evtx logs (the x64 check runs)")


def test_xp_event_log_rows_name_their_computer(x86_image, timeline_rows):
    _xp_only(x86_image)
    logged = [r for r in timeline_rows if r["Source"] == "eventlog"]
    assert next(r["Detail"] for r in logged if " 6009 " in r["Detail"]) == \
        "EventLog 6009 (record 2, EVT) on JOHN-PC: 5.01.; 2600; Service Pack 3"
    foreign = {r["Detail"].split(" on ")[1].split(":")[0] for r in logged if "logged on" in r["Flags"]}
    assert foreign == {"WKS-ACCT07", "XPBOX"}


def test_xp_exited_dropper_is_suspicious_on_timeline_evidence(x86_image, triage_run):
    _xp_only(x86_image)
    row, children = triage._by_pid(triage_run[0])[2940]
    assert row["Score"] == 15
    assert row["Reasons"].startswith("spyeye.timeline: after-exit (+10): network connected 28.500 s after PID 2940 "
                                     "(invoice_0311.e) exited: TCPv4 192.168.56.101:49170 -> 198.51.100.23:8080")
    assert ("; spyeye.timeline: event-log record (+5): Security 592 (record 2, EVT) on JOHN-PC: john; 0xb7c; "
            "C:\\Users\\john\\Desktop\\invoice_0311.exe") in row["Reasons"]
    assert [(c["Plugin"], c["Evidence"]) for c in children] == [
        ("spyeye.timeline", "after-exit"), ("spyeye.timeline", "event-log record"),
        ("spyeye.timeline", "event-log record"), ("spyeye.timeline", "connection"), ("spyeye.timeline", "connection")]


def test_xpnet_lists_every_connection_and_socket_with_exact_times_and_owners(x86_image):
    """``spyeye.xpnet`` on XP: each connection of the truth (active and closed) at its physical
    offset, dated by its socket; the listeners; ``--pid`` and ``--name`` narrow the rows."""
    image, truth = x86_image
    _xp_only(x86_image)
    rows = run_plugin(image, "spyeye.xpnet.XpNet")
    names = {p["pid"]: p["image_file_name"] for p in truth["processes"]}
    got = {(r["Offset(P)"], r["Proto"], r["LocalAddr"], r["LocalPort"], r["RemoteAddr"], r["RemotePort"],
            r["State"], r["PID"], r["Owner"], r["Created"]) for r in rows}
    want = set()
    for c in truth["connections"]:
        freed = " (freed)" if c["closed"] else ""
        if c["tag"] == "TCPT":
            want.add((c["offset_phys"], "TCP", c["local"], c["lport"], c["remote"], c["rport"],
                      f"connection{freed}", c["pid"], names[c["pid"]], timeline.exact(c["create_time"])))
            want.add(("socket", "TCP", "0.0.0.0", c["lport"], "*", 0, f"socket{freed}", c["pid"],
                      names[c["pid"]], timeline.exact(c["create_time"])))
        else:
            want.add((c["offset_phys"], c["proto"][:3], c["local"], c["lport"], "*", 0, "socket", c["pid"],
                      names[c["pid"]], timeline.exact(c["create_time"])))
    sockets = {g[1:] for g in got if g[6].startswith("socket")} & {w[1:] for w in want if w[0] == "socket"}
    assert {g for g in got if g[1:] not in sockets} == {w for w in want if w[0] != "socket"}
    assert len(sockets) == sum(c["tag"] == "TCPT" for c in truth["connections"]) == 5
    assert any(c["closed"] for c in truth["connections"]) and len(rows) == 2 * 5 + 3
    dropper = run_plugin(image, "spyeye.xpnet.XpNet", {"pid": [2940]})
    assert {(r["PID"], r["Owner"], r["State"]) for r in dropper} == {
        (2940, "invoice_0311.e", s) for s in ("connection", "connection (freed)", "socket", "socket (freed)")}
    assert {r["PID"] for r in run_plugin(image, "spyeye.xpnet.XpNet", {"name": ["svchost.exe"]})} == {692, 860}
