"""The shared VAD walker reports what Volatility's own VAD helpers report."""
from __future__ import annotations

import random

import pytest
from volatility3.framework import contexts
from volatility3.framework.layers import physical
from volatility3.framework.symbols import windows
from volatility3.plugins.windows import pslist, vadinfo

from spyeye_plugins.spyeye import vadwalk
from tests.conftest import REAL_WIN7_ISF, ROOT, SHARED
from tests.vol_runner import construct


def test_vad_facts_match_volatility_helpers_for_every_vad(win7_image):
    image, truth = win7_image
    plugin = construct(image, "windows.pslist.PsList")
    context, kernel_name = plugin.context, plugin.config["kernel"]
    protect = vadwalk.protection_values(context, kernel_name)
    compared = 0
    for proc in pslist.PsList.list_processes(context, kernel_name):
        for vad in vadinfo.VadInfo.list_vads(proc):
            facts = vadwalk.vad_facts(vad, protect)
            name = vad.get_file_name()
            assert (facts.start, facts.end, facts.protection, facts.private, facts.file) == (
                vad.get_start(), vad.get_end(), vad.get_protection(protect, vadinfo.winnt_protections),
                bool(vad.get_private_memory()), name if isinstance(name, str) else None)
            compared += 1
    linked = {p["pid"] for p in truth["processes"] if p["linked"]}
    assert compared == len([v for v in truth["vads"] if v["pid"] in linked])


def test_every_process_counts_the_vads_its_tree_gives(win7_image, caplog):
    """The count the process keeps (Windows 7's table, Windows 10's ``VadCount``, XP's
    ``NumberOfVads``) is the truth's, so the damaged-tree warning stays silent on a sound image."""
    image, truth = win7_image
    plugin = construct(image, "windows.pslist.PsList")
    context, kernel_name = plugin.context, plugin.config["kernel"]
    protect = vadwalk.protection_values(context, kernel_name)
    counts = {}
    for proc in pslist.PsList.list_processes(context, kernel_name):
        pid = int(proc.UniqueProcessId)
        counts[pid] = (vadwalk._vad_count(proc), len(list(vadwalk.process_vads(proc, protect))))
    want = {p["pid"]: sum(1 for v in truth["vads"] if v["pid"] == p["pid"])
            for p in truth["processes"] if p["linked"]}
    assert counts == {pid: (n, n) for pid, n in want.items()} and sum(want.values()) > 100
    assert "the process counts" not in caplog.text


def test_vad_type_without_a_usable_layout_is_read_field_by_field(win7_image, monkeypatch):
    def no_layout(vad):
        raise AttributeError("data_format")
    monkeypatch.setattr(vadwalk, "_vad_layout", no_layout)
    monkeypatch.setattr(vadwalk, "_LAYOUTS", vadwalk.weakref.WeakKeyDictionary())
    image, truth = win7_image
    plugin = construct(image, "windows.pslist.PsList")
    context, kernel_name = plugin.context, plugin.config["kernel"]
    protect = vadwalk.protection_values(context, kernel_name)
    proc = next(p for p in pslist.PsList.list_processes(context, kernel_name) if p.UniqueProcessId == 2356)
    facts = list(vadwalk.process_vads(proc, protect))
    assert [(f.start, f.end, f.private) for f in facts] == sorted(
        (v["start"], v["end"], v["private"]) for v in truth["vads"] if v["pid"] == 2356)


def test_image_flag_and_sizes_from_the_truth(win7_image):
    image, truth = win7_image
    plugin = construct(image, "windows.pslist.PsList")
    context, kernel_name = plugin.context, plugin.config["kernel"]
    protect = vadwalk.protection_values(context, kernel_name)
    proc = next(p for p in pslist.PsList.list_processes(context, kernel_name) if p.UniqueProcessId == 2356)
    facts = {f.start: f for f in vadwalk.process_vads(proc, protect)}
    modules = {m["base"] for m in truth["modules"] if m["pid"] == 2356}
    assert {start for start, f in facts.items() if f.image} == modules
    assert all(f.size == f.end + 1 - f.start for f in facts.values())


def test_protection_names_without_the_kernel_table_fall_back_to_the_base_values():
    assert vadwalk._protection(6, None) == "PAGE_EXECUTE_READWRITE"
    assert vadwalk._protection(0x18 | 4, None) == "PAGE_READWRITE"     # cache/guard bits dropped
    table = [0, 1, 0x10, 0x20, 4, 8, 0x40, 0x80]
    assert vadwalk._protection(6, table) == "PAGE_EXECUTE_READWRITE" and vadwalk._protection(99, table) == ""


_KERNEL_ISFS = {
    "project Win7 SP1 x64": ROOT / "symbols" / "windows" / "ntkrnlmp.pdb" / "53505945594546495854555245000001-1.json.xz",
    "real Win7 SP1 x64": REAL_WIN7_ISF,
    "real Win10 19041 x64": SHARED / "reference" / "symbols" / "windows" / "ntkrnlmp.pdb" /
    "89284D0CA6ACC8274B9A44BD5AF9290B-1.json.xz",
}


@pytest.mark.parametrize("label", sorted(_KERNEL_ISFS))
def test_vad_fields_read_in_one_buffer_equal_volatility_helpers_on_random_bytes(label):
    """The one-buffer layout (resolved from the symbol table) against Volatility's own
    get_start/get_end/get_private_memory/get_protection and the VadType flag, for both VAD
    types over random bytes, on every kernel ISF at hand (Windows 10 moves the fields under
    Core and adds the *High bytes)."""
    isf = _KERNEL_ISFS[label]
    if not isf.exists():
        pytest.skip(f"{isf} not present")
    context = contexts.Context()
    table = windows.WindowsKernelIntermedSymbols(context, "test", "nt", isf.as_uri())
    context.symbol_space.append(table)
    rng = random.Random(11)
    context.add_layer(physical.BufferDataLayer(context, "test.buf", "buf", rng.randbytes(0x10000)))
    protect = [rng.getrandbits(12) for _ in range(32)]
    checked = 0
    for type_name in ("_MMVAD_SHORT", "_MMVAD"):
        for offset in range(0, 0x8000, 0x148):
            vad = context.object(f"nt!{type_name}", "buf", offset)
            fast = vadwalk._fast_facts(vad, protect)
            assert fast is not None
            flags = vadwalk._vad_flags(vad)
            assert fast == (vad.get_start(), vad.get_end(),
                            vad.get_protection(protect, vadinfo.winnt_protections),
                            bool(vad.get_private_memory()), int(flags.VadType) == 2)
            checked += 1
    assert checked == 2 * len(range(0, 0x8000, 0x148))
