"""Score code for dynamic API resolution and explain the score, capa style.

A *trait* is a small named detector over disassembled instructions that returns
the evidence (address, instruction, why) that made it match. `TRAITS` holds the
detectors with their weights; `analyse` runs them and sums the weights into a
0..100 score. Everything here is a pure function of bytes.
"""

from __future__ import annotations

import bisect
import functools
import re
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple, Optional, Sequence, Union

import capstone

from .api_hashes import MASK32, HashHit, HashIndex
from .pe_image import MappedPE

DEFAULT_MAX_BYTES = 0x100000
"""Bytes of a buffer decoded at most (about a second of work per MiB of code)."""
MAX_INSN_BYTES = 15
SWEEP_CHUNK = 0x1000
ZERO_RUN = 16
"""Longer than any instruction: a run of this many zero bytes is padding, not code."""
ZERO_RUN_BYTES = bytes(ZERO_RUN)
NON_ZERO = re.compile(rb"[^\x00]")
RUN_BYTES = 0x100
"""Bytes decoded at a time along one straight-line run (recursive descent)."""
MAX_LOOP_BYTES = 0x80
MAX_STACK_TAGS = 64
TRACK_BEFORE = 16
TRACK_AFTER = 512
"""Instructions tracked before and after each structure root (TEB read or e_lfanew load)."""
MAX_TEB_OFFSET = 0x60
"""Largest fs:/gs: displacement that starts a tracked chain (the PEB pointer is at 0x30 / 0x60)."""


# --- instructions ---------------------------------------------------------
#
# Capstone's detail mode costs several times more than decoding itself, so
# instructions are decoded "lite" (mnemonic and operand text) and the operand
# text is parsed here, once per distinct (mnemonic, operands) pair.


def _register_families() -> dict[str, str]:
    """Map every x86/x64 general register name to its 64-bit family name."""
    names: dict[str, str] = {}
    for x in "abcd":
        names.update({n: f"r{x}x" for n in (f"r{x}x", f"e{x}x", f"{x}x", f"{x}l", f"{x}h")})
    for x in ("si", "di", "bp", "sp"):
        names.update({n: f"r{x}" for n in (f"r{x}", f"e{x}", x, f"{x}l")})
    for i in range(8, 16):
        names.update({f"r{i}{s}": f"r{i}" for s in ("", "d", "w", "b")})
    names.update({"eip": "rip", "ip": "rip"})
    return names


def _register_sizes() -> dict[str, int]:
    """Width in bytes of every general register name."""
    sizes: dict[str, int] = {}
    for x in "abcd":
        sizes.update({f"r{x}x": 8, f"e{x}x": 4, f"{x}x": 2, f"{x}l": 1, f"{x}h": 1})
    for x in ("si", "di", "bp", "sp"):
        sizes.update({f"r{x}": 8, f"e{x}": 4, x: 2, f"{x}l": 1})
    for i in range(8, 16):
        sizes.update({f"r{i}": 8, f"r{i}d": 4, f"r{i}w": 2, f"r{i}b": 1})
    return sizes


FAMILIES = _register_families()
REGISTER_SIZES = _register_sizes()
REGISTER_FAMILIES = frozenset(FAMILIES.values())
VECTOR_SIZES = {"mm": 8, "xmm": 16, "ymm": 32, "zmm": 64}
MEMORY_SIZES = {"byte": 1, "word": 2, "dword": 4, "fword": 6, "qword": 8, "xword": 10, "tbyte": 10,
                "xmmword": 16, "ymmword": 32, "zmmword": 64}
VOLATILE = {32: ("rax", "rcx", "rdx"), 64: ("rax", "rcx", "rdx", "r8", "r9", "r10", "r11")}
BRANCHES = frozenset(("cond", "jump", "call"))
HEX_LITERAL = re.compile(r"0x[0-9a-f]+").fullmatch
INT_LITERAL = re.compile(r"-?(?:0x[0-9a-f]+|[0-9]+)").fullmatch
TERMINATORS = {"ret", "retf", "retfq", "iret", "iretd", "iretq", "int3", "hlt", "ud2"}
READ_ONLY_FIRST = {"cmp", "test", "push", "bt", "nop", "out", "comiss", "comisd", "ucomiss", "ucomisd",
                   "ptest", "vptest", "verr", "verw", "prefetch", "prefetchw", "prefetchnta",
                   "prefetcht0", "prefetcht1", "prefetcht2", "clflush", "invlpg"}
IMPLICIT_WRITES = {
    **dict.fromkeys(("mul", "div", "idiv", "cdq", "cqo", "cwd", "rdtsc", "rdpmc", "rdmsr"), ("rax", "rdx")),
    **dict.fromkeys(("cbw", "cwde", "cdqe", "lahf", "salc", "xlatb", "in"), ("rax",)),
    "rdtscp": ("rax", "rdx", "rcx"), "cpuid": ("rax", "rbx", "rcx", "rdx"),
    "syscall": ("rax", "rcx", "r11"), "sysenter": ("rax", "rcx", "rdx"),
    "cmpxchg": ("rax",), "cmpxchg8b": ("rax", "rdx"), "cmpxchg16b": ("rax", "rdx"),
    **dict.fromkeys(("loop", "loope", "loopne"), ("rcx",)),
    "leave": ("rbp",), "enter": ("rbp",),
    **dict.fromkeys(("popal", "popaw", "popad"), ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp")),
}
SOURCE_ONLY = {"mul", "div", "idiv"}
"""Their explicit operand is read; the result goes to rax/rdx."""
STRING_WRITES = {"lods": ("rax", "rsi"), "stos": ("rdi",), "scas": ("rdi",), "movs": ("rsi", "rdi"),
                 "cmps": ("rsi", "rdi"), "ins": ("rdi",), "outs": ("rsi",)}
VECTOR_PREFIXES = ("mm", "xmm", "ymm", "zmm")


@dataclass(frozen=True)
class Mem:
    """A memory operand; registers are family names, "" when absent."""

    segment: str
    base: str
    index: str
    scale: int
    disp: int
    size: int


Operand = Union[str, int, Mem]


class Instruction(NamedTuple):
    """A decoded instruction reduced to what the detectors need.

    `flow` is 'ret', 'jump', 'call', 'cond' or '' (falls through only).
    """

    address: int
    size: int
    mnemonic: str
    op_str: str
    operands: tuple[Operand, ...]
    sizes: tuple[int, ...]
    writes: frozenset[str]
    flow: str
    target: Optional[int]

    @property
    def text(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()


def _int(text: str) -> Optional[int]:
    return int(text, 0) if INT_LITERAL(text) else None


def _memory(text: str) -> Mem:
    """Parse `dword ptr fs:[eax + ecx*4 - 0x10]` (size, segment and terms all optional)."""
    head, _, inner = text.partition("[")
    head = head.rstrip(": ")
    size_name, _, segment = head.rpartition(" ")
    if segment in MEMORY_SIZES or segment == "ptr":
        size_name, segment = head, ""
    size = MEMORY_SIZES.get(size_name.split(" ")[0], 0)
    base = index = ""
    scale, disp = 1, 0
    for term in inner.rstrip("]").replace(" - ", " + -").split(" + "):
        if term in FAMILIES:
            if base:
                index = FAMILIES[term]
            else:
                base = FAMILIES[term]
        elif "*" in term:
            reg, _, factor = term.partition("*")
            index, scale = FAMILIES.get(reg, reg), _int(factor) or 1
        elif (value := _int(term)) is not None:
            disp = value
        elif not base:
            base = FAMILIES.get(term, term)
        else:
            index = FAMILIES.get(term, term)
    return Mem(FAMILIES.get(segment, segment), base, index, scale, disp, size)


def _operand(text: str) -> tuple[Operand, int]:
    """(operand, width in bytes; 0 when not known) from capstone's Intel-syntax text."""
    if text in REGISTER_SIZES:
        return FAMILIES[text], REGISTER_SIZES[text]
    text = text.split(" {", 1)[0]
    if "[" in text:
        mem = _memory(text)
        return mem, mem.size
    value = _int(text)
    if value is not None:
        return value, 0
    vector = text.rstrip("0123456789")
    return FAMILIES.get(text, text), REGISTER_SIZES.get(text, VECTOR_SIZES.get(vector, 0))


def _flow(mnemonic: str) -> str:
    mnemonic = mnemonic.rpartition(" ")[2]  # drop bnd/notrack/rep prefixes
    if mnemonic in TERMINATORS:
        return "ret"
    if mnemonic in ("jmp", "ljmp"):
        return "jump"
    if mnemonic in ("call", "lcall"):
        return "call"
    if mnemonic.startswith(("j", "loop")):
        return "cond"
    return ""


def _writes(mnemonic: str, operands: tuple[Operand, ...]) -> frozenset[str]:
    """General-register families the instruction writes, explicitly or implicitly."""
    prefix, _, base = mnemonic.rpartition(" ")
    written = set(IMPLICIT_WRITES.get(base, ()))
    if prefix.startswith("rep"):
        written.add("rcx")
    string_op = base[:-1] if base[-1:] in "bwdq" else base
    vector = any(isinstance(op, str) and op.startswith(VECTOR_PREFIXES) for op in operands)
    if string_op in STRING_WRITES and not vector:
        return frozenset(written | set(STRING_WRITES[string_op]))
    explicit = [op for op in operands[:1] if isinstance(op, str)]
    if base in ("xchg", "xadd"):
        explicit = [op for op in operands if isinstance(op, str)]
    if base == "imul" and len(operands) == 1:
        written.update(("rax", "rdx"))
        explicit = []
    if _flow(base) or base in READ_ONLY_FIRST or base in SOURCE_ONLY:
        explicit = []
    written.update(op for op in explicit if op in REGISTER_FAMILIES)
    return frozenset(written)


@functools.lru_cache(maxsize=1 << 16)
def _shape(mnemonic: str, op_str: str) -> tuple[tuple[Operand, ...], tuple[int, ...], frozenset[str], str]:
    """Operands, widths, written registers and flow of one instruction text."""
    parsed = [_operand(part) for part in _split_operands(op_str)]
    operands = tuple(op for op, _ in parsed)
    return operands, tuple(size for _, size in parsed), _writes(mnemonic, operands), _flow(mnemonic)


def _split_operands(op_str: str) -> list[str]:
    """Operand texts; a far pointer `0x33:0x401000` is two immediates."""
    if not op_str:
        return []
    parts = op_str.split(", ")
    if len(parts) == 1 and ":" in op_str and "[" not in op_str:
        return op_str.split(":")
    return parts


def _instruction(address: int, size: int, mnemonic: str, op_str: str) -> Instruction:
    if HEX_LITERAL(op_str):  # `call 0x401000`, `push 0x30`: one shape per mnemonic, not per value
        value = int(op_str, 16)
        _, sizes, writes, flow = _shape(mnemonic, "0")
        target = value if flow in BRANCHES else None
        return Instruction(address, size, mnemonic, op_str, (value,), sizes, writes, flow, target)
    operands, sizes, writes, flow = _shape(mnemonic, op_str)
    target = operands[0] if flow in BRANCHES and len(operands) == 1 and isinstance(operands[0], int) else None
    return Instruction(address, size, mnemonic, op_str, operands, sizes, writes, flow, target)


@functools.lru_cache(maxsize=2)
def _decoder(bits: int) -> capstone.Cs:
    modes = {32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}
    if bits not in modes:
        raise ValueError(f"bits must be 32 or 64, not {bits}")
    return capstone.Cs(capstone.CS_ARCH_X86, modes[bits])


def disassemble(
    code: bytes,
    address: int,
    bits: int,
    entry_points: Optional[Sequence[int]] = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[Instruction]:
    """Decode at most `max_bytes` of instructions, sorted by address.

    With entry points: recursive descent (direct jumps, calls and fall-through).
    Without: linear sweep that skips one byte wherever decoding fails.
    """
    decoder = _decoder(bits)
    if entry_points:
        return _recursive_descent(decoder, code, address, entry_points, max_bytes)
    return _linear_sweep(decoder, code, address, max_bytes)


def _linear_sweep(decoder: capstone.Cs, code: bytes, address: int, max_bytes: int) -> list[Instruction]:
    """Decode front to back, skipping an undecodable byte. Runs of ZERO_RUN zero bytes
    (padding, unused or unreadable pages) are skipped: no instruction is that long."""
    limit = min(len(code), max(max_bytes, 0))
    out: list[Instruction] = []
    append, make = out.append, _instruction
    offset = 0
    while offset < limit:
        if code.startswith(ZERO_RUN_BYTES, offset):
            found = NON_ZERO.search(code, offset, limit)
            offset = found.start() if found else limit
            continue
        zeros = code.find(ZERO_RUN_BYTES, offset, min(limit, offset + SWEEP_CHUNK + ZERO_RUN))
        stop = limit if zeros < 0 else zeros  # no instruction starts at or past here
        end = min(limit, offset + SWEEP_CHUNK, stop + MAX_INSN_BYTES)
        for insn in decoder.disasm_lite(code[offset:end], address + offset):
            if offset >= stop:
                break
            append(make(*insn))
            offset += insn[1]
        if offset >= stop or end < limit and end - offset < MAX_INSN_BYTES:
            continue  # at a zero run, or an instruction straddles the chunk end
        offset += 1  # undecodable byte: resynchronise
    return out


def _recursive_descent(
    decoder: capstone.Cs, code: bytes, address: int, entries: Sequence[int], max_bytes: int
) -> list[Instruction]:
    """Straight-line runs from each entry and branch target; a run ends at a return, an
    unconditional jump, code already seen, an undecodable byte or zero padding."""
    seen: dict[int, Instruction] = {}
    work = list(reversed(entries))
    budget = max_bytes
    while work:
        pc: Optional[int] = work.pop()
        while pc is not None and pc not in seen and address <= pc < address + len(code):
            offset = pc - address
            if code.startswith(ZERO_RUN_BYTES, offset):
                break
            pc, budget = _run(decoder, code[offset:offset + RUN_BYTES], pc, seen, work, budget)
    return sorted(seen.values(), key=lambda i: i.address)


def _run(
    decoder: capstone.Cs, chunk: bytes, pc: int, seen: dict[int, Instruction], work: list[int], budget: int
) -> tuple[Optional[int], int]:
    """Decode from `pc` into `seen`, queueing branch targets; (where to go on or None, budget)."""
    start = pc
    for raw in decoder.disasm_lite(chunk, pc):
        if raw[0] in seen or raw[1] > budget:
            return None, budget
        budget -= raw[1]
        insn = seen[raw[0]] = _instruction(*raw)
        if insn.target is not None:
            work.append(insn.target)
        if insn.flow in ("ret", "jump"):
            return None, budget
        pc = insn.address + insn.size
    cut_short = len(chunk) == RUN_BYTES and pc - start > RUN_BYTES - MAX_INSN_BYTES
    return (pc if cut_short else None), budget


# --- evidence and symbolic tracking -----------------------------------------


@dataclass(frozen=True)
class Evidence:
    """Why a trait matched: where, which instruction, and what it means."""

    address: int
    instruction: str
    detail: str
    hits: tuple[HashHit, ...] = ()
    function: str = ""
    """The function it was found in (set when the buffer is split into functions)."""

    def to_dict(self) -> dict:
        return {"address": self.address, "instruction": self.instruction, "detail": self.detail,
                "function": self.function}


def _evidence(insn: Instruction, detail: str, hits: tuple[HashHit, ...] = ()) -> Evidence:
    return Evidence(insn.address, insn.text, detail, hits)


class Tag(NamedTuple):
    """What a register holds: a structure pointer plus pending offset, or a constant."""

    kind: str
    offset: int
    origin: int


class Step(NamedTuple):
    """Reading `(kind, offset)` yields a `kind` value and is evidence for `trait`."""

    kind: Optional[str]
    trait: str
    detail: str


_EXPORT_STEPS = {
    ("lfanew", 0x78): Step("export", "export_parsing", "export data directory (PE32 +0x78) after e_lfanew"),
    ("lfanew", 0x88): Step("export", "export_parsing", "export data directory (PE32+ +0x88) after e_lfanew"),
    ("export", 0x18): Step(None, "export_parsing", "IMAGE_EXPORT_DIRECTORY.NumberOfNames (+0x18)"),
    ("export", 0x1C): Step(None, "export_parsing", "IMAGE_EXPORT_DIRECTORY.AddressOfFunctions (+0x1c)"),
    ("export", 0x20): Step(None, "export_parsing", "IMAGE_EXPORT_DIRECTORY.AddressOfNames (+0x20)"),
    ("export", 0x24): Step(None, "export_parsing", "IMAGE_EXPORT_DIRECTORY.AddressOfNameOrdinals (+0x24)"),
    ("ldr_entry", 0): Step("ldr_entry", "", "LIST_ENTRY.Flink"),
}
STEPS: dict[int, dict[tuple[str, int], Step]] = {
    32: {
        **_EXPORT_STEPS,
        ("teb", 0x18): Step("teb", "", "TEB self-pointer (fs:[0x18])"),
        ("teb", 0x30): Step("peb", "peb_access", "PEB from TEB+0x30"),
        ("peb", 0x0C): Step("ldr", "ldr_walk", "PEB->Ldr (+0x0c)"),
        ("ldr", 0x0C): Step("ldr_entry", "ldr_walk", "Ldr->InLoadOrderModuleList (+0x0c)"),
        ("ldr", 0x14): Step("ldr_entry", "ldr_walk", "Ldr->InMemoryOrderModuleList (+0x14)"),
        ("ldr", 0x1C): Step("ldr_entry", "ldr_walk", "Ldr->InInitializationOrderModuleList (+0x1c)"),
    },
    64: {
        **_EXPORT_STEPS,
        ("teb", 0x30): Step("teb", "", "TEB self-pointer (gs:[0x30])"),
        ("teb", 0x60): Step("peb", "peb_access", "PEB from TEB+0x60"),
        ("peb", 0x18): Step("ldr", "ldr_walk", "PEB->Ldr (+0x18)"),
        ("ldr", 0x10): Step("ldr_entry", "ldr_walk", "Ldr->InLoadOrderModuleList (+0x10)"),
        ("ldr", 0x20): Step("ldr_entry", "ldr_walk", "Ldr->InMemoryOrderModuleList (+0x20)"),
        ("ldr", 0x30): Step("ldr_entry", "ldr_walk", "Ldr->InInitializationOrderModuleList (+0x30)"),
    },
}
E_LFANEW = Step("lfanew", "", "IMAGE_DOS_HEADER.e_lfanew (+0x3c)")
TEB_SEGMENT = {32: "fs", 64: "gs"}
FRAME_REGISTERS = ("rbp", "rsp")
LOADS = ("mov", "movsxd", "lodsd", "lodsq")


class StructureTracker:
    """One forward pass that follows TEB -> PEB -> Ldr -> modules and PE -> exports.

    Registers, stack-frame slots and push/pop carry `Tag`s; each memory read of a
    known structure field is recorded as (Step, Evidence).
    """

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.steps = STEPS[bits]
        self.tags: dict[str, Tag] = {}
        self.slots: dict[tuple[str, int], Tag] = {}
        self.stack: list[Optional[Tag]] = []
        self.found: list[tuple[Step, Evidence]] = []

    def run(self, insns: Sequence[Instruction]) -> list[tuple[Step, Evidence]]:
        for insn in insns:
            self.feed(insn)
        return self.found

    def feed(self, insn: Instruction) -> None:
        loaded = self._reads(insn)
        updates = self._transfer(insn, loaded)
        self._store(insn)
        for reg in insn.writes - {"rsp", "rip"}:
            self.tags.pop(reg, None)
        if insn.flow == "call":
            for reg in VOLATILE[self.bits]:
                self.tags.pop(reg, None)
        if insn.flow == "ret":
            self.tags.clear()
            self.stack.clear()
        self.tags.update({reg: tag for reg, tag in updates.items() if tag is not None})

    def _reads(self, insn: Instruction) -> Optional[Tag]:
        """Record structure-field reads; return the tag of the value read, if any."""
        if insn.mnemonic in ("lea", "nop"):
            return None
        loaded = None
        for mem in (op for op in insn.operands if isinstance(op, Mem)):
            base = self._resolve(mem)
            step = self._step(mem, base) if base else None
            if step:
                if step.trait:
                    detail = step.detail if base.origin < 0 else f"{step.detail}; base from {base.origin:#x}"
                    self.found.append((step, _evidence(insn, detail)))
                loaded = Tag(step.kind, 0, insn.address) if step.kind else None
        return loaded

    def _resolve(self, mem: Mem) -> Optional[Tag]:
        """The structure a memory operand points into, with the displacement folded in."""
        if mem.segment:
            base, index = self._const(mem.base), self._const(mem.index)
            if mem.segment != TEB_SEGMENT[self.bits] or base is None or index is None:
                return None
            return Tag("teb", mem.disp + base + index * mem.scale, -1)
        candidates = [self.tags.get(mem.base), self.tags.get(mem.index) if mem.scale == 1 else None]
        tagged = [Tag(t.kind, t.offset + mem.disp, t.origin) for t in candidates if t and t.kind != "const"]
        known = [t for t in tagged if (t.kind, t.offset) in self.steps]
        return (known or tagged or [Tag("", mem.disp, -1)])[0]

    def _step(self, mem: Mem, base: Tag) -> Optional[Step]:
        step = self.steps.get((base.kind, base.offset))
        if step is None and base.kind == "" and base.offset == 0x3C and mem.base not in ("", "rip", "rsp"):
            return E_LFANEW
        return step

    def _const(self, reg: str) -> Optional[int]:
        """The known value of `reg` (0 when absent), None when unknown."""
        if not reg:
            return 0
        tag = self.tags.get(reg)
        return tag.offset if tag and tag.kind == "const" else None

    def _slot(self, op: Operand) -> Optional[tuple[str, int]]:
        if isinstance(op, Mem) and op.base in FRAME_REGISTERS and not op.index and not op.segment:
            return (op.base, op.disp)
        return None

    def _transfer(self, insn: Instruction, loaded: Optional[Tag]) -> dict[str, Optional[Tag]]:
        """New tags for the registers `insn` writes (others it writes are cleared)."""
        m, ops = insn.mnemonic, insn.operands
        dst, src = (ops + (None, None))[:2]
        if m == "push":
            self._push(dst, insn.address)
            return {}
        if not isinstance(dst, str):
            return {}
        if m == "pop":
            return {dst: self.stack.pop() if self.stack else None}
        if m in LOADS:
            return {dst: self._value(src, loaded, insn.address)}
        if m == "lea" and isinstance(src, Mem):
            tag = self._resolve(src)
            return {dst: tag if tag and tag.kind else None}
        if m in ("xor", "sub") and src == dst:
            return {dst: Tag("const", 0, insn.address)}
        if m in ("add", "sub"):
            return {dst: self._arith(m, dst, src, insn.address)}
        if m == "xchg" and isinstance(src, str):
            return {dst: self.tags.get(src), src: self.tags.get(dst)}
        return {}

    def _value(self, src: Optional[Operand], loaded: Optional[Tag], address: int) -> Optional[Tag]:
        if isinstance(src, str):
            return self.tags.get(src)
        if isinstance(src, int):
            return Tag("const", src & MASK32, address)
        slot = self._slot(src)
        return self.slots.get(slot, loaded) if slot else loaded

    def _arith(self, m: str, dst: str, src: Optional[Operand], address: int) -> Optional[Tag]:
        cur = self.tags.get(dst)
        if isinstance(src, int):
            delta = src if m == "add" else -src
            return cur._replace(offset=cur.offset + delta) if cur else None
        other = self.tags.get(src) if isinstance(src, str) else None
        if m == "sub":
            return None
        if cur and other and cur.kind == other.kind == "const":
            return Tag("const", (cur.offset + other.offset) & MASK32, address)
        pointers = [t for t in (cur, other) if t and t.kind != "const"]
        return pointers[0] if pointers else None

    def _push(self, op: Optional[Operand], address: int) -> None:
        tag = self.tags.get(op) if isinstance(op, str) else None
        if isinstance(op, int):
            tag = Tag("const", op & MASK32, address)
        self.stack = (self.stack + [tag])[-MAX_STACK_TAGS:]

    def _store(self, insn: Instruction) -> None:
        slot = self._slot(insn.operands[0]) if insn.operands else None
        if insn.mnemonic == "mov" and slot:
            src = insn.operands[1]
            tag = self.tags.get(src) if isinstance(src, str) else None
            if tag:
                self.slots[slot] = tag
            else:
                self.slots.pop(slot, None)


# --- traits ------------------------------------------------------------------


@dataclass
class Context:
    """What every detector may look at."""

    instructions: Sequence[Instruction]
    bits: int
    index: HashIndex
    has_import_table: Optional[bool] = None

    @functools.cached_property
    def structure_reads(self) -> list[tuple[Step, Evidence]]:
        """Every structure-field read (the tracker runs once per context).

        Every chain starts at a root, so only windows around roots are tracked.
        """
        found: list[tuple[Step, Evidence]] = []
        for lo, hi in _windows(self.instructions, self.bits):
            found += StructureTracker(self.bits).run(self.instructions[lo:hi])
        return found

    @functools.cached_property
    def stored_slots(self) -> frozenset[int]:
        """Absolute addresses the code writes with `mov [addr], ...` (pointer caches)."""
        return frozenset(
            _absolute(i, i.operands[0])
            for i in self.instructions
            if i.mnemonic == "mov" and i.operands and isinstance(i.operands[0], Mem)
        ) - {None}

    def structure(self, trait: str) -> list[tuple[Step, Evidence]]:
        """Structure-field reads evidencing `trait`."""
        return [(step, ev) for step, ev in self.structure_reads if step.trait == trait]

    def restrict(self, lo: int, hi: int, reads: list[tuple[Step, Evidence]]) -> "Context":
        """The context of instructions [lo, hi) (one function) with its share `reads` of the
        buffer's structure-field reads; stored pointer slots are the whole buffer's."""
        sub = Context(self.instructions[lo:hi], self.bits, self.index, self.has_import_table)
        sub.__dict__["structure_reads"] = reads
        sub.__dict__["stored_slots"] = self.stored_slots
        return sub


def _is_root(insn: Instruction, segment: str) -> bool:
    """Where structure chains start: a TEB read (fs/gs segment, small offset) or an
    e_lfanew-like load `mov reg, [reg+0x3c]`."""
    for op in insn.operands:
        if not isinstance(op, Mem):
            continue
        if op.segment == segment and 0 <= op.disp <= MAX_TEB_OFFSET:
            return True
        if op.disp == 0x3C and op.base not in ("", "rip", "rsp") and insn.mnemonic in LOADS:
            return True
    return False


def _windows(insns: Sequence[Instruction], bits: int) -> list[tuple[int, int]]:
    """Merged [lo, hi) index windows from TRACK_BEFORE before to TRACK_AFTER after each root."""
    segment = TEB_SEGMENT[bits]
    windows: list[tuple[int, int]] = []
    for index, insn in enumerate(insns):
        if insn.operands and "[" in insn.op_str and _is_root(insn, segment):
            lo, hi = max(0, index - TRACK_BEFORE), index + TRACK_AFTER
            if windows and lo <= windows[-1][1]:
                windows[-1] = (windows[-1][0], hi)
            else:
                windows.append((lo, hi))
    return windows


def peb_access(ctx: Context) -> list[Evidence]:
    """PEB read through fs:[0x30] / gs:[0x60], directly or via the TEB self-pointer."""
    return [ev for _, ev in ctx.structure("peb_access")]


def ldr_walk(ctx: Context) -> list[Evidence]:
    """PEB->Ldr followed by one of its three module lists."""
    found = ctx.structure("ldr_walk")
    return [ev for _, ev in found] if any(step.kind == "ldr_entry" for step, _ in found) else []


def export_parsing(ctx: Context) -> list[Evidence]:
    """e_lfanew -> export data directory, then an IMAGE_EXPORT_DIRECTORY field."""
    found = ctx.structure("export_parsing")
    kinds = {step.kind for step, _ in found}
    return [ev for _, ev in found] if {"export", None} <= kinds else []


MIXERS = {"rol", "ror", "shl", "shr", "sal", "imul"}
COMBINERS = {"xor", "add", "or", "sub"}
BYTE_LOADS = {"mov", "movzx", "movsx", "lodsb"}


def _byte_target(insn: Instruction) -> Optional[str]:
    """The register a byte is loaded into (movzx/movsx/lodsb/mov r8, [mem])."""
    ops = insn.operands
    if insn.mnemonic in BYTE_LOADS and len(ops) == 2 and isinstance(ops[1], Mem) and ops[1].size == 1:
        return ops[0] if isinstance(ops[0], str) else None
    return None


def _is_mixer(insn: Instruction) -> bool:
    """A rotate, shift or multiply of a 32/64-bit register."""
    ops = insn.operands
    return insn.mnemonic in MIXERS and bool(ops) and isinstance(ops[0], str) and insn.sizes[0] >= 4


def _mixes(combine: Instruction, acc: str, byte: str) -> bool:
    """`combine` folds the loaded byte into the accumulator (e.g. `add edi, eax`)."""
    ops = combine.operands
    return combine.mnemonic in COMBINERS and acc in ops and byte in ops and acc != byte


def _hash_body(body: Sequence[Instruction]) -> str:
    """Why `body` looks like a name-hash loop, or "" if it does not."""
    loads = [(i, reg) for i in body if (reg := _byte_target(i))]
    for mix in (i for i in body if _is_mixer(i)):
        accs = _accumulators(body, mix.operands[0])
        for load, byte in ((i, reg) for i, reg in loads if reg not in accs):
            after = sorted(body, key=lambda i: i.address <= load.address)  # loop order from the load
            combine = next((i for i in after for acc in accs if _mixes(i, acc, byte)), None)
            if combine:
                return f"byte load '{load.text}', mix '{mix.text}', combine '{combine.text}'"
    return ""


def _accumulators(body: Sequence[Instruction], mixed: str) -> set[str]:
    """`mixed` plus registers it is combined into (`shl r8d, 5; add eax, r8d` -> eax)."""
    into = {
        i.operands[0]
        for i in body
        if i.mnemonic in COMBINERS and mixed in i.operands[1:] and isinstance(i.operands[0], str)
    }
    return {mixed} | into


def hash_loop(ctx: Context) -> list[Evidence]:
    """A short backward-jumping loop that loads bytes and mixes them into an accumulator."""
    insns = ctx.instructions
    starts = [i.address for i in insns]
    found = []
    for jump in insns:
        if jump.target is None or jump.flow not in ("cond", "jump"):
            continue
        if not 0 <= jump.address - jump.target <= MAX_LOOP_BYTES:
            continue
        body = insns[bisect.bisect_left(starts, jump.target):bisect.bisect_right(starts, jump.address)]
        detail = _hash_body(body)
        if detail:
            found.append(_evidence(jump, f"loop {jump.target:#x}..{jump.address:#x}: {detail}"))
    return found


def _imm32(value: int) -> Optional[int]:
    """A 32-bit constant from an immediate (sign-extended forms included)."""
    value &= 0xFFFFFFFFFFFFFFFF
    if MASK32 < value < 0xFFFFFFFF80000000:
        return None
    return value & MASK32


def hash_compare(ctx: Context) -> list[Evidence]:
    """`cmp`/`push`/`mov` of an immediate that is a known API-name hash."""
    found = []
    for insn in ctx.instructions:
        last = insn.operands[-1] if insn.operands else None
        if insn.mnemonic not in ("cmp", "push", "mov") or not isinstance(last, int):
            continue
        value = _imm32(last)
        hits = tuple(ctx.index.lookup(value)) if value is not None else ()
        if hits:
            names = ", ".join(f"{hit.algorithm}({hit.label})" for hit in hits)
            found.append(_evidence(insn, f"{value:#010x} = {names}", hits))
    return found


def _absolute(insn: Instruction, mem: Mem) -> Optional[int]:
    if mem.base == "rip":
        return insn.address + insn.size + mem.disp
    return mem.disp & 0xFFFFFFFFFFFFFFFF if not mem.base and not mem.index else None


def indirect_call(ctx: Context) -> list[Evidence]:
    """call/jmp through a register, a register-based table, or a slot the code itself writes."""
    written = ctx.stored_slots
    found = []
    for insn in ctx.instructions:
        if insn.flow not in ("call", "jump") or insn.target is not None or not insn.operands:
            continue
        op = insn.operands[0]
        if isinstance(op, str):
            found.append(_evidence(insn, f"{insn.mnemonic} through a register"))
        elif isinstance(op, Mem) and op.base and op.base != "rip":
            found.append(_evidence(insn, f"{insn.mnemonic} through a register-based table"))
        elif isinstance(op, Mem) and _absolute(insn, op) in written:
            found.append(_evidence(insn, f"{insn.mnemonic} through a pointer this code stores"))
    return found


def no_import_table(ctx: Context) -> list[Evidence]:
    """The enclosing PE has no import table (a caller-supplied fact)."""
    if ctx.has_import_table is not False or not ctx.instructions:
        return []
    first = ctx.instructions[0]
    return [Evidence(first.address, "", "PE image has no import table")]


class Trait(NamedTuple):
    detect: Callable[[Context], list[Evidence]]
    weight: int
    """Weight when the scored window also holds a chain (`ldr_walk` or `export_parsing`)."""
    alone: int
    """Weight without one: what ordinary compiled code shows often weighs little."""


TRAITS: dict[str, Trait] = {
    # the chain: code that reads these structures is locating modules and exports by hand
    "peb_access": Trait(peb_access, 10, 5),
    "ldr_walk": Trait(ldr_walk, 20, 20),
    "export_parsing": Trait(export_parsing, 25, 25),
    "hash_compare": Trait(hash_compare, 25, 5),
    # weak: ordinary compiled code shows these too
    "hash_loop": Trait(hash_loop, 15, 5),
    "indirect_call": Trait(indirect_call, 5, 0),
}
CHAIN = ("ldr_walk", "export_parsing")
REGION_TRAITS: dict[str, Trait] = {
    # facts of the whole region, added to its best window's score
    "no_import_table": Trait(no_import_table, 10, 10),
}
WEIGHTS = {**TRAITS, **REGION_TRAITS}
STRONG = frozenset(("peb_access", "ldr_walk", "export_parsing", "hash_compare"))
RATINGS = ((70, "high"), (45, "medium"), (0, "low"))
"""Confidence words: 45 is the most any real compiled image may score (issue 16)."""
MAX_WINDOW_FUNCTIONS = 16
"""A window is a function and the functions it calls directly or transitively, at most this many."""


def score(traits: dict[str, Sequence[Evidence]]) -> tuple[int, dict[str, int]]:
    """(0..100 score, {matched trait: weight}) of one window's traits (region traits included).

    A trait weighs its full `weight` only when the window also walks the loader lists or
    parses an export table (`CHAIN`); otherwise its `alone` weight. So PEB read, byte-mixing
    loop and a constant that happens to match a hash (what compiled system code has) reach 15,
    while PEB -> Ldr -> exports -> name loop in one window reaches 80 before any constant.
    """
    chained = any(traits.get(name) for name in CHAIN)
    breakdown = {name: WEIGHTS[name].weight if chained else WEIGHTS[name].alone
                 for name, evidence in traits.items() if evidence}
    return min(100, sum(breakdown.values())), breakdown


def confidence(value: Optional[int]) -> str:
    """high / medium / low for a score, N/A when nothing was decoded."""
    if value is None:
        return "N/A"
    return next(word for floor, word in RATINGS if value >= floor)


@dataclass(frozen=True)
class Analysis:
    """The verdict for one code buffer: the score of its best window, why, and which APIs
    its constants name. `score` is None when no instruction could be decoded."""

    address: int
    bits: int
    instructions: int
    decoded: int
    """Bytes covered by the decoded instructions."""
    score: Optional[int]
    breakdown: dict[str, int]
    traits: dict[str, tuple[Evidence, ...]]
    resolved_apis: tuple[str, ...]
    function: Optional[str] = None
    """The function whose window scored best (None when no window matched any trait)."""
    functions: int = 0

    @property
    def confidence(self) -> str:
        return confidence(self.score)

    def to_dict(self) -> dict:
        return {
            "address": self.address,
            "bits": self.bits,
            "instructions": self.instructions,
            "decoded": self.decoded,
            "functions": self.functions,
            "score": self.score,
            "confidence": self.confidence,
            "function": self.function,
            "breakdown": dict(self.breakdown),
            "traits": {name: [ev.to_dict() for ev in evs] for name, evs in self.traits.items()},
            "resolved_apis": list(self.resolved_apis),
        }


# --- functions and windows ------------------------------------------------------------


@dataclass(frozen=True)
class Function:
    """A function's instructions [lo, hi) in the sorted list, its name, the traits found in
    it and the indices of the functions it branches to (calls, tail jumps, split-off blocks)."""

    name: str
    lo: int
    hi: int
    traits: dict[str, tuple[Evidence, ...]]
    callees: tuple[int, ...]


def function_starts(insns: Sequence[Instruction], entries: Sequence[int]) -> list[int]:
    """Indices of function starts: the entries (or the first instruction), direct call targets,
    the first instruction after a gap in the decoded code, and the first after a return or
    jump (and any int3/nop padding) that follows int3 padding or is 16-aligned."""
    addresses = [insn.address for insn in insns]

    def at(address: int) -> Optional[int]:
        k = bisect.bisect_left(addresses, address)
        return k if k < len(addresses) and addresses[k] == address else None

    starts = {k for k in map(at, entries) if k is not None} or ({0} if insns else set())
    starts.update(k for k in map(at, [i.target for i in insns if i.flow == "call" and i.target is not None])
                  if k is not None)
    starts.update(k + 1 for k in range(len(insns) - 1) if insns[k].address + insns[k].size != addresses[k + 1])
    j, count = 0, len(insns)
    for k in [k for k, insn in enumerate(insns) if insn.flow in ("ret", "jump")]:
        if k < j:
            continue  # an int3 (a terminator) inside padding already skipped: linear, not quadratic
        j = k + 1
        while j < count and insns[j].mnemonic in PADDING and j not in starts:  # padding, no gap
            j += 1
        if j < count and (insns[j].address % 16 == 0 or insns[j - 1].mnemonic == "int3"):
            starts.add(j)
    return sorted(starts)


PADDING = frozenset(("int3", "nop"))
LOCAL = ("peb_access", "ldr_walk", "export_parsing")
"""Traits whose structure chain must be complete inside one function."""


def split_functions(ctx: Context, entries: Sequence[int], names: dict[int, str]) -> list[Function]:
    """Cut the decoded instructions at function starts and find each function's traits:
    the structure chains per function, the other detectors once over the whole buffer with
    their evidence assigned to the function that holds it."""
    insns = ctx.instructions
    starts = function_starts(insns, entries)
    if starts and starts[0] > 0:
        starts.insert(0, 0)
    bounds = list(zip(starts, starts[1:] + [len(insns)]))
    firsts = [insns[lo].address for lo, _ in bounds]
    owner = lambda address: bisect.bisect_right(firsts, address) - 1  # noqa: E731
    found: dict[int, dict[str, list[Evidence]]] = {}
    for name in TRAITS:
        if name not in LOCAL:
            for ev in TRAITS[name].detect(ctx):
                found.setdefault(owner(ev.address), {}).setdefault(name, []).append(ev)
    reads: dict[int, list[tuple[Step, Evidence]]] = {}
    for read in ctx.structure_reads:
        reads.setdefault(owner(read[1].address), []).append(read)
    for n, share in reads.items():
        sub = ctx.restrict(*bounds[n], share)
        for name in LOCAL:
            evidence = TRAITS[name].detect(sub)
            if evidence:
                found.setdefault(n, {})[name] = evidence
    callees: dict[int, set[int]] = {}
    position = {address: n for n, address in enumerate(firsts)}
    for address, target in [(i.address, i.target) for i in insns if i.target in position]:
        callees.setdefault(owner(address), set()).add(position[target])
    return [Function(names.get(firsts[n]) or f"sub_{firsts[n]:x}", lo, hi,
                     {name: tuple(found[n][name]) for name in TRAITS if name in found.get(n, ())},
                     tuple(sorted(callees.get(n, set()) - {n})))
            for n, (lo, hi) in enumerate(bounds)]


def window(functions: Sequence[Function], root: int) -> list[int]:
    """`root` and the functions it reaches by direct branches (breadth first, bounded)."""
    order, seen = [root], {root}
    for n in order:
        for callee in functions[n].callees:
            if callee not in seen and len(order) < MAX_WINDOW_FUNCTIONS:
                seen.add(callee)
                order.append(callee)
    return order


def _window_traits(functions: Sequence[Function], members: Sequence[int]) -> dict[str, tuple[Evidence, ...]]:
    """The traits of a window's functions, each piece of evidence naming its function."""
    merged: dict[str, list[Evidence]] = {}
    for n in members:
        fn = functions[n]
        for name, evidence in fn.traits.items():
            merged.setdefault(name, []).extend(replace(ev, function=fn.name) for ev in evidence)
    return {name: tuple(sorted(merged[name], key=lambda e: e.address)) for name in TRAITS if name in merged}


def _roots(functions: Sequence[Function]) -> list[int]:
    """Functions whose window can hold a trait: those with traits and their callers, callers'
    callers … up to the window bound (a superset; the windows themselves are exact)."""
    callers: dict[int, list[int]] = {}
    for n, fn in enumerate(functions):
        for callee in fn.callees:
            callers.setdefault(callee, []).append(n)
    frontier = [n for n, fn in enumerate(functions) if fn.traits]
    seen = set(frontier)
    for _ in range(MAX_WINDOW_FUNCTIONS - 1):
        frontier = [c for n in frontier for c in callers.get(n, ()) if c not in seen]
        if not frontier:
            break
        seen.update(frontier)
    return sorted(seen)


def best_window(functions: Sequence[Function]) -> tuple[Optional[int], dict[str, tuple[Evidence, ...]]]:
    """(root index, traits) of the highest-scoring window; among equal scores the smallest
    window (the most specific explanation), then the earliest root."""
    best: tuple[int, int, Optional[int]] = (0, 0, None)
    for root in _roots(functions):
        members = window(functions, root)
        names = {name: True for n in members for name in functions[n].traits}
        value = score(names)[0] if names else 0
        if value and (best[2] is None or (value, -len(members)) > best[:2]):
            best = (value, -len(members), root)
    if best[2] is None:
        return None, {}
    return best[2], _window_traits(functions, window(functions, best[2]))


def analyse(
    code: bytes,
    address: int,
    bits: int,
    entry_points: Optional[Sequence[int]] = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    has_import_table: Optional[bool] = None,
    names: Optional[dict[int, str]] = None,
) -> Analysis:
    """Disassemble `code`, find its functions and their traits, and score the best window
    (a function and what it calls) plus the region's own traits."""
    insns = disassemble(code, address, bits, entry_points, max_bytes)
    ctx = Context(insns, bits, HashIndex.default(), has_import_table)
    functions = split_functions(ctx, entry_points or [], names or {})
    root, matched = best_window(functions)
    for name, trait in REGION_TRAITS.items():
        evidence = tuple(trait.detect(ctx))
        if evidence:
            matched[name] = evidence
    total, breakdown = score(matched)
    apis = sorted({hit.label for ev in matched.get("hash_compare", ()) for hit in ev.hits})
    decoded = sum(insn.size for insn in insns)
    return Analysis(address, bits, len(insns), decoded, total if insns else None, breakdown, matched,
                    tuple(apis), functions[root].name if root is not None else None, len(functions))


def image_entries(pe: MappedPE, low: int, high: int) -> list[int]:
    """The PE's entry point and code exports that lie in [low, high)."""
    addresses = [pe.base + pe.entry_point_rva] if pe.entry_point_rva else []
    addresses += [e.address for e in pe.exports if e.forwarder is None]
    return sorted({a for a in addresses if low <= a < high})


def analyse_image(code: bytes, pe: MappedPE, bits: int, max_bytes: int = DEFAULT_MAX_BYTES) -> Analysis:
    """Score `code`, the first bytes of the mapped image `pe`, by recursive descent from its
    entry point and exports (functions named after them); by linear sweep when it has none."""
    entries = image_entries(pe, pe.base, pe.base + len(code))
    names = {e.address: e.name for e in pe.exports if e.name and e.forwarder is None}
    if pe.entry_point_rva:
        names.setdefault(pe.base + pe.entry_point_rva, "entry point")
    return analyse(code, pe.base, bits, entries or None, max_bytes, pe.has_import_table, names)
