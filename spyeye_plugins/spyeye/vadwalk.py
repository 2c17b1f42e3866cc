"""Walking processes and their VADs, and reading VADs in bounded chunks.

Shared by every plugin of the suite that looks at process memory."""
from __future__ import annotations

import dataclasses
import logging
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from volatility3.framework import constants, exceptions, interfaces, renderers, symbols
from volatility3.framework.configuration import requirements
from volatility3.plugins.windows import pslist, psscan, vadinfo

from .output import UsageError, text_cell
from .pageread import PageTableReader

vollog = logging.getLogger(__name__)

PAGE = 0x1000
DEFAULT_CHUNK = 0x100000
DEFAULT_MAX_VAD_SIZE = 4 << 40   # 4 TiB: more than any real reservation (Windows 10's CFG bitmap is 2 TB)


def kernel_requirements() -> List[interfaces.configuration.RequirementInterface]:
    """The requirements every process-memory plugin of the suite starts with."""
    return [
        requirements.ModuleRequirement(name="kernel", description="Windows kernel",
                                       architectures=["Intel32", "Intel64"]),
        requirements.VersionRequirement(name="pslist", component=pslist.PsList, version=(3, 0, 0)),
        requirements.VersionRequirement(name="vadinfo", component=vadinfo.VadInfo, version=(2, 0, 0)),
    ]


def max_vad_size_requirement() -> interfaces.configuration.RequirementInterface:
    """``--max-vad-size``: the most bytes of one VAD a plugin reads."""
    return requirements.IntRequirement(
        name="max_vad_size", default=DEFAULT_MAX_VAD_SIZE, optional=True,
        description=f"Read at most this many bytes of one VAD (default {DEFAULT_MAX_VAD_SIZE:#x}, 4 TiB; "
                    "a warning names each VAD cut)")


def check_max_vad_size(value: Optional[int]) -> None:
    """Raise :class:`output.UsageError` for a ``--max-vad-size`` below one page."""
    if value is not None and value < PAGE:
        raise UsageError(f"--max-vad-size must be at least {PAGE:#x}, not {value}")


def process_filter_requirements() -> List[interfaces.configuration.RequirementInterface]:
    """``--pid`` and ``--name``, as every plugin of the suite takes them."""
    return [
        requirements.ListRequirement(name="pid", element_type=int, optional=True,
                                     description="Only these process IDs"),
        requirements.ListRequirement(name="name", element_type=str, optional=True,
                                     description="Only processes with these names (case-insensitive)"),
    ]


def selected_processes(context: interfaces.context.ContextInterface, kernel_module_name: str,
                       pids: Optional[Sequence[int]], names: Optional[Sequence[str]]) -> list:
    """Active processes matching ``--pid`` and ``--name`` (both, when both are given).

    Raises :class:`output.UsageError` when a PID is not in the active process list, a
    name matches no active process, or no process has both: a bad command must not look
    like a clean image.  Call it (or :func:`check_selection`) from ``run()``, so that the
    error comes before any row."""
    procs = list(pslist.PsList.list_processes(context, kernel_module_name))
    _check_list_closes(context, kernel_module_name, procs)
    problem = selection_problem([(int(p.UniqueProcessId), process_name(p)) for p in procs], pids, names,
                                "the active process list")
    if problem:
        raise UsageError(problem)
    wanted, drop_name = set(pids or []), name_filter(names)
    return [p for p in procs if (not wanted or int(p.UniqueProcessId) in wanted) and not drop_name(p)]


def _check_list_closes(context: interfaces.context.ContextInterface, kernel_module_name: str,
                       procs: Sequence) -> None:
    """Warn (once per direction) when the active process list's forward or backward links do
    not lead back to its head: a cycle or a cut.  Volatility walks both directions, so one
    broken direction loses nothing; both broken may lose the processes between the breaks."""
    if not procs:
        return
    kernel = context.modules[kernel_module_name]
    layer = context.layers[kernel.layer_name]
    head = (kernel.get_symbol("PsActiveProcessHead").address + kernel.offset) & layer.address_mask
    links = kernel.get_type("_EPROCESS").relative_child_offset("ActiveProcessLinks")
    owners = {(int(p.vol.offset) + links) & layer.address_mask: p for p in procs}
    for direction, step in (("forward (Flink)", 0), ("backward (Blink)", kernel.get_type("pointer").size)):
        entry, seen = head, set()
        while True:
            try:
                after = int.from_bytes(layer.read(entry + step, kernel.get_type("pointer").size), "little")
            except exceptions.InvalidAddressException:
                after = None
            after = None if after is None else after & layer.address_mask
            if after == head or after is None or after in seen or after not in owners or len(seen) > len(owners):
                break
            seen.add(after)
            entry = after
        if after == head or entry == head or not _first_time(procs[0], ("open process list", step)):
            continue
        last = owners[entry]
        to = ("an unreadable address" if after is None else
              f"PID {owners[after].UniqueProcessId} ({text_cell(process_name(owners[after]))}) again (a cycle)" if after in seen else f"{after:#x}")
        vollog.warning("The active process list does not close %s: after %d processes, PID %s (%s) leads to %s; "
                       "Volatility also walks the other direction, but processes between two breaks are missing "
                       "(windows.psscan finds them)", direction, len(seen), last.UniqueProcessId,
                       text_cell(process_name(last)), to)


def selection_problem(known: Sequence[Tuple[int, str]], pids: Optional[Sequence[int]],
                      names: Optional[Sequence[str]], where: str) -> Optional[str]:
    """What is wrong with ``--pid``/``--name`` given the ``(pid, name)`` of the processes
    in ``where``: an unknown PID, a name no process has, or no process with both; None
    when every value selects something."""
    pids, names = list(pids or []), list(names or [])
    unknown = sorted(set(pids) - {pid for pid, _ in known})
    if unknown:
        return f"no process with PID {', '.join(map(str, unknown))} in {where}"
    lowered = {name.lower() for _, name in known}
    absent = [text_cell(name) for name in names if name.lower() not in lowered]
    if absent:
        return f"no process named {', '.join(absent)} in {where}"
    wanted = {name.lower() for name in names}
    if pids and names and not any(pid in pids and name.lower() in wanted for pid, name in known):
        return (f"no process with PID {', '.join(map(str, pids))} and name "
                f"{', '.join(map(text_cell, names))} in {where}")
    return None


def check_selection(context: interfaces.context.ContextInterface, kernel_module_name: str,
                    pids: Optional[Sequence[int]], names: Optional[Sequence[str]],
                    include_exited: bool = False) -> None:
    """Raise :class:`output.UsageError` for a ``--pid``/``--name`` that selects no process.

    Call it from a plugin's ``run()``, before the TreeGrid renders.  ``include_exited``
    also accepts processes found only by a pool scan (``psscan``: exited or unlinked), for
    plugins that report on them (the timeline); the scan runs only when the active list
    does not answer."""
    if not pids and not names:
        return
    if not include_exited:
        selected_processes(context, kernel_module_name, pids, names)
        return
    known = [(int(p.UniqueProcessId), process_name(p))
             for p in pslist.PsList.list_processes(context, kernel_module_name)]
    if selection_problem(known, pids, names, "") is None:
        return
    known += [(int(p.UniqueProcessId), process_name(p))
              for p in psscan.PsScan.scan_processes(context, kernel_module_name)]
    problem = selection_problem(known, pids, names, "the active process list or the pool (psscan)")
    if problem:
        raise UsageError(problem)


@dataclass
class VadFacts:
    """What a report needs to say about one VAD."""

    start: int
    end: int            # inclusive
    protection: str
    private: bool
    _file: Optional[str] = None
    image: bool = False  # an image section (VadImageMap), whether or not its file name was read
    _source: Any = dataclasses.field(default=None, repr=False, compare=False)  # MMVAD to name the file from
    scan: Optional[Tuple[int, int]] = None  # (start, end) to read when only part of the range is possible

    @property
    def file(self) -> Optional[str]:
        """The mapped file's name, None if there is none or it cannot be read (read from the
        VAD on first use: most VADs a scan passes are never reported)."""
        if self._source is not None:
            self._file, self._source = _file_name(self._source), None
        return self._file

    @property
    def executable(self) -> bool:
        return "EXECUTE" in self.protection

    @property
    def size(self) -> int:
        return self.end + 1 - self.start

    @property
    def scan_start(self) -> int:
        """First address to read (the VAD's start unless :func:`valid_ranges` cut it)."""
        return self.start if self.scan is None else self.scan[0]

    @property
    def scan_end(self) -> int:
        """Last address to read, inclusive."""
        return self.end if self.scan is None else self.scan[1]


# MmProtectToValue's first eight entries, the same in every Windows version; used only when the
# kernel's symbol table lacks the array (the cache/guard bits of the index are not shown then)
_BASE_PROTECTIONS = ("PAGE_NOACCESS", "PAGE_READONLY", "PAGE_EXECUTE", "PAGE_EXECUTE_READ",
                     "PAGE_READWRITE", "PAGE_WRITECOPY", "PAGE_EXECUTE_READWRITE", "PAGE_EXECUTE_WRITECOPY")


def protection_values(context: interfaces.context.ContextInterface,
                      kernel_module_name: str) -> Optional[List[int]]:
    """The kernel's MmProtectToValue, or None (with a warning) when it cannot be read."""
    kernel = context.modules[kernel_module_name]
    try:
        return vadinfo.VadInfo.protect_values(context, kernel.layer_name, kernel.symbol_table_name)
    except (exceptions.SymbolError, exceptions.InvalidAddressException) as exc:
        vollog.warning("MmProtectToValue unreadable (%s): VAD protections shown without cache/guard bits", exc)
        return None


def _vad_flags(vad):
    """The VAD's VadFlags (``u.VadFlags``; ``Core.u.VadFlags`` from Windows 8), or None."""
    if vad.has_member("u") and vad.u.has_member("VadFlags"):
        return vad.u.VadFlags
    if vad.has_member("Core") and vad.Core.has_member("u") and vad.Core.u.has_member("VadFlags"):
        return vad.Core.u.VadFlags
    return None


def _protection(index: int, protect_values: Optional[List[int]]) -> str:
    """The PAGE_* names of a VAD protection index (as ``MMVAD.get_protection`` gives them)."""
    if protect_values is None:
        return _BASE_PROTECTIONS[index & 7]
    value = protect_values[index] if 0 <= index < len(protect_values) else 0
    return "|".join(name for name, mask in vadinfo.winnt_protections.items() if value & mask)


def _file_name(vad) -> Optional[str]:
    """The mapped file's name; None when it cannot be read."""
    try:
        name = vad.get_file_name()
    except (exceptions.InvalidAddressException, AttributeError):
        return None
    return name if isinstance(name, str) else None


def _is_image(flags) -> bool:
    """VadType == VadImageMap (Vista+), or the ImageMap flag (XP/2003)."""
    if flags.has_member("VadType"):
        return int(flags.VadType) == 2
    return flags.has_member("ImageMap") and bool(flags.ImageMap)


@dataclass(frozen=True)
class _Field:
    """Where one integer or bit field of a VAD lies, relative to the VAD's start."""

    offset: int
    size: int
    signed: bool
    bits: Optional[Tuple[int, int]] = None      # (start bit, end bit) of a bit field

    def value(self, data: bytes) -> int:
        raw = int.from_bytes(data[self.offset:self.offset + self.size], "little",
                             signed=self.signed and self.bits is None)
        return raw if self.bits is None else (raw & ((1 << self.bits[1]) - 1)) >> self.bits[0]


@dataclass(frozen=True)
class _VadLayout:
    """The fields :func:`vad_facts` reads, for one VAD type (resolved through the symbol
    table's objects once, then read from one buffer per VAD)."""

    start: _Field
    start_high: Optional[_Field]
    end: _Field
    end_high: Optional[_Field]
    protection: _Field
    private: Optional[_Field]        # None: ask Volatility's get_private_memory
    vad_type: Optional[_Field]       # VadType (Vista+)
    image_map: Optional[_Field]      # ImageMap (XP/2003)

    @property
    def size(self) -> int:
        """Bytes to read from the VAD's start to cover every field."""
        fields = (self.start, self.start_high, self.end, self.end_high, self.protection,
                  self.private, self.vad_type, self.image_map)
        return max(f.offset + f.size for f in fields if f is not None)


def _field(base: int, member) -> _Field:
    vol = member.vol
    if "start_bit" in vol:
        return _Field(vol.offset - base, vol.base_type.size, False, (vol.start_bit, vol.end_bit))
    return _Field(vol.offset - base, vol.size, bool(vol.data_format.signed))


def _optional_field(base: int, holder, name: str) -> Optional[_Field]:
    return _field(base, getattr(holder, name)) if holder.has_member(name) else None


def _vad_layout(vad) -> Optional[_VadLayout]:
    """The layout of ``vad``'s type, found with the same member tests as Volatility's
    ``get_start``/``get_end`` (``StartingVpn`` or ``Core.StartingVpn``, ``*High`` from Windows
    10) and :func:`_vad_flags`; None when the type lacks a field."""
    base = vad.vol.offset
    start_holder = vad if vad.has_member("StartingVpn") else vad.Core if vad.has_member("Core") else None
    end_holder = vad if vad.has_member("EndingVpn") else vad.Core if vad.has_member("Core") else None
    flags = _vad_flags(vad)
    if start_holder is None or end_holder is None or flags is None or not flags.has_member("Protection"):
        return None
    return _VadLayout(_field(base, start_holder.StartingVpn), _optional_field(base, start_holder, "StartingVpnHigh"),
                      _field(base, end_holder.EndingVpn), _optional_field(base, end_holder, "EndingVpnHigh"),
                      _field(base, flags.Protection), _optional_field(base, flags, "PrivateMemory"),
                      _optional_field(base, flags, "VadType"), _optional_field(base, flags, "ImageMap"))


# per context (a table name means one ISF only within its context): VAD type name -> layout or None
_LAYOUTS: "weakref.WeakKeyDictionary[Any, Dict[str, Optional[_VadLayout]]]" = weakref.WeakKeyDictionary()


def _fast_facts(vad, protect_values: Optional[List[int]]) -> Optional[Tuple[int, int, str, bool, bool]]:
    """``(start, end, protection, private, image)`` read from one buffer, or None when the
    VAD's type has no layout (then the caller asks Volatility field by field)."""
    type_name, layouts = vad.vol.type_name, _LAYOUTS.setdefault(vad._context, {})
    if type_name not in layouts:
        try:
            layouts[type_name] = _vad_layout(vad)
        except (AttributeError, KeyError) as exc:     # a field shaped unlike any table we know
            vollog.debug("VAD type %s read field by field: %s", type_name, exc)
            layouts[type_name] = None
    layout = layouts[type_name]
    if layout is None:
        return None
    data = vad._context.layers.read(vad.vol.layer_name, vad.vol.offset, layout.size)
    start = layout.start.value(data) << 12
    if layout.start_high:
        start |= layout.start_high.value(data) << 44
    end = (layout.end.value(data) + 1) << 12
    if layout.end_high:
        end |= layout.end_high.value(data) << 44
    private = bool(layout.private.value(data) if layout.private else vad.get_private_memory())
    if layout.vad_type:
        image = layout.vad_type.value(data) == 2
    else:
        image = bool(layout.image_map and layout.image_map.value(data))
    return start, end - 1, _protection(layout.protection.value(data), protect_values), private, image


def vad_facts(vad, protect_values: Optional[List[int]]) -> Optional[VadFacts]:
    """Read a VAD's range, protection and backing file; None if its range is unreadable.
    The fields are read from one buffer per VAD through a layout resolved once per VAD type
    (Volatility's per-field helpers build an object per field and re-read the flags each time)."""
    try:
        fast = _fast_facts(vad, protect_values)
        if fast is not None:
            start, end, protection, private, image = fast
            return VadFacts(start, end, protection, private, None, image, None if private else vad)
        start, end = vad.get_start(), vad.get_end()
        flags = _vad_flags(vad)
        if flags is None:
            raise AttributeError("no VadFlags member")
        private = bool(flags.PrivateMemory if flags.has_member("PrivateMemory") else vad.get_private_memory())
        protection = _protection(int(flags.Protection), protect_values)
        image = _is_image(flags)
    except (exceptions.InvalidAddressException, AttributeError) as exc:
        vollog.warning("skipping unreadable VAD at %#x: %s", vad.vol.offset, exc)
        return None
    return VadFacts(start, end, protection, private, None, image, None if private else vad)


def process_vads(proc, protect_values: Optional[List[int]]) -> Iterator[VadFacts]:
    """Each readable, possible VAD of ``proc`` in address order (a warning when there is
    none, when the tree gave fewer VADs than the process counts, and once per impossible
    VAD: see :func:`valid_ranges`)."""
    facts: List[VadFacts] = []
    pid, nodes = proc.UniqueProcessId, 0
    try:
        for vad in vadinfo.VadInfo.list_vads(proc):
            nodes += 1
            fact = vad_facts(vad, protect_values)
            if fact is not None:
                facts.append(fact)
    except (exceptions.InvalidAddressException, RuntimeError) as exc:
        vollog.warning("VAD tree of PID %s is damaged (%s); using what was read", pid, exc)
    if not facts and proc.Peb:                  # kernel processes (System, Registry) have neither
        vollog.warning("PID %s: no readable VAD (VAD root paged out or smeared)", pid)
    counted = _vad_count(proc)
    if nodes and counted is not None and counted != nodes and _first_time(proc, ("count", counted)):
        vollog.warning("PID %s: the VAD tree gave %d VADs, the process counts %d (a damaged or cyclic "
                       "tree?); using what was read", pid, nodes, counted)
    return iter(valid_ranges(facts, user_limit(proc), f"PID {pid} ({text_cell(process_name(proc))})",
                             lambda key: _first_time(proc, key)))


def _vad_count(proc) -> Optional[int]:
    """How many VADs the process says it has (Windows 7's ``VadRoot.NumberGenericTableElements``,
    ``VadCount`` from Windows 8, XP's ``NumberOfVads``), None where none is there or readable."""
    try:
        for member in ("VadCount", "NumberOfVads"):
            if proc.has_member(member):
                return int(getattr(proc, member))
        root = proc.VadRoot
        return int(root.NumberGenericTableElements) if root.has_member("NumberGenericTableElements") else None
    except (exceptions.InvalidAddressException, AttributeError):
        return None


# per context: (pid, what) already warned about, so a plugin that walks a process twice warns once
_WARNED: "weakref.WeakKeyDictionary[Any, set]" = weakref.WeakKeyDictionary()


def _first_time(proc, key: Any) -> bool:
    seen = _WARNED.setdefault(proc._context, set())
    full = (int(proc.vol.offset), key)
    if full in seen:
        return False
    seen.add(full)
    return True


def valid_ranges(vads: Sequence[VadFacts], limit: int, who: str,
                 first_time: Callable[[Any], bool] = lambda key: True) -> List[VadFacts]:
    """The VADs with a possible range, in address order, each with ``scan`` set where only
    part of it can be read: a VAD ending before it starts or starting at or past ``limit``
    (the first address above user space) is dropped; one ending past ``limit`` or running
    into the next VAD is cut there.  One warning per such VAD names ``who`` and its range
    (``first_time(key)`` False: already warned)."""
    ordered = sorted(vads, key=lambda v: (v.start, v.end))
    possible = [v for v in ordered if v.start <= v.end and v.start < limit]
    out: List[VadFacts] = []
    for vad in ordered:
        problems, end = [], vad.end
        if vad.end < vad.start:
            problems.append("ends before it starts")
        elif vad.start >= limit:
            problems.append(f"starts past the user address limit {limit - 1:#x}")
        else:
            if end >= limit:
                end = limit - 1
                problems.append(f"ends past the user address limit {limit - 1:#x}")
            following = next((v for v in possible if v.start > vad.start), None)
            if following is not None and following.start <= end:
                end = following.start - 1
                problems.append(f"overlaps the next VAD at {following.start:#x}")
            same = [v for v in possible if v.start == vad.start]
            if len(same) > 1 and same[-1] is not vad:
                end = vad.start - 1
                problems.append("shares its start with another VAD")
        keep = not problems or vad.start <= end < vad.end
        if problems and first_time(("vad", vad.start, vad.end)):
            what = f"searched only {vad.start:#x}-{end:#x}" if keep else "skipped"
            vollog.warning("%s: impossible VAD %#x-%#x (%s); %s", who, vad.start, vad.end,
                           "; ".join(problems), what)
        if keep:
            out.append(dataclasses.replace(vad, scan=(vad.start, end)) if problems else vad)
    return out


# per context: symbol table name -> first address above user space
_LIMITS: "weakref.WeakKeyDictionary[Any, Dict[str, int]]" = weakref.WeakKeyDictionary()


def user_limit(proc) -> int:
    """The first address above user space for ``proc``'s kernel: ``MmHighestUserAddress + 1``
    when it reads as a plausible value, else the lower canonical half (2^47) of a 64-bit
    kernel or 2^32 for a 32-bit one."""
    context = proc._context
    table = proc.vol.type_name.split(constants.BANG)[0]
    limits = _LIMITS.setdefault(context, {})
    if table not in limits:
        wide = symbols.symbol_table_is_64bit(context=context, symbol_table_name=table)
        fallback = 1 << 47 if wide else 1 << 32
        highest = _highest_user_address(context, table)
        plausible = highest is not None and 0x7FFEFFFF <= highest < fallback
        limits[table] = highest + 1 if plausible else fallback
    return limits[table]


def _highest_user_address(context: interfaces.context.ContextInterface, table: str) -> Optional[int]:
    for name in list(context.modules):
        module = context.modules[name]
        if module.symbol_table_name != table:
            continue
        try:
            address = module.get_symbol("MmHighestUserAddress").address
            return int(module.object(object_type="pointer", offset=address))
        except (exceptions.InvalidAddressException, exceptions.SymbolError, TypeError, ValueError):
            return None
    return None


def process_layer(proc) -> Optional[str]:
    """The name of ``proc``'s address-space layer, or None (with a warning) if it has none."""
    try:
        return proc.add_process_layer()
    except (exceptions.InvalidAddressException, TypeError) as exc:
        vollog.warning("PID %s: no readable address space (%s)", proc.UniqueProcessId, exc)
        return None


def process_spaces(context: interfaces.context.ContextInterface, kernel_module_name: str,
                   pids: Optional[Sequence[int]], names: Optional[Sequence[str]],
                   progress: Optional[Callable[[float, str], None]] = None,
                   doing: str = "Reading", max_vad_size: Optional[int] = None
                   ) -> Iterator[Tuple[Tuple[int, str], interfaces.layers.DataLayerInterface, VadFacts]]:
    """``((pid, name), layer, vad)`` for each VAD of each selected process with an address
    space, lazily (so a consumer can overlap its own work with the walk).  A VAD larger than
    ``max_vad_size`` is read only over its first ``max_vad_size`` bytes (``scan``), with a
    warning."""
    protect = protection_values(context, kernel_module_name)
    procs = selected_processes(context, kernel_module_name, pids, names)
    for index, proc in enumerate(procs):
        pid, name = int(proc.UniqueProcessId), process_name(proc)
        layer_name = process_layer(proc)
        if layer_name is None:
            continue
        if progress:
            progress(100.0 * index / max(len(procs), 1), f"{doing} PID {pid} ({index + 1} of {len(procs)})")
        for vad in process_vads(proc, protect):
            yield (pid, name), context.layers[layer_name], capped(vad, max_vad_size, f"PID {pid} ({text_cell(name)})")


def capped(vad: VadFacts, max_size: Optional[int], who: str) -> VadFacts:
    """``vad`` with ``scan`` cut to its first ``max_size`` bytes (a warning) when it is larger."""
    if not max_size or vad.scan_end + 1 - vad.scan_start <= max_size:
        return vad
    end = vad.scan_start + max_size - 1
    vollog.warning("%s: VAD %#x-%#x is larger than --max-vad-size (%#x bytes); searched only %#x-%#x",
                   who, vad.start, vad.end, max_size, vad.scan_start, end)
    return dataclasses.replace(vad, scan=(vad.scan_start, end))


def read_chunks(layer: interfaces.layers.DataLayerInterface, start: int, end: int,
                chunk: int = DEFAULT_CHUNK, overlap: int = 0,
                skip_unmapped: bool = True) -> Iterator[Tuple[int, bytes, int]]:
    """Yield ``(address, data, owned)`` over [start, end]: ``data`` covers
    ``owned`` bytes plus up to ``overlap`` more, so a match that starts in the
    owned part is seen whole exactly once.  Unreadable pages read as zeros;
    chunks with no page-table entry at all (reserved memory) are skipped
    unless ``skip_unmapped`` is False (callers that need every byte in place)."""
    if chunk <= 0:
        raise ValueError(f"chunk size must be positive, not {chunk}")
    reader = PageTableReader(layer)
    address = start
    while address <= end:
        if skip_unmapped:       # jump over reserved space: whole chunks, so chunk edges stay put
            mapped = reader.next_mapped(address, end + 1)
            if mapped is None:
                return
            address += (mapped - address) // chunk * chunk
        owned = min(chunk, end + 1 - address)
        length = min(owned + overlap, end + 1 - address)
        data = reader.read_mapped(address, length) if skip_unmapped else reader.read(address, length)
        if data is not None:
            yield address, data, owned
        address += owned


def read_range(layer: interfaces.layers.DataLayerInterface, start: int, length: int) -> bytes:
    """``length`` bytes at ``start``, unreadable pages as zeros (keep ``length`` bounded)."""
    return PageTableReader(layer).read(start, length)


def absent_ranges(layer: interfaces.layers.DataLayerInterface, address: int,
                  length: int) -> List[Tuple[int, int]]:
    """Half-open address ranges of the unreadable pages in [address, address+length),
    merged (cost per page table, not per page: huge VADs are fine)."""
    return PageTableReader(layer).absent(address, length)


def resident(layer: interfaces.layers.DataLayerInterface, address: int, length: int) -> bool:
    """Whether every page of [address, address+length) is readable."""
    page = address & ~(PAGE - 1)
    while page < address + length:
        if not layer.is_valid(page, 1):
            return False
        page += PAGE
    return True


def physical_pages(layer, address: int, length: int) -> List[Optional[int]]:
    """Physical address of each page the range touches (None if unmapped)."""
    out = []
    page = address & ~(PAGE - 1)
    while page < address + length:
        try:
            out.append(layer.translate(max(page, address))[0])
        except exceptions.InvalidAddressException:
            out.append(None)
        page += PAGE
    return out


def contiguous(pages: Sequence[Optional[int]]) -> bool:
    """Whether consecutive virtual pages are also consecutive physically."""
    frames = [p & ~(PAGE - 1) for p in pages if p is not None]
    return len(frames) == len(pages) and all(b - a == PAGE for a, b in zip(frames, frames[1:]))


def name_filter(names: Optional[Iterable[str]]) -> Callable[[object], bool]:
    """A pslist filter that drops processes whose name is not in ``names``."""
    wanted = {n.lower() for n in names or []}

    def drop(proc) -> bool:
        return bool(wanted) and process_name(proc).lower() not in wanted
    return drop


def optional(value):
    """``value`` or a NotAvailableValue for renderers."""
    return renderers.NotAvailableValue() if value is None else value


def process_name(proc) -> str:
    """The EPROCESS image name, or a placeholder when it cannot be read."""
    try:
        return proc.ImageFileName.cast("string", max_length=proc.ImageFileName.vol.count,
                                       errors="replace")
    except exceptions.InvalidAddressException:
        return "(unreadable)"
