"""The suite's plugins on the Windows 10 19041 x64 image (issue 13 part 5).

Each plugin runs once on ``win10_image`` (module-scoped fixtures); the Windows 7 image tests'
own checks then run on those rows (``CHECKS``), so both builds assert the same ground-truth
facts.  Where the Windows 7 check names a Windows 7 value (the version, a pool-scan offset that
is physical there and virtual here) the check below states the Windows 10 value instead."""
from __future__ import annotations

import inspect
from datetime import timedelta
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
import tests.test_xpnet as xpnet
from tests.vol_runner import FileCollector, run_cli, run_plugin


# --- one run per plugin ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def timeline_rows(win10_image) -> List[Dict]:
    return run_plugin(win10_image[0], timeline.PLUGIN)


@pytest.fixture(scope="module")
def timeline_flags(win10_image) -> List[Dict]:
    return run_plugin(win10_image[0], timeline.PLUGIN, {"correlate": True})


@pytest.fixture(scope="module")
def vadsearch_hits(win10_image) -> List[Dict]:
    return run_plugin(win10_image[0], "spyeye.vadsearch.VadSearch",
                      {"keyword": vadsearch.KEYWORDS, "compare_physical": True, "hexdump": True})


@pytest.fixture(scope="module")
def config_found(win10_image) -> Dict:
    return config._artifacts(run_plugin(win10_image[0], config.PLUGIN))


@pytest.fixture(scope="module")
def injected_regions(win10_image) -> Dict:
    return injected._regions(run_plugin(win10_image[0], injected.PLUGIN, {"exports": True}))


@pytest.fixture(scope="module")
def apiscore_rows(win10_image) -> List[Dict]:
    return run_plugin(win10_image[0], apiscore.PLUGIN, {"pid": [1484, 2356], "verbose": True})


@pytest.fixture(scope="module")
def every_hook(win10_image) -> List:
    return hooks._tree(run_plugin(win10_image[0], hooks.PLUGIN, {"all": True}))


@pytest.fixture(scope="module")
def planted(win10_image) -> List[Dict]:
    return win10_image[1]["hooks"]


@pytest.fixture(scope="module")
def triage_run(win10_image):
    rows = run_plugin(win10_image[0], triage.PLUGIN)
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
# win7_image -> win10_image and the per-module names in RENAMED.
RENAMED = {
    timeline: {"rows": "timeline_rows"},
    vadsearch: {"hits": "vadsearch_hits"},
    config: {"found": "config_found"},
    injected: {"regions": "injected_regions"},
    apiscore: {"default_rows": "apiscore_rows"},
    triage: {"triage": "triage_run"},
}
CHECKS = [
    (timeline, "test_timeline_matches_truth_row_for_row_in_order"),
    (timeline, "test_thread_rows_carry_tid_and_start_addresses_without_the_repeated_thunk"),
    (timeline, "test_threads_starting_in_injected_code_name_the_dll_export_or_private_region"),
    (timeline, "test_every_carved_evtx_record_matches_python_evtx"),
    (timeline, "test_freed_records_report_physical_offsets_and_holders_report_pid_and_va"),
    (timeline, "test_rows_after_the_capture_or_before_the_boot_are_flagged"),
    (timeline, "test_every_event_log_row_names_its_computer_and_others_are_flagged"),
    (vadwalk, "test_vad_facts_match_volatility_helpers_for_every_vad"),
    (vadwalk, "test_image_flag_and_sizes_from_the_truth"),
    (vadwalk, "test_every_process_counts_the_vads_its_tree_gives"),
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
    (injected, "test_wow64_dlls_in_the_peb32_lists_are_silent"),
    (injected, "test_only_planted_images_reported_and_normal_modules_are_silent"),
    (injected, "test_known_spyeye_names_are_tagged"),
    (apiscore, "test_every_planted_resolver_scores_at_least_70_with_its_traits_and_apis"),
    (apiscore, "test_normal_code_and_the_compiler_built_dll_score_low"),
    (apiscore, "test_evidence_rows_name_the_hash_pushes_and_their_apis"),
    (apiscore, "test_mapped_dll_is_decoded_from_its_entry_point_and_exports"),
    (apiscore, "test_evidence_rows_name_the_function_each_trait_was_found_in"),
    (hooks, "test_every_planted_hook_is_reported_with_module_function_kind_and_technique"),
    (hooks, "test_every_planted_target_and_its_region"),
    (hooks, "test_jumps_into_injected_dll_name_the_export_at_the_target"),
    (hooks, "test_syscall_number_change_shows_both_numbers"),
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


def _expand(checks):
    """Each check once per parametrize case of its Windows 7 test."""
    for module, name in checks:
        check = getattr(module, name)
        marks = [m for m in getattr(check, "pytestmark", []) if m.name == "parametrize"]
        if not marks:
            yield pytest.param(module, name, {}, id=f"{module.__name__.rsplit('.', 1)[1]}::{name}")
            continue
        (mark,) = marks
        names = [n.strip() for n in mark.args[0].split(",")] if isinstance(mark.args[0], str) else mark.args[0]
        for case in mark.args[1]:
            values = case if isinstance(case, tuple) else (case,)
            yield pytest.param(module, name, dict(zip(names, values)),
                               id=f"{module.__name__.rsplit('.', 1)[1]}::{name}[{'-'.join(map(str, values))}]")


@pytest.mark.parametrize("module, name, given", list(_expand(CHECKS)))
def test_windows7_check_holds_on_windows10(request, module, name, given):
    check = getattr(module, name)
    fixtures = {"win7_image": "win10_image", **RENAMED.get(module, {})}
    args = {p: given[p] if p in given else request.getfixturevalue(fixtures.get(p, p))
            for p in inspect.signature(check).parameters}
    check(**args)


# --- the checks whose Windows 7 values differ ------------------------------------------------
def test_info_reports_windows_10_build_19041(win10_image):
    image, truth = win10_image
    rows = {r["Property"]: r["Value"] for r in run_plugin(image, "spyeye.info.Info")}
    assert rows["Windows"] == "10.0 build 19041"
    assert rows["Bitness"] == "64-bit"
    assert rows["Processes (active list)"] == str(sum(p["linked"] for p in truth["processes"]))
    assert rows["WoW64 processes"] == "1"
    assert rows["Kernel symbols"].endswith(f"{truth['pdb']['guid']}-{truth['pdb']['age']}.json.xz")


def test_xpnet_refuses_in_one_line(win10_image):
    out = run_cli("-f", str(win10_image[0]), "spyeye.xpnet", "--pid", "1484")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert [line for line in out.stderr.splitlines() if "error" in line] == [xpnet.REFUSAL]


def test_mutex_confirmed_at_the_offset_mutantscan_prints(win10_image, config_found):
    _, truth = win10_image
    plant = config._plant(truth, "mutexes")
    ((mutant,),) = [truth["mutants"]]
    row = next(row for (pid, address), row in config_found.items()
               if pid == plant["pid"] and row["fields"]["name"] == [mutant["name"]])
    assert (row["Kind"], row["Score"]) == ("mutex", 100)
    assert f"_KMUTANT at {mutant['body_scan']:#x}, as windows.mutantscan lists it" in row["Reason"]
    assert mutant["body_scan"] == mutant["body_va"] & ((1 << 48) - 1) != mutant["body_pa"]


def test_exited_dropper_rows_and_its_evtx_record(win10_image, timeline_rows):
    """The unlinked, exited dropper (PID 2940): its process rows name its physical EPROCESS,
    its thread's start is read from its own VADs, the EVTX record in its memory is carved."""
    _, truth = win10_image
    dropper = next(p for p in truth["processes"] if p["pid"] == 2940)
    assert not dropper["linked"] and dropper["exit_time"]
    rows = [(r["Time"], r["Source"], r["Action"], r["Detail"], r["Provenance"]) for r in timeline_rows
            if r["PID"] == 2940 and r["Source"] in ("process", "thread")]
    detail = f"PPID 1484, EPROCESS at physical {dropper['eprocess_phys']:#x}"
    only = "psscan only (exited, not in the active list)"
    thread = "thrdscan only (exited, not in the active list)"
    (tid,) = [t for t in truth["threads"] if t["pid"] == 2940]
    want = [(timeline.exact(dropper["create_time"]), "process", "created", detail, only),
            (timeline.exact(tid["create_time"]), "thread", "created", "TID 460, Win32 start 0x401000", thread),
            (timeline.exact(tid["exit_time"]), "thread", "exited", "TID 460, Win32 start 0x401000", thread),
            (timeline.exact(dropper["exit_time"]), "process", "exited", detail, only)]
    assert rows == sorted(want, key=lambda row: (row[0], timeline.SOURCES.index(row[1])))
    (record,) = [p for p in truth["plants"] if p["label"] == "timeline-exited-4688"]
    carved = [r for r in timeline_rows if r["Source"] == "eventlog"
              and r["Provenance"] == f"evtx record in PID 2940 @ {record['va']:#x}"]
    assert [(r["Time"], r["Detail"].split(" (")[0], r["PID"]) for r in carved] == [
        (timeline.iso(record["meta"]["records"][0]["time"]), "Security 4688", None)]


def test_closed_connection_row_names_the_offset_netscan_prints(win10_image, timeline_rows):
    _, truth = win10_image
    closed = [r for r in timeline_rows if r["Source"] == "network" and r["Detail"].endswith("CLOSED")]
    assert [int(r["Provenance"].rsplit("@ ", 1)[1], 16) for r in closed] == \
        [c["offset_scan"] for c in truth["connections"] if c["closed"]]


def test_correlate_flags_the_story(win10_image, timeline_flags):
    _, truth = win10_image
    top = [(r["Action"], r["PID"]) for r in timeline_flags if r["__depth"] == 0]
    assert top == timeline.STORY_FLAGS
    groups = [g for g in timeline._groups(timeline_flags) if g[0]["PID"] is not None]
    bot_start = timeline.exact(next(p["create_time"] for p in truth["processes"] if p["pid"] == 3012))
    assert [(r["Source"], r["Action"], r["PID"], r["Time"]) for r in groups[2][1:]] == [
        ("process", "created", 3012, bot_start),
        ("network", "connected", 1484, bot_start + timedelta(seconds=2.75))]
    assert [(r["Source"], r["Action"]) for r in groups[-1][1:]] == [("process", "exited"), ("network", "connected")]
