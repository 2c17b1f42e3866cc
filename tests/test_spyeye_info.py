"""``spyeye.info`` proves the plugin wiring end to end."""
from __future__ import annotations

from tests.vol_runner import run_plugin


def test_info_reports_suite_os_and_process_counts(win7_image):
    image, truth = win7_image
    rows = {r["Property"]: r["Value"] for r in run_plugin(image, "spyeye.info.Info")}
    assert rows["Suite version"] == "0.1.0"
    assert rows["Bitness"] == "64-bit"
    assert rows["Windows"] == "6.1 build 7601"
    assert rows["Processes (active list)"] == str(sum(p["linked"] for p in truth["processes"]))
    assert rows["WoW64 processes"] == "1"
    assert rows["Kernel symbols"].endswith("53505945594546495854555245000001-1.json.xz")
