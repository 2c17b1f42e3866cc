"""``spyeye.injected``: PE images that no loaded file backs, and what they export.

Candidates are executable VADs that are not loader-listed images (manually mapped DLLs in
private or shared memory), image VADs missing from a PEB loader list (the ``ldrmodules``
view) and PE headers at the start of private non-executable VADs. Each is parsed as a
memory-mapped image, even with its ``MZ``/``PE`` magic wiped or pages missing.  The row says
how many exports it has and how many are known SpyEye names, with the SpyEye verdict;
``--exports`` lists each export as a child row.  Compile times after the image's capture
time are flagged.  ``--dump`` writes a file-layout copy rebased to where it was loaded."""
from __future__ import annotations

import datetime
import logging
import re
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pefile
from volatility3.framework import constants, exceptions, interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints
from volatility3.plugins.windows import info

from . import vadwalk
from .output import text_cell
from .parsers import known_names
from .parsers.pe_image import ExportEntry, HeaderEvidence, MappedPE, Reader, file_layout_header, \
    inspect_header, parse_mapped_image

vollog = logging.getLogger(__name__)

REBASE_LIMIT = 64 << 20   # images up to this size are rebased in memory; larger ones are dumped as found
RELOC_SAMPLE = 64         # relocation targets read to tell whether memory is already relocated
LOADER_LISTS = (("load", "InLoadOrderModuleList", "InLoadOrderLinks"),
                ("memory", "InMemoryOrderModuleList", "InMemoryOrderLinks"),
                ("init", "InInitializationOrderModuleList", "InInitializationOrderLinks"))
"""Short name, PEB_LDR_DATA member and LDR_DATA_TABLE_ENTRY link of each loader list."""


@dataclass
class Candidate:
    """A region that may hold an injected image, why it was flagged, and what was parsed."""

    vad: vadwalk.VadFacts
    layer_name: str
    reasons: List[str]
    header: Optional[HeaderEvidence]
    pe: Optional[MappedPE]
    missing: List[Tuple[int, int]] = field(default_factory=list)
    """Half-open RVA ranges of the image (SizeOfImage) that are not resident or lie past the VAD."""

    @property
    def size(self) -> int:
        return self.vad.size


def region_reader(layer: interfaces.layers.DataLayerInterface, base: int) -> Reader:
    """A parser reader over ``layer`` at ``base``: bytes at an RVA, None if any page is absent."""
    def read(rva: int, length: int) -> Optional[bytes]:
        address = base + rva
        if not vadwalk.resident(layer, address, length):
            return None
        try:
            return layer.read(address, length)
        except exceptions.InvalidAddressException:
            return None
    return read


def missing_pages(layer: interfaces.layers.DataLayerInterface, base: int, size: int) -> List[Tuple[int, int]]:
    """Half-open RVA ranges of the pages in [base, base+size) that are not resident."""
    return [(start - base, end - base) for start, end in vadwalk.absent_ranges(layer, base, size)]


def image_missing(layer: interfaces.layers.DataLayerInterface, base: int, vad_size: int,
                  image_size: int) -> List[Tuple[int, int]]:
    """Non-resident pages of an image, plus the part of SizeOfImage past the VAD's end."""
    ranges = missing_pages(layer, base, min(image_size, vad_size))
    if image_size > vad_size:
        if ranges and ranges[-1][1] == vad_size:
            ranges[-1] = (ranges[-1][0], image_size)
        else:
            ranges.append((vad_size, image_size))
    return ranges


def closed_list_bases(head, entry_type: str, link: str) -> Optional[Set[int]]:
    """DllBase of each entry of the list at ``head``; None unless the walk comes back to the
    head (Volatility's ``to_list`` stops quietly at an unreadable entry: a list cut short
    would make every module after the cut look unlinked)."""
    bases: Set[int] = set()
    last_flink = int(head.Flink)
    for entry in head.to_list(entry_type, link):
        bases.add(int(entry.DllBase))
        last_flink = int(getattr(entry, link).Flink)
    return bases if last_flink == head.vol.offset else None


def _pebs(proc) -> List[Tuple[str, object]]:
    """(label, PEB) of the process: the native PEB and, for WoW64, the 32-bit one.
    Raises InvalidAddressException when the WoW64 PEB32 cannot be read."""
    pebs = [("64-bit" if proc.get_is_wow64() else "native", proc.get_peb())]
    if proc.get_is_wow64():
        peb32 = proc.get_peb32()
        if peb32 is None:
            raise exceptions.InvalidAddressException(proc.vol.layer_name, 0, "no PEB32")
        pebs.append(("32-bit", peb32))
    return pebs


def loader_bases(proc) -> Optional[Dict[str, Set[int]]]:
    """DllBase values per PEB loader list (native and WoW64 PEBs together); a list that is
    empty, unreadable or cut short is left out rather than trusted.  None when no list can
    be used (then image VADs are not compared with the lists)."""
    if not proc.Peb:
        return None
    try:
        pebs = _pebs(proc)
    except (exceptions.InvalidAddressException, AttributeError, ValueError) as exc:
        vollog.warning("PID %s: PEB unreadable (%s)", proc.UniqueProcessId, exc)
        return None
    bases: Dict[str, Set[int]] = {}
    broken: Set[str] = set()
    for label, peb in pebs:
        try:
            table = proc.get_symbol_table_name()
            if peb.Ldr.vol.type_name.split(constants.BANG)[-1] == "unsigned long":
                table = proc.set_types(peb)
            ldr = peb.Ldr.dereference()
        except exceptions.InvalidAddressException as exc:
            vollog.warning("PID %s: %s PEB_LDR_DATA unreadable (%s)", proc.UniqueProcessId, label, exc)
            return None
        for short, member, link in LOADER_LISTS:
            try:
                found = closed_list_bases(ldr.member(member), f"{table}{constants.BANG}_LDR_DATA_TABLE_ENTRY", link)
            except exceptions.InvalidAddressException:
                found = None
            if found is None:
                vollog.warning("PID %s: %s %s order list unreadable or cut short; not used", proc.UniqueProcessId, label, short)
                broken.add(short)
            else:
                bases.setdefault(short, set()).update(found)
    usable = {short: found for short, found in bases.items() if found and short not in broken}
    return usable or None


def main_image_base(proc) -> Optional[int]:
    """The PEB's ImageBaseAddress (the exe, which is never in the init order list)."""
    try:
        return int(proc.get_peb().ImageBaseAddress)
    except (exceptions.InvalidAddressException, ValueError):
        return None


def unlisted(start: int, lists: Dict[str, Set[int]], exe_base: Optional[int]) -> List[str]:
    """Loader lists that do not hold the module at ``start``."""
    return [short for short, bases in lists.items()
            if start not in bases and not (short == "init" and start == exe_base)]


class InjectedImages(interfaces.plugins.PluginInterface):
    """Lists PE images injected into process memory and their exports."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 2, 0)   # 1.1: --exports, verdict, capture_time, rebase on --dump; 1.2: vads=, image_file

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return vadwalk.kernel_requirements() + vadwalk.process_filter_requirements() + [
            requirements.VersionRequirement(name="info", component=info.Info, version=(2, 0, 0)),
            requirements.BooleanRequirement(name="all_exec", default=False, optional=True,
                                            description="Report every private executable VAD, PE or not"),
            requirements.BooleanRequirement(name="exports", default=False, optional=True,
                                            description="List each export as a child row"),
            requirements.BooleanRequirement(name="dump", default=False, optional=True,
                                            description="Write each image in file layout, rebased to its VAD start"),
        ]

    # --- detection (reused by spyeye.apiscore) ---------------------------------------------
    @classmethod
    def list_candidates(cls, context: interfaces.context.ContextInterface, kernel_module_name: str,
                        proc, protect_values=None, all_exec: bool = False,
                        vads: Optional[List[vadwalk.VadFacts]] = None) -> Iterator[Candidate]:
        """Regions of ``proc`` that may hold injected images, in address order.

        ``protect_values`` defaults to the kernel's (``VadInfo.protect_values``). With
        ``all_exec`` every private executable VAD is a candidate, PE or not. ``vads``: the
        process's VADs when already read."""
        pid = proc.UniqueProcessId
        if protect_values is None:
            protect_values = vadwalk.protection_values(context, kernel_module_name)
        layer_name = vadwalk.process_layer(proc)
        if layer_name is None:
            return
        lists = loader_bases(proc)
        if lists is None and proc.Peb:
            vollog.warning("PID %s: PEB loader lists unreadable; image VADs not checked", pid)
        exe_base = main_image_base(proc)
        for vad in vadwalk.process_vads(proc, protect_values) if vads is None else vads:
            reason = cls._vad_reason(vad, lists, exe_base)
            if reason is not None:
                candidate = cls._inspect(context.layers[layer_name], layer_name, vad, reason, all_exec)
                if candidate is not None:
                    yield candidate

    @staticmethod
    def _vad_reason(vad: vadwalk.VadFacts, lists: Optional[Dict[str, Set[int]]],
                    exe_base: Optional[int]) -> Optional[str]:
        """Why ``vad`` deserves a look at its first page, or None (normal module, data file)."""
        if not vad.private and (vad.file is not None or vad.image):
            if not vad.executable or lists is None:
                return None                      # a mapped data file, or nothing to compare with
            missing = unlisted(vad.start, lists, exe_base)
            if not missing:
                return None                      # loaded normally by the loader
            label = "image VAD" if vad.file is not None else "image VAD (file name unreadable)"
            return f"{label} not in {'/'.join(missing)} order list{'s' if len(missing) > 1 else ''}"
        if vad.executable:
            return "private executable memory" if vad.private else "executable shared memory (no file)"
        return "private non-executable memory" if vad.private else None

    @staticmethod
    def _inspect(layer, layer_name: str, vad: vadwalk.VadFacts, reason: str,
                 all_exec: bool) -> Optional[Candidate]:
        """Read the VAD's first page and, when it is a PE header, parse the image."""
        size = vad.end + 1 - vad.start
        read = region_reader(layer, vad.start)
        page = read(0, min(vadwalk.PAGE, size))
        header = inspect_header(page) if page is not None else None
        evidence = ["header page not resident"] if header is None else list(header.evidence)
        if header is None or not header.is_pe:
            image_vad = reason.startswith("image VAD")
            if (image_vad and header is None) or (all_exec and reason == "private executable memory"):
                return Candidate(vad, layer_name, [reason, *evidence], header, None)
            return None
        pe = parse_mapped_image(read, size, vad.start)
        return Candidate(vad, layer_name, [reason, *evidence], header, pe,
                         image_missing(layer, vad.start, size, pe.size_of_image or size))

    # --- output ----------------------------------------------------------------------------
    @classmethod
    def capture_time(cls, context: interfaces.context.ContextInterface,
                     kernel_module_name: str) -> Optional[datetime.datetime]:
        """When the image was taken: ``_KUSER_SHARED_DATA.SystemTime``; None (with a warning)
        when it cannot be read."""
        try:
            value = info.Info.get_kuser_structure(context, kernel_module_name).SystemTime.get_time()
        except (exceptions.InvalidAddressException, exceptions.SymbolError, AttributeError) as exc:
            vollog.warning("capture time unreadable (%s): compile times not checked", exc)
            return None
        return value if isinstance(value, datetime.datetime) else None

    def _generator(self, procs: list):
        protect = vadwalk.protection_values(self.context, self.config["kernel"])
        captured = self.capture_time(self.context, self.config["kernel"])
        for index, proc in enumerate(procs):
            pid = int(proc.UniqueProcessId)
            name = text_cell(vadwalk.process_name(proc))
            self._progress_callback(100.0 * index / max(len(procs), 1), f"Looking for images in PID {pid}")
            for candidate in self.list_candidates(self.context, self.config["kernel"], proc, protect,
                                                  bool(self.config.get("all_exec"))):
                self._log_warnings(pid, candidate)
                yield 0, self._region_row(pid, name, candidate, captured)
                if self.config.get("exports"):
                    for export in candidate.pe.exports if candidate.pe else []:
                        yield 1, self._export_row(pid, name, candidate.vad, export)

    @staticmethod
    def _log_warnings(pid: int, candidate: Candidate) -> None:
        for warning in candidate.pe.warnings if candidate.pe else []:
            vollog.warning("PID %d image at %#x: %s", pid, candidate.vad.start, text_cell(warning))

    def _region_row(self, pid: int, name: str, candidate: Candidate,
                    captured: Optional[datetime.datetime]) -> tuple:
        vad, pe = candidate.vad, candidate.pe
        na = renderers.NotApplicableValue()
        pe_values = (na,) * 10 if pe is None else (
            _hex(pe.header_image_base), vadwalk.optional(pe.size_of_image),
            vadwalk.optional(pe.machine), _timestamp(pe.timestamp),
            vadwalk.optional(self._after_capture(pid, candidate, captured)),
            vadwalk.optional(pe.dll_name and text_cell(pe.dll_name)), len(pe.exports),
            export_summary(pe.exports), verdict(pe), _missing_text(candidate.missing))
        row = (pid, name, format_hints.Hex(vad.start), format_hints.Hex(vad.end), vad.protection,
               vad.private, vadwalk.optional(vad.file and text_cell(vad.file)),
               text_cell("; ".join(candidate.reasons)), *pe_values,
               text_cell("; ".join(pe.warnings)) if pe else "")
        if self.config.get("dump"):
            row += self._dump(pid, candidate)
        if self.config.get("exports"):
            row += (na,) * 6
        return row

    @staticmethod
    def _after_capture(pid: int, candidate: Candidate, captured: Optional[datetime.datetime]) -> Optional[bool]:
        """Whether the image's TimeDateStamp is later than the capture time (logged when so)."""
        compiled = _timestamp(candidate.pe.timestamp)
        if captured is None or not isinstance(compiled, datetime.datetime):
            return None
        if compiled <= captured:
            return False
        vollog.warning("PID %d image at %#x: compiled %s, after the image was captured (%s): "
                       "TimeDateStamp forged or wrong", pid, candidate.vad.start, compiled, captured)
        return True

    def _export_row(self, pid: int, name: str, vad: vadwalk.VadFacts, export: ExportEntry) -> tuple:
        na = renderers.NotApplicableValue()
        before = len(self._columns()) - 6                   # the region columns, then the export ones
        return (pid, name, format_hints.Hex(vad.start), format_hints.Hex(vad.end), *(na,) * (before - 4),
                export.ordinal, vadwalk.optional(export.name and text_cell(export.name)),
                format_hints.Hex(export.rva), format_hints.Hex(export.address),
                vadwalk.optional(export.forwarder and text_cell(export.forwarder)),
                vadwalk.optional(known_tag(export.name)))

    def _dump(self, pid: int, candidate: Candidate) -> tuple:
        """(File output, Dump Note) of the image's dump."""
        if candidate.pe is None:
            return renderers.NotAvailableValue(), "no PE headers: not dumped"
        try:
            name, note = self.dump_image(candidate, pid)
        except (ValueError, OSError, pefile.PEFormatError) as exc:
            vollog.warning("PID %d image at %#x: not dumped (%s)", pid, candidate.vad.start, exc)
            return renderers.UnreadableValue(), text_cell(f"not dumped: {exc}")
        vollog.info("PID %d image at %#x: %s: %s", pid, candidate.vad.start, name, note)
        return name, note

    def dump_image(self, candidate: Candidate, pid: int) -> Tuple[str, str]:
        """Write the image in file layout, rebased to its VAD start; returns the file name
        and what was done to the image base."""
        name, chunks, note = self.image_file(self.context, candidate, pid)
        with self.open(name) as handle:
            for chunk in chunks:
                handle.write(chunk)
        return handle.preferred_filename, note      # final name, set when the handler closes

    @classmethod
    def image_file(cls, context: interfaces.context.ContextInterface, candidate: Candidate,
                   pid: int) -> Tuple[str, Iterator[bytes], str]:
        """(file name, the bytes ``--dump`` writes, in chunks, what was done to the image base)."""
        layer = context.layers[candidate.layer_name]
        start = candidate.vad.start
        header_page = layer.read(start, min(vadwalk.PAGE, candidate.size), pad=True)
        header, size = file_layout_header(header_page, candidate.size)
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", re.sub(r"(?i)\.dll$", "", candidate.pe.dll_name or "image"))
        chunks = cls._image_chunks(layer, start, header, size, candidate.size)
        note = f"image of {size:#x} bytes dumped as found (over {REBASE_LIMIT >> 20} MiB: not rebased)"
        if size <= REBASE_LIMIT:
            data, note = rebase_image(b"".join(chunks), start)
            chunks = iter((data,))
        return f"pid.{pid}.{start:#x}.{stem}.dll", chunks, note

    @staticmethod
    def _image_chunks(layer, start: int, header: bytes, size: int, vad_size: int) -> Iterator[bytes]:
        """The file's bytes: the fixed header, the VAD's bytes after it (never read into the
        next mapping), zeros up to ``size``."""
        yield header[:size]
        in_vad = min(size, vad_size)
        if in_vad > len(header):
            for _, data, owned in vadwalk.read_chunks(layer, start + len(header), start + in_vad - 1,
                                                      skip_unmapped=False):
                yield data[:owned]
        if size > max(in_vad, len(header)):
            yield bytes(size - max(in_vad, len(header)))

    def _columns(self) -> List[Tuple[str, type]]:
        columns = [("PID", int), ("Process", str), ("VAD Start", format_hints.Hex),
                   ("VAD End", format_hints.Hex), ("Protection", str), ("Private", bool),
                   ("File", str), ("Reason", str), ("Image Base", format_hints.Hex), ("Size", int),
                   ("Machine", str), ("Timestamp", datetime.datetime), ("After Capture", bool),
                   ("DLL Name", str), ("Exports", int), ("Export Summary", str), ("Verdict", str),
                   ("Missing", str), ("Warnings", str)]
        if self.config.get("dump"):
            columns += [("File output", str), ("Dump Note", str)]
        if self.config.get("exports"):
            columns += [("Ordinal", int), ("Export Name", str), ("RVA", format_hints.Hex),
                        ("Address", format_hints.Hex), ("Forwarder", str), ("Known", str)]
        return columns

    def run(self) -> renderers.TreeGrid:
        procs = vadwalk.selected_processes(self.context, self.config["kernel"], self.config.get("pid"),
                                           self.config.get("name"))      # a bad --pid/--name fails here
        return renderers.TreeGrid(self._columns(), self._generator(procs))


def export_summary(exports: List[ExportEntry]) -> str:
    """``19 exports, 19 known SpyEye plugin names`` (and Zeus-derived host names, if any)."""
    spyeye = sum(1 for e in exports if e.name in known_names.known_spyeye_exports())
    zeus = sum(1 for e in exports if e.name in known_names.zeus_host_exports())
    parts = [f"{len(exports)} export{'' if len(exports) == 1 else 's'}"]
    if exports:
        parts.append(f"{spyeye} known SpyEye plugin name{'' if spyeye == 1 else 's'}")
    if zeus:
        parts.append(f"{zeus} Zeus-derived plugin host name{'' if zeus == 1 else 's'}")
    return ", ".join(parts)


def verdict(pe: MappedPE) -> str:
    """Whether the image is a SpyEye plugin, and on what evidence: its export directory's
    DLL name is a known plugin module name, and/or its exports are SpyEye plugin API names.
    Zeus-derived plugin host exports are evidence against."""
    spyeye = sum(1 for e in pe.exports if e.name in known_names.known_spyeye_exports())
    zeus = sum(1 for e in pe.exports if e.name in known_names.zeus_host_exports())
    evidence = []
    if known_module(pe.dll_name):
        evidence.append("known plugin DLL name")
    if spyeye:
        evidence.append(f"{spyeye} of {len(pe.exports)} exports are SpyEye plugin API")
    if zeus:
        return f"Zeus-derived plugin host, not SpyEye ({zeus} host exports)"
    if evidence:
        return "SpyEye plugin: " + "; ".join(evidence)
    return "no SpyEye names"


def rebase_image(data: bytes, base: int) -> Tuple[bytes, str]:
    """The file-layout image ``data`` with ImageBase set to ``base`` (where it was loaded),
    and a note saying what was done.  When the image's pointers still hold the header's old
    base (sampled at relocation targets), its base relocations are applied; when they
    already point into ``base`` (the loader or injector relocated it), only the header changes."""
    pe = pefile.PE(data=data, fast_load=True)
    old = pe.OPTIONAL_HEADER.ImageBase
    if old == base:
        return data, f"ImageBase is already {base:#x}, the VAD start"
    pe.parse_data_directories(directories=[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_BASERELOC"]])
    targets = [entry for block in getattr(pe, "DIRECTORY_ENTRY_BASERELOC", []) for entry in block.entries
               if entry.type in (3, 10)]                          # HIGHLOW, DIR64
    if not targets:
        pe.OPTIONAL_HEADER.ImageBase = base
        return pe.write(), f"ImageBase {old:#x} -> {base:#x} (the VAD start); no relocations to apply"
    size = pe.OPTIONAL_HEADER.SizeOfImage
    in_old = in_new = 0
    for entry in targets[:RELOC_SAMPLE]:
        value = pe.get_qword_at_rva(entry.rva) if entry.type == 10 else pe.get_dword_at_rva(entry.rva)
        in_old += value is not None and old <= value < old + size
        in_new += value is not None and base <= value < base + size
    if in_new >= in_old:
        pe.OPTIONAL_HEADER.ImageBase = base
        return pe.write(), (f"ImageBase {old:#x} -> {base:#x} (the VAD start); memory already relocated "
                            f"({in_new} of {min(len(targets), RELOC_SAMPLE)} sampled pointers point into it)")
    pe.relocate_image(base)
    return pe.write(), f"rebased {old:#x} -> {base:#x} (the VAD start): {len(targets)} relocations applied"


def known_tag(name: Optional[str]) -> Optional[str]:
    """What the known-names data says about an export name, if anything."""
    return known_names.export_tag(name) if name else None


def known_module(dll_name: Optional[str]) -> Optional[str]:
    """A tag when the export directory's DLL name is a known SpyEye plugin module name."""
    if dll_name and dll_name.lower() in known_names.plugin_module_names():
        return "SpyEye plugin module name"
    return None


def _hex(value: Optional[int]):
    return renderers.NotAvailableValue() if value is None else format_hints.Hex(value)


def _timestamp(value: Optional[int]):
    if value is None:
        return renderers.NotAvailableValue()
    return datetime.datetime.fromtimestamp(value, tz=datetime.timezone.utc)


def _missing_text(missing: List[Tuple[int, int]]) -> str:
    """Non-resident ranges as ``start-end`` RVAs (half-open), or an empty string."""
    return ", ".join(f"{start:#x}-{end:#x}" for start, end in missing)
