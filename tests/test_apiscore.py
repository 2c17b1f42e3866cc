"""``spyeye.apiscore`` on the default image, checked against the planted code's ground truth."""
from __future__ import annotations

import json

import pytest

from spyeye_plugins.spyeye.apiscore import DEFAULT_MAX_BYTES
from spyeye_plugins.spyeye.parsers.api_hashes import hash_name
from tests.vol_runner import run_cli, run_plugin

PLUGIN = "spyeye.apiscore.ApiScore"
MODES = {32: "x86", 64: "x64"}


ROOTS = {"apiscore-rol7xor-x86": 5, "apiscore-crc32-x86": 5}
"""The smallest window that holds the whole chain starts at the entry, or just after an entry
`call .base` (get-PC) for these."""


def _plants(truth, role: str):
    return [p for p in truth["plants"] if p["label"].startswith("apiscore-") and p["meta"]["role"] == role]


def _plant(truth, label: str):
    return next(p for p in truth["plants"] if p["label"] == label)


def _row(rows, plant):
    matches = [r for r in rows if r["__depth"] == 0 and r["PID"] == plant["pid"]
               and r["Start"] == plant["vad_start"]]
    assert len(matches) == 1, plant["label"]
    return matches[0]


@pytest.fixture(scope="module")
def default_rows(win7_image):
    image, _ = win7_image
    return run_plugin(image, PLUGIN, {"pid": [1484, 2356], "verbose": True})


def test_every_planted_resolver_scores_at_least_70_with_its_traits_and_apis(win7_image, default_rows):
    _, truth = win7_image
    resolvers = _plants(truth, "resolver")
    assert len(resolvers) == 6
    for plant in resolvers:
        row = _row(default_rows, plant)
        assert (row["Score"], row["Confidence"]) == (100, "high"), plant["label"]
        assert row["Function"] == f"sub_{plant['va'] + ROOTS.get(plant['label'], 0):x}", plant["label"]
        assert set(row["Traits"].split(",")) == set(plant["meta"]["traits"]), plant["label"]
        assert row["APIs"].split(",") == plant["meta"]["apis"], plant["label"]
        assert row["Mode"] == MODES[plant["meta"]["bits"]]
        assert (row["End"], row["Method"]) == (plant["vad_end"], "linear sweep")


NEGATIVE_SCORES = {  # label: (score, traits, the function whose window scored)
    "apiscore-iat_calls-x64": (0, "", None), "apiscore-iat_calls-x86": (0, "", None),
    "apiscore-compiled-x64": (5, "hash_loop", "sub_c040580"),
    "apiscore-compiled-x86": (5, "hash_loop", "sub_c040270"),
    "apiscore-benign-dll-x64": (0, "", None),
}


def test_normal_code_and_the_compiler_built_dll_score_low(win7_image, default_rows):
    _, truth = win7_image
    negatives = _plants(truth, "negative")
    assert {p["label"] for p in negatives} == set(NEGATIVE_SCORES)
    for plant in negatives:
        row = _row(default_rows, plant)
        assert (row["Score"], row["Traits"], row["Function"]) == NEGATIVE_SCORES[plant["label"]], plant["label"]
        assert row["Confidence"] == "low" and row["APIs"] == "" and row["Mode"] == MODES[plant["meta"]["bits"]]


def test_mapped_dll_is_decoded_from_its_entry_point_and_exports(win7_image, default_rows):
    _, truth = win7_image
    row = _row(default_rows, _plant(truth, "apiscore-benign-dll-x64"))
    assert row["Method"] == "entry points" and row["Instructions"] > 10
    assert "PE signature" in row["Reason"] and "no_import_table" not in row["Traits"]


def test_evidence_rows_name_the_hash_pushes_and_their_apis(win7_image, default_rows):
    _, truth = win7_image
    plant = _plant(truth, "apiscore-rol7xor-x86")
    data = bytes.fromhex(plant["data"])
    evidence = [r for r in default_rows if r["__depth"] == 1 and r["PID"] == plant["pid"]
                and r["Start"] == plant["vad_start"] and r["Traits"] == "hash_compare"]
    assert [r["APIs"] for r in evidence] == [
        "kernel32.dll!CreateMutexA", "kernel32.dll!VirtualQuery", "kernel32.dll!LoadLibraryA",
        "wininet.dll!InternetCloseHandle"]
    for row in evidence:
        offset = row["Address"] - plant["va"]
        assert data[offset] == 0x68  # push imm32
        value = int.from_bytes(data[offset + 1:offset + 5], "little")
        assert row["Instruction"] == f"push {value:#x}"
        assert hash_name("rol7_xor", row["APIs"].split("!")[1]) == value
        assert row["Function"] == f"sub_{plant['va'] + 5:x}"  # after `call .base` at the entry
    peb = [r for r in default_rows if r["__depth"] == 1 and r["Start"] == plant["vad_start"]
           and r["PID"] == plant["pid"] and r["Traits"] == "peb_access"]
    assert [r["Instruction"] for r in peb] == ["mov eax, dword ptr [eax + 0x30]"]
    assert bytes.fromhex("8b4030") == data[peb[0]["Address"] - plant["va"]:][:3]


def test_evidence_rows_name_the_function_each_trait_was_found_in(win7_image):
    image, truth = win7_image
    plant = _plant(truth, "apiscore-crc32-x86")
    rows = run_plugin(image, PLUGIN, {"pid": [2356], "address": plant["va"], "verbose": True})
    functions = {}
    for row in rows[1:]:
        functions.setdefault(row["Traits"], set()).add(row["Function"])
    main, resolve, crc_name = (f"sub_{plant['va'] + offset:x}" for offset in (0x05, 0x53, 0xC1))
    assert functions == {"peb_access": {resolve}, "ldr_walk": {resolve}, "export_parsing": {resolve},
                         "hash_compare": {main}, "hash_loop": {crc_name}, "indirect_call": {main}}
    assert rows[0]["Function"] == main  # the smallest window that reaches all three


def test_garbage_truncated_and_cut_regions_are_scored_without_crashing(win7_image, default_rows):
    _, truth = win7_image
    for label in ("apiscore-garbage-x64", "apiscore-truncated-x64", "apiscore-cut-rol7xor-x64"):
        row = _row(default_rows, _plant(truth, label))
        assert 0 <= row["Score"] <= 100 and row["Analysed"] == row["End"] + 1 - row["Start"]
    cut = _row(default_rows, _plant(truth, "apiscore-cut-rol7xor-x64"))
    assert "peb_access" not in cut["Traits"]  # its resolver body is on the paged-out page


def test_huge_region_work_is_bounded_by_max_bytes(win7_image, default_rows):
    image, truth = win7_image
    plant = _plant(truth, "apiscore-huge-x64")
    row = _row(default_rows, plant)
    assert plant["vad_end"] + 1 - plant["vad_start"] == plant["meta"]["region_size"] > DEFAULT_MAX_BYTES
    assert row["Analysed"] == DEFAULT_MAX_BYTES and (row["Score"], row["Traits"]) == (5, "hash_loop")
    (small,) = run_plugin(image, PLUGIN, {"pid": [1484], "address": plant["va"] + 0x123456,
                                          "max_bytes": 0x4000})
    assert (small["Start"], small["Analysed"]) == (plant["vad_start"], 0x4000)
    assert 0 < small["Instructions"] and 0x3000 < small["Decoded"] <= 0x4000


def test_clean_process_scores_low_in_every_executable_region(win7_image):
    image, truth = win7_image
    assert run_plugin(image, PLUGIN, {"pid": [2588]}) == []  # nothing flagged by default
    rows = run_plugin(image, PLUGIN, {"pid": [2588], "all_exec": True})
    executable = {(v["start"], v["end"]) for v in truth["vads"]
                  if v["pid"] == 2588 and "EXECUTE" in v["protection"]}
    assert {(r["Start"], r["End"]) for r in rows} == executable and len(executable) == 5
    scores = {r["File"].rsplit("\\", 1)[-1]: (r["Score"], r["Confidence"], r["Traits"]) for r in rows}
    assert scores == {  # the look-alike system DLLs' stubs are zeros: nothing to decode is N/A, not 0
        "imgutil.dll": (0, "low", ""), "kernel32.dll": (None, "N/A", ""), "KERNELBASE.dll": (None, "N/A", ""),
        "notepad.exe": (None, "N/A", ""), "ntdll.dll": (10, "low", "no_import_table")}
    dll = next(r for r in rows if r["File"].endswith("imgutil.dll"))
    assert dll["Method"] == "entry points" and dll["Instructions"] > 10 and dll["Mode"] == "x64"


def test_min_score_keeps_only_the_resolvers(win7_image, default_rows):
    image, truth = win7_image
    rows = run_plugin(image, PLUGIN, {"pid": [1484, 2356], "min_score": 70})
    expected = {(p["pid"], p["vad_start"]) for p in _plants(truth, "resolver")}
    assert {(r["PID"], r["Start"]) for r in rows} == expected


def test_json_output_carries_score_traits_and_apis(win7_image):
    image, truth = win7_image
    plant = _plant(truth, "apiscore-crc32-x86")
    out = run_cli("-r", "json", "-f", str(image), "spyeye.apiscore", "--pid", "2356",
               "--address", hex(plant["va"]))
    (row,) = json.loads(out.stdout)
    assert {"PID", "Process", "Start", "End", "Protection", "File", "Reason", "Mode", "Method",
            "Analysed", "Instructions", "Decoded", "Score", "Confidence", "Traits", "APIs", "Function",
            "Address", "Instruction", "Detail"} <= set(row)
    assert (row["PID"], row["Start"], row["Mode"]) == (2356, plant["vad_start"], "x86")
    assert (row["Score"], row["Confidence"], row["Function"]) == (100, "high", f"sub_{plant['va'] + 5:x}")
    assert row["APIs"].split(",") == plant["meta"]["apis"]


@pytest.mark.parametrize("args,message", [
    (["--max-bytes", "0"], "--max-bytes must be positive"),
    (["--pid", "99999"], "no process with PID 99999"),
    (["--pid", "2356", "--address", "0x10"], "no VAD of the selected processes contains 0x10"),
])
def test_bad_input_gives_one_line_error_not_traceback(win7_image, args, message):
    image, _ = win7_image
    out = run_cli("-f", str(image), "spyeye.apiscore", *args)
    assert "Traceback" not in out.stderr
    assert message in out.stderr
