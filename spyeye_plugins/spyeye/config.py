"""``spyeye.config``: find and decode SpyEye artifacts in process memory.

VAD by VAD (through ``spyeye.vadsearch``'s scanner), the plugin looks for the
markers of SpyEye's in-memory traces: the ``!EYE`` (C1) settings block,
form-grabber records around ``hooked_func``, gate check-in query strings, mutex
and pipe names, webinject entries and encrypted ``config.bin`` images.  Around
each hit it reads a bounded window of resident memory and hands it to the pure
decoders in ``parsers.spyeye_artifacts``; one row per artifact, with a child
row per decoded field."""
from __future__ import annotations

import functools
import itertools
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from volatility3.framework import exceptions, interfaces, objects, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints
from volatility3.framework.symbols import intermed
from volatility3.framework.symbols import windows as _windows  # noqa: F401  (before mutantscan: a cycle)
from volatility3.plugins.windows import mutantscan

from . import poolscan, vadsearch, vadwalk
from .output import UsageError, text_cell
from .parsers import spyeye_artifacts as sa
from .parsers.patterns import Hit, PatternSet

vollog = logging.getLogger(__name__)

PAGE = vadwalk.PAGE
LAYOUT_SUBPATH = "spyeye"  # declared C1 layouts live in symbols/spyeye/<name>.json
LAYOUT_TYPE = "c1_block"  # the struct a layout file declares, read at the marker + 4
# YARA finds the prefix fast; the regex then confirms a check-in at that spot
CHECKIN_PREFIX = b"guid="
CHECKIN_REGEX = re.compile(rb"(?<![A-Za-z0-9_])guid=[\x21-\x25\x27-\x7e]{1,96}&ver=[0-9]")
KNOWN_NAME_KINDS = ("mutex", "pipe")
RAW_FIELDS = ("func_data.raw",)  # raw bytes as hex: long, shown only with --raw
CONFIRMED_POINTS = 10            # a live mutant object of the name found in memory

# kind -> (bytes read before the hit, bytes read after it)
WINDOWS: Dict[str, Tuple[int, int]] = {
    "c1": (16, len(sa.MARKER) + sa.C1_WINDOW),
    "stolen_record": (sa.FRAME_SEARCH_BACK, 0x10000),
    "checkin": (1, 0x800),
    "webinject": (sa.WEBINJECT_BACK, sa.WEBINJECT_WINDOW),
    "config_image": (0, 0x40000),
    "known_name": (0x200, 0x200),
}
RATINGS = ((70, "high"), (30, "medium"), (0, "low"))
LOG_FLOOR = 30  # decoder warnings of artifacts rated low go to the debug log only


def rating(score: int) -> str:
    """The word for a 0-100 score: high (70+), medium (30-69) or low (below 30)."""
    return next(word for floor, word in RATINGS if score >= floor)


@dataclass
class Artifact:
    """One decoded artifact, with the bytes it covers (for de-duplication and --dump)."""

    kind: str
    address: int
    length: int
    score: int
    reasons: List[str]
    fields: List[Tuple[str, str]]
    warnings: List[str] = field(default_factory=list)
    dump: Optional[bytes] = None


@dataclass
class Window:
    """Resident memory around a hit: ``data`` starts at ``start``."""

    start: int
    data: bytes
    notes: List[str]


@functools.lru_cache(maxsize=1)
def marker_patterns() -> Tuple[PatternSet, Dict[str, str]]:
    """The single-pass pattern set, and the artifact kind of each pattern text."""
    hexes = {" ".join(f"{b:02X}" for b in text): kind for text, kind in (
        (sa.MARKER, "c1"), (b"hooked_func", "stolen_record"), (b"data_before", "webinject"),
        (sa.CONFIG_ZIP_MAGIC, "config_image"), (CHECKIN_PREFIX, "checkin"))}
    names = [name for kind in KNOWN_NAME_KINDS for name in sa.KNOWN_STRINGS[kind]]
    keywords = sorted(set(names) | {name[::-1] for name in names})
    kinds = {**hexes, **{word: "known_name" for word in keywords}}
    return PatternSet(keywords=keywords, hex_patterns=list(hexes)), kinds


# --- turning decoder results into (field, value) rows ---

def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def flatten(prefix: str, value: Any) -> Iterator[Tuple[str, str]]:
    """(dotted name, text) pairs; a list gives one pair per item under the same name."""
    if value is None:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flatten(f"{prefix}.{key}" if prefix else key, item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, (list, tuple)):
                yield prefix, ": ".join(_text(part) for part in item)
            else:
                yield from flatten(prefix, item)
    else:
        yield prefix, _text(value)


def _without(result: Dict[str, Any], *keys: str) -> Dict[str, Any]:
    return {key: value for key, value in result.items() if key not in keys}


def c1_fields(result: sa.C1Result) -> List[Tuple[str, str]]:
    """Classified strings by kind, then how the block was read."""
    rows = list(flatten("", result.fields))
    rows += [("reversed", found.text) for found in result.strings if found.reversed and found.kind]
    if result.xor_key is not None:
        rows.append(("xor_key", f"{result.xor_key:#04x}"))
    rows += [("encoding", result.encoding), ("block_length", str(result.block_length))]
    if result.address is not None:
        rows.append(("page_offset", f"{result.address & (PAGE - 1):#05x}"))
    rows += flatten("layout", result.layout_fields)
    rows += flatten("layout_agreement", result.layout_agreement)
    return rows


def record_fields(result: sa.RecordResult) -> List[Tuple[str, str]]:
    decoded = _without(result.to_dict(), "hit_offset", "frame_offset", "frame_length", "raw", "confidence",
                       "reasons", "warnings")
    rows = list(flatten("", decoded))
    if "func_data" in result.raw:
        rows.append(("func_data.raw", result.raw["func_data"].hex()))
    return rows


def config_fields(result: sa.ConfigImageResult) -> List[Tuple[str, str]]:
    decoded = _without(result.to_dict(), "offset", "members", "confidence", "reasons", "warnings")
    rows = list(flatten("", decoded))
    rows += [("member", f"{m.name} ({m.compressed_size} packed, {m.uncompressed_size} plain, method {m.method}, "
                        f"flags {m.flags:#x})") for m in result.members]
    return rows


# --- decoding one hit ---

def read_window(layer: interfaces.layers.DataLayerInterface, vad: vadwalk.VadFacts, address: int,
                before: int, after: int) -> Window:
    """The VAD's bytes in [address-before, address+after), cut at the nearest non-resident pages."""
    low, high = max(vad.scan_start, address - before), min(vad.scan_end + 1, address + after)
    first = address & ~(PAGE - 1)
    while first > low and vadwalk.resident(layer, first - 1, 1):
        first -= PAGE
    last = (address & ~(PAGE - 1)) + PAGE
    while last < high and vadwalk.resident(layer, last, 1):
        last += PAGE
    start, end = max(low, first), min(high, last)
    notes = []
    if start > low:
        notes.append(f"window starts after a paged-out page at {start:#x}")
    if end < high:
        notes.append(f"window cut by a paged-out page at {end:#x}")
    return Window(start, layer.read(start, end - start, pad=True), notes)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # escaped in layout strings: a wrong layout reads garbage


def read_layout(context: interfaces.context.ContextInterface, layer_name: str, table: str,
                address: int) -> Dict[str, Any]:
    """The declared C1 struct at ``address`` through the object model (strings and integers)."""
    block = context.object(table + "!" + LAYOUT_TYPE, layer_name, address)
    values: Dict[str, Any] = {}
    for name, _ in sorted(block.vol.members.items(), key=lambda item: item[1][0]):
        member = getattr(block, name)
        if isinstance(member, objects.Array):
            width = member.vol.subtype.size
            text = member.cast("string", max_length=member.vol.count * width, errors="replace",
                               encoding="utf-16-le" if width == 2 else "latin-1")
            values[name] = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
        elif isinstance(member, int):
            values[name] = int(member)
    return values


def c1_artifact(data: bytes, offset: int, address: int,
                declared: Optional[Dict[str, Any]] = None) -> Artifact:
    result = sa.decode_c1(data, offset, address, declared)
    length = len(sa.MARKER) + result.block_length
    return Artifact("c1", address, length, result.confidence, result.reasons, c1_fields(result),
                    dump=data[offset:offset + length])


def record_artifact(data: bytes, offset: int, address: int) -> Artifact:
    """A framed record starts at its frame; an unframed one at the hit, and dumps the pair-search window."""
    result = sa.decode_collector_record(data, offset)
    fields = record_fields(result)
    if result.framed:
        start, length = result.frame_offset, result.frame_length
        return Artifact("stolen_record", address - offset + start, length, result.confidence, result.reasons,
                        fields, result.warnings, data[start:start + length])
    low, high = max(0, offset - sa.PAIR_WINDOW), min(len(data), offset + sa.PAIR_WINDOW)
    return Artifact("stolen_record", address, len(b"hooked_func"), result.confidence, result.reasons, fields,
                    result.warnings, data[low:high])


def checkin_artifact(data: bytes, offset: int, address: int) -> Artifact:
    result = sa.decode_checkin(data[offset:])
    decoded = _without(result, "offset", "length", "params", "os_version", "confidence", "reasons", "warnings")
    return Artifact("checkin", address, max(result["length"], 1), result["confidence"], result["reasons"],
                    list(flatten("", decoded)), result["warnings"])


def webinject_artifact(data: bytes, offset: int, address: int) -> Artifact:
    result = sa.decode_webinject(data, offset)
    decoded = _without(result.to_dict(), "offset", "length", "confidence", "reasons", "warnings")
    return Artifact("webinject", address, max(result.length, 1), result.confidence, result.reasons,
                    list(flatten("", decoded)), result.warnings)


def config_image_artifact(data: bytes, offset: int, address: int) -> Artifact:
    result = sa.decode_config_image(data, offset)
    length = result.estimated_size or len(sa.CONFIG_ZIP_MAGIC)
    return Artifact("config_image", address, length, result.confidence, result.reasons,
                    config_fields(result), result.warnings, data[offset:offset + length])


def known_name_artifact(data: bytes, offset: int, address: int) -> Artifact:
    """The mutex or pipe name that contains the keyword hit."""
    found = next((f for f in sa.find_known_strings(data) if f.offset <= offset < f.offset + _width(f)), None)
    if found is None or found.kind not in KNOWN_NAME_KINDS:
        return Artifact("mutex", address, 1, 0, ["keyword not inside a readable name"], [])
    score, reasons = sa.rate_known_string(found)
    fields = [("name", found.text), ("encoding", found.encoding), ("reversed", _text(found.reversed))]
    kind = "mutex_name" if found.kind == "mutex" else found.kind   # a string, until a live object confirms it
    return Artifact(kind, address - offset + found.offset, _width(found), score, reasons, fields)


def confirm_mutex(artifact: Artifact, mutants: Dict[str, int]) -> None:
    """Make a ``mutex_name`` artifact a ``mutex`` when a live mutant object has its name
    (``mutants``: lower-cased object name -> offset of the _KMUTANT), else say it is a
    string only."""
    name = dict(artifact.fields).get("name", "")
    offset = mutants.get(sa.object_name(name).lower())
    if offset is None:
        artifact.reasons.append(f"string only: no live mutant object has this name ({len(mutants)} named "
                                f"mutant{'' if len(mutants) == 1 else 's'} in the pool, as windows.mutantscan finds them)")
        artifact.fields.append(("mutant", "none found"))
        return
    artifact.kind = "mutex"
    artifact.score = min(100, artifact.score + CONFIRMED_POINTS)
    artifact.reasons.append(f"confirmed by a live mutant object (_KMUTANT at {offset:#x}, as windows.mutantscan "
                            f"lists it) (+{CONFIRMED_POINTS})")
    artifact.fields.append(("mutant", f"{offset:#x}"))


def _width(found: sa.FoundString) -> int:
    """Bytes a found string occupies in memory."""
    return len(found.text) * (2 if found.encoding == "utf-16le" else 1)


DECODERS: Dict[str, Callable[[bytes, int, int], Artifact]] = {
    "stolen_record": record_artifact, "checkin": checkin_artifact, "webinject": webinject_artifact,
    "config_image": config_image_artifact, "known_name": known_name_artifact,
}


class SpyEyeConfig(interfaces.plugins.PluginInterface):
    """Finds and decodes SpyEye C1 blocks, stolen-data records, check-ins and other traces."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 3, 0)   # 1.1: mutex_name kind, confirm_mutex, live_mutants; 1.1.1: field rows repeat the
    # context; 1.2: --max-vad-size; 1.3: live_mutants(pools=)
    _live_mutants: Optional[Dict[str, int]] = None   # scanned on the first mutex name, once per run

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return vadwalk.kernel_requirements() + [
            requirements.VersionRequirement(name="vadsearch", component=vadsearch.VadSearch, version=(1, 4, 0)),
            requirements.VersionRequirement(name="mutantscan", component=mutantscan.MutantScan, version=(2, 0, 0)),
            *vadwalk.process_filter_requirements(),
            requirements.BooleanRequirement(name="dump", default=False, optional=True,
                                            description="Write each C1 block, record and config image to a file"),
            requirements.BooleanRequirement(name="raw", default=False, optional=True,
                                            description="Also show raw bytes as hex (e.g. func_data.raw)"),
            requirements.StringRequirement(name="c1_layout", optional=True,
                                           description="Also read C1 blocks with this declared layout "
                                                       "(symbols/spyeye/NAME.json, e.g. c1_layout; unconfirmed)"),
            vadwalk.max_vad_size_requirement(),
        ]

    # --- walking memory ---
    @classmethod
    def find_artifacts(cls, context: interfaces.context.ContextInterface,
                       layer: interfaces.layers.DataLayerInterface, vad: vadwalk.VadFacts,
                       layout_table: Optional[str] = None) -> Iterator[Artifact]:
        """Each artifact in ``vad``, in address order; markers inside an artifact already
        reported (a mutex name in a C1 block, a second ZIP header) are not reported again."""
        patterns, _ = marker_patterns()
        hits = ((vad, address, hit) for address, hit in vadsearch.VadSearch.scan_vad(layer, vad, patterns))
        for _, artifact in cls.decode_hits(context, layer, hits, layout_table):
            yield artifact

    @classmethod
    def decode_hits(cls, context: interfaces.context.ContextInterface,
                    layer: interfaces.layers.DataLayerInterface,
                    hits: Iterable[Tuple[vadwalk.VadFacts, int, Hit]],
                    layout_table: Optional[str] = None) -> Iterator[Tuple[vadwalk.VadFacts, Artifact]]:
        """``(vad, artifact)`` for marker hits of one address space, in address order."""
        _, kinds = marker_patterns()
        covered: List[Tuple[int, int]] = []
        current = None
        for vad, address, hit in hits:
            if vad is not current:
                current, covered = vad, []
            if any(start <= address < end for start, end in covered):
                continue
            kind = kinds[hit.pattern]
            window = read_window(layer, vad, address, *WINDOWS[kind])
            if kind == "checkin" and not CHECKIN_REGEX.match(window.data, address - window.start):
                continue
            if kind == "c1":
                declared = cls._declared(context, layer.name, layout_table, address) if layout_table else None
                artifact = c1_artifact(window.data, address - window.start, address, declared)
            else:
                artifact = DECODERS[kind](window.data, address - window.start, address)
            artifact.reasons += window.notes
            covered.append((artifact.address, artifact.address + artifact.length))
            yield vad, artifact

    @staticmethod
    def _declared(context: interfaces.context.ContextInterface, layer_name: str, table: str,
                  address: int) -> Optional[Dict[str, Any]]:
        try:
            return read_layout(context, layer_name, table, address + len(sa.MARKER))
        except exceptions.InvalidAddressException as exc:
            vollog.warning("declared C1 layout at %#x: unreadable address %#x", address, exc.invalid_address)
            return None
        except exceptions.SymbolError as exc:
            vollog.warning("declared C1 layout at %#x: %s", address, exc)
            return None

    def _layout_table(self) -> Optional[str]:
        name = self.config.get("c1_layout")
        if not name:
            return None
        try:
            table = intermed.IntermediateSymbolTable.create(self.context, self.config_path, LAYOUT_SUBPATH, name)
        except (FileNotFoundError, exceptions.SymbolSpaceError, ValueError) as exc:
            raise UsageError(f"cannot load C1 layout {name!r} from symbols/{LAYOUT_SUBPATH}: {exc}") from exc
        if not self.context.symbol_space.has_type(f"{table}!{LAYOUT_TYPE}"):
            raise UsageError(f"C1 layout {name!r} declares no {LAYOUT_TYPE!r} type")
        producer = self.context.symbol_space[table].producer.name
        vollog.info("C1 layout %r loaded (producer: %s)", name, producer)
        return table

    def _dump(self, pid: int, artifact: Artifact) -> Any:
        if not self.config.get("dump") or artifact.dump is None:
            return renderers.NotApplicableValue()
        name = f"pid.{pid}.{artifact.kind}.{artifact.address:#x}.bin"
        try:
            with self.open(name) as handle:
                handle.write(artifact.dump)
        except OSError as exc:
            vollog.error("cannot write %s: %s", name, exc)
            return renderers.NotAvailableValue()
        return handle.preferred_filename            # final name, set when the handler closes

    @classmethod
    def live_mutants(cls, context: interfaces.context.ContextInterface, kernel_module_name: str,
                     pools: Optional[poolscan.PoolObjects] = None) -> Dict[str, int]:
        """Lower-cased name -> offset of each named mutant object a pool scan finds
        (``windows.mutantscan``'s scan, or ``pools``' mutants when given)."""
        mutants: Dict[str, int] = {}
        scanned = pools.get("mutant") if pools else mutantscan.MutantScan.scan_mutants(context, kernel_module_name)
        for mutant in scanned:
            try:
                name = mutant.get_name()
            except (ValueError, exceptions.InvalidAddressException):
                continue
            if isinstance(name, str) and name:
                mutants.setdefault(name.lower(), mutant.vol.offset)
        return mutants

    def _mutants(self) -> Dict[str, int]:
        if self._live_mutants is None:
            self._progress_callback(0.0, "Scanning the pool for mutant objects")
            self._live_mutants = self.live_mutants(self.context, self.config["kernel"])
        return self._live_mutants

    def _rows(self, proc_info: Tuple[int, str], vad: vadwalk.VadFacts, artifact: Artifact):
        pid, name = proc_info
        if artifact.kind == "mutex_name":
            confirm_mutex(artifact, self._mutants())
        level = logging.WARNING if artifact.score >= LOG_FLOOR else logging.DEBUG
        for warning in artifact.warnings:
            vollog.log(level, "PID %d %s at %#x: %s", pid, artifact.kind, artifact.address, text_cell(warning))
        na = renderers.NotApplicableValue()
        head = (pid, text_cell(name), format_hints.Hex(artifact.address), artifact.kind)
        region = (format_hints.Hex(vad.start), format_hints.Hex(vad.end), vad.protection, vad.private,
                  vadwalk.optional(vad.file and text_cell(vad.file)))
        rated = (artifact.score, rating(artifact.score))
        yield 0, (*head, na, na, *rated, text_cell("; ".join(artifact.reasons)), *region, self._dump(pid, artifact))
        fields = artifact.fields + [("warning", warning) for warning in artifact.warnings]
        for key, value in fields:       # a field row repeats its artifact's context, so each row stands alone
            if key in RAW_FIELDS and not self.config.get("raw"):
                continue
            yield 1, (*head, key, text_cell(value), *rated, "", *region, "")

    def _generator(self, layout_table: Optional[str]):
        patterns, _ = marker_patterns()
        spaces = vadwalk.process_spaces(self.context, self.config["kernel"], self.config.get("pid"),
                                        self.config.get("name"), self._progress_callback, "Decoding",
                                        self.config.get("max_vad_size"))
        stream = vadsearch.VadSearch.scan_spaces(spaces, patterns)   # reading overlaps matching
        for (proc_info, layer), group in itertools.groupby(stream, key=lambda item: (item[0], item[1])):
            hits = ((vad, address, hit) for _, _, vad, address, hit in group)
            for vad, artifact in self.decode_hits(self.context, layer, hits, layout_table):
                yield from self._rows(proc_info, vad, artifact)

    def run(self) -> renderers.TreeGrid:
        columns = [("PID", int), ("Process", str), ("Address", format_hints.Hex), ("Kind", str),
                   ("Field", str), ("Value", str), ("Score", int), ("Confidence", str), ("Reason", str),
                   ("VAD Start", format_hints.Hex), ("VAD End", format_hints.Hex), ("Protection", str),
                   ("Private", bool), ("File", str), ("Dump", str)]
        vadwalk.check_selection(self.context, self.config["kernel"], self.config.get("pid"), self.config.get("name"))
        vadwalk.check_max_vad_size(self.config.get("max_vad_size"))
        return renderers.TreeGrid(columns, self._generator(self._layout_table()))
