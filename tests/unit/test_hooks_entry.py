"""Function-entry hook shapes (parsers/hooks.classify_entry) on hand-made bytes, both bitnesses."""
from __future__ import annotations

import random
import struct
from typing import Dict, Optional

import pytest

from spyeye_plugins.spyeye.parsers.hooks import ENTRY_BYTES, classify_entry, read_code

BASE64 = 0x7FE_F000_1000
BASE32 = 0x7600_1010
TARGET = 0x0B00_1234
NOPS = b"\x90" * 48


def memory(regions: Dict[int, bytes]):
    """A MemReader over ``{address: bytes}``; anything else is unreadable."""
    def read(address: int, length: int) -> Optional[bytes]:
        for start, data in regions.items():
            if start <= address and address + length <= start + len(data):
                return data[address - start:address - start + length]
        return None
    return read


def rel32(source_end: int, target: int) -> bytes:
    return struct.pack("<i", target - source_end)


def classify(code: bytes, bits: int, base: Optional[int] = None, extra: Optional[Dict[int, bytes]] = None):
    base = base if base is not None else (BASE64 if bits == 64 else BASE32)
    return classify_entry(memory({base: code + NOPS, **(extra or {})}), base, bits)


@pytest.mark.parametrize("bits", [32, 64])
def test_jmp_rel32_gives_its_destination(bits):
    base = BASE64 if bits == 64 else BASE32
    target = base + 0x123456 if bits == 64 else TARGET
    patch = classify(b"\xe9" + rel32(base + 5, target), bits)
    assert (patch.technique, patch.target, patch.address) == ("jmp_rel32", target, base)
    assert patch.raw == b"\xe9" + rel32(base + 5, target)
    assert patch.text == f"jmp {target:#x}"


def test_jmp_rip_relative_reads_the_inline_pointer_x64():
    # the 14-byte x64 patch: jmp [rip+0] followed by the 8-byte destination
    code = b"\xff\x25\x00\x00\x00\x00" + struct.pack("<Q", 0x7FF0_0B00_1234)
    patch = classify(code, 64)
    assert (patch.technique, patch.target) == ("jmp_indirect", 0x7FF0_0B00_1234)
    assert patch.slot == BASE64 + 6
    assert patch.raw == code                                   # the pointer is part of the patch


def test_jmp_absolute_pointer_x86():
    slot = 0x0C00_0000
    patch = classify(b"\xff\x25" + struct.pack("<I", slot), 32, extra={slot: struct.pack("<I", TARGET)})
    assert (patch.technique, patch.target, patch.slot) == ("jmp_indirect", TARGET, slot)
    assert patch.raw == b"\xff\x25" + struct.pack("<I", slot)      # the pointer lies elsewhere


def test_jmp_through_unreadable_pointer_has_no_target_and_says_why():
    patch = classify(b"\xff\x25" + struct.pack("<I", 0x0C00_0000), 32)
    assert patch.technique == "jmp_indirect" and patch.target is None
    assert "unreadable" in patch.note


def test_push_ret_x86():
    patch = classify(b"\x68" + struct.pack("<I", TARGET) + b"\xc3", 32)
    assert (patch.technique, patch.target) == ("push_ret", TARGET)


def test_push_ret_x64_with_high_dword():
    code = b"\x68" + struct.pack("<I", 0x0B00_1234) + b"\xc7\x44\x24\x04" + struct.pack("<I", 0x7FE) + b"\xc3"
    patch = classify(code, 64)
    assert (patch.technique, patch.target) == ("push_ret", 0x7FE_0B00_1234)


def test_push_ret_x64_sign_extends_a_lone_push():
    patch = classify(b"\x68" + struct.pack("<I", 0x8000_0000) + b"\xc3", 64)
    assert patch.target == 0xFFFF_FFFF_8000_0000


def test_push_register_ret_after_mov_immediate():
    patch = classify(b"\xb8" + struct.pack("<I", TARGET) + b"\x50\xc3", 32)
    assert (patch.technique, patch.target) == ("push_ret", TARGET)


@pytest.mark.parametrize("code,bits,technique", [
    (b"\x48\xb8" + struct.pack("<Q", 0x7FF0_0B00_1234) + b"\xff\xe0", 64, "mov_jmp"),   # movabs rax; jmp rax
    (b"\x49\xbb" + struct.pack("<Q", 0x7FF0_0B00_1234) + b"\x41\xff\xe3", 64, "mov_jmp"),  # movabs r11; jmp r11
    (b"\x48\xb8" + struct.pack("<Q", 0x7FF0_0B00_1234) + b"\xff\xd0", 64, "mov_call"),
])
def test_mov_register_then_jump_or_call_x64(code, bits, technique):
    patch = classify(code, bits)
    assert (patch.technique, patch.target) == (technique, 0x7FF0_0B00_1234)


@pytest.mark.parametrize("code,technique", [
    (b"\xb8" + struct.pack("<I", TARGET) + b"\xff\xe0", "mov_jmp"),
    (b"\xb8" + struct.pack("<I", TARGET) + b"\xff\xd0", "mov_call"),
])
def test_mov_register_then_jump_or_call_x86(code, technique):
    assert (classify(code, 32).technique, classify(code, 32).target) == (technique, TARGET)


def test_jump_through_register_written_otherwise_is_not_named():
    patch = classify(b"\x8b\x01\xff\xe0", 32)             # mov eax, [ecx]; jmp eax
    assert patch.technique is None and "register" in patch.note


@pytest.mark.parametrize("bits", [32, 64])
def test_hotpatch_short_jump_back_into_padding(bits):
    entry = BASE32 if bits == 32 else BASE64
    long_jump = b"\xe9" + rel32(entry, TARGET if bits == 32 else entry + 0x500000)
    padding = b"\xcc" * 11 + long_jump                     # jmp rel32 in the 5 bytes before the entry
    patch = classify_entry(memory({entry - 16: padding + b"\xeb\xf9" + NOPS}), entry, bits)
    assert patch.technique == "hotpatch"
    assert patch.target == (TARGET if bits == 32 else entry + 0x500000)
    assert patch.address == entry
    assert [i.address for i in patch.instructions] == [entry, entry - 5]


def test_short_jump_forward_is_only_a_short_jump():
    patch = classify(b"\xeb\x10", 32)
    assert (patch.technique, patch.target) == ("jmp_short", BASE32 + 0x12)


def test_short_jump_into_padding_without_long_jump_is_not_hotpatch():
    entry = BASE32
    patch = classify_entry(memory({entry - 16: b"\xcc" * 16 + b"\xeb\xf9" + NOPS}), entry, 32)
    assert patch.technique == "jmp_short"


@pytest.mark.parametrize("bits", [32, 64])
def test_call_at_entry(bits):
    base = BASE64 if bits == 64 else BASE32
    patch = classify(b"\xe8" + rel32(base + 5, base + 0x10000), bits)
    assert (patch.technique, patch.target) == ("call", base + 0x10000)


def test_call_after_the_prologue_is_ordinary_code():
    code = b"\x48\x89\x5c\x24\x08\x57\x48\x83\xec\x20\xe8" + rel32(BASE64 + 15, BASE64 + 0x900)
    patch = classify(code, 64)
    assert patch.technique is None
    assert patch.text.endswith(f"call {BASE64 + 0x900:#x}")


@pytest.mark.parametrize("code,technique", [(b"\xcc\x90\x90", "int3"), (b"\x0f\x0b", "ud2")])
@pytest.mark.parametrize("bits", [32, 64])
def test_traps_at_entry(code, technique, bits):
    patch = classify(code, bits)
    assert (patch.technique, patch.target) == (technique, None)


def test_breakpoint_function_is_not_a_hook():
    patch = classify(b"\xcc\xc3", 64)                      # DbgBreakPoint: int3; ret
    assert patch.technique is None and patch.note == "breakpoint function"


@pytest.mark.parametrize("bits", [32, 64])
def test_prologue_then_jump_is_found_within_the_bound(bits):
    base = BASE64 if bits == 64 else BASE32
    code = b"\x8b\xff\x55\x8b\xec" + b"\xe9" + rel32(base + 10, base + 0x40000)
    patch = classify(code, bits)
    assert (patch.technique, patch.target) == ("jmp_rel32", base + 0x40000)


def test_jump_past_the_instruction_bound_is_not_seen():
    code = b"\x90" * 9 + b"\xe9" + rel32(BASE32 + 14, TARGET)
    assert classify(code, 32).technique is None
    assert len(classify(code, 32).instructions) == 8


def test_ordinary_function_ending_in_ret_is_no_hook():
    patch = classify(b"\x8b\xff\x55\x8b\xec\x5d\xc3", 32)
    assert patch.technique is None and patch.target is None


@pytest.mark.parametrize("bits", [32, 64])
def test_garbage_bytes_give_a_note_not_an_exception(bits):
    patch = classify(b"\xff\xff" * 16, bits)
    assert patch.technique is None and patch.note.startswith("undecodable")


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("bits", [32, 64])
def test_random_bytes_never_raise(seed, bits):
    code = random.Random(seed).randbytes(64)
    patch = classify(code, bits)
    assert len(patch.instructions) <= 8
    assert sum(len(i.raw) for i in patch.instructions) <= ENTRY_BYTES + 16


def test_unreadable_entry():
    patch = classify_entry(memory({}), BASE64, 64)
    assert patch.technique is None and patch.note == "entry unreadable"


def test_entry_cut_by_a_missing_page_is_read_up_to_the_page_end():
    entry = 0x7600_1FFB                                    # 5 bytes before a missing page
    read = memory({0x7600_1000: bytes(0xFFB) + b"\xe9" + rel32(entry + 5, TARGET)})
    assert read_code(read, entry, 32) == b"\xe9" + rel32(entry + 5, TARGET)
    patch = classify_entry(read, entry, 32)
    assert (patch.technique, patch.target) == ("jmp_rel32", TARGET)


def test_truncated_instruction_at_page_end():
    entry = 0x7600_1FFD                                    # jmp rel32 cut after 3 bytes
    patch = classify_entry(memory({0x7600_1000: bytes(0xFFD) + b"\xe9\x00\x10"}), entry, 32)
    assert patch.technique is None and patch.note.startswith("undecodable")


def test_instruction_cut_by_the_window_end_is_not_garbage():
    code = b"\x48\x83\xec\x28" * 7 + b"\x48\xb8" + struct.pack("<Q", 1)   # 7 x sub rsp; movabs over byte 32
    patch = classify(code, 64)
    assert patch.technique is None and patch.note == "" and len(patch.instructions) == 7
