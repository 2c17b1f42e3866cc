"""``spyeye.config`` on the default image: every planted SpyEye artifact decodes to
the values its blob generator declares, at the address the ground truth gives."""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Dict, List, Tuple

import pytest

from fixtures.artifacts import spyeye_blobs as blobs
from spyeye_plugins.spyeye.output import text_cell
from tests.test_bad_images import stderr_lines
from tests.vol_runner import FileCollector, construct, plugin_module, run_cli, run_plugin

PLUGIN = "spyeye.config.SpyEyeConfig"


def _artifacts(rows: List[Dict]) -> Dict[Tuple[int, int], Dict]:
    """Parent rows keyed by (PID, Address), each with ``fields``: name -> list of values."""
    out: Dict[Tuple[int, int], Dict] = {}
    parent = None
    for row in rows:
        if row["__depth"] == 0:
            parent = dict(row, fields=defaultdict(list))
            assert (row["PID"], row["Address"]) not in out, "one row per artifact"
            out[(row["PID"], row["Address"])] = parent
        else:
            assert (row["PID"], row["Address"], row["Kind"]) == (parent["PID"], parent["Address"], parent["Kind"])
            context = ("Score", "Confidence", "VAD Start", "VAD End", "Protection", "Private", "File")
            assert [row[c] for c in context] == [parent[c] for c in context], "field rows repeat the context"
            parent["fields"][row["Field"]].append(row["Value"])
    return out


@pytest.fixture(scope="module")
def found(win7_image):
    image, _ = win7_image
    return _artifacts(run_plugin(image, PLUGIN))


def _plant(truth, name: str) -> Dict:
    (plant,) = [p for p in truth["plants"] if p["label"] == f"spyeye-config-{name}"]
    return plant


def _expected(plant) -> Dict:
    return getattr(blobs, plant["meta"]["blob"])()[1]


def _at(found, plant, skip: int = None) -> Dict:
    """The artifact row at the plant's marker (or ``skip`` bytes into the plant)."""
    offset = plant["meta"]["hit"] if skip is None else skip
    row = found[(plant["pid"], plant["va"] + offset)]
    assert (row["VAD Start"], row["VAD End"]) == (plant["vad_start"], plant["vad_end"])
    return row


@pytest.mark.parametrize("name, protection, xor_key", [
    ("c1-ascii-b20", "PAGE_EXECUTE_READWRITE", None),
    ("c1-utf16", "PAGE_READWRITE", None),
    ("c1-xor", "PAGE_EXECUTE_READWRITE", "0x5a"),
])
def test_c1_blocks_decode_to_exact_fields(win7_image, found, name, protection, xor_key):
    _, truth = win7_image
    plant = _plant(truth, name)
    expected, row = _expected(plant), _at(found, plant)
    assert (row["Kind"], row["Protection"], row["Private"], row["Confidence"]) == ("c1", protection, True, "high")
    fields = row["fields"]
    assert {kind: fields[kind] for kind in expected["fields"]} == expected["fields"]
    assert fields["encoding"] == [expected["encoding"]]
    assert fields["reversed"] == expected["reversed"]
    assert fields.get("xor_key") == ([xor_key] if xor_key else None)
    if "block_length" in expected:
        assert fields["block_length"] == [str(expected["block_length"])]
    assert "plugin" not in fields  # the decoy after the zero run is not part of the block


def test_xor_key_named_in_reason(win7_image, found):
    _, truth = win7_image
    row = _at(found, _plant(truth, "c1-xor"))
    assert "strings readable after XOR with 0x5a" in row["Reason"]


def test_c1_at_page_offset_b20_noted_and_weighted(win7_image, found):
    _, truth = win7_image
    plant = _plant(truth, "c1-ascii-b20")
    assert plant["va"] & 0xFFF == 0xB20
    row = _at(found, plant)
    assert row["fields"]["page_offset"] == ["0xb20"]
    assert "marker at page offset 0xB20, where EyeStye.N looks for it (+15)" in row["Reason"]
    assert row["Score"] == 100  # 85 from the strings, +15 for the offset
    other = _at(found, _plant(truth, "c1-utf16"))
    assert other["fields"]["page_offset"] == ["0x080"] and "0xB20" not in other["Reason"]


def test_mutex_inside_c1_block_not_reported_twice(win7_image, found):
    _, truth = win7_image
    plant = _plant(truth, "c1-ascii-b20")
    inside = [key for key in found if key[0] == plant["pid"] and plant["va"] < key[1] < plant["va"] + plant["length"]]
    assert inside == []


def test_negative_eye_in_text_rated_low_without_fields(win7_image, found):
    _, truth = win7_image
    row = _at(found, _plant(truth, "negative-eye-text"))
    assert (row["Kind"], row["Confidence"]) == ("c1", "low")
    assert row["Score"] <= _expected(_plant(truth, "negative-eye-text"))["max_confidence"]
    assert set(row["fields"]) == {"encoding", "block_length", "page_offset"}
    assert "marker embedded in printable text (-20)" in row["Reason"]


def _record_fields(expected) -> Dict[str, List[str]]:
    guid = expected["bot_guid"]
    func = expected["func_data"]
    want = {
        "framed": ["true"], "table": [expected["table"]], "declared_fields": [str(expected["declared_fields"])],
        "bot_guid.raw": [guid["raw"]], "bot_guid.user": [guid["user"]], "bot_guid.computer": [guid["computer"]],
        "bot_guid.id": [guid["id"]], "bot_guid.valid": ["true"], "process_name": [expected["process_name"]],
        "hooked_func": [expected["hooked_func"]], "url": [expected["url"]],
        "func_data.request_line": [func["request_line"]],
        "func_data.headers": [f"{name}: {value}" for name, value in func["headers"]],
        "func_data.body": [func["body"]],
    }
    if func["url_line"]:
        want["func_data.url_line"] = [func["url_line"]]
    if expected["keys"]:
        want["keys"] = [text_cell(expected["keys"])]
    return want


@pytest.mark.parametrize("name", ["record-ie", "record-firefox"])
def test_framed_records_decode_to_exact_fields(win7_image, found, name):
    _, truth = win7_image
    plant = _plant(truth, name)
    expected = _expected(plant)
    row = _at(found, plant, expected["frame_offset"])
    assert (row["Kind"], row["Confidence"]) == ("stolen_record", "high")
    assert dict(row["fields"]) == _record_fields(expected)          # raw bytes only with --raw


def test_raw_bytes_shown_only_with_raw(win7_image):
    image, truth = win7_image
    plant, damaged = _plant(truth, "record-ie"), _plant(truth, "record-damaged")
    expected = _expected(plant)
    rows = _artifacts(run_plugin(image, PLUGIN, {"pid": [plant["pid"]], "raw": True}))
    fields = dict(_at(rows, plant, expected["frame_offset"])["fields"])
    assert fields.pop("func_data.raw") == [expected["func_data_raw"].encode("ascii").hex()]
    assert fields == _record_fields(expected)
    (raw,) = _at(rows, damaged, _expected(damaged)["frame_offset"])["fields"]["func_data.raw"]
    assert len(bytes.fromhex(raw)) == 48                              # what memory still holds


def test_firefox_record_keys_are_utf16_keystrokes_with_control_characters_escaped(win7_image, found):
    _, truth = win7_image
    plant = _plant(truth, "record-firefox")
    row = _at(found, plant, _expected(plant)["frame_offset"])
    assert _expected(plant)["keys"] == "mary\tBarack!2011\r"        # a TAB and a CR typed by the user
    assert row["fields"]["keys"] == ["mary\\tBarack!2011\\r"]       # shown escaped, one cell
    assert "mary\tBarack".encode("utf-16-le") in bytes.fromhex(plant["data"])


def test_a_tab_in_stolen_data_keeps_the_quick_renderer_s_columns(win7_image):
    image, truth = win7_image
    out = run_cli("-r", "quick", "-f", str(image), "spyeye.config", "--pid", "2356")
    assert out.returncode == 0
    lines = [line for line in out.stdout.splitlines() if line.startswith(("2356\t", "* 2356\t"))]
    fields = _record_fields(_expected(_plant(truth, "record-firefox")))
    assert len(lines) == 1 + sum(len(values) for values in fields.values()) == 19
    assert {len(line.split("\t")) for line in lines} == {15}
    (keys,) = [line.split("\t") for line in lines if "\tkeys\t" in line]
    assert keys[4:6] == ["keys", "mary\\tBarack!2011\\r"]


def test_damaged_record_gives_readable_fields_and_warnings(win7_image, found):
    _, truth = win7_image
    plant = _plant(truth, "record-damaged")
    expected = _expected(plant)
    row = _at(found, plant, expected["frame_offset"])
    end = plant["va"] + plant["length"]
    assert end == plant["vad_start"] + 0x2000  # the record runs into the paged-out page
    assert f"window cut by a paged-out page at {end:#x}" in row["Reason"]
    assert "frame damaged (-10)" in row["Reason"]
    fields = dict(row["fields"])
    assert fields.pop("warning") == ["field 'func_data' declares 4608 bytes but only 48 remain; kept those",
                                     "read 5 of 6 declared fields"]
    assert fields == _record_fields(expected)
    assert "keys" not in fields


def test_hooked_func_in_source_text_rated_low(win7_image, found):
    _, truth = win7_image
    row = _at(found, _plant(truth, "negative-hooked-func"))
    assert (row["Kind"], row["Confidence"], row["Score"]) == ("stolen_record", "low", 0)
    assert row["fields"]["framed"] == ["false"]
    assert "hooked_func" not in row["fields"]


def test_checkin_decoded(win7_image, found):
    _, truth = win7_image
    plant = _plant(truth, "checkin")
    expected, row = _expected(plant), _at(found, plant)
    assert (row["Kind"], row["Score"]) == ("checkin", expected["confidence"])
    fields = row["fields"]
    for key in ("raw", "user", "computer", "id"):
        assert fields[f"guid.{key}"] == [expected["guid"][key]]
    for key in ("ver", "version", "ie", "os", "ut", "ccrc", "md5", "wake", "stat"):
        assert fields[key] == [str(expected[key])]
    assert fields["version"] == ["1.2.99"]
    assert fields["plugins"] == expected["plugins"]
    assert "warning" not in fields
    assert [r["Address"] for r in found.values() if r["Kind"] == "checkin"] == [row["Address"]]


def test_mutex_and_pipe_names_found_one_row_each(win7_image, found):
    _, truth = win7_image
    plant = _plant(truth, "mutexes")
    live = {m["name"]: m["body_scan"] for m in truth["mutants"]}   # as mutantscan prints it
    for entry in _expected(plant)["strings"]:
        row = found[(plant["pid"], plant["va"] + entry["offset"])]
        kind = entry["kind"] if entry["kind"] == "pipe" or entry["text"] in live else "mutex_name"
        assert row["Kind"] == kind and row["Confidence"] == "high"
        mutant = {} if kind == "pipe" else {"mutant": [f"{live[entry['text']]:#x}" if kind == "mutex" else "none found"]}
        assert row["fields"] == {"name": [entry["text"]], "encoding": [entry["encoding"]],
                                 "reversed": [str(entry["reversed"]).lower()], **mutant}
    in_plant = [key for key in found if key[0] == plant["pid"] and 0 <= key[1] - plant["va"] < plant["length"]]
    assert len(in_plant) == len(_expected(plant)["strings"])


def test_mutex_confirmed_only_by_a_live_mutant_object(win7_image, found):
    _, truth = win7_image
    plant = _plant(truth, "mutexes")
    ((name, body_pa),) = [(m["name"], m["body_pa"]) for m in truth["mutants"]]
    by_name = {row["fields"]["name"][0]: row for (pid, address), row in found.items()
               if pid == plant["pid"] and 0 <= address - plant["va"] < plant["length"]}
    confirmed, string_only = by_name[name], by_name["__CLEANSWEEP_UNINSTALL__"]
    assert (name, confirmed["Kind"], confirmed["Score"]) == ("__CLEANSWEEP__", "mutex", 100)
    assert confirmed["Reason"].endswith(f"; confirmed by a live mutant object (_KMUTANT at {body_pa:#x}, "
                                        "as windows.mutantscan lists it) (+10)")
    assert (string_only["Kind"], string_only["Score"]) == ("mutex_name", 90)
    assert string_only["Reason"].endswith("; string only: no live mutant object has this name (1 named mutant "
                                          "in the pool, as windows.mutantscan finds them)")
    assert by_name["\\BaseNamedObjects\\__CLEANSWEEP_RELOADCFG__"]["Kind"] == "mutex_name"
    assert by_name["\\\\.\\pipe\\globpluginspipe"]["Kind"] == "pipe"


def test_stock_mutantscan_lists_the_planted_mutant(win7_image):
    image, truth = win7_image
    rows = run_plugin(image, "windows.mutantscan.MutantScan")
    assert [(r["Offset"], r["Name"]) for r in rows] == [(m["body_pa"], m["name"]) for m in truth["mutants"]]


def test_config_image_decoded_once(win7_image, found):
    _, truth = win7_image
    plant = _plant(truth, "config-image")
    expected, row = _expected(plant), _at(found, plant)
    assert (row["Kind"], row["Score"]) == ("config_image", 100)
    fields = row["fields"]
    assert fields["estimated_size"] == [str(expected["estimated_size"])] == [str(plant["length"])]
    assert fields["file_name"] == ["config.dat"] and fields["encrypted"] == ["true"]
    assert [m.split(" ")[0] for m in fields["member"]] == [m["name"] for m in expected["members"]]
    images = [key for key in found if key[0] == plant["pid"] and found[key]["Kind"] == "config_image"]
    assert images == [(plant["pid"], plant["va"])]  # the second member's header is inside the image


def test_webinject_decoded(win7_image, found):
    _, truth = win7_image
    plant = _plant(truth, "webinject")
    expected, row = _expected(plant), _at(found, plant)
    assert (row["Kind"], row["Score"]) == ("webinject", 100)
    assert row["fields"]["set_url"] == [expected["set_url"]]
    assert row["fields"]["url_flags"] == [expected["url_flags"]]
    for name, text in expected["sections"].items():
        assert row["fields"][f"sections.{name}"] == [text]
    assert row["fields"]["macros"] == ["%BOTNAME%"]


def test_dump_writes_blocks_records_and_config_image(win7_image):
    image, truth = win7_image
    rows = run_plugin(image, PLUGIN, {"dump": True, "pid": [1484, 2172, 2356, 3012]})
    files = dict(FileCollector.files)
    dumps = {r["Dump"]: r for r in rows if r["__depth"] == 0 and r["Dump"]}
    assert set(dumps) == set(files)
    c1 = _plant(truth, "c1-ascii-b20")
    data = bytes.fromhex(c1["data"])
    name = f"pid.1484.c1.{c1['va']:#x}.bin"
    assert files[name] == data[:4 + _expected(c1)["block_length"]]
    image_plant = _plant(truth, "config-image")
    assert files[f"pid.3012.config_image.{image_plant['va']:#x}.bin"] == bytes.fromhex(image_plant["data"])
    for record in ("record-ie", "record-firefox", "record-damaged"):
        plant = _plant(truth, record)
        body = bytes.fromhex(plant["data"])[len(blobs.HEAP_PREFIX):]
        if record != "record-damaged":
            body = body[:-len(blobs.HEAP_TAIL)]
        pid, address = plant["pid"], plant["va"] + len(blobs.HEAP_PREFIX)
        assert files[f"pid.{pid}.stolen_record.{address:#x}.bin"] == body
    assert not any(".mutex." in n or ".checkin." in n for n in files)


def test_declared_layout_read_through_symbol_table(win7_image):
    image, truth = win7_image
    rows = _artifacts(run_plugin(image, PLUGIN, {"c1_layout": "c1_layout", "pid": [1484, 2172]}))
    ascii_block = _plant(truth, "c1-ascii-b20")
    row = _at(rows, ascii_block)
    expected = _expected(ascii_block)["fields"]
    assert {k[len("layout."):]: v for k, v in row["fields"].items() if k.startswith("layout.")} == {
        "build": ["10299"], **expected}
    assert row["fields"]["layout_agreement"] == list(expected)
    assert "declared layout (unconfirmed): 5 of 5 text fields hold what their names say" in row["Reason"]
    assert row["Score"] == 100  # the layout never adds confidence
    xor_row = _at(rows, _plant(truth, "c1-xor"))
    assert "declared layout (unconfirmed): 0 of 5 text fields" in xor_row["Reason"]
    assert "layout_agreement" not in xor_row["fields"]


def test_name_filter(win7_image):
    image, _ = win7_image
    rows = run_plugin(image, PLUGIN, {"name": ["firefox.exe"]})
    assert {r["PID"] for r in rows} == {2356}
    assert [r["Kind"] for r in rows if r["__depth"] == 0] == ["stolen_record"]


def test_json_output_has_the_documented_schema(win7_image):
    image, truth = win7_image
    out = run_cli("-r", "json", "-f", str(image), "spyeye.config", "--pid", "2356", "2172")
    assert "Traceback" not in out.stderr
    rows = json.loads(out.stdout)
    columns = ["PID", "Process", "Address", "Kind", "Field", "Value", "Score", "Confidence", "Reason",
               "VAD Start", "VAD End", "Protection", "Private", "File", "Dump"]
    assert [c.name for c in construct(image, PLUGIN).run().columns] == columns     # Field/Value next to Kind
    columns = set(columns) | {"__children"}
    assert all(set(row) == columns for row in rows)
    assert all(set(child) == columns and child["__children"] == [] for row in rows for child in row["__children"])
    plant = _plant(truth, "record-firefox")
    (record,) = [r for r in rows if r["Address"] == plant["va"] + len(blobs.HEAP_PREFIX)]
    assert (record["PID"], record["Kind"], record["Field"], record["Value"]) == (2356, "stolen_record", None, None)
    values = {c["Field"]: c["Value"] for c in record["__children"]}
    assert values["keys"] == "mary\\tBarack!2011\\r" and values["hooked_func"] == "PR_Write"
    assert "warning" in {c["Field"] for r in rows for c in r["__children"]}
    assert "read 5 of 6 declared fields" in out.stderr


@pytest.mark.parametrize("args, line", [
    (["--pid", "99999"], "error: no process with PID 99999 in the active process list"),
    (["--name", "nosuch.exe"], "error: no process named nosuch.exe in the active process list"),
    (["--pid", "1484", "--c1-layout", "no_such_layout"],
     "error: cannot load C1 layout 'no_such_layout' from symbols/spyeye: "),
])
def test_bad_input_fails_with_one_line(win7_image, args, line):
    image, _ = win7_image
    out = run_cli("-f", str(image), "spyeye.config", *args)
    assert out.returncode == 1 and "PID" not in out.stdout
    (error,) = stderr_lines(out)
    assert error.startswith(line) and (error == line or line.endswith(": "))


def test_bad_layout_raises_usage_error_in_process(win7_image):
    image, _ = win7_image
    plugin = construct(image, PLUGIN, {"c1_layout": "no_such_layout"})
    with pytest.raises(plugin_module("spyeye.output").UsageError, match="cannot load C1 layout 'no_such_layout'"):
        plugin.run()
