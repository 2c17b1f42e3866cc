"""``spyeye.apiscore``: score code for resolving Windows APIs by itself, and say why.

Code that finds its imports by walking the PEB loader lists and export tables and
comparing name hashes with constants is a strong sign of malice. Each region is
disassembled in its process's mode and cut into functions; named traits are detected per
function with the instructions that show them, and a region scores what its best window (a
function and the functions it calls) scores, 0-100, with a confidence word
(``parsers/api_traits.py``); hash constants are resolved to the API names they stand for
(``parsers/api_hashes.py``)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional

from volatility3.framework import exceptions, interfaces, renderers, symbols
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints

from . import injected, vadwalk
from .output import text_cell
from .parsers import api_traits
from .parsers.pe_image import MappedPE, inspect_header, parse_mapped_image

vollog = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = api_traits.DEFAULT_MAX_BYTES
MACHINE_BITS = {"x86": 32, "x64": 64}
MODE_NAMES = {32: "x86", 64: "x64"}


@dataclass
class Region:
    """An executable region to score, why it was chosen, and its PE image if it is one."""

    vad: vadwalk.VadFacts
    layer_name: str
    reason: str
    pe: Optional[MappedPE]


@dataclass
class Scored:
    """A region's analysis and how it was obtained."""

    region: Region
    bits: int
    analysed: int
    method: str
    analysis: api_traits.Analysis


def _function_cell(name: Optional[str]):
    """A function name (an export name read from memory: control characters escaped), or N/A."""
    return vadwalk.optional(text_cell(name) if name else None)


class ApiScore(interfaces.plugins.PluginInterface):
    """Scores executable regions for dynamic API resolution (PEB walk, export parsing, name hashes)."""

    _required_framework_version = (2, 0, 0)
    _version = (2, 1, 0)   # 2.0: scores per function window, Confidence/Function columns; 2.1: candidate_regions

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return vadwalk.kernel_requirements() + [
            requirements.VersionRequirement(name="injected", component=injected.InjectedImages,
                                            version=(1, 0, 0)),
            *vadwalk.process_filter_requirements(),
            requirements.BooleanRequirement(name="all_exec", default=False, optional=True,
                                            description="Score every executable VAD (images included)"),
            requirements.IntRequirement(name="address", optional=True,
                                        description="Score only the VAD containing this address"),
            requirements.IntRequirement(name="max_bytes", default=DEFAULT_MAX_BYTES, optional=True,
                                        description="Bytes of each region analysed at most"),
            requirements.IntRequirement(name="min_score", default=0, optional=True,
                                        description="Only regions scoring at least this"),
            requirements.BooleanRequirement(name="verbose", default=False, optional=True,
                                            description="Add a child row per piece of evidence"),
            requirements.IntRequirement(name="max_evidence", default=20, optional=True,
                                        description="Evidence rows per trait with --verbose"),
        ]

    # --- region selection (reusable) --------------------------------------------------------
    @classmethod
    def list_regions(cls, context: interfaces.context.ContextInterface, kernel_module_name: str, proc,
                     protect_values, all_exec: bool = False, address: Optional[int] = None) -> Iterator[Region]:
        """Regions of ``proc`` to score: by default the injected-region finder's candidates
        (private executable VADs and flagged images); with ``all_exec`` every executable VAD;
        with ``address`` the VAD containing it."""
        if not all_exec and address is None:
            yield from cls.candidate_regions(injected.InjectedImages.list_candidates(
                context, kernel_module_name, proc, protect_values, all_exec=True))
            return
        layer_name = vadwalk.process_layer(proc)
        if layer_name is None:
            return
        layer = context.layers[layer_name]
        for vad in vadwalk.process_vads(proc, protect_values):
            if address is not None and not vad.start <= address <= vad.end:
                continue
            if address is None and not vad.executable:
                continue
            reason = f"contains {address:#x}" if address is not None else "executable VAD"
            yield Region(vad, layer_name, reason, cls.parse_pe(layer, vad))

    @staticmethod
    def candidate_regions(candidates: Iterable[injected.Candidate]) -> Iterator[Region]:
        """The default regions: ``list_candidates(..., all_exec=True)``'s candidates."""
        for candidate in candidates:
            reasons = candidate.reasons if candidate.pe else candidate.reasons[:1]  # header evidence for PEs
            yield Region(candidate.vad, candidate.layer_name, "; ".join(reasons), candidate.pe)

    @staticmethod
    def parse_pe(layer: interfaces.layers.DataLayerInterface, vad: vadwalk.VadFacts) -> Optional[MappedPE]:
        """The PE image at the start of ``vad``, or None when its first page is no PE header."""
        size = vad.end + 1 - vad.start
        read = injected.region_reader(layer, vad.start)
        page = read(0, min(vadwalk.PAGE, size))
        if page is None or not inspect_header(page).is_pe:
            return None
        return parse_mapped_image(read, size, vad.start)

    @classmethod
    def process_bits(cls, context: interfaces.context.ContextInterface, kernel_module_name: str, proc) -> int:
        """32 for processes of a 32-bit kernel and WoW64 processes, else 64."""
        kernel = context.modules[kernel_module_name]
        if not symbols.symbol_table_is_64bit(context=context, symbol_table_name=kernel.symbol_table_name):
            return 32
        try:
            return 32 if proc.get_is_wow64() else 64
        except exceptions.InvalidAddressException:
            vollog.warning("PID %s: WoW64 state unreadable; assuming 64-bit code", proc.UniqueProcessId)
            return 64

    # --- scoring (reusable) ------------------------------------------------------------------
    @classmethod
    def score_region(cls, context: interfaces.context.ContextInterface, region: Region, process_bits: int,
                     max_bytes: int = DEFAULT_MAX_BYTES) -> Scored:
        """Disassemble at most ``max_bytes`` of the region (a PE from its entry point and
        exports, other code by linear sweep) and score it."""
        layer = context.layers[region.layer_name]
        start = region.vad.start
        length = max(0, min(region.vad.end + 1 - start, max_bytes))
        code = vadwalk.read_range(layer, start, length)
        if region.pe:
            bits = MACHINE_BITS.get(region.pe.machine, process_bits)
            analysis = api_traits.analyse_image(code, region.pe, bits, max_bytes)
            method = "entry points" if cls.entry_points(region.pe, start, start + length) else "linear sweep"
        else:
            bits, method = process_bits, "linear sweep"
            analysis = api_traits.analyse(code, start, bits, None, max_bytes)
        return Scored(region, bits, length, method, analysis)

    @staticmethod
    def entry_points(pe: MappedPE, low: int, high: int) -> List[int]:
        """The PE's entry point and code exports that lie in [low, high)."""
        return api_traits.image_entries(pe, low, high)

    # --- output --------------------------------------------------------------------------------
    def _generator(self, max_bytes: int):
        protect = vadwalk.protection_values(self.context, self.config["kernel"])
        address = self.config.get("address")
        found = False
        procs = vadwalk.selected_processes(self.context, self.config["kernel"], self.config.get("pid"),
                                           self.config.get("name"))
        for index, proc in enumerate(procs):
            pid, name = int(proc.UniqueProcessId), vadwalk.process_name(proc)
            self._progress_callback(100.0 * index / max(len(procs), 1), f"Scoring code in PID {pid}")
            bits = self.process_bits(self.context, self.config["kernel"], proc)
            for region in self.list_regions(self.context, self.config["kernel"], proc, protect,
                                            bool(self.config.get("all_exec")), address):
                found = True
                scored = self._score(pid, region, bits, max_bytes)
                if scored is None or (scored.analysis.score or 0) < (self.config.get("min_score") or 0):
                    continue
                yield 0, self._region_row(pid, name, scored)
                if self.config.get("verbose"):
                    yield from self._evidence_rows(pid, name, scored)
        if address is not None and not found:
            vollog.error("no VAD of the selected processes contains %#x", address)

    def _score(self, pid: int, region: Region, bits: int, max_bytes: int) -> Optional[Scored]:
        try:
            scored = self.score_region(self.context, region, bits, max_bytes)
        except exceptions.InvalidAddressException as exc:
            vollog.warning("PID %d region %#x unreadable: %s", pid, region.vad.start, exc)
            return None
        if scored.analysed < region.vad.end + 1 - region.vad.start:
            vollog.info("PID %d region %#x: only the first %#x bytes analysed (--max-bytes)",
                        pid, region.vad.start, scored.analysed)
        return scored

    @staticmethod
    def _common(pid: int, name: str, scored: Scored) -> tuple:
        vad = scored.region.vad
        return (pid, name, format_hints.Hex(vad.start), format_hints.Hex(vad.end), vad.protection,
                vadwalk.optional(vad.file), scored.region.reason, MODE_NAMES[scored.bits], scored.method,
                scored.analysed)

    def _region_row(self, pid: int, name: str, scored: Scored) -> tuple:
        analysis = scored.analysis
        na = renderers.NotApplicableValue()
        value = na if analysis.score is None else analysis.score
        return (*self._common(pid, name, scored), analysis.instructions, analysis.decoded, value,
                analysis.confidence, ",".join(analysis.traits), ",".join(analysis.resolved_apis),
                _function_cell(analysis.function), na, na, na)

    def _evidence_rows(self, pid: int, name: str, scored: Scored):
        na = renderers.NotApplicableValue()
        limit = max(1, self.config.get("max_evidence") or 1)
        for trait, evidence in scored.analysis.traits.items():
            if len(evidence) > limit:
                vollog.info("PID %d region %#x: %d of %d %s evidence rows shown (--max-evidence)",
                            pid, scored.region.vad.start, limit, len(evidence), trait)
            for item in evidence[:limit]:
                apis = ",".join(hit.label for hit in item.hits)
                yield 1, (*self._common(pid, name, scored), na, na, na, na, trait, apis,
                          _function_cell(item.function), format_hints.Hex(item.address), item.instruction,
                          item.detail)

    def run(self) -> renderers.TreeGrid:
        columns = [("PID", int), ("Process", str), ("Start", format_hints.Hex), ("End", format_hints.Hex),
                   ("Protection", str), ("File", str), ("Reason", str), ("Mode", str), ("Method", str),
                   ("Analysed", int), ("Instructions", int), ("Decoded", int), ("Score", int), ("Confidence", str),
                   ("Traits", str), ("APIs", str), ("Function", str),
                   ("Address", format_hints.Hex), ("Instruction", str), ("Detail", str)]
        vadwalk.check_selection(self.context, self.config["kernel"], self.config.get("pid"), self.config.get("name"))
        max_bytes = self.config.get("max_bytes")
        max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
        if max_bytes <= 0:
            vollog.error("--max-bytes must be positive, not %d", max_bytes)
            return renderers.TreeGrid(columns, iter(()))
        return renderers.TreeGrid(columns, self._generator(max_bytes))
