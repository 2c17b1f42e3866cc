"""API hook recognition: function entries, syscall stubs, import and export tables.

Pure functions of bytes (no Volatility import). Memory is reached through a ``MemReader``
(absolute address, length -> bytes or None) so the plugin can hand in page-cached reads and the
tests a dictionary. Work is bounded: a function entry is decoded for at most
``MAX_INSTRUCTIONS`` instructions in ``ENTRY_BYTES`` bytes, import tables for at most
``MAX_DESCRIPTORS`` DLLs of ``MAX_THUNKS`` entries each.
"""
from __future__ import annotations

import dataclasses
import json
import re
import struct
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import capstone
from capstone import x86_const

from .pe_image import PAGE, Reader, _inspect, _PagedImage, _read_export_directory

MemReader = Callable[[int, int], Optional[bytes]]
"""Reads ``length`` bytes at an absolute address; None when any of them is unreadable."""

ENTRY_BYTES = 32
MAX_INSTRUCTIONS = 8
MAX_INSTRUCTION_LENGTH = 15
HOTPATCH_PADDING = 16
"""Bytes before an entry a hot-patch ``jmp short`` may land in (the 5-byte long jump sits there)."""
MAX_DESCRIPTORS = 256
MAX_THUNKS = 4096
DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "spyeye_hooks.json"


@dataclass(frozen=True)
class Instruction:
    """One decoded instruction of a patch."""

    address: int
    raw: bytes
    text: str

    def to_dict(self) -> dict:
        return {"address": self.address, "bytes": self.raw.hex(), "text": self.text}


@dataclass(frozen=True)
class EntryPatch:
    """How a function entry transfers control, if it is one of the known hook shapes.

    ``technique`` is None for ordinary code; ``target`` is None when the shape has no
    destination (``int3``, ``ud2``) or it could not be read (a pointer on a missing page)."""

    technique: Optional[str]
    target: Optional[int]
    address: int
    instructions: Tuple[Instruction, ...]
    note: str = ""
    slot: Optional[int] = None
    """Where an indirect jump or call reads its destination (``jmp [rip+disp]``, ``jmp [abs]``)."""
    carried: bytes = b""
    """Data the patch carries after its last instruction: the pointer of ``jmp [rip+0]``."""

    @property
    def text(self) -> str:
        return "; ".join(i.text for i in self.instructions)

    @property
    def raw(self) -> bytes:
        return b"".join(i.raw for i in self.instructions) + self.carried


@lru_cache(maxsize=2)
def _decoder(bits: int) -> capstone.Cs:
    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if bits == 64 else capstone.CS_MODE_32)
    decoder.detail = True
    return decoder


def read_code(read: MemReader, address: int, length: int) -> Optional[bytes]:
    """``length`` bytes at ``address``, or as many as lie before the first unreadable page."""
    data = read(address, length)
    if data is not None:
        return data
    to_page_end = PAGE - address % PAGE
    return read(address, to_page_end) if to_page_end < length else None


def _decode(code: bytes, address: int, bits: int, limit: int) -> List[capstone.CsInsn]:
    out = []
    for insn in _decoder(bits).disasm(code, address):
        out.append(insn)
        if len(out) >= limit:
            break
    return out


def _family(name: str) -> str:
    """A register's 64-bit family (``eax`` and ``rax`` -> ``ax``; ``r8d`` -> ``r8``)."""
    if len(name) == 3 and name[0] in "er" and name[1:] in ("ax", "bx", "cx", "dx", "si", "di", "sp", "bp"):
        return name[1:]
    if name.startswith("r") and name[-1] in "dwb" and name[1:-1].isdigit():
        return name[:-1]
    return name


def _mask(bits: int) -> int:
    return (1 << bits) - 1


def _operand(insn: capstone.CsInsn, index: int = 0):
    operands = insn.operands
    return operands[index] if len(operands) > index else None


def pointer_slot(insn: capstone.CsInsn, op, bits: int) -> Optional[int]:
    """Address a ``jmp/call [mem]`` reads its destination from; None when register-relative."""
    mem = op.mem
    if mem.base == x86_const.X86_REG_RIP and mem.index == 0:
        return (insn.address + insn.size + mem.disp) & _mask(bits)
    if mem.base == 0 and mem.index == 0:
        return mem.disp & _mask(bits)
    return None


def _memory_target(insn: capstone.CsInsn, op, read: MemReader, bits: int) -> Tuple[Optional[int], str]:
    """The pointer a ``jmp/call [mem]`` goes through: (value or None, note)."""
    slot = pointer_slot(insn, op, bits)
    if slot is None:
        return None, "pointer in a register-relative slot"
    data = read(slot, bits // 8)
    if data is None:
        return None, f"pointer slot {slot:#x} unreadable"
    return int.from_bytes(data, "little"), f"through pointer at {slot:#x}"


def _immediate_of(insns: Sequence[capstone.CsInsn], upto: int, register: str) -> Optional[int]:
    """The last ``mov reg, imm`` into ``register``'s family before instruction ``upto``."""
    for insn in reversed(insns[:upto]):
        op0, op1 = _operand(insn, 0), _operand(insn, 1)
        if (op0 is not None and op0.type == x86_const.X86_OP_REG
                and _family(insn.reg_name(op0.reg)) == register):
            if insn.mnemonic in ("mov", "movabs") and op1 is not None and op1.type == x86_const.X86_OP_IMM:
                return op1.imm
            return None                    # the register was written some other way
    return None


def _pushed_value(insns: Sequence[capstone.CsInsn], ret_index: int, bits: int) -> Optional[int]:
    """The return address a ``push imm`` (x64: + ``mov dword [rsp+4], imm``) or a ``push reg``
    after ``mov reg, imm`` leaves for the ``ret`` at ``ret_index``."""
    high = None
    index = ret_index - 1
    if bits == 64 and index >= 1 and insns[index].mnemonic == "mov":
        op0, op1 = _operand(insns[index], 0), _operand(insns[index], 1)
        if (op0 is not None and op0.type == x86_const.X86_OP_MEM and op0.mem.base == x86_const.X86_REG_RSP
                and op0.mem.disp == 4 and op1 is not None and op1.type == x86_const.X86_OP_IMM):
            high, index = op1.imm & 0xFFFFFFFF, index - 1
    if index < 0 or insns[index].mnemonic != "push":
        return None
    op = _operand(insns[index])
    if op is None:
        return None
    if op.type == x86_const.X86_OP_IMM:
        value = op.imm & _mask(bits)
        return value if high is None else (value & 0xFFFFFFFF) | high << 32
    if op.type == x86_const.X86_OP_REG:
        return _immediate_of(insns, index, _family(insns[index].reg_name(op.reg)))
    return None


def _patch(technique: Optional[str], target: Optional[int], address: int,
           insns: Sequence[capstone.CsInsn], note: str = "", bits: int = 0) -> EntryPatch:
    """The patch; with ``bits``, the pointer slot of the last instruction when it is ``[mem]``."""
    decoded = tuple(Instruction(i.address, bytes(i.bytes), f"{i.mnemonic} {i.op_str}".strip()) for i in insns)
    op = _operand(insns[-1]) if insns and bits else None
    slot = pointer_slot(insns[-1], op, bits) if op is not None and op.type == x86_const.X86_OP_MEM else None
    return EntryPatch(technique, target, address, decoded, note, slot)


def _hotpatch(read: MemReader, entry: int, target: int, bits: int, first) -> Optional[EntryPatch]:
    """A ``jmp short`` from the entry back into the padding, where a long jump waits."""
    code = read_code(read, target, entry - target)
    padding = _decode(code, target, bits, 2) if code else []
    if not padding or padding[0].mnemonic != "jmp":
        return None
    op = _operand(padding[0])
    if op is None:
        return None
    if op.type == x86_const.X86_OP_IMM:
        destination, note = op.imm & _mask(bits), ""
    elif op.type == x86_const.X86_OP_MEM:
        destination, note = _memory_target(padding[0], op, read, bits)
    else:
        return None
    return _patch("hotpatch", destination, entry, [first, padding[0]], note, bits)


def _jump(read: MemReader, insns, index: int, entry: int, bits: int) -> EntryPatch:
    insn = insns[index]
    op = _operand(insn)
    shown = insns[:index + 1]
    if op is None:
        return _patch(None, None, entry, shown, "jump without operand")
    if op.type == x86_const.X86_OP_IMM:
        target = op.imm & _mask(bits)
        if index == 0 and insn.size == 2 and entry - HOTPATCH_PADDING <= target < entry:
            hot = _hotpatch(read, entry, target, bits, insn)
            if hot is not None:
                return hot
        return _patch("jmp_rel32" if insn.size >= 5 else "jmp_short", target, entry, shown)
    if op.type == x86_const.X86_OP_MEM:
        target, note = _memory_target(insn, op, read, bits)
        patch = _patch("jmp_indirect", target, entry, shown, note, bits)
        if target is not None and patch.slot == insn.address + insn.size:
            patch = dataclasses.replace(patch, carried=target.to_bytes(bits // 8, "little"))
        return patch
    value = _immediate_of(insns, index, _family(insn.reg_name(op.reg)))
    if value is None:
        return _patch(None, None, entry, shown, "jump through a register of unknown value")
    return _patch("mov_jmp", value & _mask(bits), entry, shown)


def _call(read: MemReader, insns, index: int, entry: int, bits: int) -> Optional[EntryPatch]:
    """A call at the entry (any form), or ``mov reg, imm; call reg`` anywhere in the window."""
    insn = insns[index]
    op = _operand(insn)
    shown = insns[:index + 1]
    if op is None:
        return None
    if op.type == x86_const.X86_OP_REG:
        value = _immediate_of(insns, index, _family(insn.reg_name(op.reg)))
        if value is not None:
            return _patch("mov_call", value & _mask(bits), entry, shown)
    if index != 0:
        return None
    if op.type == x86_const.X86_OP_IMM:
        return _patch("call", op.imm & _mask(bits), entry, shown)
    if op.type == x86_const.X86_OP_MEM:
        target, note = _memory_target(insn, op, read, bits)
        return _patch("call", target, entry, shown, note, bits)
    return _patch("call", None, entry, shown, "call through a register of unknown value")


_TRAPS = {"int3": "int3", "ud2": "ud2"}


def classify_entry(read: MemReader, entry: int, bits: int, max_instructions: int = MAX_INSTRUCTIONS,
                   max_bytes: int = ENTRY_BYTES) -> EntryPatch:
    """Decode the first instructions at ``entry`` and name the hook shape they form, if any.

    Decoding runs straight through conditional branches and stops at the first ``jmp``,
    ``call``, ``ret`` or trap. ``int3; ret`` (the shape of ``DbgBreakPoint``) is not a hook."""
    code = read_code(read, entry, max_bytes)
    if not code:
        return EntryPatch(None, None, entry, (), "entry unreadable")
    insns = _decode(code, entry, bits, max_instructions)
    if not insns:
        return EntryPatch(None, None, entry, (), f"undecodable bytes {code[:8].hex()}")
    if insns[0].mnemonic in _TRAPS:
        if len(insns) > 1 and insns[1].mnemonic == "ret":
            return _patch(None, None, entry, insns[:2], "breakpoint function")
        return _patch(_TRAPS[insns[0].mnemonic], None, entry, insns[:1])
    for index, insn in enumerate(insns):
        if insn.mnemonic == "jmp":
            return _jump(read, insns, index, entry, bits)
        if insn.mnemonic == "call":
            return _call(read, insns, index, entry, bits) or _patch(None, None, entry, insns[:index + 1])
        if insn.mnemonic in ("ret", "retf"):
            value = _pushed_value(insns, index, bits)
            technique = "push_ret" if value is not None else None
            return _patch(technique, value, entry, insns[:index + 1])
        if insn.mnemonic in _TRAPS or insn.mnemonic in ("hlt", "int", "syscall", "sysenter"):
            return _patch(None, None, entry, insns[:index + 1])
    left = len(code) - sum(i.size for i in insns)
    garbage = len(insns) < max_instructions and left >= MAX_INSTRUCTION_LENGTH   # not a cut-off last one
    return _patch(None, None, entry, insns, f"undecodable after {len(insns)} instruction(s)" if garbage else "")


# --- syscall stubs ---------------------------------------------------------------------------

SYSCALL_FORMS: Dict[int, Tuple[Tuple[str, "re.Pattern[bytes]"], ...]] = {
    64: (("x64 (Windows 10)", re.compile(rb"\x4c\x8b\xd1\xb8(.{4})\xf6\x04\x25\x08\x03\xfe\x7f\x01"
                                         rb"\x75\x03\x0f\x05\xc3\xcd\x2e\xc3", re.S)),
         ("x64 (Windows 7)", re.compile(rb"\x4c\x8b\xd1\xb8(.{4})\x0f\x05\xc3", re.S))),
    32: (("x86 native", re.compile(rb"\xb8(.{4})\xba\x00\x03\xfe\x7f\xff\x12(?:\xc3|\xc2..)", re.S)),
         ("WoW64", re.compile(rb"\xb8(.{4})(?:\x33\xc9|\xb9.{4})\x8d\x54\x24\x04\x64\xff\x15\xc0\x00\x00\x00"
                              rb"\x83\xc4\x04(?:\xc3|\xc2..)", re.S))),
}
"""Syscall stub forms per bitness: ``mov r10, rcx; mov eax, N; [test SharedUserData+308h;
jne;] syscall; ret``, ``mov eax, N; mov edx, 7FFE0300h; call [edx]; ret n`` and the WoW64
``mov eax, N; xor ecx, ecx | mov ecx, N; lea edx, [esp+4]; call fs:[0C0h]; add esp, 4; ret n``."""


@dataclass(frozen=True)
class SyscallStub:
    number: int
    form: str


def syscall_stub(code: bytes, bits: int) -> Optional[SyscallStub]:
    """The syscall number and stub form when ``code`` starts with a syscall stub of ``bits``."""
    for form, pattern in SYSCALL_FORMS.get(bits, ()):
        match = pattern.match(code)
        if match:
            return SyscallStub(struct.unpack("<I", match.group(1))[0], form)
    return None


def out_of_sequence(stubs: Sequence[Tuple[int, int]]) -> List[int]:
    """Addresses of stubs whose number breaks the ascending order of ``(address, number)``
    pairs. ntdll lays its stubs out in syscall-number order; the test is only made when there
    are at least four stubs and at most two neighbouring pairs (or one in ten) fall."""
    ordered = sorted(set(stubs))
    if len(ordered) < 4:
        return []
    falling = sum(a[1] >= b[1] for a, b in zip(ordered, ordered[1:]))
    if falling > max(2, (len(ordered) - 1) // 10):
        return []
    flagged = []
    for index, (address, number) in enumerate(ordered):
        low = ordered[index - 1][1] if index else -1
        high = ordered[index + 1][1] if index + 1 < len(ordered) else 1 << 32
        if not low < high:
            continue
        if not low < number < high:
            flagged.append(address)
    return flagged


# --- import and export tables ----------------------------------------------------------------

@dataclass(frozen=True)
class ImportSlot:
    """One IAT entry: the DLL and function it imports, where the slot is and what it holds.

    ``value`` is None when the slot is unreadable; ``bound`` is False when the slot still holds
    its import-name-table value (the loader never resolved it)."""

    dll: str
    name: Optional[str]
    ordinal: Optional[int]
    slot_rva: int
    value: Optional[int]
    bound: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TableLocation:
    """Where a mapped image keeps its import directory and export address table."""

    bits: int
    import_rva: int
    import_size: int
    functions_rva: Optional[int]
    ordinal_base: Optional[int]
    code_ranges: Tuple[Tuple[int, int], ...]
    """Half-open RVA ranges of executable sections; empty when the section table is unusable."""

    def in_code(self, rva: int) -> bool:
        """Whether ``rva`` lies in an executable section (True when no section table is known)."""
        return not self.code_ranges or any(start <= rva < end for start, end in self.code_ranges)


_DIR_EXPORT, _DIR_IMPORT = 0, 1
_SCN_CODE, _SCN_EXECUTE = 0x20, 0x20000000


def _code_ranges(page: bytes, sections) -> Tuple[Tuple[int, int], ...]:
    ranges = []
    for section in sections:
        flags = struct.unpack_from("<I", page, section.offset + 36)[0]
        if flags & (_SCN_CODE | _SCN_EXECUTE):
            ranges.append((section.virtual_address, section.virtual_address + section.span))
    return tuple(ranges)


def table_location(header_page: bytes, read: Reader, size: int) -> Optional[TableLocation]:
    """The import directory and the export address table of an image; None without PE headers."""
    page = bytes(header_page[:PAGE])
    _, headers = _inspect(page)
    if headers is None:
        return None
    bits = 64 if headers.magic == 0x20B else 32
    import_rva, import_size = headers.directory(_DIR_IMPORT)
    functions_rva = ordinal_base = None
    export_rva, export_size = headers.directory(_DIR_EXPORT)
    if export_rva and export_size:
        directory = _read_export_directory(_PagedImage(read, size), export_rva, export_size, [])
        if directory is not None:
            functions_rva, ordinal_base = directory.functions_rva, directory.ordinal_base
    return TableLocation(bits, import_rva, import_size, functions_rva, ordinal_base,
                         _code_ranges(page, headers.sections))


def _thunks(image: _PagedImage, rva: int, bits: int, limit: int) -> List[Optional[int]]:
    """Thunk values from ``rva`` up to the terminating zero (at most ``limit``)."""
    width = bits // 8
    values: List[Optional[int]] = []
    while len(values) < limit:
        raw = image.read(rva + width * len(values), width)
        value = int.from_bytes(raw, "little") if raw is not None else None
        if value == 0:
            break
        values.append(value)
    return values


def _import_name(image: _PagedImage, entry: Optional[int], bits: int) -> Tuple[Optional[str], Optional[int]]:
    """(name, ordinal) an import-name-table entry stands for."""
    if entry is None:
        return None, None
    if entry >> (bits - 1) & 1:
        return None, entry & 0xFFFF
    name = image.cstring((entry & 0x7FFFFFFF) + 2)
    return name, None


def parse_imports(read: Reader, size: int, location: TableLocation, max_descriptors: int = MAX_DESCRIPTORS,
                  max_thunks: int = MAX_THUNKS) -> Tuple[List[ImportSlot], List[str]]:
    """Each IAT slot of a mapped image with the DLL and function it imports, and warnings."""
    image, warnings = _PagedImage(read, size), []
    slots: List[ImportSlot] = []
    if not location.import_rva or location.import_rva + 20 > size:
        return slots, warnings              # none, or outside the image (the header parser warns)
    for index in range(max_descriptors + 1):
        raw = image.read(location.import_rva + 20 * index, 20)
        if raw is None:
            warnings.append(f"import descriptor {index} unreadable")
            break
        original, _, _, name_rva, first = struct.unpack("<5I", raw)
        if not (original or name_rva or first):
            break
        if index == max_descriptors:
            warnings.append(f"more than {max_descriptors} import descriptors; the rest not read")
            break
        dll = image.cstring(name_rva) if 0 < name_rva < size else None
        if dll is None or not 0 < first < size:
            warnings.append(f"import descriptor {index} malformed (name {name_rva:#x}, IAT {first:#x})")
            continue
        slots += _descriptor_slots(image, dll, original, first, location.bits, max_thunks, warnings)
    return slots, warnings


def _descriptor_slots(image: _PagedImage, dll: str, original: int, first: int, bits: int,
                      max_thunks: int, warnings: List[str]) -> List[ImportSlot]:
    width = bits // 8
    names = _thunks(image, original, bits, max_thunks) if original else []
    values = _thunks(image, first, bits, max_thunks)
    count = max(len(names), len(values))
    if count >= max_thunks:
        warnings.append(f"{dll}: import table cut at {max_thunks} entries")
    out = []
    for index in range(count):
        entry = names[index] if index < len(names) else None
        value = values[index] if index < len(values) else None
        name, ordinal = _import_name(image, entry, bits)
        out.append(ImportSlot(dll, name, ordinal, first + width * index, value,
                              value is not None and value != entry))
    return out


def eat_slot_rva(location: TableLocation, ordinal: int) -> Optional[int]:
    """RVA of the export-address-table slot that holds ``ordinal``'s RVA."""
    if location.functions_rva is None or location.ordinal_base is None:
        return None
    return location.functions_rva + 4 * (ordinal - location.ordinal_base)


# --- known SpyEye hook targets -----------------------------------------------------------------

@dataclass(frozen=True)
class KnownHook:
    module: str
    function: str
    purpose: str
    confidence: str
    sources: Tuple[str, ...]

    @property
    def tag(self) -> str:
        return f"SpyEye {self.purpose} ({self.confidence})"


@lru_cache(maxsize=1)
def _known() -> Dict[Tuple[str, str], KnownHook]:
    document = json.loads(DATA_FILE.read_text(encoding="utf-8"))
    return {(h["module"].lower(), h["function"]): KnownHook(h["module"], h["function"], h["purpose"],
                                                            h["confidence"], tuple(h["sources"]))
            for h in document["hooks"]}


def known_hook(module: str, function: Optional[str]) -> Optional[KnownHook]:
    """What the data file says about ``module!function`` as a SpyEye hook target."""
    if not function:
        return None
    return _known().get((module.lower(), function))


def known_functions() -> frozenset[str]:
    """Function names of every known SpyEye hook target (for ``hooked_func`` ties)."""
    return frozenset(function for _, function in _known())
