"""``spyeye.vadsearch`` on the default image, checked against the ground truth."""
from __future__ import annotations

import csv
import io
import json
import logging
import re
from pathlib import Path

import pytest

from fixtures.layout import Layout
from tests.test_bad_images import stderr_lines
from tests.vol_runner import construct, plugin_module, run_cli, run_plugin

KEYWORDS = ["__CLEANSWEEP__", "cleansweep.exe", "hooked_func", "SPYNET_CHUNK_EDGE",
            "globpluginspipe", "__SPYNET__", "__CLEANSWEEP_UNINSTALL__", "PR_Write",
            "collector.example.net"]


@pytest.fixture(scope="module")
def hits(win7_image):
    image, _ = win7_image
    return run_plugin(image, "spyeye.vadsearch.VadSearch",
                      {"keyword": KEYWORDS, "compare_physical": True, "hexdump": True})


def _plants(truth, *labels):
    return [p for p in truth["plants"] if p["label"] in labels]


def test_every_resident_plant_found_with_process_vad_addresses_and_context(win7_image, hits):
    _, truth = win7_image
    labels = ["bot-ascii", "bot-straddle", "explorer-utf16", "explorer-straddle-utf16",
              "iexplore-straddle", "iexplore-chunk-edge", "firefox-ascii", "shared-mapping"]
    for plant in _plants(truth, *labels):
        data = bytes.fromhex(plant["data"])
        encoding = plant["meta"].get("encoding", "ascii")
        word = next(k for k in KEYWORDS if k.encode(encoding.replace("ascii", "latin-1")) in data)
        skip = data.index(word.encode(encoding.replace("ascii", "latin-1")))
        rows = [r for r in hits if r["PID"] == plant["pid"] and r["Address"] == plant["va"] + skip
                and r["Pattern"] == word]
        assert len(rows) == 1, plant["label"]
        row = rows[0]
        assert (row["VAD Start"], row["VAD End"]) == (plant["vad_start"], plant["vad_end"])
        assert row["Physical"] == plant["pa"] + skip
        assert row["Process"] == next(p["image_file_name"] for p in truth["processes"]
                                      if p["pid"] == plant["pid"])
        offset = row["Address"] - row["Context Start"]
        assert row["Hex Dump"][offset:offset + row["Length"]] == data[skip:skip + row["Length"]]
        assert offset == min(64, row["Address"] - plant["vad_start"])
        hit_hex = " ".join(f"{b:02x}" for b in data[skip:skip + min(row["Length"], 32)])
        assert f"[{hit_hex}{'…' if row['Length'] > 32 else ''}]" in row["Context"]
        assert row["Encoding"] == encoding


def test_straddling_hits_found_flagged_scattered_and_missed_by_linear_scan(win7_image, hits):
    _, truth = win7_image
    straddling = [p for p in truth["plants"] if len(p["pages"]) == 2 and p["resident"] and p["kind"] == "keyword"]
    assert len(straddling) >= 3
    for plant in straddling:
        (row,) = [r for r in hits if r["PID"] == plant["pid"] and r["Address"] == plant["va"]]
        assert row["Scattered"] is True and row["In Linear Scan"] is False
    single = [r for r in hits if r["Pattern"] == "PR_Write"]
    assert single and all(r["Scattered"] is False and r["In Linear Scan"] is True for r in single)


def test_paged_out_keyword_is_not_reported(win7_image, hits):
    _, truth = win7_image
    (plant,) = _plants(truth, "bot-pagedout")
    assert not [r for r in hits if r["Pattern"] == "__CLEANSWEEP_UNINSTALL__" and r["PID"] == plant["pid"]]


def test_chunk_edge_hit_reported_exactly_once(win7_image, hits):
    _, truth = win7_image
    (plant,) = _plants(truth, "iexplore-chunk-edge")
    rows = [r for r in hits if r["Pattern"] == "SPYNET_CHUNK_EDGE"]
    assert [(r["PID"], r["Address"]) for r in rows] == [(2172, plant["va"])]


def test_shared_mapping_reported_once_per_process(hits):
    rows = [r for r in hits if r["Pattern"] == "globpluginspipe" and r["PID"] is not None
            and r["Encoding"] == "ascii"]
    assert sorted(r["PID"] for r in rows) == [1484, 2172]
    assert all(r["File"] == "\\Windows\\System32\\spool\\shared-section.dat" for r in rows)
    assert all(r["Private"] is False for r in rows)


def test_freed_memory_hit_listed_without_owner(win7_image, hits):
    _, truth = win7_image
    (plant,) = _plants(truth, "freed-keyword")
    rows = [r for r in hits if r["PID"] is None]
    assert [r["Pattern"] for r in rows if r["Physical"] == plant["pa"]] == ["collector.example.net"]
    assert all(r["In Linear Scan"] for r in rows)
    vad_hits = {r["Physical"] for r in hits if r["PID"] is not None}
    assert not vad_hits & {r["Physical"] for r in rows}


def test_yara_engine_reports_the_same_rows_as_the_default(win7_image, hits):
    """``--engine yara`` (the fallback where Hyperscan is missing) gives the default's rows."""
    image, _ = win7_image
    rows = run_plugin(image, "spyeye.vadsearch.VadSearch",
                      {"keyword": KEYWORDS, "compare_physical": True, "hexdump": True, "engine": "yara"})
    assert len(rows) > 20
    assert rows == hits


def test_physical_only_hits_of_unsearched_processes_are_not_called_ownerless(win7_image):
    image, truth = win7_image
    (mine,) = _plants(truth, "explorer-utf16")
    rows = run_plugin(image, "spyeye.vadsearch.VadSearch", {"keyword": ["cleansweep.exe"], "pid": [mine["pid"]],
                                                            "compare_physical": True})
    assert {r["PID"] for r in rows} == {mine["pid"], None}
    others = [r for r in rows if r["PID"] is None]
    assert others and all(r["Process"].startswith("(not in the searched VADs") for r in others)


def test_filters_hex_regex_and_yara_in_one_pass(win7_image):
    image, truth = win7_image
    rows = run_plugin(image, "spyeye.vadsearch.VadSearch", {
        "hex": ["5F 5F 43 4C ?? 41 4E 53"], "regex": [r"cleansweep\.exe\\config\.b.n"],
        "yara_rules": 'rule pr { strings: $a = "PR_Write" condition: $a }', "pid": [3012, 2356],
        "address_range": ["0-9FFFFFF"]})  # below the feature plants (fixtures/plants)
    got = sorted((r["PID"], r["Kind"], r["Address"]) for r in rows)
    bot = {p["label"]: p["va"] for p in truth["plants"] if p["pid"] == 3012}
    ff = {p["label"]: p["va"] for p in truth["plants"] if p["pid"] == 2356}
    assert got == sorted([(3012, "hex", bot["bot-straddle"]), (3012, "regex", bot["bot-ascii"] + 3),
                          (2356, "yara", ff["firefox-ascii"])])


def test_private_and_executable_filters(win7_image):
    image, _ = win7_image
    rows = run_plugin(image, "spyeye.vadsearch.VadSearch",
                      {"keyword": ["globpluginspipe", "MZ"], "private_only": True, "encoding": "ascii",
                       "executable_only": True})
    assert (1484, 0x2A40000) in [(r["PID"], r["Address"]) for r in rows]
    assert all(r["Private"] and "EXECUTE" in r["Protection"] for r in rows)
    assert "globpluginspipe" not in {r["Pattern"] for r in rows}


def test_json_output_parses_and_carries_the_fields(win7_image):
    image, _ = win7_image
    out = run_cli("-r", "json", "-f", str(image), "spyeye.vadsearch", "--keyword", "PR_Write",
               "--address-range", "0-9FFFFFF")
    rows = json.loads(out.stdout)
    assert len(rows) == 1
    assert {"PID", "Process", "VAD Start", "VAD End", "Protection", "Private", "File", "Address",
            "Physical", "Scattered", "Pattern", "Encoding", "Context"} <= set(rows[0])
    assert rows[0]["PID"] == 2356


BAD_COMMANDS = [            # (arguments, the one line on stderr or its start)
    (["--keyword", ""], "error: empty keyword"),
    (["--regex", "(unclosed"], "error: invalid regex '(unclosed': "),      # then Python's/YARA's own words
    (["--yara-rules", "rule broken {"], "error: invalid YARA rules: line 0: "),
    (["--hex", "4D 5"], "error: hex pattern '4D 5': needs an even number of hex digits"),
    (["--keyword", "x", "--pid", "99999"], "error: no process with PID 99999 in the active process list"),
    (["--keyword", "x", "--pid", "1484", "99999", "4"], "error: no process with PID 99999 in the active process list"),
    (["--keyword", "x", "--chunk-size", "0"], "error: --chunk-size must be at least 0x1000"),
    (["--keyword", "x", "--context", "-1"], "error: --context must not be negative, not -1"),
    (["--keyword", "x", "--max-hits", "-5"], "error: --max-hits must not be negative, not -5"),
    (["--keyword", "x", "--name", "nosuch.exe"], "error: no process named nosuch.exe in the active process list"),
    (["--keyword", "x", "--pid", "1484", "--name", "firefox.exe"],
     "error: no process with PID 1484 and name firefox.exe in the active process list"),
    (["--keyword", "x", "--address-range", "12"], "error: address range '12': use START-END in hex"),
    (["--yara-file", "/bin/ls"], "error: /bin/ls: not a text YARA rule file (compiled rules are not supported)"),
    (["--yara-file", "/nonexistent/rules.yar"],
     "error: cannot read YARA file: [Errno 2] No such file or directory: '/nonexistent/rules.yar'"),
    ([], "error: no pattern given: use --keyword, --hex, --regex or --yara-*"),
]


@pytest.mark.parametrize("args,line", BAD_COMMANDS)
def test_bad_command_fails_with_one_line_and_no_table(win7_image, args, line):
    image, _ = win7_image
    out = run_cli("-f", str(image), "spyeye.vadsearch", *args)
    assert out.returncode == 1
    (error,) = stderr_lines(out)
    assert error.startswith(line) and (error == line or line.endswith(": "))
    assert "PID" not in out.stdout and "Traceback" not in out.stderr


@pytest.mark.parametrize("args", [["--keyword", "x", "--encoding", "utf-32"], ["--keyword", "x", "--engine", "re2"]])
def test_fixed_choice_options_are_refused_by_volatility(win7_image, args):
    image, _ = win7_image
    out = run_cli("-f", str(image), "spyeye.vadsearch", *args)
    assert out.returncode == 2 and "PID" not in out.stdout
    assert f"argument --{args[2][2:]}: invalid choice: '{args[3]}'" in out.stderr.splitlines()[-1]


def test_bad_command_raises_usage_error_in_process_before_any_row(win7_image):
    image, _ = win7_image
    plugin = construct(image, "spyeye.vadsearch.VadSearch", {"keyword": ["x"], "pid": [99999]})
    with pytest.raises(plugin_module("spyeye.output").UsageError) as raised:
        plugin.run()
    assert raised.value.message == "no process with PID 99999 in the active process list"
    assert raised.value.code == "error: no process with PID 99999 in the active process list"


def test_a_hit_inside_an_eprocess_names_the_process_pool_block(win7_image):
    image, truth = win7_image
    (bot,) = [p for p in truth["processes"] if p["pid"] == 3012]
    layout = Layout(Path(truth["isf"]))
    name_pa = bot["eprocess_phys"] + layout.offset("_EPROCESS", "ImageFileName")
    rows = run_plugin(image, "spyeye.vadsearch.VadSearch", {"keyword": ["cleansweep.exe"], "encoding": "ascii",
                                                            "compare_physical": True})
    (row,) = [r for r in rows if r["Physical"] == name_pa]
    match = re.fullmatch(r"pool tag 'Proc': _EPROCESS \(process object\), block of (0x[0-9a-f]+) bytes, "
                         r"hit at body\+(0x[0-9a-f]+)", row["Pool Block"])
    assert row["PID"] is None and match
    block, body_offset = (int(group, 16) for group in match.groups())
    block_start = name_pa - body_offset - layout.size("_POOL_HEADER")
    eprocess_end = bot["eprocess_phys"] + layout.size("_EPROCESS")
    assert block_start & ~0xFFF == name_pa & ~0xFFF                  # the block is in the hit's page
    assert block_start + block - 16 < eprocess_end <= block_start + block  # the _EPROCESS ends the block


def test_quick_context_is_one_line_of_hex_with_the_hit_in_brackets(win7_image):
    image, truth = win7_image
    (plant,) = _plants(truth, "firefox-ascii")
    out = run_cli("-r", "quick", "-f", str(image), "spyeye.vadsearch", "--keyword", "PR_Write",
                  "--address-range", "0-9FFFFFF")
    assert out.returncode == 0
    (line,) = [text for text in out.stdout.splitlines() if text.startswith("2356\t")]
    cells = line.split("\t")
    assert len(cells) == 15 and cells[7] == f"{plant['va']:#x}"
    assert cells[14] == "00 00 00 00 00 00 00 00 [50 52 5f 57 72 69 74 65] 00 00 00 00 00 00 00 00  " \
                        "|........PR_Write........|"


def test_linear_scan_misses_are_summed_up_in_the_log(win7_image, caplog):
    image, truth = win7_image
    with caplog.at_level(logging.WARNING):
        rows = run_plugin(image, "spyeye.vadsearch.VadSearch", {"keyword": KEYWORDS, "compare_physical": True})
    in_vads = [r for r in rows if r["PID"] is not None]
    missed = [r for r in in_vads if not r["In Linear Scan"]]
    assert missed == [r for r in in_vads if r["Scattered"]] and len(missed) == 4
    per_pattern = {}
    for row in missed:
        per_pattern[row["Pattern"]] = per_pattern.get(row["Pattern"], 0) + 1
    only = [r for r in rows if r["PID"] is None]
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--compare-physical")]
    assert line == (f"--compare-physical: a linear scan of the image misses 4 of {len(in_vads)} hits in process "
                    f"memory (their bytes lie on physical pages that are not adjacent) ("
                    + ", ".join(f"{p}: {n}" for p, n in sorted(per_pattern.items()))
                    + f"); hits only the linear scan finds (no searched VAD holds them): {len(only)}")


def test_physical_only_hit_in_a_kernel_pool_block_names_its_structure(win7_image, hits):
    _, truth = win7_image
    (mutant,) = truth["mutants"]
    (row,) = [r for r in hits if r["Physical"] == mutant["name_pa"]]
    assert (row["PID"], row["Pattern"], row["Encoding"]) == (None, mutant["name"], "utf-16le")
    assert row["Pool Block"] == "pool tag 'ObNm': object name (_OBJECT_HEADER_NAME_INFO.Name buffer), " \
                                "block of 0x30 bytes, hit at body+0x0"
    (freed,) = _plants(truth, "freed-keyword")
    (row,) = [r for r in hits if r["Physical"] == freed["pa"]]
    assert row["Pool Block"] is None            # freed page: no pool header before it
    assert all(r["Pool Block"] is None for r in hits if r["PID"] is not None)


def test_keyword_in_vad_over_1gib_found_with_bounded_reads_where_vadyarascan_skips_it(
        win7_image, monkeypatch, tmp_path):
    image, truth = win7_image
    (plant,) = _plants(truth, "bot-huge-vad")
    assert plant["vad_end"] - plant["vad_start"] + 1 > 1 << 30
    lengths = []
    reader = plugin_module("spyeye.pageread").PageTableReader
    original = reader._read

    def recording_read(self, address, length):
        lengths.append(length)
        return original(self, address, length)
    monkeypatch.setattr(reader, "_read", recording_read)
    rows = run_plugin(image, "spyeye.vadsearch.VadSearch",
                      {"keyword": ["__HUGE_VAD_KEYWORD__"], "pid": [plant["pid"]], "encoding": "ascii"})
    assert [(r["Address"], r["VAD Start"], r["Physical"]) for r in rows] == \
        [(plant["va"], plant["vad_start"], plant["pa"])]
    assert lengths and max(lengths) <= 0x100000 + len("__HUGE_VAD_KEYWORD__") - 1
    (control,) = _plants(truth, "bot-ascii")
    rules = tmp_path / "huge.yar"
    rules.write_text('rule r { strings: $a = "__HUGE_VAD_KEYWORD__" $b = "cleansweep.exe" condition: any of them }')
    stock = run_plugin(image, "windows.vadyarascan.VadYaraScan",
                       {"yara_file": rules.as_uri(), "pid": [plant["pid"]]})
    found = {r["Offset"] for r in stock}
    assert control["va"] + 3 in found and plant["va"] not in found


def test_yara_match_cap_is_reported_as_incomplete_hits(win7_image):
    image, _ = win7_image
    out = run_cli("-r", "csv", "-f", str(image), "spyeye.vadsearch", "--hex", "00 00", "--pid", "2172",
                  "--address-range", "4000000-41FFFFF", "--max-hits", "10")
    assert "Traceback" not in out.stderr and "RuntimeWarning" not in out.stderr
    assert "YARA stopped counting matches of '00 00' at 1,000,000" in out.stderr
    assert len(list(csv.DictReader(io.StringIO(out.stdout)))) == 10


def test_context_is_capped_at_4_kib_either_side(win7_image):
    image, truth = win7_image
    (plant,) = _plants(truth, "iexplore-chunk-edge")
    rows = run_plugin(image, "spyeye.vadsearch.VadSearch", {
        "keyword": ["SPYNET_CHUNK_EDGE"], "encoding": "ascii", "pid": [plant["pid"]], "context": 1 << 20,
        "hexdump": True})
    (row,) = [r for r in rows if r["Address"] == plant["va"]]
    assert row["Context Start"] == plant["va"] - 0x1000
    assert len(row["Hex Dump"]) == 0x1000 + len("SPYNET_CHUNK_EDGE") + 0x1000


@pytest.mark.parametrize("data,offset,length,line", [
    (b"ab__X__cd", 2, 5, "61 62 [5f 5f 58 5f 5f] 63 64  |ab__X__cd|"),
    (b"__X__", 0, 5, "[5f 5f 58 5f 5f]  |__X__|"),                       # at the start of a VAD
    (bytes(range(0x41, 0x41 + 40)) + b"\n", 0, 40,
     "[" + " ".join(f"{b:02x}" for b in range(0x41, 0x41 + 32)) + "…] 61 62 63 64 65 66 67 68 0a  "
     "|ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefgh.|"),                     # long hit: 32 bytes, then …
])
def test_context_line(data, offset, length, line):
    assert plugin_module("spyeye.vadsearch").context_line(data, offset, length) == line
