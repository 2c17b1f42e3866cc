"""``spyeye.hooks`` on the default image, checked against the planted hooks of the ground truth."""
from __future__ import annotations

import json
from typing import Dict, List, Tuple

import pytest

from tests.vol_runner import run_cli, run_plugin

PLUGIN = "spyeye.hooks.Hooks"


def _tree(rows: List[Dict]) -> List[Tuple[Dict, List[Dict]]]:
    """(hook row, its evidence rows) in output order."""
    out: List[Tuple[Dict, List[Dict]]] = []
    for row in rows:
        if row["__depth"] == 0:
            out.append((row, []))
        else:
            parent = out[-1][0]
            assert (row["PID"], row["Function"], row["Hook Address"]) == \
                (parent["PID"], parent["Function"], parent["Hook Address"])
            out[-1][1].append(row)
    return out


@pytest.fixture(scope="module")
def every_hook(win7_image):
    image, _ = win7_image
    return _tree(run_plugin(image, PLUGIN, {"all": True}))


@pytest.fixture(scope="module")
def default_hooks(win7_image):
    image, _ = win7_image
    return _tree(run_plugin(image, PLUGIN))


@pytest.fixture(scope="module")
def planted(win7_image):
    _, truth = win7_image
    if not truth.get("hooks"):
        pytest.skip("the image has no planted hooks (fixtures without the hook plants)")
    return truth["hooks"]


def _find(tree, plant) -> Tuple[Dict, List[Dict]]:
    matches = [(row, children) for row, children in tree
               if row["PID"] == plant["pid"] and row["Hook Address"] == plant["hook_address"]
               and row["Kind"] == plant["kind"]]
    assert len(matches) == 1, f"{plant}: {len(matches)} rows: {[r for r, _ in matches]}"
    return matches[0]


def _label(plant) -> str:
    return f"{plant['process']} {plant['module']}!{plant['function']} ({plant['kind']}/{plant['technique']})"


def test_every_planted_hook_is_reported_with_module_function_kind_and_technique(every_hook, planted):
    for plant in planted:
        row, _ = _find(every_hook, plant)
        assert row["Module"].lower() == plant["module"].lower(), _label(plant)
        assert row["Function"] == plant["function"], _label(plant)
        assert row["Technique"] == plant["technique"], _label(plant)
        assert row["Process"] == plant["process"][:14], _label(plant)
        if plant["kind"] == "iat":
            assert row["Importer"].lower() == plant["importer"].lower(), _label(plant)


def test_every_planted_target_and_its_region(every_hook, planted):
    for plant in planted:
        row, _ = _find(every_hook, plant)
        assert row["Target"] == plant["target"], _label(plant)
        region = plant.get("target_region")
        if region is None:
            assert row["Confidence"] == "medium" and row["Region Start"] is None, _label(plant)
            continue
        assert row["Confidence"] == "high", _label(plant)
        assert [row["Region Start"], row["Region End"]] == plant["target_vad"], _label(plant)
        assert "EXECUTE" in row["Protection"] and row["Region File"] == "private", _label(plant)
        if region == "private":
            assert row["Target Module"] is None, _label(plant)
        else:
            assert region.startswith("injected:")
            assert row["Target Module"].lower() == region.split(":", 1)[1].lower(), _label(plant)


def test_evidence_rows_repeat_the_hook_and_its_target(every_hook):
    columns = ("PID", "Module", "Function", "Hook Address", "Target", "Target Module", "Region Start", "Region End")
    high = [(row, children) for row, children in every_hook if row["Confidence"] == "high"]
    assert high
    for row, children in high:
        assert children, f"{row['Function']}: no evidence rows"
        for child in children:
            assert [child[c] for c in columns] == [row[c] for c in columns]
            assert child["Evidence"] and child["Protection"] == ""


def test_jumps_into_injected_dll_name_the_export_at_the_target(every_hook, planted):
    injected = [p for p in planted if (p.get("target_region") or "").startswith("injected:")]
    assert injected
    for plant in injected:
        row, _ = _find(every_hook, plant)
        assert row["Target Export"] == f"{plant['target_export']}+0x0", _label(plant)
        assert "found by spyeye.injected" in row["Detail"], _label(plant)


def test_syscall_number_change_shows_both_numbers(every_hook, planted):
    changed = [p for p in planted if p["technique"] == "syscall_number"]
    assert changed
    for plant in changed:
        _, children = _find(every_hook, plant)
        numbers = [c["Detail"] for c in children if c["Evidence"] == "syscall number"]
        assert numbers == [f"{plant['syscall']['patched_number']:#x}, other copies {plant['syscall']['number']:#x} "
                           f"(x64 (Windows 7) stub)"], _label(plant)


def test_clean_processes_have_no_high_confidence_row(every_hook, win7_image):
    _, truth = win7_image
    negatives = truth.get("hook_negatives") or {}
    clean = set(negatives.get("clean_pids", []))
    if not clean:
        pytest.skip("no clean PIDs in the ground truth")
    assert [row for row, _ in every_hook if row["PID"] in clean and row["Confidence"] != "low"] == []


def test_legitimate_forwarder_is_low_and_hidden_by_default(every_hook, default_hooks, win7_image):
    _, truth = win7_image
    forwarders = (truth.get("hook_negatives") or {}).get("forwarders", [])
    if not forwarders:
        pytest.skip("no forwarder negative in the ground truth")
    for forwarder in forwarders:
        rows = [row for row, _ in every_hook if row["PID"] == forwarder["pid"]
                and row["Function"] == forwarder["function"]]
        assert [row["Confidence"] for row in rows] in ([], ["low"]), forwarder
        assert not [row for row, _ in default_hooks if row["PID"] == forwarder["pid"]
                    and row["Function"] == forwarder["function"]], forwarder


def test_default_output_hides_only_low_rows(every_hook, default_hooks):
    assert [r for r, _ in default_hooks] == [r for r, _ in every_hook if r["Confidence"] != "low"]


def test_no_row_other_than_the_planted_hooks_is_high(every_hook, planted):
    keys = {(p["pid"], p["hook_address"]) for p in planted}
    extra = [row for row, _ in every_hook if row["Confidence"] == "high"
             and (row["PID"], row["Hook Address"]) not in keys]
    assert extra == []


@pytest.mark.parametrize("process,function", [("iexplore.exe", "HttpSendRequestA"), ("firefox.exe", "PR_Write")])
def test_stolen_record_names_the_hooked_function(every_hook, planted, win7_image, process, function):
    """The form-grab record spyeye.config decodes says which hook caught it: the hook row says so."""
    _, truth = win7_image
    (record,) = [p for p in truth["plants"] if p["label"].startswith("spyeye-config-record")
                 and p["process"] == process and function.encode() in bytes.fromhex(p["data"])]
    (row, children), = [(r, c) for r, c in every_hook if r["Function"] == function and r["Process"] == process]
    (tie,) = [c["Detail"] for c in children if c["Evidence"] == "stolen record"]
    assert tie.startswith("spyeye.config decoded a record at ") and tie.endswith(f"with hooked_func {function}")
    address = int(tie.split(" at ")[1].split()[0], 16)
    assert record["va"] <= address < record["va"] + record["length"]


def test_hooks_without_a_matching_record_have_no_tie(every_hook, planted):
    tied = {(r["Process"], r["Function"]) for r, children in every_hook
            if any(c["Evidence"] == "stolen record" for c in children)}
    assert tied <= {("iexplore.exe", "HttpSendRequestA"), ("iexplore.exe", "HttpSendRequestW"),
                    ("firefox.exe", "PR_Write")}


def test_known_spyeye_targets_are_tagged(every_hook, planted):
    for row, children in every_hook:
        if row["Function"] in ("HttpSendRequestA", "PR_Write"):
            assert row["Known"].startswith("SpyEye form grabbing"), row
            assert any(c["Evidence"] == "known SpyEye target" for c in children)


def test_modified_rows_show_bytes_before_and_after(every_hook, planted):
    modified = [p for p in planted if p["kind"] == "modified"]
    assert modified
    for plant in modified:
        row, children = _find(every_hook, plant)
        evidence = {c["Evidence"].split(" (")[0]: c["Detail"] for c in children}
        assert evidence["bytes before"].startswith(plant["original"]), _label(plant)
        assert evidence["bytes after"].startswith(plant["patch"]), _label(plant)
        assert row["Bytes"] == evidence["bytes after"] and row["Instructions"], _label(plant)


def test_recognised_patches_on_shared_pages_also_show_the_original_bytes(every_hook, planted):
    """The hooked page is a copy-on-write copy: the other processes' copies say what was there."""
    for plant in planted:
        if plant["kind"] == "inline" and plant["technique"] != "hotpatch" and plant["bitness"] == 64:
            _, children = _find(every_hook, plant)
            before = [c["Detail"] for c in children if c["Evidence"].startswith("bytes before")]
            assert before and before[0].startswith(plant["original"][:32]), _label(plant)


def test_json_rows_carry_the_hook_fields(win7_image, planted):
    image, _ = win7_image
    plant = next(p for p in planted if p["process"] == "iexplore.exe" and p["function"] == "HttpSendRequestA")
    out = run_cli("-r", "json", "-f", str(image), "spyeye.hooks", "--pid", str(plant["pid"]))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    rows = json.loads(out.stdout)
    row = next(r for r in rows if r["Hook Address"] == plant["hook_address"])
    assert (row["PID"], row["Process"], row["Module"].lower(), row["Function"], row["Kind"], row["Technique"]) == \
        (plant["pid"], "iexplore.exe", "wininet.dll", "HttpSendRequestA", "inline", "jmp_indirect")
    assert (row["Target"], row["Confidence"], row["Target Module"], row["Target Export"]) == \
        (plant["target"], "high", "ccgrabber.dll", f"{plant['target_export']}+0x0")
    assert ([row["Region Start"], row["Region End"]], row["Region File"]) == (plant["target_vad"], "private")
    assert row["Bytes"] == plant["patch"] and row["Instructions"].startswith("jmp qword ptr [rip]")
    assert row["Known"] == "SpyEye form grabbing (H)"
    assert {"known SpyEye target", "stolen record"} <= {c["Evidence"] for c in row["__children"]}


def test_unknown_pid_fails_with_one_line(win7_image):
    image, _ = win7_image
    out = run_cli("-f", str(image), "spyeye.hooks", "--pid", "99999")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert [line for line in out.stderr.splitlines() if "99999" in line] == \
        ["error: no process with PID 99999 in the active process list"]


def test_bad_max_functions_fails_with_one_line(win7_image):
    image, _ = win7_image
    out = run_cli("-f", str(image), "spyeye.hooks", "--max-functions", "0")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "error: --max-functions must be positive, not 0" in out.stderr


def test_function_cap_bounds_the_work_and_warns(win7_image, caplog):
    image, _ = win7_image
    rows = run_plugin(image, PLUGIN, {"all": True, "max_functions": 1})
    assert "only the first 1 checked (--max-functions)" in caplog.text
    assert len([r for r in rows if r["__depth"] == 0 and r["Kind"] == "inline"]) <= \
        len({(r["PID"], r["Module"]) for r in rows if r["__depth"] == 0})


def test_absurd_export_table_and_unreadable_pages_give_warnings_not_tracebacks(win7_image, caplog):
    image, _ = win7_image
    run_plugin(image, PLUGIN, {"pid": [3012, 2172]})
    assert "NumberOfFunctions 0x40000000 absurd" in caplog.text          # injected-bot-absurd-count
    assert "import descriptor 0 unreadable" in caplog.text               # paged-out plugin pages in iexplore


def test_truncated_image_gives_a_clear_error(win7_image, tmp_path):
    image, _ = win7_image
    cut = tmp_path / "cut.raw"
    with open(image, "rb") as src:
        cut.write_bytes(src.read(32 << 20))
    out = run_cli("-f", str(cut), "spyeye.hooks")
    assert out.returncode != 0 and "Traceback" not in out.stderr
