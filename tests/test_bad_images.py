"""Images that are not Windows memory, or are cut short: a clear error, never a traceback."""
from __future__ import annotations

import random
from typing import List

import pytest

from tests.vol_runner import plugin_module, run_cli

PLUGINS = ["spyeye.info", "spyeye.vadsearch --keyword cleansweep.exe", "spyeye.config",
           "spyeye.injected", "spyeye.apiscore", "spyeye.timeline"]


def stderr_lines(out) -> List[str]:
    """The lines ``vol`` wrote on stderr, less its banner (there with some renderers) and the
    framework's own warnings about its symbol cache (offline, several runs at once share it):
    neither is the plugin's output."""
    return [line for line in out.stderr.strip().splitlines()
            if not line.startswith(("WARNING  volatility3.framework.symbols", "Volatility 3 Framework"))]


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


PROCESS_PLUGINS = ["spyeye.vadsearch --keyword cleansweep.exe", "spyeye.config", "spyeye.injected",
                   "spyeye.apiscore", "spyeye.timeline"]


@pytest.mark.parametrize("plugin", PROCESS_PLUGINS)
@pytest.mark.parametrize("args,problem", [(["--pid", "4", "99999"], "no process with PID 99999"),
                                          (["--name", "explorer.exe", "nosuch.exe"], "no process named nosuch.exe")])
def test_every_plugin_fails_on_a_process_selection_that_selects_nothing(win7_image, plugin, args, problem):
    image, _ = win7_image
    out = run_cli("-f", str(image), *plugin.split(), *args)
    where = "the active process list" + (" or the pool (psscan)" if plugin == "spyeye.timeline" else "")
    assert out.returncode == 1 and "PID" not in out.stdout
    assert stderr_lines(out) == [f"error: {problem} in {where}"]


def test_timeline_accepts_the_pid_of_an_exited_process(win7_image):
    image, truth = win7_image
    (dropper,) = [p for p in truth["processes"] if not p["linked"]]
    out = run_cli("-r", "csv", "-f", str(image), "spyeye.timeline", "--pid", str(dropper["pid"]))
    assert out.returncode == 0 and stderr_lines(out) == []
    assert f",{dropper['pid']},{dropper['image_file_name']}," in out.stdout


@pytest.mark.parametrize("pids,names,problem", [
    ([4], None, None),
    ([4, 9], None, "no process with PID 9 in here"),
    (None, ["SYSTEM"], None),                                      # names are case-insensitive
    (None, ["System", "x\tz.exe"], "no process named x\\tz.exe in here"),
    ([4], ["smss.exe"], "no process with PID 4 and name smss.exe in here"),
    ([4, 252], ["smss.exe"], None),
])
def test_selection_problem_names_the_value_that_selects_nothing(pids, names, problem):
    known = [(4, "System"), (252, "smss.exe")]
    assert plugin_module("spyeye.vadwalk").selection_problem(known, pids, names, "here") == problem
