"""Score code for dynamic API resolution and explain the score, capa style.

A *trait* is a small named detector over disassembled instructions that returns
the evidence (address, instruction, why) that made it match. `TRAITS` holds the
detectors with their weights; `analyse` runs them and sums the weights into a
0..100 score. Everything here is a pure function of bytes.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence, Union

import capstone
from capstone import x86 as cs_x86

from .api_hashes import MASK32, HashHit, HashIndex

DEFAULT_MAX_BYTES = 0x10000
MAX_INSN_BYTES = 15
SWEEP_CHUNK = 0x1000
MAX_LOOP_BYTES = 0x80
MAX_STACK_TAGS = 64


# --- instructions ---------------------------------------------------------


def _register_families() -> dict[str, str]:
    """Map every x86/x64 general register name to its 64-bit family name."""
    names: dict[str, str] = {}
    for x in "abcd":
        names.update({n: f"r{x}x" for n in (f"r{x}x", f"e{x}x", f"{x}x", f"{x}l", f"{x}h")})
    for x in ("si", "di", "bp", "sp"):
        names.update({n: f"r{x}" for n in (f"r{x}", f"e{x}", x, f"{x}l")})
    for i in range(8, 16):
        names.update({f"r{i}{s}": f"r{i}" for s in ("", "d", "w", "b")})
    return names


FAMILIES = _register_families()
VOLATILE = {32: ("rax", "rcx", "rdx"), 64: ("rax", "rcx", "rdx", "r8", "r9", "r10", "r11")}
TERMINATORS = {"ret", "retf", "iret", "iretd", "iretq", "int3", "hlt", "ud2"}


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


@dataclass(frozen=True)
class Instruction:
    """A decoded instruction reduced to what the detectors need."""

    address: int
    size: int
    mnemonic: str
    op_str: str
    operands: tuple[Operand, ...]
    sizes: tuple[int, ...]
    writes: frozenset[str]
    target: Optional[int]

    @property
    def text(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()

    @property
    def flow(self) -> str:
        """'ret', 'jump', 'call', 'cond' or '' (falls through only)."""
        m = self.mnemonic
        if m in TERMINATORS:
            return "ret"
        if m in ("jmp", "ljmp"):
            return "jump"
        if m in ("call", "lcall"):
            return "call"
        if m.startswith(("j", "loop")):
            return "cond"
        return ""


def _family(insn: capstone.CsInsn, reg: int) -> str:
    name = insn.reg_name(reg) if reg else ""
    return FAMILIES.get(name, name or "")


def _operand(insn: capstone.CsInsn, op: capstone.x86.X86Op) -> Operand:
    if op.type == cs_x86.X86_OP_REG:
        return _family(insn, op.reg)
    if op.type == cs_x86.X86_OP_IMM:
        return op.imm
    mem = op.mem
    return Mem(
        _family(insn, mem.segment), _family(insn, mem.base), _family(insn, mem.index),
        mem.scale, mem.disp, op.size,
    )


def _convert(insn: capstone.CsInsn) -> Instruction:
    operands = tuple(_operand(insn, op) for op in insn.operands)
    writes = frozenset(_family(insn, r) for r in insn.regs_access()[1])
    branch = insn.mnemonic.startswith(("j", "loop", "call"))
    target = operands[0] if branch and len(operands) == 1 and isinstance(operands[0], int) else None
    sizes = tuple(op.size for op in insn.operands)
    return Instruction(insn.address, insn.size, insn.mnemonic, insn.op_str, operands, sizes, writes, target)


@functools.lru_cache(maxsize=2)
def _decoder(bits: int) -> capstone.Cs:
    modes = {32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}
    if bits not in modes:
        raise ValueError(f"bits must be 32 or 64, not {bits}")
    decoder = capstone.Cs(capstone.CS_ARCH_X86, modes[bits])
    decoder.detail = True
    return decoder


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
    limit = min(len(code), max(max_bytes, 0))
    out: list[Instruction] = []
    offset = 0
    while offset < limit:
        end = min(limit, offset + SWEEP_CHUNK)
        for insn in decoder.disasm(code[offset:end], address + offset):
            out.append(_convert(insn))
            offset += insn.size
        if end < limit and end - offset < MAX_INSN_BYTES:
            continue  # an instruction straddles the chunk end: decode it in the next chunk
        if offset < end:
            offset += 1  # undecodable byte: resynchronise
    return out


def _recursive_descent(
    decoder: capstone.Cs, code: bytes, address: int, entries: Sequence[int], max_bytes: int
) -> list[Instruction]:
    seen: dict[int, Instruction] = {}
    work = list(reversed(entries))
    budget = max_bytes
    while work:
        pc = work.pop()
        if pc in seen or not address <= pc < address + len(code):
            continue
        offset = pc - address
        raw = next(decoder.disasm(code[offset:offset + MAX_INSN_BYTES], pc, 1), None)
        if raw is None or raw.size > budget:
            continue
        budget -= raw.size
        insn = seen[pc] = _convert(raw)
        work.extend(_successors(insn))
    return sorted(seen.values(), key=lambda i: i.address)


def _successors(insn: Instruction) -> list[int]:
    """Addresses reachable from `insn`, fall-through last so it is explored first."""
    following = [] if insn.flow in ("ret", "jump") else [insn.address + insn.size]
    return ([insn.target] if insn.target is not None else []) + following


# --- evidence and symbolic tracking -----------------------------------------


@dataclass(frozen=True)
class Evidence:
    """Why a trait matched: where, which instruction, and what it means."""

    address: int
    instruction: str
    detail: str
    hits: tuple[HashHit, ...] = ()

    def to_dict(self) -> dict:
        return {"address": self.address, "instruction": self.instruction, "detail": self.detail}


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
        """Every structure-field read (the tracker runs once per context)."""
        return StructureTracker(self.bits).run(self.instructions)

    def structure(self, trait: str) -> list[tuple[Step, Evidence]]:
        """Structure-field reads evidencing `trait`."""
        return [(step, ev) for step, ev in self.structure_reads if step.trait == trait]


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
    written = {
        _absolute(i, i.operands[0])
        for i in ctx.instructions
        if i.mnemonic == "mov" and i.operands and isinstance(i.operands[0], Mem)
    }
    found = []
    for insn in ctx.instructions:
        if insn.flow not in ("call", "jump") or insn.target is not None or not insn.operands:
            continue
        op = insn.operands[0]
        if isinstance(op, str):
            found.append(_evidence(insn, f"{insn.mnemonic} through a register"))
        elif isinstance(op, Mem) and op.base and op.base != "rip":
            found.append(_evidence(insn, f"{insn.mnemonic} through a register-based table"))
        elif isinstance(op, Mem) and _absolute(insn, op) in written - {None}:
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


TRAITS: dict[str, Trait] = {
    # strong: code that reads these structures is locating modules by hand
    "peb_access": Trait(peb_access, 25),
    "ldr_walk": Trait(ldr_walk, 20),
    "export_parsing": Trait(export_parsing, 20),
    "hash_compare": Trait(hash_compare, 25),
    # weak: ordinary compiled code shows these too
    "hash_loop": Trait(hash_loop, 15),
    "no_import_table": Trait(no_import_table, 10),
    "indirect_call": Trait(indirect_call, 5),
}


def score(traits: dict[str, Sequence[Evidence]]) -> tuple[int, dict[str, int]]:
    """(0..100 score, {matched trait: weight}): the capped sum of `TRAITS` weights.

    The weak traits together (hash_loop: atoi and checksum loops; indirect_call:
    vtables and switch tables; no_import_table: packed PEs) stay at 30, which is
    what compiled code can reach. The structural chain PEB -> Ldr -> exports
    (65) plus a hash loop or a resolved constant reaches 80 or more. A resolved
    constant weighs as much as the PEB read: ~27k indexed values out of 2^32
    (trivial ones excluded) make a chance match unlikely.
    """
    breakdown = {name: TRAITS[name].weight for name, evidence in traits.items() if evidence}
    return min(100, sum(breakdown.values())), breakdown


@dataclass(frozen=True)
class Analysis:
    """The verdict for one code buffer: score, why, and which APIs its constants name."""

    address: int
    bits: int
    instructions: int
    score: int
    breakdown: dict[str, int]
    traits: dict[str, tuple[Evidence, ...]]
    resolved_apis: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "address": self.address,
            "bits": self.bits,
            "instructions": self.instructions,
            "score": self.score,
            "breakdown": dict(self.breakdown),
            "traits": {name: [ev.to_dict() for ev in evs] for name, evs in self.traits.items()},
            "resolved_apis": list(self.resolved_apis),
        }


def analyse(
    code: bytes,
    address: int,
    bits: int,
    entry_points: Optional[Sequence[int]] = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    has_import_table: Optional[bool] = None,
) -> Analysis:
    """Disassemble `code`, run every trait, and score the result."""
    insns = disassemble(code, address, bits, entry_points, max_bytes)
    ctx = Context(insns, bits, HashIndex.default(), has_import_table)
    matched = {name: tuple(trait.detect(ctx)) for name, trait in TRAITS.items()}
    matched = {name: evidence for name, evidence in matched.items() if evidence}
    total, breakdown = score(matched)
    apis = sorted({hit.label for ev in matched.get("hash_compare", ()) for hit in ev.hits})
    return Analysis(address, bits, len(insns), total, breakdown, matched, tuple(apis))
