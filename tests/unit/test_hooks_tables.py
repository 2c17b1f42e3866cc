"""Syscall stubs, import/export tables and the known-target data of parsers/hooks.py."""
from __future__ import annotations

import dataclasses
import json
import struct
from typing import Callable, Optional

import pefile
import pytest

from fixtures.pe_mapper import DLL_DIR, map_image
from spyeye_plugins.spyeye.parsers import hooks
from spyeye_plugins.spyeye.parsers.hooks import (
    eat_slot_rva,
    known_hook,
    out_of_sequence,
    parse_imports,
    syscall_stub,
    table_location,
)
from spyeye_plugins.spyeye.parsers.pe_image import parse_mapped_image

NUMBER = struct.pack("<I", 0x52)
WIN7_X64 = b"\x4c\x8b\xd1\xb8" + NUMBER + b"\x0f\x05\xc3"
WIN10_X64 = (b"\x4c\x8b\xd1\xb8" + NUMBER + b"\xf6\x04\x25\x08\x03\xfe\x7f\x01\x75\x03\x0f\x05\xc3\xcd\x2e\xc3")
X86_NATIVE = b"\xb8" + NUMBER + b"\xba\x00\x03\xfe\x7f\xff\x12\xc2\x2c\x00"
WOW64_XOR = b"\xb8" + NUMBER + b"\x33\xc9\x8d\x54\x24\x04\x64\xff\x15\xc0\x00\x00\x00\x83\xc4\x04\xc2\x2c\x00"
WOW64_MOV = b"\xb8" + NUMBER + b"\xb9\x03\x00\x00\x00\x8d\x54\x24\x04\x64\xff\x15\xc0\x00\x00\x00\x83\xc4\x04\xc3"


@pytest.mark.parametrize("code,bits,form", [
    (WIN7_X64, 64, "x64 (Windows 7)"), (WIN10_X64, 64, "x64 (Windows 10)"),
    (X86_NATIVE, 32, "x86 native"), (WOW64_XOR, 32, "WoW64"), (WOW64_MOV, 32, "WoW64"),
])
def test_syscall_stub_forms_give_their_number(code, bits, form):
    stub = syscall_stub(code + b"\x90" * 8, bits)
    assert (stub.number, stub.form) == (0x52, form)


@pytest.mark.parametrize("code,bits", [
    (WIN7_X64, 32),                                       # right stub, wrong bitness
    (b"\xe9\x00\x10\x00\x00" + WIN7_X64[5:], 64),         # first bytes replaced by a jump
    (WIN7_X64[:-3], 64),                                  # truncated before syscall
    (X86_NATIVE[:5] + b"\xba\x00\x03\xfe\x7f\xff\xd2\xc3", 32),  # call edx instead of call [edx]
    (b"", 64),
])
def test_non_stubs_are_not_syscall_stubs(code, bits):
    assert syscall_stub(code, bits) is None


def test_out_of_sequence_flags_the_number_that_breaks_the_order():
    stubs = [(0x1000 + 0x10 * i, i) for i in range(10)]
    stubs[4] = (stubs[4][0], 0x99)
    assert out_of_sequence(stubs) == [0x1040]


def test_out_of_sequence_is_silent_when_the_layout_is_not_ordered():
    stubs = [(0x1000 + 0x10 * i, n) for i, n in enumerate([5, 1, 9, 3, 7, 2, 8, 0])]
    assert out_of_sequence(stubs) == []


def test_out_of_sequence_needs_four_stubs_and_dedupes_twins():
    assert out_of_sequence([(0x1000, 1), (0x1010, 9), (0x1020, 2)]) == []
    twins = [(0x1000, 1), (0x1000, 1), (0x1010, 2), (0x1010, 2), (0x1020, 3), (0x1030, 4)]
    assert out_of_sequence(twins) == []


# --- import and export tables on the committed fixture DLLs ---------------------------------

def _reader(image: bytes, missing: frozenset = frozenset()) -> Callable[[int, int], Optional[bytes]]:
    def read(rva: int, length: int) -> Optional[bytes]:
        pages = range(rva // 0x1000, (rva + length - 1) // 0x1000 + 1)
        if rva < 0 or rva + length > len(image) or any(p in missing for p in pages):
            return None
        return image[rva:rva + length]
    return read


def _mapped(name: str) -> bytes:
    return map_image((DLL_DIR / name).read_bytes())


def _pefile_imports(name: str) -> list:
    pe = pefile.PE(str(DLL_DIR / name))
    base = pe.OPTIONAL_HEADER.ImageBase
    return sorted((entry.dll.decode(), imp.name.decode() if imp.name else None, imp.ordinal if not imp.name else None,
                   imp.address - base) for entry in pe.DIRECTORY_ENTRY_IMPORT for imp in entry.imports)


@pytest.mark.parametrize("name,bits", [("spyplugin_x86.dll", 32), ("spyplugin_x64.dll", 64), ("benign_x64.dll", 64)])
def test_imports_match_pefile(name, bits):
    image = _mapped(name)
    location = table_location(image[:0x1000], _reader(image), len(image))
    assert location.bits == bits
    slots, warnings = parse_imports(_reader(image), len(image), location)
    assert warnings == []
    assert sorted((s.dll, s.name, s.ordinal, s.slot_rva) for s in slots) == _pefile_imports(name)
    assert all(not s.bound for s in slots)                 # on disk the IAT still holds the name table


def _bind(image: bytes, slot_rva: int, value: int, bits: int) -> bytes:
    out = bytearray(image)
    struct.pack_into("<Q" if bits == 64 else "<I", out, slot_rva, value)
    return bytes(out)


@pytest.mark.parametrize("name,bits", [("spyplugin_x86.dll", 32), ("spyplugin_x64.dll", 64)])
def test_bound_slot_value_is_read(name, bits):
    image = _mapped(name)
    location = table_location(image[:0x1000], _reader(image), len(image))
    first = parse_imports(_reader(image), len(image), location)[0][0]
    image = _bind(image, first.slot_rva, 0x7701_2340, bits)
    slot = parse_imports(_reader(image), len(image), location)[0][0]
    assert (slot.value, slot.bound, slot.name) == (0x7701_2340, True, first.name)


def test_ordinal_import_is_reported_by_ordinal():
    image = bytearray(_mapped("spyplugin_x64.dll"))
    location = table_location(bytes(image[:0x1000]), _reader(bytes(image)), len(image))
    descriptor = struct.unpack_from("<5I", image, location.import_rva)
    struct.pack_into("<Q", image, descriptor[0], (1 << 63) | 42)      # first name-table entry -> ordinal 42
    slots, _ = parse_imports(_reader(bytes(image)), len(image), location)
    assert (slots[0].name, slots[0].ordinal) == (None, 42)


def test_missing_import_page_gives_a_warning():
    image = _mapped("spyplugin_x64.dll")
    location = table_location(image[:0x1000], _reader(image), len(image))
    page = location.import_rva // 0x1000
    slots, warnings = parse_imports(_reader(image, frozenset({page})), len(image), location)
    assert slots == [] and warnings == ["import descriptor 0 unreadable"]


def test_import_table_without_terminator_is_bounded():
    image = bytearray(_mapped("spyplugin_x64.dll"))
    location = table_location(bytes(image[:0x1000]), _reader(bytes(image)), len(image))
    descriptor = image[location.import_rva:location.import_rva + 20]
    free = bytes(image).rfind(bytes(128)) & ~7                         # zeros at the end of the image
    image[free:free + 100] = descriptor * 5                            # five copies, no null descriptor
    moved = dataclasses.replace(location, import_rva=free)
    slots, warnings = parse_imports(_reader(bytes(image)), len(image), moved, max_descriptors=3)
    assert [s.name for s in slots] == ["GetTickCount", "lstrcpynA"] * 3
    assert warnings == ["more than 3 import descriptors; the rest not read"]


def test_garbage_header_has_no_table_location():
    assert table_location(b"\xff" * 0x1000, _reader(b"\xff" * 0x1000), 0x1000) is None


def test_code_ranges_from_section_flags():
    image = _mapped("spyplugin_x64.dll")
    location = table_location(image[:0x1000], _reader(image), len(image))
    pe = pefile.PE(str(DLL_DIR / "spyplugin_x64.dll"))
    text = next(s for s in pe.sections if s.Name.rstrip(b"\0") == b".text")
    assert location.in_code(text.VirtualAddress)
    assert not location.in_code(location.import_rva)


@pytest.mark.parametrize("name", ["spyplugin_x86.dll", "spyplugin_x64.dll", "ordinals_x64.dll"])
def test_eat_slot_holds_the_export_rva(name):
    image = _mapped(name)
    location = table_location(image[:0x1000], _reader(image), len(image))
    for export in parse_mapped_image(_reader(image), len(image), 0).exports:
        slot = eat_slot_rva(location, export.ordinal)
        assert struct.unpack_from("<I", image, slot)[0] == export.rva


def test_absurd_export_count_is_capped_with_a_warning_and_slots_still_found():
    image = bytearray(_mapped("spyplugin_x64.dll"))
    export_rva = pefile.PE(str(DLL_DIR / "spyplugin_x64.dll"), fast_load=True).OPTIONAL_HEADER.DATA_DIRECTORY[0].VirtualAddress
    struct.pack_into("<I", image, export_rva + 20, 0x4000_0000)          # NumberOfFunctions
    pe = parse_mapped_image(_reader(bytes(image)), len(image), 0)
    assert any("NumberOfFunctions 0x40000000 absurd" in w for w in pe.warnings)
    assert len(pe.exports) == 19
    location = table_location(bytes(image[:0x1000]), _reader(bytes(image)), len(image))
    assert eat_slot_rva(location, 1) == location.functions_rva


def test_eat_rva_outside_image_is_kept_as_a_non_forwarder():
    image = bytearray(_mapped("spyplugin_x64.dll"))
    location = table_location(bytes(image[:0x1000]), _reader(bytes(image)), len(image))
    struct.pack_into("<I", image, eat_slot_rva(location, 6), 0x0123_4560)   # Init -> far outside
    pe = parse_mapped_image(_reader(bytes(image)), len(image), 0x1_8000_0000)
    init = next(e for e in pe.exports if e.name == "Init")
    assert (init.rva, init.forwarder, init.address) == (0x0123_4560, None, 0x1_8123_4560)
    assert any("outside image" in w for w in pe.warnings)


# --- known SpyEye targets ------------------------------------------------------------------

def test_known_targets_come_from_the_data_file_with_sources():
    document = json.loads(hooks.DATA_FILE.read_text())
    assert {(h["module"], h["function"]) for h in document["hooks"]} >= {
        ("wininet.dll", "HttpSendRequestA"), ("wininet.dll", "HttpSendRequestW"),
        ("wininet.dll", "InternetCloseHandle"), ("nspr4.dll", "PR_Write")}
    for entry in document["hooks"]:
        assert entry["confidence"] in ("H", "M", "L")
        assert set(entry["sources"]) <= set(document["sources"])


def test_known_hook_is_case_insensitive_on_the_module_only():
    assert known_hook("WININET.dll", "HttpSendRequestA").tag == "SpyEye form grabbing (H)"
    assert known_hook("wininet.dll", "httpsendrequesta") is None
    assert known_hook("kernel32.dll", "HttpSendRequestA") is None
    assert known_hook("user32.dll", "TranslateMessage").confidence == "L"
