"""``report``: the triage's files from findings, without an image."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from spyeye_plugins.spyeye import report
from spyeye_plugins.spyeye.report import Evidence, Finding, Indicator, Mark, Picture

T0 = datetime(2011, 11, 27, 10, 0, 5, 500000, tzinfo=timezone.utc)
IOCS = [
    Indicator("c2", "203.0.113.66", 1484, "explorer.exe", "spyeye.timeline", "netscan @ 0x1", 80),
    Indicator("url", "http://gate.example.net/it's", 3012, "cleansweep.exe", "spyeye.config", "c1 at 0xa000080"),
    Indicator("mutex", "__CLEANSWEEP__", 1484, "explorer.exe", "spyeye.config", "mutex at 0xa100048"),
    Indicator("file", "C:\\cleansweep.exe\\cleansweep.exe", 1484, "explorer.exe", "spyeye.config", "c1 at 0xa000b20"),
    Indicator("directory", "C:\\cleansweep.exe\\", 1484, "explorer.exe", "spyeye.config", "c1 at 0xa000b20"),
    Indicator("bot-guid", "JOHN!PC01!1A2B3C4D", 1484, "explorer.exe", "spyeye.config", "checkin at 0xa100813"),
    Indicator("sha256", "ab" * 32, 1484, "explorer.exe", "spyeye.injected", "pid.1484.0xb000000.ccgrabber.dll"),
]


def test_csv_rows():
    text = report.indicators_csv(IOCS[:2])
    assert text == ("kind,value,port,pid,process,plugin,source\n"
                    "c2,203.0.113.66,80,1484,explorer.exe,spyeye.timeline,netscan @ 0x1\n"
                    "url,http://gate.example.net/it's,,3012,cleansweep.exe,spyeye.config,c1 at 0xa000080\n")


def test_patterns():
    assert [report.stix_pattern(i) for i in IOCS] == [
        "[network-traffic:dst_ref.type = 'ipv4-addr' AND network-traffic:dst_ref.value = '203.0.113.66' "
        "AND network-traffic:dst_port = 80]",
        "[url:value = 'http://gate.example.net/it\\'s']",
        "[mutex:name = '__CLEANSWEEP__']",
        "[file:name = 'cleansweep.exe' AND file:parent_directory_ref.path = 'C:\\\\cleansweep.exe']",
        "[directory:path = 'C:\\\\cleansweep.exe']",
        "[x-spyeye-bot:guid = 'JOHN!PC01!1A2B3C4D']",
        "[file:hashes.'SHA-256' = '" + "ab" * 32 + "']",
    ]


def test_stix_bundle_parses_back_with_one_indicator_and_sighting_per_value():
    stix2 = pytest.importorskip("stix2")
    text = report.stix_bundle(IOCS, T0, "spyeye.triage")
    bundle = stix2.parse(text, allow_custom=True)
    kinds = {}
    for obj in bundle.objects:
        kinds[obj.type] = kinds.get(obj.type, 0) + 1
    assert kinds["indicator"] == kinds["observed-data"] == kinds["relationship"] == len(IOCS)
    assert {o.pid for o in bundle.objects if o.type == "process"} == {1484, 3012}
    assert [o.value for o in bundle.objects if o.type == "ipv4-addr"] == ["203.0.113.66"]
    assert [o.dst_port for o in bundle.objects if o.type == "network-traffic"] == [80]
    hashes = [o.hashes["SHA-256"] for o in bundle.objects if o.type == "file" and "hashes" in o]
    assert hashes == ["ab" * 32]
    assert [o["guid"] for o in json.loads(text)["objects"] if o["type"] == "x-spyeye-bot"] == ["JOHN!PC01!1A2B3C4D"]
    described = [o.description for o in bundle.objects if o.type == "indicator"]
    assert described[0] == "Found in PID 1484 (explorer.exe), spyeye.timeline: netscan @ 0x1"


def _findings():
    return [
        Finding(1484, "explorer.exe", 1460, T0 - timedelta(hours=2), None, "infected", 100,
                ["spyeye.injected: spyeye image (+40): ccgrabber.dll"],
                [Evidence("timeline", "spyeye.timeline", "thread-burst", "5 threads", time=T0),
                 Evidence("injected", "spyeye.injected", "injected image", "ccgrabber.dll <b>", 0xB000000),
                 Evidence("hooks", "spyeye.hooks", "inline hook", "send", 0x7FEFEF31121)]),
        Finding(2588, "notepad.exe", 1484, T0 - timedelta(hours=1), T0 - timedelta(minutes=30), "clean", 0),
        Finding(2940, "invoice_0311.e", 1484, T0 - timedelta(seconds=4), T0 + timedelta(seconds=1.5), "suspicious", 15,
                ["spyeye.timeline: after-exit (+10): x"]),
    ]


def test_html_report_tables_and_chain_order():
    page = report.html_report(_findings(), IOCS[:1], "<svg></svg>", "SpyEye triage", ["Image captured then."])
    assert re.findall(r'<tr class="(\w+)" data-pid="(\d+)">', page) == [
        ("infected", "1484"), ("clean", "2588"), ("suspicious", "2940")]
    assert "1 infected, 1 suspicious, 0 unknown, 1 clean." in page
    chain = page[page.index('data-pid="1484"><h3>'):]
    assert re.findall(r"<h4>(.*?)</h4>", chain[:chain.index("</section>")]) == ["Timeline", "Injected code", "Hooks"]
    assert "ccgrabber.dll &lt;b&gt;" in page and "<code>0xb000000</code>" in page
    assert '<div id="timeline"><svg></svg></div>' in page
    assert "<script" not in page


def test_html_report_says_why_there_is_no_picture():
    page = report.html_report(_findings(), [], None, "t")
    assert "No timeline picture (matplotlib missing)." in page


def test_timeline_svg_lifelines_window_and_marks():
    pytest.importorskip("matplotlib")
    findings = _findings()
    picture = Picture([(f.pid, f.name, f.created, f.exited, f.verdict) for f in findings],
                      [Mark(T0, "thread", 1484, "TID 468"), Mark(T0 + timedelta(seconds=3), "connection", 1484, "c2"),
                       Mark(T0 + timedelta(seconds=1), "eventlog", None, "4688"),
                       Mark(T0 + timedelta(seconds=2), "flag", 2940, "after-exit")],
                      (T0 - timedelta(seconds=4), T0 + timedelta(seconds=3)), T0 + timedelta(hours=1))
    svg = report.timeline_svg(picture)
    assert svg.startswith("<svg")
    assert re.findall(r'<g id="lifeline-(\d+)"', svg) == ["1484", "2588", "2940"]
    assert len(re.findall(r'<g id="zoom-lifeline-\d+"', svg)) == 2   # notepad ended before the window
    assert {"lifeline-infection-window", "zoom-lifeline-infection-window"} <= set(re.findall(r'<g id="([\w-]+window)"', svg))
    assert set(re.findall(r'<g id="marks-(\w+)"', svg)) == {"thread", "connection", "eventlog", "flag"}
    assert report.timeline_svg(picture) == svg          # the same bytes every time


def test_missing_names_absent_libraries(monkeypatch):
    monkeypatch.setattr(report.importlib.util, "find_spec", lambda name: None if name == "stix2" else object())
    assert report.missing() == ["stix2"]
