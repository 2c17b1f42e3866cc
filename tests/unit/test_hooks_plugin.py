"""``spyeye.hooks``'s detection on a process made of bytes (no memory image): a fixture DLL mapped
at its base, patched, beside a private RWX region and another loaded DLL."""
from __future__ import annotations

import logging
import struct
from typing import Dict, List, Optional

import pefile
import pytest

from fixtures.pe_mapper import DLL_DIR, map_image
from spyeye_plugins.spyeye.hooks import Hooks, Module, ProcessView
from spyeye_plugins.spyeye.vadwalk import VadFacts

PRIVATE = 0x7FE_FDE0_0000                 # private RWX memory within rel32 reach of wininet_x64


class NoPeers:
    """A peer index with no other copies: no majority, so no ``modified`` rows."""

    @staticmethod
    def majority(view, module, address):
        return None


def _dll(name: str):
    path = DLL_DIR / name
    pe = pefile.PE(str(path))
    base = pe.OPTIONAL_HEADER.ImageBase
    exports = {s.name.decode(): base + s.address for s in pe.DIRECTORY_ENTRY_EXPORT.symbols if s.name}
    return base, bytearray(map_image(path.read_bytes())), exports


def _reader(regions: Dict[int, bytes]):
    def read(address: int, length: int) -> Optional[bytes]:
        for start, data in regions.items():
            if start <= address and address + length <= start + len(data):
                return bytes(data[address - start:address - start + length])
        return None
    return read


def _view(patches: Dict[str, bytes], name: str = "wininet_x64.dll") -> tuple:
    base, image, exports = _dll(name)
    for function, code in patches.items():
        rva = exports[function] - base
        image[rva:rva + len(code)] = code
    ws2_base, ws2_image, ws2_exports = _dll("ws2_32_x64.dll")
    regions = {base: image, PRIVATE: b"\xc3" * 0x1000, ws2_base: ws2_image}
    read = _reader(regions)
    vad = VadFacts(base, base + len(image) - 1, "PAGE_EXECUTE_WRITECOPY", False, "\\Windows\\System32\\WININET.dll", True)
    ws2_vad = VadFacts(ws2_base, ws2_base + len(ws2_image) - 1, "PAGE_EXECUTE_WRITECOPY", False,
                       "\\Windows\\System32\\WS2_32.dll", True)
    private = VadFacts(PRIVATE, PRIVATE + 0xFFF, "PAGE_EXECUTE_READWRITE", True)
    modules = [Module("WININET.dll", vad, True, read), Module("WS2_32.dll", ws2_vad, True, read)]
    vads = sorted([vad, ws2_vad, private], key=lambda v: v.start)
    return ProcessView(2172, "iexplore.exe", "layer", vads, modules, {}), exports, ws2_exports


def _hooks(view) -> List:
    return list(Hooks.find_hooks(None, view, NoPeers()))


def _jmp(source: int, target: int) -> bytes:
    return b"\xe9" + struct.pack("<i", target - source - 5)


def test_clean_module_gives_no_rows():
    view, _, _ = _view({})
    assert _hooks(view) == []


def test_jump_into_private_memory_is_a_high_inline_hook_with_its_region():
    view, exports, _ = _view({})
    entry = exports["HttpSendRequestA"]
    view, _, _ = _view({"HttpSendRequestA": _jmp(entry, PRIVATE + 0x40)})
    (hook,) = _hooks(view)
    assert (hook.function, hook.kind, hook.technique, hook.address, hook.target) == \
        ("HttpSendRequestA", "inline", "jmp_rel32", entry, PRIVATE + 0x40)
    assert (hook.confidence, hook.reason, hook.region.start) == ("high", "private executable memory", PRIVATE)


def test_jump_to_an_export_of_another_loaded_module_is_low():
    view, exports, ws2 = _view({})
    entry = exports["InternetCloseHandle"]
    view, _, _ = _view({"InternetCloseHandle": _jmp(entry, ws2["closesocket"])})
    (hook,) = _hooks(view)
    assert (hook.confidence, hook.target_module, hook.target_export) == ("low", "WS2_32.dll", "closesocket+0x0")


def test_jump_inside_another_module_but_not_at_an_export_is_medium():
    view, exports, ws2 = _view({})
    entry = exports["InternetCloseHandle"]
    view, _, _ = _view({"InternetCloseHandle": _jmp(entry, ws2["closesocket"] + 3)})
    (hook,) = _hooks(view)
    assert (hook.confidence, hook.target_export) == ("medium", "closesocket+0x3")


def test_jump_into_no_vad_is_medium():
    view, exports, _ = _view({})
    entry = exports["HttpOpenRequestA"]
    view, _, _ = _view({"HttpOpenRequestA": _jmp(entry, PRIVATE - 0x100000)})
    (hook,) = _hooks(view)
    assert (hook.confidence, hook.reason, hook.region) == ("medium", "target in no VAD", None)


def test_breakpoint_at_entry_is_medium_without_target():
    view, _, _ = _view({"HttpSendRequestW": b"\xcc"})
    (hook,) = _hooks(view)
    assert (hook.technique, hook.target, hook.confidence) == ("int3", None, "medium")


def test_garbage_at_an_entry_gives_a_warning_not_a_row(caplog):
    view, _, _ = _view({"HttpSendRequestW": b"\xff\xff" * 8})
    with caplog.at_level(logging.WARNING):
        assert _hooks(view) == []
    assert "PID 2172 WININET.dll: 1 exported function entries undecodable" in caplog.text


def test_iat_slot_pointing_into_private_memory_is_an_iat_hook():
    view, _, _ = _view({})
    wininet = view.modules[0]
    slot = next(s for s in wininet.imports[0] if s.name == "send")
    base, image, exports = _dll("wininet_x64.dll")
    ws2_base, ws2_image, ws2_exports = _dll("ws2_32_x64.dll")
    bound = {s.slot_rva: ws2_exports[s.name] for s in wininet.imports[0] if s.dll.lower() == "ws2_32.dll"}
    for rva, value in bound.items():
        struct.pack_into("<Q", image, rva, value)
    struct.pack_into("<Q", image, slot.slot_rva, PRIVATE + 0x10)
    regions = {base: image, PRIVATE: b"\xc3" * 0x1000, ws2_base: ws2_image}
    for module in view.modules:
        module.read = _reader(regions)
        module.__dict__.pop("image", None)
        module.__dict__.pop("imports", None)
    iat = [h for h in _hooks(view) if h.kind == "iat"]
    assert [(h.module.name, h.function, h.importer, h.address, h.target, h.confidence) for h in iat] == \
        [("WS2_32.dll", "send", "WININET.dll", base + slot.slot_rva, PRIVATE + 0x10, "high")]


def test_function_cap_warns_and_bounds(caplog):
    view, exports, _ = _view({})
    with caplog.at_level(logging.WARNING):
        list(Hooks.find_hooks(None, view, NoPeers(), max_functions=2))
    assert f"WININET.dll: {len(exports)} exported functions, only the first 2 checked" in caplog.text


@pytest.mark.parametrize("name", ["ntdll_x64.dll", "ntdll_x86.dll"])
def test_renumbered_syscall_stub_breaks_the_order_and_is_flagged(name):
    base, image, exports = _dll(name)
    entry = exports["NtEnumerateValueKey"] - base
    offset = 4 if "x64" in name else 1                                  # the N of mov eax, N
    struct.pack_into("<I", image, entry + offset, 0x3C)
    vad = VadFacts(base, base + len(image) - 1, "PAGE_EXECUTE_WRITECOPY", False, "\\Windows\\System32\\ntdll.dll", True)
    view = ProcessView(1484, "explorer.exe", "layer", [vad], [Module("ntdll.dll", vad, True, _reader({base: image}))], {})
    (hook,) = _hooks(view)
    assert (hook.function, hook.kind, hook.technique, hook.address) == \
        ("NtEnumerateValueKey", "syscall", "syscall_number", base + entry)
    assert hook.evidence == [("syscall number", "0x3c out of sequence with the neighbouring stubs")]
