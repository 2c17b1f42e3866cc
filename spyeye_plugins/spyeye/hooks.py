"""``spyeye.hooks``: which API functions were patched in each process, and where each patch leads.

For every module in a process's loader lists (native and WoW64) and every image
``spyeye.injected`` finds, the plugin checks the entries of exported functions for jump,
push/ret, register-jump, hot-patch, call and trap patches; import address table entries that
point outside the module exporting the name; export RVAs outside the image; ntdll syscall
stubs; and, by comparing each function's first bytes with the other processes' copies of the
same module at the same base, code changed in no recognisable pattern. Each hook names its
target's region and, when ``spyeye.injected`` flags that region, the injected DLL's export.
See ``docs/hooks.md`` for how confidence is reached."""
from __future__ import annotations

import bisect
import collections
import functools
import logging
import ntpath
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints
from volatility3.plugins.windows import pslist

from . import config, injected, vadwalk
from .output import UsageError, text_cell
from .parsers import hooks as hp
from .parsers.pe_image import ExportEntry, MappedPE, _PagedImage, parse_mapped_image

vollog = logging.getLogger(__name__)

DEFAULT_MAX_FUNCTIONS = 4096
COMPARE_BYTES = 16
"""Bytes of an entry whose change makes it ``modified`` (short: x64 stubs sit in 16-byte slots)."""
VOTE_BYTES = 32
"""Bytes of an entry read from each copy (enough for the longest syscall stub)."""
MIN_COPIES = 3
"""Copies of a module (this process's included) needed before a majority can say what is original."""
MAX_FORWARDS = 4
RANKS = {"high": 2, "medium": 1, "low": 0}
NO_TARGET_REASONS = {"int3": "breakpoint at the entry", "ud2": "invalid instruction at the entry",
                     "modified": "entry differs from the other processes' copies",
                     "syscall_number": "syscall number differs from the other stubs"}


@dataclass
class Module:
    """A loaded or injected image of one process, parsed on demand."""

    name: str
    vad: vadwalk.VadFacts
    listed: bool
    read: hp.MemReader
    injected_reason: Optional[str] = None

    @property
    def base(self) -> int:
        return self.vad.start

    @property
    def key(self) -> Tuple[str, int, int]:
        """What identifies the same module in another process: file, base and size."""
        return ((self.vad.file or self.name).lower(), self.vad.start, self.vad.size)

    @functools.cached_property
    def image(self) -> _PagedImage:
        return _PagedImage(lambda rva, length: self.read(self.base + rva, length), self.vad.size)

    @functools.cached_property
    def pe(self) -> MappedPE:
        return parse_mapped_image(self.image.read, self.vad.size, self.base)

    @property
    def size(self) -> int:
        return min(self.pe.size_of_image or self.vad.size, self.vad.size)

    @functools.cached_property
    def tables(self) -> Optional[hp.TableLocation]:
        page = self.image.read(0, min(vadwalk.PAGE, self.vad.size))
        return hp.table_location(page, self.image.read, self.vad.size) if page else None

    @functools.cached_property
    def imports(self) -> Tuple[List[hp.ImportSlot], List[str]]:
        """The module's IAT slots and the warnings parsing them gave."""
        if self.tables is None:
            return [], []
        return hp.parse_imports(self.image.read, self.vad.size, self.tables)

    @functools.cached_property
    def iat_rvas(self) -> frozenset:
        return frozenset(slot.slot_rva for slot in self.imports[0])

    @property
    def bits(self) -> int:
        return self.tables.bits if self.tables else (64 if self.pe.machine == "x64" else 32)

    def contains(self, address: int) -> bool:
        return self.base <= address < self.base + self.size

    def read_abs(self, address: int, length: int) -> Optional[bytes]:
        """Bytes at an absolute address: the module's cached pages, else the process."""
        if self.contains(address) and self.contains(address + length - 1):
            return self.image.read(address - self.base, length)
        return self.read(address, length)

    @functools.cached_property
    def exports_by_name(self) -> Dict[str, ExportEntry]:
        return {e.name: e for e in self.pe.exports if e.name}

    @functools.cached_property
    def _code_exports(self) -> Tuple[List[int], List[ExportEntry]]:
        """(addresses, exports) of the exports inside the image, in address order."""
        exports = sorted((e for e in self.pe.exports if e.forwarder is None and e.rva < self.size),
                         key=lambda e: e.address)
        return [e.address for e in exports], exports

    def export_near(self, address: int) -> Optional[str]:
        """``Name+0xOFF`` of the export at or before ``address`` inside the module."""
        addresses, exports = self._code_exports
        index = bisect.bisect_right(addresses, address) - 1
        if index < 0 or not self.contains(address):
            return None
        export = exports[index]
        return f"{export.name or f'#{export.ordinal}'}+{address - export.address:#x}"

    @functools.cached_property
    def export_addresses(self) -> frozenset:
        return frozenset(self._code_exports[0])


@dataclass
class ProcessView:
    """One process's address space, VADs, modules and injected regions."""

    pid: int
    name: str
    layer_name: str
    vads: List[vadwalk.VadFacts]
    modules: List[Module]
    candidates: Dict[int, injected.Candidate]

    @functools.cached_property
    def _starts(self) -> List[int]:
        return [v.start for v in self.vads]

    def vad_at(self, address: int) -> Optional[vadwalk.VadFacts]:
        index = bisect.bisect_right(self._starts, address) - 1
        if index >= 0 and self.vads[index].start <= address <= self.vads[index].end:
            return self.vads[index]
        return None

    def module_at(self, address: int) -> Optional[Module]:
        return next((m for m in self.modules if m.contains(address)), None)

    def listed_module(self, dll: str, bits: int) -> Optional[Module]:
        """The loader-listed module named ``dll`` of the given bitness (WoW64 processes hold a
        64-bit and a 32-bit ntdll.dll)."""
        dll = dll.lower()
        return next((m for m in self.modules if m.listed and m.name.lower() == dll and m.bits == bits), None)


@dataclass
class Hook:
    """One hook found in one process."""

    module: Module
    function: str
    kind: str
    technique: str
    address: int
    target: Optional[int]
    raw: bytes = b""
    instructions: str = ""
    importer: Optional[str] = None
    confidence: str = "medium"
    reason: str = ""
    region: Optional[vadwalk.VadFacts] = None
    target_module: Optional[str] = None
    target_export: Optional[str] = None
    evidence: List[Tuple[str, str]] = field(default_factory=list)
    changed: bool = False
    """Whether the entry differs from the majority of the other processes' copies."""
    via_iat: bool = False
    """An indirect jump or call through the module's own IAT (an import thunk or tail call)."""


def module_name(vad: vadwalk.VadFacts, pe: Optional[MappedPE] = None) -> str:
    """The VAD's file name, else the export directory's DLL name, else ``image@<base>``."""
    if vad.file:
        return ntpath.basename(vad.file)
    if pe is not None and pe.dll_name:
        return pe.dll_name
    return f"image@{vad.start:#x}"


class Hooks(interfaces.plugins.PluginInterface):
    """Reports inline, IAT, EAT and syscall-stub hooks and modified code in process modules."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 1, 1)   # 1.0.1: evidence rows repeat the target; 1.1: process_view(candidates=); 1.1.1: x86 EAT targets wrap

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return vadwalk.kernel_requirements() + [
            requirements.VersionRequirement(name="injected", component=injected.InjectedImages, version=(1, 0, 0)),
            requirements.VersionRequirement(name="config", component=config.SpyEyeConfig, version=(1, 0, 0)),
            *vadwalk.process_filter_requirements(),
            requirements.BooleanRequirement(name="all", default=False, optional=True,
                                            description="Also show low-confidence hooks (jumps to exports of "
                                                        "other loaded modules: forwarders, shims)"),
            requirements.IntRequirement(name="max_functions", default=DEFAULT_MAX_FUNCTIONS, optional=True,
                                        description="Exported functions checked per module at most"),
        ]

    # --- building the view of a process (reusable) -----------------------------------------------
    @classmethod
    def process_view(cls, context: interfaces.context.ContextInterface, kernel_module_name: str, proc,
                     protect_values=None, with_injected: bool = True,
                     vads: Optional[List[vadwalk.VadFacts]] = None,
                     candidates: Optional[List[injected.Candidate]] = None) -> Optional[ProcessView]:
        """Modules of ``proc``: image VADs at loader-list bases (native and WoW64 lists) and,
        with ``with_injected``, the PE images ``spyeye.injected`` finds. None without an
        address space. ``vads``: the process's VADs when already read; ``candidates``: what
        ``list_candidates(..., all_exec=True)`` gave for it, when already found."""
        pid, name = int(proc.UniqueProcessId), vadwalk.process_name(proc)
        layer_name = vadwalk.process_layer(proc)
        if layer_name is None:
            return None
        if vads is None:
            vads = list(vadwalk.process_vads(proc, protect_values))
        read = injected.region_reader(context.layers[layer_name], 0)
        lists = injected.loader_bases(proc) or {}
        bases = set().union(*lists.values()) if lists else set()
        exe = injected.main_image_base(proc)
        if exe is not None:
            bases.add(exe)
        modules = [Module(module_name(v), v, True, read) for v in vads if v.start in bases and not v.private]
        by_start: Dict[int, injected.Candidate] = {}
        if with_injected:
            if candidates is None:
                candidates = list(injected.InjectedImages.list_candidates(context, kernel_module_name, proc,
                                                                          protect_values, all_exec=True, vads=vads))
            for candidate in candidates:
                by_start[candidate.vad.start] = candidate
                if candidate.pe is not None and candidate.vad.start not in bases:
                    modules.append(Module(module_name(candidate.vad, candidate.pe), candidate.vad, False, read,
                                          "; ".join(candidate.reasons[:1])))
        return ProcessView(pid, name, layer_name, vads, modules, by_start)

    # --- finding hooks (reusable) --------------------------------------------------------------
    @classmethod
    def find_hooks(cls, context: interfaces.context.ContextInterface, view: ProcessView,
                   peers: "PeerIndex", max_functions: int = DEFAULT_MAX_FUNCTIONS) -> Iterator[Hook]:
        """Each hook in ``view``'s modules, with its target's region and confidence."""
        for module in view.modules:
            for warning in module.pe.warnings:
                level = logging.INFO if warning.endswith("export RVA(s) outside image") else logging.WARNING
                vollog.log(level, "PID %d %s at %#x: %s", view.pid, module.name, module.base, warning)
            found = list(cls._export_hooks(view, module, peers, max_functions))
            found += cls._iat_hooks(view, module)
            for hook in found:
                if cls._resolve(view, hook):
                    yield hook

    @staticmethod
    def _functions(module: Module, max_functions: int, pid: int) -> List[Tuple[int, List[str]]]:
        """(address, names) of exported code in the module, one entry per address, capped."""
        names: Dict[int, List[str]] = collections.defaultdict(list)
        tables = module.tables
        for export in module.pe.exports:
            if export.forwarder is not None or export.rva >= module.size:
                continue
            if tables is not None and not tables.in_code(export.rva):
                continue
            names[export.address].append(export.name or f"#{export.ordinal}")
        entries = sorted((address, sorted(labels)) for address, labels in names.items())
        if len(entries) > max_functions:
            vollog.warning("PID %d %s: %d exported functions, only the first %d checked (--max-functions)",
                           pid, module.name, len(entries), max_functions)
        return entries[:max_functions]

    @classmethod
    def _export_hooks(cls, view: ProcessView, module: Module, peers: "PeerIndex",
                      max_functions: int) -> Iterator[Hook]:
        bits = module.bits
        is_ntdll = module.name.lower() == "ntdll.dll"
        stubs: List[Tuple[int, int, str]] = []
        renumbered: set = set()
        notes: collections.Counter = collections.Counter()
        for address, labels in cls._functions(module, max_functions, view.pid):
            patch = hp.classify_entry(module.read_abs, address, bits)
            notes[patch.note.split(" ")[0]] += 1
            majority = peers.majority(view, module, address)
            own = hp.read_code(module.read_abs, address, VOTE_BYTES)
            differs = majority is not None and own is not None and own[:COMPARE_BYTES] != majority[0][:COMPARE_BYTES]
            hook = Hook(module, labels[0], "inline", patch.technique or "", address, patch.target, patch.raw,
                        patch.text, via_iat=patch.slot is not None and patch.slot - module.base in module.iat_rvas)
            if len(labels) > 1:
                hook.evidence.append(("also exported as", ", ".join(labels[1:])))
            if differs:
                hook.changed = True
                hook.evidence.append((f"bytes before (as in {majority[1]} of {majority[2]} copies)",
                                      majority[0][:COMPARE_BYTES].hex()))
                hook.evidence.append(("bytes after (this process)", own[:COMPARE_BYTES].hex()))
            stub = hp.syscall_stub(own or b"", bits) if is_ntdll and labels[0][:2] in ("Nt", "Zw") else None
            if stub is not None:
                stubs.append((address, stub.number, labels[0]))
            if is_ntdll and labels[0][:2] in ("Nt", "Zw"):
                hook = cls._syscall_hook(hook, patch, stub, majority if differs else None, bits)
            if hook.technique == "syscall_number":
                renumbered.add(address)
            if hook.technique:
                yield hook
            elif differs:
                hook.kind = hook.technique = "modified"
                hook.target, hook.raw = None, own[:COMPARE_BYTES]
                yield hook
        if notes["undecodable"]:
            vollog.warning("PID %d %s: %d exported function entries undecodable (garbage at the entry?)",
                           view.pid, module.name, notes["undecodable"])
        if notes["entry"]:
            vollog.debug("PID %d %s: %d exported function entries on unreadable pages, not checked",
                         view.pid, module.name, notes["entry"])
        yield from cls._sequence_hooks(module, [s for s in stubs if s[0] not in renumbered])
        yield from cls._eat_hooks(module)

    @staticmethod
    def _syscall_hook(hook: Hook, patch: hp.EntryPatch, stub: Optional[hp.SyscallStub], majority,
                      bits: int) -> Hook:
        """An ntdll Nt*/Zw* entry: a jump inside the stub (after intact first instructions; a
        patch at the entry stays an inline hook), or a stub whose number differs from the
        other copies'."""
        inside = len(patch.instructions) > 1 and patch.technique not in (None, "hotpatch")
        if stub is None and inside and hook.target is not None:
            hook.evidence.append(("stub patch", f"{patch.technique} at +{patch.instructions[-1].address - hook.address:#x} "
                                                f"of the stub"))
            hook.kind, hook.technique, hook.address = "syscall", "syscall_jmp", patch.instructions[-1].address
        elif stub is not None and majority is not None:
            original = hp.syscall_stub(majority[0], bits)
            if original is not None and original.number != stub.number:
                hook.kind, hook.technique = "syscall", "syscall_number"
                hook.evidence.append(("syscall number", f"{stub.number:#x}, other copies {original.number:#x} "
                                                        f"({stub.form} stub)"))
        return hook

    @staticmethod
    def _sequence_hooks(module: Module, stubs: List[Tuple[int, int, str]]) -> Iterator[Hook]:
        """Stubs whose number breaks the order of the others (``stubs``: address, number, name)."""
        numbers = {address: (number, name) for address, number, name in stubs}
        for address in hp.out_of_sequence([(address, number) for address, number, _ in stubs]):
            number, name = numbers[address]
            hook = Hook(module, name, "syscall", "syscall_number", address, None,
                        module.read_abs(address, COMPARE_BYTES) or b"")
            hook.evidence.append(("syscall number", f"{number:#x} out of sequence with the "
                                                    f"neighbouring stubs"))
            yield hook

    @staticmethod
    def _eat_hooks(module: Module) -> Iterator[Hook]:
        tables = module.tables
        for export in module.pe.exports:
            if export.forwarder is not None or export.rva < module.size:
                continue
            slot = hp.eat_slot_rva(tables, export.ordinal) if tables else None
            target = export.address & ((1 << module.bits) - 1)   # x86: base + RVA wraps at 4 GiB
            hook = Hook(module, export.name or f"#{export.ordinal}", "eat", "eat",
                        module.base + slot if slot is not None else target, target)
            hook.evidence.append(("export RVA", f"{export.rva:#x} past SizeOfImage {module.size:#x}"))
            yield hook

    @classmethod
    def _iat_hooks(cls, view: ProcessView, module: Module) -> List[Hook]:
        slots, warnings = module.imports
        for warning in warnings:
            vollog.warning("PID %d %s imports: %s", view.pid, module.name, warning)
        found = []
        for slot in slots:
            if not slot.bound:
                continue
            exporter = view.listed_module(slot.dll, module.bits)
            if exporter is None:
                continue
            expected = cls._resolve_export(view, exporter, slot.name, slot.ordinal)
            if slot.value == expected or exporter.contains(slot.value):
                continue
            if expected is not None and (view.module_at(expected) or exporter).contains(slot.value):
                continue
            label = slot.name or f"#{slot.ordinal}"
            hook = Hook(exporter, label, "iat", "iat", module.base + slot.slot_rva, slot.value,
                        importer=module.name)
            hook.evidence.append(("IAT slot", f"{module.name} imports {slot.dll}!{label}; expected "
                                              + (f"{expected:#x}" if expected is not None else "an address in "
                                                 + exporter.name)))
            found.append(hook)
        return found

    @staticmethod
    def _resolve_export(view: ProcessView, module: Module, name: Optional[str],
                        ordinal: Optional[int]) -> Optional[int]:
        """Address of ``module!name`` (or ordinal), following forwarders a few steps."""
        for _ in range(MAX_FORWARDS):
            export = module.exports_by_name.get(name) if name else next(
                (e for e in module.pe.exports if e.ordinal == ordinal), None)
            if export is None:
                return None
            if export.forwarder is None:
                return export.address
            dll, _, function = export.forwarder.partition(".")
            target = view.listed_module(dll if "." in dll else dll + ".dll", module.bits)
            if target is None:
                return None
            module, name, ordinal = target, function, None
            if function.startswith("#") and function[1:].isdigit():
                name, ordinal = None, int(function[1:])
        return None

    @classmethod
    def _resolve(cls, view: ProcessView, hook: Hook) -> bool:
        """Fill the target's region and the confidence; False when there is nothing to report
        (a jump that stays in its module, a pointer that cannot be read on unchanged code, a
        jump through the module's own IAT that the IAT check covers)."""
        if hook.target is not None and hook.kind in ("inline", "syscall") and hook.module.contains(hook.target):
            if not hook.changed:
                return False
            hook.evidence.insert(0, ("in-module jump", f"{hook.technique} to {hook.target:#x}"))
            hook.kind = hook.technique = "modified"
            hook.target = None
        if hook.target is None:
            if hook.technique not in NO_TARGET_REASONS and not hook.changed:
                return False
            hook.confidence = "medium"
            hook.reason = NO_TARGET_REASONS.get(hook.technique, "target unreadable; entry differs from other copies")
            return True
        hook.region = view.vad_at(hook.target)
        other = view.module_at(hook.target)
        at_export = other is not None and other.listed and hook.target in other.export_addresses
        if hook.via_iat and not at_export:
            return False
        if other is not None:
            hook.target_module, hook.target_export = other.name, other.export_near(hook.target)
        hook.confidence, hook.reason = cls._rating(view, hook.region, other, at_export)
        return True

    @staticmethod
    def _rating(view: ProcessView, region: Optional[vadwalk.VadFacts], other: Optional[Module],
                at_export: bool) -> Tuple[str, str]:
        """(confidence, reason) of a hook from where its target lies (see docs/hooks.md)."""
        candidate = view.candidates.get(region.start) if region else None
        if candidate is not None:
            reason = candidate.reasons[0]
            if candidate.pe is not None:
                name = f"PE image {candidate.pe.dll_name}" if candidate.pe.dll_name else "PE image"
                header = "MZ present" if candidate.header.mz_present else "MZ erased"
                reason += f"; {name} found by spyeye.injected ({header})"
            return "high", reason
        if region is not None and region.private and region.executable:
            return "high", "private executable memory"
        if at_export:
            return "low", f"export of loaded module {other.name} (forwarder or shim?)"
        if other is not None and other.listed:
            return "medium", f"inside loaded module {other.name}, not at an export"
        if region is None:
            return "medium", "target in no VAD"
        return "medium", "target in a region neither injected nor a loaded module"

    # --- stolen-record ties ------------------------------------------------------------------------
    @classmethod
    def hooked_funcs(cls, context: interfaces.context.ContextInterface, view: ProcessView) -> Dict[str, List[int]]:
        """``hooked_func`` value -> addresses of the stolen records ``spyeye.config`` decodes in the
        process's private memory."""
        layer = context.layers[view.layer_name]
        found: Dict[str, List[int]] = collections.defaultdict(list)
        for vad in view.vads:
            if not vad.private:
                continue
            for artifact in config.SpyEyeConfig.find_artifacts(context, layer, vad):
                if artifact.kind != "stolen_record":
                    continue
                for key, value in artifact.fields:
                    if key == "hooked_func":
                        found[value].append(artifact.address)
        return found

    # --- output --------------------------------------------------------------------------------
    def _generator(self, procs: Sequence, every: Sequence, max_functions: int):
        kernel = self.config["kernel"]
        protect = vadwalk.protection_values(self.context, kernel)
        peers = PeerIndex(self.context, every, protect)
        floor = 0 if self.config.get("all") else 1
        for index, proc in enumerate(procs):
            view = self.process_view(self.context, kernel, proc, protect, vads=peers.vads(proc))
            if view is None:
                continue
            self._progress_callback(100.0 * index / max(len(procs), 1), f"Checking hooks in PID {view.pid}")
            found = [h for h in self.find_hooks(self.context, view, peers, max_functions)
                     if RANKS[h.confidence] >= floor]
            records = self.hooked_funcs(self.context, view) if found else {}
            for hook in sorted(found, key=lambda h: (h.module.name.lower(), h.address, h.kind)):
                yield from self._rows(view, hook, records.get(hook.function, []))

    def _rows(self, view: ProcessView, hook: Hook, records: List[int]):
        known = hp.known_hook(hook.module.name, hook.function)
        head = (view.pid, text_cell(view.name), text_cell(hook.module.name), text_cell(hook.function), hook.kind,
                hook.technique, hook.confidence, format_hints.Hex(hook.address))
        region = hook.region
        target = (_hex(hook.target), _text(hook.target_module), _text(hook.target_export),
                  _hex(region.start if region else None), _hex(region.end if region else None))
        yield 0, (*head, *target, _text(region.protection if region else None), _text(_region_file(region)),
                  _text(hook.importer), hook.raw.hex(), text_cell(hook.instructions),
                  known.tag if known else "", "confidence", text_cell(hook.reason))
        evidence = list(hook.evidence)
        if hook.module.injected_reason:
            evidence.append(("module", f"injected image ({hook.module.injected_reason})"))
        if known:
            evidence.append(("known SpyEye target", f"{known.module}!{known.function}: {known.purpose}, "
                                                    f"confidence {known.confidence} ({', '.join(known.sources)})"))
        for address in records:
            evidence.append(("stolen record", f"spyeye.config decoded a record at {address:#x} in this process "
                                              f"with hooked_func {hook.function}"))
        blank = ("",) * 6             # evidence rows repeat the hook and its target, then their own columns
        for label, detail in evidence:
            yield 1, (*head, *target, *blank, text_cell(label), text_cell(detail))

    def run(self) -> renderers.TreeGrid:
        columns = [("PID", int), ("Process", str), ("Module", str), ("Function", str), ("Kind", str),
                   ("Technique", str), ("Confidence", str), ("Hook Address", format_hints.Hex),
                   ("Target", format_hints.Hex), ("Target Module", str), ("Target Export", str),
                   ("Region Start", format_hints.Hex), ("Region End", format_hints.Hex), ("Protection", str),
                   ("Region File", str), ("Importer", str), ("Bytes", str), ("Instructions", str),
                   ("Known", str), ("Evidence", str), ("Detail", str)]
        max_functions = self.config.get("max_functions")
        max_functions = DEFAULT_MAX_FUNCTIONS if max_functions is None else max_functions
        if max_functions <= 0:
            raise UsageError(f"--max-functions must be positive, not {max_functions}")
        procs, every = self._selected()
        return renderers.TreeGrid(columns, self._generator(procs, every, max_functions))

    def _selected(self) -> Tuple[list, list]:
        """(selected processes, every active process); a PID or name that matches none is a
        usage error (one line, before any row)."""
        pids, names = self.config.get("pid") or [], self.config.get("name")
        every = list(pslist.PsList.list_processes(self.context, self.config["kernel"]))
        drop = vadwalk.name_filter(names)
        procs = [p for p in every if (not pids or int(p.UniqueProcessId) in pids) and not drop(p)]
        missing = sorted(set(pids) - {int(p.UniqueProcessId) for p in every})
        if missing:
            raise UsageError(f"no process with PID {', '.join(map(str, missing))} in the active process list")
        if names and not procs:
            raise UsageError(f"no process named {', '.join(names)} in the active process list")
        return procs, every


class PeerIndex:
    """The same module in every process, to tell an original function entry from a patched one.

    Copies of a module share physical frames until one process writes to a page; an entry whose
    page frame equals every other copy's is not read again. Built lazily over all processes."""

    def __init__(self, context: interfaces.context.ContextInterface, procs: Sequence, protect_values) -> None:
        self._context, self._procs, self._protect = context, procs, protect_values
        self._by_key: Optional[Dict[Tuple[str, int, int], List[Tuple[int, str]]]] = None
        self._vads: Dict[int, List[vadwalk.VadFacts]] = {}

    def vads(self, proc) -> List[vadwalk.VadFacts]:
        """The process's VADs, read once for the index and the process's own view."""
        pid = int(proc.UniqueProcessId)
        if pid not in self._vads:
            self._vads[pid] = list(vadwalk.process_vads(proc, self._protect))
        return self._vads[pid]

    def _index(self) -> Dict[Tuple[str, int, int], List[Tuple[int, str]]]:
        """(file, base, size) of each image VAD with a file name -> [(pid, layer name)]."""
        if self._by_key is None:
            self._by_key = collections.defaultdict(list)
            for proc in self._procs:
                layer_name = vadwalk.process_layer(proc)
                if layer_name is None:
                    continue
                for vad in self.vads(proc):
                    if vad.image and not vad.private and vad.file:
                        self._by_key[(vad.file.lower(), vad.start, vad.size)].append(
                            (int(proc.UniqueProcessId), layer_name))
        return self._by_key

    @functools.lru_cache(maxsize=65536)
    def _frame(self, layer_name: str, page: int) -> Optional[int]:
        return vadwalk.physical_pages(self._context.layers[layer_name], page, 1)[0]

    def majority(self, view: ProcessView, module: Module, address: int) -> Optional[Tuple[bytes, int, int]]:
        """(bytes at ``address`` in most copies, copies holding them, copies read), or
        None when every copy shares this process's page frame, there are fewer than
        ``MIN_COPIES`` copies, or no first ``COMPARE_BYTES`` hold a strict majority."""
        others = [(pid, layer) for pid, layer in self._index().get(module.key, []) if pid != view.pid]
        if len(others) + 1 < MIN_COPIES:
            return None
        page = address & ~(vadwalk.PAGE - 1)
        own_frame = self._frame(view.layer_name, page)
        by_frame: Dict[Optional[int], List[str]] = collections.defaultdict(list)
        for _, layer in others:
            by_frame[self._frame(layer, page)].append(layer)
        if own_frame is not None and set(by_frame) == {own_frame}:
            return None                                  # every copy shares this process's frame
        votes: collections.Counter = collections.Counter()
        seen: Dict[bytes, bytes] = {}
        readers = [(hp.read_code(module.read_abs, address, VOTE_BYTES), 1)]
        readers += [(hp.read_code(injected.region_reader(self._context.layers[layers[0]], 0), address, VOTE_BYTES),
                     len(layers)) for frame, layers in by_frame.items() if frame is not None]
        for data, count in readers:
            if data:
                votes[data[:COMPARE_BYTES]] += count
                seen.setdefault(data[:COMPARE_BYTES], data)
        if not votes:
            return None
        head, count = votes.most_common(1)[0]
        total = sum(votes.values())
        if count * 2 <= total or count < 2:
            return None
        return seen[head], count, total


def _hex(value: Optional[int]):
    return renderers.NotAvailableValue() if value is None else format_hints.Hex(value)


def _text(value: Optional[str]):
    return renderers.NotAvailableValue() if value is None else text_cell(value)


def _region_file(region: Optional[vadwalk.VadFacts]) -> Optional[str]:
    if region is None:
        return None
    if region.private:
        return "private"
    return region.file or "shared, no file"
