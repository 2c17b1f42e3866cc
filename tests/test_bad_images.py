"""Images that are not Windows memory, or are cut short: a clear error, never a traceback."""
from __future__ import annotations

import random
from typing import List

import pytest

from tests.vol_runner import run_cli

PLUGINS = ["spyeye.info", "spyeye.vadsearch --keyword cleansweep.exe", "spyeye.config",
           "spyeye.injected", "spyeye.apiscore", "spyeye.timeline"]


def stderr_lines(out) -> List[str]:
    """The lines ``vol`` wrote on stderr, less the framework's own warnings about its symbol
    cache (offline, several runs at once share it: not the plugin's output)."""
    return [line for line in out.stderr.strip().splitlines()
            if not line.startswith("WARNING  volatility3.framework.symbols")]


@pytest.fixture(scope="module")
def not_windows(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "random.raw"
    path.write_bytes(random.Random(7).randbytes(4 << 20))
    return path


@pytest.fixture(scope="module")
def cut_short(tmp_path_factory, win7_image):
    image, _ = win7_image
    path = tmp_path_factory.mktemp("cut") / "cut.raw"
    with open(image, "rb") as src:
        path.write_bytes(src.read(32 << 20))
    return path


@pytest.mark.parametrize("plugin", PLUGINS)
def test_non_windows_and_truncated_images_give_volatility_s_clear_error(not_windows, cut_short, plugin):
    for image in (not_windows, cut_short):
        out = run_cli("-f", str(image), *plugin.split())
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert "Unable to validate the plugin requirements" in out.stderr
        assert "kernel.layer_name" in out.stderr
