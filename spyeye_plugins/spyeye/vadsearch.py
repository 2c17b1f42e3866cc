"""``spyeye.vadsearch``: search each process's memory VAD by VAD.

A keyword whose pages are physically scattered is still found (the search
reads virtual memory), every hit names its process and VAD, and
``--compare-physical`` shows what a linear scan of the raw image misses."""
from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional, Set, Tuple

from volatility3.framework import exceptions, interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints

from . import vadwalk
from .output import UsageError, text_cell
from .parsers.patterns import ENCODINGS, Hit, PatternError, PatternSet

vollog = logging.getLogger(__name__)

MAX_CONTEXT = 0x1000          # bytes of context either side of a hit, at most
MAX_LINEAR_HITS = 1_000_000   # --compare-physical keeps at most this many linear-scan hits
WORKERS = 2                   # matching threads: Hyperscan and YARA run outside the GIL
READ_AHEAD = 3                # chunks read while the oldest one is matched (4 chunks held at most)
LINE_CONTEXT = 8              # bytes either side of a hit in the one-line Context cell
LINE_HIT = 32                 # bytes of the hit itself shown there, at most

# Windows pool tags (protected bit cleared) and what the block holds
POOL_TAGS = {
    b"ObNm": "object name (_OBJECT_HEADER_NAME_INFO.Name buffer)",
    b"Muta": "_KMUTANT (mutex object)", b"Proc": "_EPROCESS (process object)",
    b"Thre": "_ETHREAD (thread object)", b"File": "_FILE_OBJECT (file object)",
    b"Even": "_KEVENT (event object)", b"Sema": "_KSEMAPHORE (semaphore object)",
    b"Toke": "_TOKEN (access token)", b"Driv": "_DRIVER_OBJECT", b"Devi": "_DEVICE_OBJECT",
    b"Sect": "_SECTION (section object)", b"Key ": "registry key object",
    b"ObDi": "_OBJECT_DIRECTORY (object directory)", b"Symb": "_OBJECT_SYMBOLIC_LINK",
    b"IoNm": "I/O manager name buffer", b"MmSt": "MM section/subsection (file name buffers)",
    b"Vad ": "_MMVAD", b"VadS": "_MMVAD_SHORT", b"VadF": "_MMVAD_SHORT",
    b"TcpE": "TCP endpoint (_TCP_ENDPOINT)", b"TcpL": "TCP listener (_TCP_LISTENER)",
    b"UdpA": "UDP endpoint (_UDP_ENDPOINT)", b"CM10": "registry hive data", b"NtFs": "NTFS data",
    b"SeAi": "process image path (_EPROCESS.SeAuditProcessCreationInfo)",
}


def _scanned_ahead(chunks: Iterable[Tuple[Any, bytes, int]],
                   patterns: PatternSet) -> Iterator[Tuple[Any, int, List[Hit]]]:
    """``(meta, owned, hits)`` for each ``(meta, data, owned)`` chunk, in order.  Matching runs
    in worker threads (YARA releases the GIL) while the next chunks are read."""
    with ThreadPoolExecutor(max_workers=WORKERS) as worker:
        queue: Deque = deque()
        for meta, data, owned in chunks:
            queue.append((meta, owned, worker.submit(lambda data=data: list(patterns.scan(data)))))
            if len(queue) > READ_AHEAD:
                meta0, owned0, future = queue.popleft()
                yield meta0, owned0, future.result()
        while queue:
            meta0, owned0, future = queue.popleft()
            yield meta0, owned0, future.result()


class VadSearch(interfaces.plugins.PluginInterface):
    """Searches every process's VADs for keywords, hex, regexes or YARA rules."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 4, 0)   # 1.1: scan_spaces; 1.2: --engine; 1.3: --hexdump, pool_structure; 1.4: --max-vad-size

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return vadwalk.kernel_requirements() + [
            requirements.ListRequirement(name="keyword", element_type=str, optional=True,
                                         description="Keywords (give several after one --keyword)"),
            requirements.ListRequirement(name="hex", element_type=str, optional=True,
                                         description="Hex byte patterns, ?? for any byte"),
            requirements.ListRequirement(name="regex", element_type=str, optional=True,
                                         description="Python bytes regexes"),
            requirements.StringRequirement(name="yara_rules", optional=True, description="YARA rule text"),
            requirements.StringRequirement(name="yara_file", optional=True, description="YARA rule file"),
            requirements.ChoiceRequirement(name="encoding", choices=["both", *ENCODINGS], default="both",
                                           optional=True, description="Keyword encodings"),
            requirements.BooleanRequirement(name="ignore_case", default=False, optional=True,
                                            description="Case-insensitive keywords and regexes"),
            requirements.ChoiceRequirement(name="engine", choices=["auto", "hyperscan", "yara"], default="auto",
                                           optional=True, description="Matcher of keywords and hex "
                                           "(auto: Hyperscan when installed and usable, else YARA)"),
            *vadwalk.process_filter_requirements(),
            requirements.IntRequirement(name="vad_start", optional=True,
                                        description="Only the VAD starting at this address"),
            requirements.ListRequirement(name="address_range", element_type=str, optional=True,
                                         description="Only VADs overlapping START-END (hex)"),
            requirements.BooleanRequirement(name="private_only", default=False, optional=True,
                                            description="Only private memory"),
            requirements.BooleanRequirement(name="executable_only", default=False, optional=True,
                                            description="Only executable VADs"),
            requirements.IntRequirement(name="max_hits", default=0, optional=True,
                                        description="Stop after this many hits (0: no limit)"),
            requirements.IntRequirement(name="context", default=64, optional=True,
                                        description=f"Bytes of context before and after each hit "
                                                    f"(at most {MAX_CONTEXT})"),
            requirements.IntRequirement(name="chunk_size", default=vadwalk.DEFAULT_CHUNK, optional=True,
                                        description="Bytes read at a time"),
            vadwalk.max_vad_size_requirement(),
            requirements.BooleanRequirement(name="compare_physical", default=False, optional=True,
                                            description="Also scan the raw physical image and compare"),
            requirements.BooleanRequirement(name="hexdump", default=False, optional=True,
                                            description="Add the full --context bytes as a hex dump"),
        ]

    # --- configuration --------------------------------------------------------
    def _patterns(self) -> PatternSet:
        source = self.config.get("yara_rules")
        if self.config.get("yara_file"):
            try:
                source = (source or "") + "\n" + Path(self.config["yara_file"]).read_text()
            except OSError as exc:
                raise PatternError(f"cannot read YARA file: {exc}") from exc
            except UnicodeDecodeError as exc:
                raise PatternError(f"{self.config['yara_file']}: not a text YARA rule file "
                                   "(compiled rules are not supported)") from exc
        encoding = self.config.get("encoding") or "both"
        return PatternSet(
            keywords=self.config.get("keyword") or [], hex_patterns=self.config.get("hex") or [],
            regexes=self.config.get("regex") or [], yara_source=source,
            encodings=ENCODINGS if encoding == "both" else (encoding,),
            ignore_case=bool(self.config.get("ignore_case")), engine=self.config.get("engine") or "auto")

    def _ranges(self) -> List[Tuple[int, int]]:
        ranges = []
        for text in self.config.get("address_range") or []:
            try:
                lo, hi = (int(x, 16) for x in text.split("-"))
            except ValueError as exc:
                raise PatternError(f"address range {text!r}: use START-END in hex") from exc
            ranges.append((lo, hi))
        return ranges

    def _wanted(self, vad: vadwalk.VadFacts, ranges) -> bool:
        if self.config.get("vad_start") is not None and vad.start != self.config["vad_start"]:
            return False
        if ranges and not any(vad.start <= hi and vad.end >= lo for lo, hi in ranges):
            return False
        if self.config.get("private_only") and not vad.private:
            return False
        return not (self.config.get("executable_only") and not vad.executable)

    # --- the search -------------------------------------------------------------
    @classmethod
    def scan_vad(cls, layer, vad: vadwalk.VadFacts, patterns: PatternSet,
                 chunk: int = vadwalk.DEFAULT_CHUNK) -> Iterator[Tuple[int, Hit]]:
        """(virtual address, hit) for each match in ``vad``, each exactly once;
        matches touching a non-resident page are dropped."""
        for _, _, _, address, hit in cls.scan_spaces([(None, layer, vad)], patterns, chunk):
            yield address, hit

    @staticmethod
    def scan_spaces(spaces: Iterable[Tuple[Any, Any, vadwalk.VadFacts]], patterns: PatternSet,
                    chunk: int = vadwalk.DEFAULT_CHUNK) -> Iterator[Tuple[Any, Any, vadwalk.VadFacts, int, Hit]]:
        """``(key, layer, vad, address, hit)`` for each match in each ``(key, layer, vad)``, in
        order, as :meth:`scan_vad` finds them; reading (and walking ``spaces``) overlaps matching."""
        overlap = patterns.max_length - 1

        def chunks():
            for key, layer, vad in spaces:
                for address, data, owned in vadwalk.read_chunks(layer, vad.scan_start, vad.scan_end, chunk, overlap):
                    yield (key, layer, vad, address), data, owned
        for (key, layer, vad, address), owned, hits in _scanned_ahead(chunks(), patterns):
            for hit in sorted(hits, key=lambda h: (h.offset, h.pattern, h.encoding)):
                if hit.offset < owned and vadwalk.resident(layer, address + hit.offset, hit.length):
                    yield key, layer, vad, address + hit.offset, hit

    @classmethod
    def scan_physical(cls, layer, patterns: PatternSet, chunk: int = vadwalk.DEFAULT_CHUNK,
                      progress=None) -> Iterator[Tuple[int, Hit]]:
        """A linear scan of a physical layer, as a raw-file grep would do it."""
        end = layer.maximum_address
        overlap = patterns.max_length - 1

        def chunks():
            for address, data, owned in vadwalk.read_chunks(layer, layer.minimum_address, end, chunk, overlap):
                if progress:
                    progress(100.0 * address / max(end, 1), "Linear scan of the physical image")
                yield address, data, owned
        for address, owned, hits in _scanned_ahead(chunks(), patterns):
            for hit in hits:
                if hit.offset < owned:
                    yield address + hit.offset, hit

    def _context_size(self) -> int:
        return min(MAX_CONTEXT, max(0, self.config.get("context", 64)))

    def _context_cells(self, read, low: int, high: int, address: int, length: int) -> tuple:
        """The one-line Context cell and, with ``--hexdump``, Context Start and the dump;
        ``read(start, length)`` reads the searched space, [low, high) bounds the context."""
        line_start = max(low, address - LINE_CONTEXT)
        line_end = min(high, address + min(length, LINE_HIT) + LINE_CONTEXT)
        line = context_line(read(line_start, line_end - line_start), address - line_start, length)
        if not self.config.get("hexdump"):
            return (line,)
        size = self._context_size()
        start, end = max(low, address - size), min(high, address + length + size)
        return line, format_hints.Hex(start), format_hints.HexBytes(read(start, end - start))

    def _hit_row(self, proc_info: Tuple[int, str], layer: interfaces.layers.DataLayerInterface,
                 vad: vadwalk.VadFacts, address: int, hit: Hit, pages: List[Optional[int]],
                 linear: Optional[Dict[Tuple[int, str, str], Hit]]) -> Tuple[int, tuple]:
        pid, name = proc_info
        context = self._context_cells(lambda start, size: layer.read(start, size, pad=True),
                                      vad.start, vad.end + 1, address, hit.length)
        row = (pid, text_cell(name), format_hints.Hex(vad.start), format_hints.Hex(vad.end), vad.protection,
               vad.private, vadwalk.optional(vad.file and text_cell(vad.file)), format_hints.Hex(address),
               format_hints.Hex(pages[0]), not vadwalk.contiguous(pages), text_cell(hit.pattern), hit.kind,
               hit.encoding, hit.length, *context)
        if linear is not None:
            row += ((pages[0], hit.pattern, hit.encoding) in linear, renderers.NotApplicableValue())
        return 0, row

    def _generator(self, patterns: PatternSet):
        vollog.info("keywords and hex are matched with %s", patterns.engine)
        ranges = self._ranges()
        physical = self._physical_layer()
        linear = self._linear_hits(physical, patterns) if self.config.get("compare_physical") else None
        seen_physical: Set[Tuple[int, str, str]] = set()
        missed: Dict[str, int] = {}
        max_hits, count = self.config.get("max_hits") or 0, 0
        spaces = ((info, layer, vad) for info, layer, vad in vadwalk.process_spaces(
            self.context, self.config["kernel"], self.config.get("pid"), self.config.get("name"),
            self._progress_callback, "Searching", self.config.get("max_vad_size")) if self._wanted(vad, ranges))
        for proc_info, layer, vad, address, hit in self.scan_spaces(spaces, patterns, self.config.get("chunk_size")):
            pages = vadwalk.physical_pages(layer, address, hit.length)
            seen_physical.add((pages[0], hit.pattern, hit.encoding))
            if linear is not None and (pages[0], hit.pattern, hit.encoding) not in linear:
                missed[hit.pattern] = missed.get(hit.pattern, 0) + 1
            yield self._hit_row(proc_info, layer, vad, address, hit, pages, linear)
            count += 1
            if max_hits and count >= max_hits:
                vollog.warning("stopped after --max-hits %d hits", max_hits)
                self._warn_overflow(patterns)
                return
        if linear is not None:
            only = [key for key in sorted(linear) if key not in seen_physical]
            vollog.warning("%s", linear_summary(count, missed, len(only)))
            yield from self._physical_only(physical, linear, only)
        self._warn_overflow(patterns)

    @staticmethod
    def _warn_overflow(patterns: PatternSet) -> None:
        for pattern in sorted(patterns.overflowed):
            vollog.warning("YARA stopped counting matches of %r at 1,000,000 in a chunk: its hits are "
                           "incomplete (use a more specific pattern, or --max-hits)", pattern)

    def _physical_layer(self) -> interfaces.layers.DataLayerInterface:
        kernel = self.context.modules[self.config["kernel"]]
        return self.context.layers[self.context.layers[kernel.layer_name].config["memory_layer"]]

    def _linear_hits(self, physical: interfaces.layers.DataLayerInterface,
                     patterns: PatternSet) -> Dict[Tuple[int, str, str], Hit]:
        hits: Dict[Tuple[int, str, str], Hit] = {}
        for pa, hit in self.scan_physical(physical, patterns, self.config.get("chunk_size"),
                                          self._progress_callback):
            if len(hits) >= MAX_LINEAR_HITS:
                vollog.warning("--compare-physical: kept the first %d linear-scan hits only", MAX_LINEAR_HITS)
                break
            hits[(pa, hit.pattern, hit.encoding)] = hit
        return hits

    def _filtered(self) -> bool:
        return any(self.config.get(key) for key in ("pid", "name", "vad_start", "address_range",
                                                    "private_only", "executable_only"))

    def _physical_only(self, layer: interfaces.layers.DataLayerInterface,
                       linear: Dict[Tuple[int, str, str], Hit], keys: List[Tuple[int, str, str]]):
        """Rows for linear-scan hits that no searched VAD explains (freed or unmapped memory,
        kernel pool, or VADs the filters left out), each with the pool block it sits in
        when a pool header is right before it."""
        owner = ("(not in the searched VADs: other processes, kernel or freed memory)" if self._filtered()
                 else "(no VAD owner: kernel or freed memory)")
        na = renderers.NotApplicableValue()
        for pa, pattern, encoding in keys:
            hit = linear[(pa, pattern, encoding)]
            context = self._context_cells(lambda start, size: layer.read(start, size, pad=True),
                                          0, layer.maximum_address + 1, pa, hit.length)
            held = pool_structure(self.context, self.context.modules[self.config["kernel"]].symbol_table_name,
                                  layer.name, pa, hit.length)
            yield (0, (na, owner, na, na, na, na, na, na, format_hints.Hex(pa), False, text_cell(pattern),
                       hit.kind, encoding, hit.length, *context, True, vadwalk.optional(held)))

    def _columns(self) -> List[Tuple[str, type]]:
        columns = [("PID", int), ("Process", str), ("VAD Start", format_hints.Hex),
                   ("VAD End", format_hints.Hex), ("Protection", str), ("Private", bool),
                   ("File", str), ("Address", format_hints.Hex), ("Physical", format_hints.Hex),
                   ("Scattered", bool), ("Pattern", str), ("Kind", str), ("Encoding", str),
                   ("Length", int), ("Context", str)]
        if self.config.get("hexdump"):
            columns += [("Context Start", format_hints.Hex), ("Hex Dump", format_hints.HexBytes)]
        if self.config.get("compare_physical"):
            columns += [("In Linear Scan", bool), ("Pool Block", str)]
        return columns

    def _checked_patterns(self) -> PatternSet:
        """The compiled patterns; every bad option raises UsageError here, before any row."""
        try:
            patterns = self._patterns()
            self._ranges()
        except PatternError as exc:
            raise UsageError(str(exc)) from exc
        if self.config.get("chunk_size") is not None and self.config["chunk_size"] < vadwalk.PAGE:
            raise UsageError(f"--chunk-size must be at least {vadwalk.PAGE:#x}")
        vadwalk.check_max_vad_size(self.config.get("max_vad_size"))
        for option in ("context", "max_hits"):
            if (self.config.get(option) or 0) < 0:
                raise UsageError(f"--{option.replace('_', '-')} must not be negative, not {self.config[option]}")
        vadwalk.check_selection(self.context, self.config["kernel"], self.config.get("pid"), self.config.get("name"))
        return patterns

    def run(self) -> renderers.TreeGrid:
        return renderers.TreeGrid(self._columns(), self._generator(self._checked_patterns()))


def context_line(data: bytes, offset: int, length: int) -> str:
    """One line of hex around a hit: the hit's bytes in brackets (at most LINE_HIT, then an
    ellipsis), then the same bytes as text with non-printable bytes as dots."""
    shown = min(length, LINE_HIT)

    def hexes(part: bytes) -> str:
        return " ".join(f"{b:02x}" for b in part)
    more = "\u2026" if length > shown else ""
    hex_text = " ".join(part for part in (hexes(data[:offset]), f"[{hexes(data[offset:offset + shown])}{more}]",
                                           hexes(data[offset + shown:])) if part)
    text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in data)
    return f"{hex_text}  |{text}|"


def linear_summary(vad_hits: int, missed: Dict[str, int], physical_only: int) -> str:
    """The --compare-physical log line: how many VAD hits a linear scan misses, per pattern."""
    total = sum(missed.values())
    per_pattern = ", ".join(f"{text_cell(pattern)}: {count}" for pattern, count in sorted(missed.items()))
    line = (f"--compare-physical: a linear scan of the image misses {total} of {vad_hits} hits in process "
            f"memory (their bytes lie on physical pages that are not adjacent)")
    line += f" ({per_pattern})" if per_pattern else ""
    return line + f"; hits only the linear scan finds (no searched VAD holds them): {physical_only}"


def pool_structure(context: interfaces.context.ContextInterface, symbol_table: str, layer_name: str,
                   address: int, length: int) -> Optional[str]:
    """What the kernel pool block holding the ``length`` bytes at ``address`` is: its tag
    and, for a known tag, the structure.  The page's block chain is walked from the page
    start through the _POOL_HEADERs (each BlockSize leads to the next header, whose
    PreviousSize must agree); None when the chain breaks before the hit, the hit straddles
    two blocks or lies in a header (not small-pool memory: freed, big-pool or user pages)."""
    try:
        unit = context.symbol_space.get_type(f"{symbol_table}!_POOL_HEADER").size   # 16 on x64, 8 on x86
        page, previous = address & ~(vadwalk.PAGE - 1), 0
        offset = page
        while offset + unit <= address:
            header = context.object(f"{symbol_table}!_POOL_HEADER", layer_name, offset)
            block = int(header.BlockSize) * unit
            if not block or int(header.PreviousSize) * unit != previous or offset + block > page + vadwalk.PAGE:
                return None
            if address < offset + block:
                return _pool_text(int(header.PoolTag), block, address - offset - unit) \
                    if address + length <= offset + block else None
            previous, offset = block, offset + block
    except (exceptions.SymbolError, exceptions.InvalidAddressException, AttributeError):
        return None
    return None


def _pool_text(pool_tag: int, block: int, body_offset: int) -> Optional[str]:
    """``pool tag 'ObNm': object name (…), block of 0x30 bytes, hit at body+0x0``; None for
    an unprintable tag (not a pool block after all)."""
    raw = pool_tag.to_bytes(4, "little")
    tag = raw[:3] + bytes([raw[3] & 0x7F])                  # the protected-object bit
    if not all(0x20 <= b < 0x7F for b in tag):
        return None
    known = POOL_TAGS.get(tag)
    return (f"pool tag {tag.decode('ascii')!r}" + (f": {known}" if known else "")
            + f", block of {block:#x} bytes, hit at body+{body_offset:#x}")
