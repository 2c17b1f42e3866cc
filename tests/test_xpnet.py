"""``spyeye.xpnet`` on the images there are: a clear one-line refusal on non-XP kernels.
(Rows on an XP image come with the ``xp-x86`` builder profile.)"""
from __future__ import annotations

import pytest

from tests.vol_runner import plugin_module, run_cli, run_plugin

UsageError = plugin_module("spyeye.output").UsageError
REFUSAL = "error: spyeye.xpnet reads Windows XP x86 network objects; this is a 64-bit kernel (use windows.netscan)"


def test_refuses_a_64bit_windows7_image_in_one_line(win7_image):
    image, _ = win7_image
    out = run_cli("-f", str(image), "spyeye.xpnet", "--pid", "1484")
    assert out.returncode == 1 and "Offset(P)" not in out.stdout
    assert [line for line in out.stderr.splitlines() if "error" in line] == [REFUSAL]
    assert "Traceback" not in out.stderr
    with pytest.raises(UsageError, match="64-bit kernel"):
        run_plugin(image, "spyeye.xpnet.XpNet")
