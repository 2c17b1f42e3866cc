"""``spyeye.triage`` on the default image, row by row against the ground truth: verdicts,
reasons, evidence rows, indicators (STIX and CSV), the report (and in headless Chromium)."""
from __future__ import annotations

import csv
import hashlib
import io
import re
import shutil
import subprocess
from typing import Dict, List, Tuple

import pytest

from tests.vol_runner import FileCollector, plugin_module, run_cli, run_plugin

PLUGIN = "spyeye.triage.Triage"
INFECTED = {1484: "explorer.exe", 2172: "iexplore.exe", 2356: "firefox.exe", 3012: "cleansweep.exe"}
# the reason kinds each infected process must show (plugin: kind)
EXPECTED_REASONS = {
    1484: {"spyeye.injected: spyeye image", "spyeye.injected: injected image", "spyeye.apiscore: resolver",
           "spyeye.hooks: hook into injected image", "spyeye.hooks: hook", "spyeye.hooks: weak hook",
           "spyeye.config: artifact", "spyeye.timeline: injected-thread-start", "spyeye.timeline: thread-burst",
           "spyeye.timeline: connect-after-start"},
    2172: {"spyeye.injected: spyeye image", "spyeye.injected: injected image", "spyeye.hooks: hook into injected image",
           "spyeye.hooks: hook", "spyeye.config: artifact", "spyeye.config: weak artifact",
           "spyeye.timeline: injected-thread-start", "spyeye.timeline: thread-burst"},
    2356: {"spyeye.injected: spyeye image", "spyeye.injected: injected image", "spyeye.apiscore: resolver",
           "spyeye.hooks: hook into injected image", "spyeye.hooks: hook", "spyeye.config: artifact",
           "spyeye.timeline: injected-thread-start", "spyeye.timeline: thread-burst"},
    3012: {"spyeye.injected: spyeye image", "spyeye.injected: injected image", "spyeye.config: artifact",
           "spyeye.timeline: event-log record"},
}


@pytest.fixture(scope="module")
def triage(win7_image) -> Tuple[List[Tuple[Dict, List[Dict]]], Dict[str, bytes]]:
    """(parent row and its evidence rows, files written)."""
    image, _ = win7_image
    rows = run_plugin(image, PLUGIN)
    files = dict(FileCollector.files)
    tree: List[Tuple[Dict, List[Dict]]] = []
    for row in rows:
        if row["__depth"] == 0:
            tree.append((row, []))
        else:
            assert row["PID"] == tree[-1][0]["PID"] and row["Verdict"] == tree[-1][0]["Verdict"]
            tree[-1][1].append(row)
    return tree, files


def _by_pid(tree) -> Dict[int, Tuple[Dict, List[Dict]]]:
    return {row["PID"]: (row, children) for row, children in tree}


def test_one_row_per_process_with_parent_and_times(triage, win7_image):
    tree, _ = triage
    _, truth = win7_image
    rows = _by_pid(tree)
    assert sorted(rows) == sorted(p["pid"] for p in truth["processes"])
    for proc in truth["processes"]:
        row = rows[proc["pid"]][0]
        assert row["Process"] == proc["image_file_name"][:14]
        if proc["pid"] != 4:
            assert row["PPID"] == proc["ppid"]
            assert row["Created"].timestamp() == pytest.approx(proc["create_time"])
        assert (row["Exited"].timestamp() if row["Exited"] else 0.0) == pytest.approx(proc["exit_time"])


def test_verdicts(triage, win7_image):
    tree, _ = triage
    _, truth = win7_image
    verdicts = {row["PID"]: row["Verdict"] for row, _ in tree}
    assert {pid for pid, v in verdicts.items() if v == "infected"} == set(INFECTED)
    # the exited dropper (pool scan only, its memory still mapped): no SpyEye code left in it, but a
    # connection dated after its exit and the event-log record of its exit
    assert verdicts[2940] == "suspicious"
    clean = {p["pid"] for p in truth["processes"]} - set(INFECTED) - {2940}
    assert {pid for pid, v in verdicts.items() if v == "clean"} == clean
    for pid in clean:     # clean rows stand alone: no evidence, score 0, no reason
        row, children = _by_pid(tree)[pid]
        assert (row["Score"], row["Reasons"], children) == (0, "", [])


def test_every_expected_reason_names_its_plugin(triage):
    rows = _by_pid(triage[0])
    for pid, expected in EXPECTED_REASONS.items():
        row = rows[pid][0]
        kinds = {m.group(1) for m in re.finditer(r"(spyeye\.\w+: [\w -]+?) \(\+\d+\)", row["Reasons"])}
        assert kinds == expected, pid
        assert row["Score"] == (90 if pid == 3012 else 100)


def test_exited_dropper_is_suspicious_on_timeline_evidence(triage):
    row, children = _by_pid(triage[0])[2940]
    assert row["Score"] == 15
    assert row["Reasons"].startswith("spyeye.timeline: after-exit (+10): network connected 28.500 s after PID 2940 "
                                     "(invoice_0311.e) exited: TCPv4 192.168.56.101:49170 -> 198.51.100.23:8080")
    assert ("; spyeye.timeline: event-log record (+5): Security 4688 (record 2, Microsoft-Windows-Security-Auditing) "
            "on JOHN-PC: SubjectUserName=john; NewProcessId=0xb7c; ") in row["Reasons"]
    assert "; Security 4689 (record 2002, Microsoft-Windows-Security-Auditing) on JOHN-PC: " in row["Reasons"]
    assert [(c["Plugin"], c["Evidence"]) for c in children] == [
        ("spyeye.timeline", "after-exit"), ("spyeye.timeline", "event-log record"),
        ("spyeye.timeline", "event-log record"), ("spyeye.timeline", "connection"), ("spyeye.timeline", "connection")]


def test_unreadable_memory_is_unknown_with_the_reason():
    triage = plugin_module("spyeye.triage")
    report = plugin_module("spyeye.report")

    class Proc:
        Peb = 0x7FFDF000
    space = triage.Space(Proc(), 2940, "invoice_0311.e", None, [], [])
    info = {"ppid": 1484, "created": None, "exited": None}
    flag = report.Evidence("timeline", "spyeye.timeline", "after-exit", "connected after exit")
    finding = triage._verdict(space, info, [("after-exit", "connected after exit", flag)])
    assert (finding.verdict, finding.score) == ("unknown", 10)
    assert finding.reasons == ["memory unreadable (no address space or no VAD)",
                               "spyeye.timeline: after-exit (+10): connected after exit"]
    space.layer_name, space.vads = "layer", []        # an address space but no VAD
    assert triage._verdict(space, info, []).verdict == "unknown"
    strong = report.Evidence("config", "spyeye.config", "c1", "score 100")
    assert triage._verdict(space, info, [("artifact", "c1 at 0xa000080", strong)]).verdict == "infected"


def test_hook_rows_are_the_planted_hooks(triage, win7_image):
    _, truth = win7_image
    rows = _by_pid(triage[0])
    for pid in INFECTED:
        found = sorted(c["Address"] for c in rows[pid][1] if c["Plugin"] == "spyeye.hooks")
        assert found == sorted(h["hook_address"] for h in truth["hooks"] if h["pid"] == pid), pid


def test_injected_rows_are_the_planted_images(triage, win7_image):
    _, truth = win7_image
    rows = _by_pid(triage[0])
    planted = {(p["pid"], p["vad_start"]) for p in truth["plants"] if p["kind"] == "pe" and p["pid"] in INFECTED}
    found = {(pid, c["Address"]) for pid in INFECTED for c in rows[pid][1] if c["Evidence"] == "injected image"}
    # the planted images, plus each process's unlisted or extra planted module (ordinals.dll, imgutil.dll);
    # 1484's MZ-only stub at 0x2a40000 is no PE image
    assert found - planted == {(1484, 0xC100000), (2356, 0xB100000), (3012, 0xB000000)}
    assert planted - found == {(1484, 0x2A40000)}
    spyeye = {(pid, c["Address"]) for pid in INFECTED for c in rows[pid][1] if c["Evidence"] == "exports"}
    assert spyeye == {(1484, 0xB000000), (2172, 0xB100000), (2356, 0xB000000), (3012, 0xB100000)}
    detail = next(c["Detail"] for c in rows[1484][1] if c["Evidence"] == "exports")
    assert detail.startswith("ccgrabber.dll: 19 exports, 19 known SpyEye plugin names: ")
    assert "SpyEye_Start" in detail and "TakeGateToCollector" in detail


def test_config_rows_are_the_planted_artifacts(triage, win7_image):
    _, truth = win7_image
    rows = _by_pid(triage[0])
    for plant in truth["plants"]:
        if plant["kind"] != "spyeye_config" or plant["pid"] not in INFECTED or "damaged" in plant["label"]:
            continue
        kinds = {c["Evidence"] for c in rows[plant["pid"]][1] if c["Plugin"] == "spyeye.config"
                 and plant["va"] <= c["Address"] < plant["va"] + plant["length"]}
        assert plant["meta"]["artifact"] in kinds, plant["label"]
    stolen = [c["Detail"] for c in rows[2172][1] if c["Evidence"] == "stolen_record"]
    assert stolen == ["score 95 (high): url=https://online.bank.example/login.aspx, hooked_func=HttpSendRequestA, "
                      "bot_guid.raw=JOHN!PC01!1A2B3C4D",
                      "score 85 (high): url=https://netbank.example.org/cgi-bin/ib/login, hooked_func=HttpSendRequestW, "
                      "bot_guid.raw=JOHN!PC01!1A2B3C4D"]
    hook = next(c["Detail"] for c in rows[2172][1] if c["Plugin"] == "spyeye.hooks" and "HttpSendRequestA" in c["Detail"])
    assert hook.endswith("stolen record at 0xa100108 names it (spyeye.config)")


def test_timeline_rows(triage):
    rows = _by_pid(triage[0])
    explorer = [(c["Evidence"], c["Time"].isoformat()) for c in rows[1484][1] if c["Plugin"] == "spyeye.timeline"]
    assert explorer == [("injected-thread-start", "2011-11-27T10:00:07.500000+00:00"),
                        ("thread-burst", "2011-11-27T10:00:07.500000+00:00"),
                        ("connect-after-start", "2011-11-27T10:00:08.250000+00:00"),
                        ("connect-after-start", "2011-11-27T10:00:08.250000+00:00"),
                        ("connection", "2011-11-27T10:00:08.250000+00:00")]
    # evidence follows the article's order: timeline, injected code, exports, API resolution, config, hooks
    order = ["spyeye.timeline", "spyeye.injected", "spyeye.apiscore", "spyeye.config", "spyeye.hooks"]
    plugins = [c["Plugin"] for c in rows[1484][1]]
    assert plugins == sorted(plugins, key=order.index)


EXPECTED_IOCS = {
    ("mutex", "__SPYNET__", 1484), ("mutex", "__CLEANSWEEP__", 1484), ("mutex", "__CLEANSWEEP_UNINSTALL__", 1484),
    ("mutex", "\\BaseNamedObjects\\__CLEANSWEEP_RELOADCFG__", 1484), ("mutex", "zXeRY3a_PtW7c1e", 1484),
    ("file", "C:\\Documents and Settings\\John\\Desktop\\invoice_0412.exe", 1484),
    ("directory", "C:\\cleansweep.exe\\", 1484), ("file", "C:\\cleansweep.exe\\cleansweep.exe", 1484),
    ("bot-guid", "JOHN!PC01!1A2B3C4D", 1484),
    ("mutex", "__CLEANSWEEP__", 3012), ("mutex", "__SPYNET__", 3012),
    ("url", "http://gate.example.net/spy/gate.php", 3012),
    ("file", "C:\\Documents and Settings\\John\\Local Settings\\Temp\\setup_87.exe", 3012),
    ("directory", "C:\\WINDOWS\\us3f9c2a1b\\", 3012), ("file", "C:\\WINDOWS\\us3f9c2a1b\\us3f9c2a1b.exe", 3012),
    ("mutex", "__CLEANSWEEP_RELOADCFG__", 2172),
    ("file", "C:\\Documents and Settings\\Mary\\Application Data\\statement.exe", 2172),
    ("directory", "C:\\cleansweep.exe\\", 2172), ("file", "C:\\cleansweep.exe\\cleansweep.exe", 2172),
    ("url", "https://online.bank.example/login.aspx", 2172), ("url", "https://netbank.example.org/cgi-bin/ib/login", 2172),
    ("bot-guid", "JOHN!PC01!1A2B3C4D", 2172),
    ("url", "https://secure.bank.example/auth/logon", 2356), ("bot-guid", "MARY!ACCOUNTS-PC!82AB11A5", 2356),
}


def _csv(files) -> List[Dict]:
    return list(csv.DictReader(io.StringIO(files["triage.iocs.csv"].decode())))


def test_csv_holds_exactly_the_planted_indicators(triage, win7_image):
    _, files = triage
    _, truth = win7_image
    rows = _csv(files)
    c2 = {(r["value"], int(r["port"]), int(r["pid"])) for r in rows if r["kind"] == "c2"}
    assert c2 == {(c["remote"], c["rport"], c["pid"]) for c in truth["connections"]
                  if c["pid"] in {*INFECTED, 2940} and c["remote"] != "0.0.0.0"}    # the suspicious dropper's too
    hashes = {(r["value"], int(r["pid"]), r["source"]) for r in rows if r["kind"] == "sha256"}
    dumps = {name: data for name, data in files.items() if name.endswith(".dll")}
    assert hashes == {(hashlib.sha256(data).hexdigest(), int(name.split(".")[1]), name) for name, data in dumps.items()}
    assert {int(name.split(".")[1]) for name in dumps} == set(INFECTED)
    others = {(r["kind"], r["value"], int(r["pid"])) for r in rows if r["kind"] not in ("c2", "sha256")}
    assert others == EXPECTED_IOCS


def test_stix_bundle_validates_and_matches_the_csv(triage):
    stix2 = pytest.importorskip("stix2")
    _, files = triage
    bundle = stix2.parse(files["triage.stix.json"].decode(), allow_custom=True)
    indicators = [o for o in bundle.objects if o.type == "indicator"]
    assert len(indicators) == len(_csv(files))
    patterns = {o.pattern for o in indicators}
    assert "[mutex:name = '__CLEANSWEEP__']" in patterns
    assert "[x-spyeye-bot:guid = 'JOHN!PC01!1A2B3C4D']" in patterns
    assert ("[network-traffic:dst_ref.type = 'ipv4-addr' AND network-traffic:dst_ref.value = '203.0.113.66' "
            "AND network-traffic:dst_port = 443]") in patterns
    processes = {o.pid for o in bundle.objects if o.type == "process"}
    assert processes == {*INFECTED, 2940}
    observed = [o for o in bundle.objects if o.type == "observed-data"]
    assert len(observed) == len(indicators)
    assert all(o.first_observed.isoformat().startswith("2011-11-27T11:00:17") for o in observed)


def test_report_is_self_contained_with_chains_in_the_article_order(triage):
    pytest.importorskip("matplotlib")
    _, files = triage
    page = files["triage.html"].decode()
    # nothing fetched: no script, no reference outside the page (the SVG's url(#clip) and href="#glyph" are in it)
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!#)|@import|url\((?!#)|<script""", page)
    assert len(re.findall(r'<tr class="(\w+)" data-pid="(\d+)">', page)) == 18
    # a chain for each infected or suspicious process
    assert set(re.findall(r'<section class="chain" data-pid="(\d+)">', page)) == {str(p) for p in {*INFECTED, 2940}}
    chain = page[page.index('<section class="chain" data-pid="1484">'):]
    chain = chain[:chain.index("</section>")]
    headings = re.findall(r"<h4>(.*?)</h4>", chain)
    assert headings == ["Timeline", "Injected code", "Exports", "API resolution", "Configuration and stolen data",
                        "Hooks"]
    # a lifeline per process with a start time (System's CreateTime is 0, as on Windows 7)
    assert len(re.findall(r'<g id="lifeline-\d+"', page)) == 17


def test_bad_pid_fails_with_one_line(win7_image):
    image, _ = win7_image
    result = run_cli("-f", str(image), "spyeye.triage", "--pid", "9999", "--no-files")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == \
        "error: no process with PID 9999 in the active process list or the pool (psscan)"
    assert "Traceback" not in result.stderr


def test_pid_selects_one_process(win7_image):
    image, _ = win7_image
    rows = run_plugin(image, PLUGIN, {"pid": [2356], "no_files": True})
    assert {r["PID"] for r in rows} == {2356}
    assert rows[0]["Verdict"] == "infected" and FileCollector.files == {}


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian's chromium package; .ci/run installs it)")
def test_report_in_headless_chromium(triage, tmp_path):
    """The report opens from disk without console errors; the browser's DOM holds the
    timeline picture with one lifeline per process and the verdict table's rows."""
    pytest.importorskip("matplotlib")
    _, files = triage
    page = tmp_path / "triage.html"
    page.write_bytes(files["triage.html"])
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                             "--v=0", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                             page.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    dom = result.stdout
    assert len(re.findall(r'<g id="lifeline-\d+"', dom)) == 17
    assert len(re.findall(r'<tr class="(?:infected|suspicious|unknown|clean)" data-pid="\d+">', dom)) == 18
    assert len(re.findall(r'<tr class="infected"', dom)) == 4
    assert sorted(re.findall(r'<g id="lifeline-(\d+)"', dom)) == \
        sorted(set(re.findall(r'<tr class="\w+" data-pid="(\d+)"', dom)) - {"4"})


def test_without_the_report_extra_rows_csv_and_report_still_come(win7_image, monkeypatch, caplog):
    image, _ = win7_image
    monkeypatch.setattr(plugin_module("spyeye.report"), "missing", lambda: ["stix2", "matplotlib"])
    rows = run_plugin(image, PLUGIN, {"pid": [2356]})
    assert rows[0]["Verdict"] == "infected"
    files = FileCollector.files
    assert sorted(n for n in files if not n.endswith(".dll")) == ["triage.html", "triage.iocs.csv"]
    assert "No timeline picture (matplotlib missing)." in files["triage.html"].decode()
    assert "no STIX bundle written: the stix2 library is missing (pip install spyeye-plugins[report])" in caplog.text


def test_one_process_gives_the_same_rows_as_two(win7_image):
    """The default (everything in this process) and --jobs 2 (the timeline in a forked child)."""
    image, _ = win7_image
    config = {"pid": [1484, 2940], "no_files": True}
    assert run_plugin(image, PLUGIN, {**config, "jobs": 2}) == run_plugin(image, PLUGIN, config)
