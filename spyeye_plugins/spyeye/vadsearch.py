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

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints

from . import vadwalk
from .parsers.patterns import ENCODINGS, Hit, PatternError, PatternSet

vollog = logging.getLogger(__name__)

MAX_CONTEXT = 0x1000          # bytes of context either side of a hit, at most
MAX_LINEAR_HITS = 1_000_000   # --compare-physical keeps at most this many linear-scan hits
WORKERS = 2                   # matching threads: Hyperscan and YARA run outside the GIL
READ_AHEAD = 3                # chunks read while the oldest one is matched (4 chunks held at most)


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
    _version = (1, 2, 0)   # 1.1: scan_spaces; 1.2: --engine

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
            requirements.BooleanRequirement(name="compare_physical", default=False, optional=True,
                                            description="Also scan the raw physical image and compare"),
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
                for address, data, owned in vadwalk.read_chunks(layer, vad.start, vad.end, chunk, overlap):
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

    def _context_bytes(self, layer, vad: vadwalk.VadFacts, address: int, length: int) -> Tuple[int, bytes]:
        size = self._context_size()
        start = max(vad.start, address - size)
        end = min(vad.end + 1, address + length + size)
        return start, layer.read(start, end - start, pad=True)

    def _hit_row(self, proc_info: Tuple[int, str], layer: interfaces.layers.DataLayerInterface,
                 vad: vadwalk.VadFacts, address: int, hit: Hit, pages: List[Optional[int]],
                 linear: Optional[Dict[Tuple[int, str, str], Hit]]) -> Tuple[int, tuple]:
        start, context = self._context_bytes(layer, vad, address, hit.length)
        linear_found = None if linear is None else (pages[0], hit.pattern, hit.encoding) in linear
        return (0, (*proc_info, format_hints.Hex(vad.start), format_hints.Hex(vad.end), vad.protection,
                    vad.private, vadwalk.optional(vad.file), format_hints.Hex(address),
                    format_hints.Hex(pages[0]), not vadwalk.contiguous(pages), hit.pattern, hit.kind,
                    hit.encoding, hit.length, format_hints.Hex(start),
                    format_hints.HexBytes(context), vadwalk.optional(linear_found)))

    def _generator(self, patterns: PatternSet):
        vollog.info("keywords and hex are matched with %s", patterns.engine)
        ranges = self._ranges()
        physical = self._physical_layer()
        linear = self._linear_hits(physical, patterns) if self.config.get("compare_physical") else None
        seen_physical: Set[Tuple[int, str, str]] = set()
        max_hits, count = self.config.get("max_hits") or 0, 0
        spaces = ((info, layer, vad) for info, layer, vad in vadwalk.process_spaces(
            self.context, self.config["kernel"], self.config.get("pid"), self.config.get("name"),
            self._progress_callback, "Searching") if self._wanted(vad, ranges))
        for proc_info, layer, vad, address, hit in self.scan_spaces(spaces, patterns, self.config.get("chunk_size")):
            pages = vadwalk.physical_pages(layer, address, hit.length)
            seen_physical.add((pages[0], hit.pattern, hit.encoding))
            yield self._hit_row(proc_info, layer, vad, address, hit, pages, linear)
            count += 1
            if max_hits and count >= max_hits:
                vollog.warning("stopped after --max-hits %d hits", max_hits)
                self._warn_overflow(patterns)
                return
        if linear is not None:
            yield from self._physical_only(physical, linear, seen_physical)
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
                       linear: Dict[Tuple[int, str, str], Hit], seen: Set[Tuple[int, str, str]]):
        """Linear-scan hits that no searched VAD explains (freed or unmapped memory, or
        VADs the filters left out)."""
        owner = ("(not in the searched VADs: other processes, kernel or freed memory)" if self._filtered()
                 else "(no VAD owner: kernel or freed memory)")
        for (pa, pattern, encoding), hit in sorted(linear.items()):
            if (pa, pattern, encoding) in seen:
                continue
            start = max(0, pa - self._context_size())
            context = layer.read(start, pa + hit.length + self._context_size() - start, pad=True)
            na = renderers.NotApplicableValue()
            yield (0, (na, owner, na, na, na, na, na, na, format_hints.Hex(pa),
                       False, pattern, hit.kind, encoding, hit.length, format_hints.Hex(start),
                       format_hints.HexBytes(context), True))

    def run(self) -> renderers.TreeGrid:
        columns = [("PID", int), ("Process", str), ("VAD Start", format_hints.Hex),
                   ("VAD End", format_hints.Hex), ("Protection", str), ("Private", bool),
                   ("File", str), ("Address", format_hints.Hex), ("Physical", format_hints.Hex),
                   ("Scattered", bool), ("Pattern", str), ("Kind", str), ("Encoding", str),
                   ("Length", int), ("Context Start", format_hints.Hex),
                   ("Context", format_hints.HexBytes), ("In Linear Scan", bool)]
        try:
            patterns = self._patterns()
            self._ranges()
            if self.config.get("chunk_size") is not None and self.config["chunk_size"] < vadwalk.PAGE:
                raise PatternError(f"--chunk-size must be at least {vadwalk.PAGE:#x}")
        except PatternError as exc:
            vollog.error("%s", exc)
            return renderers.TreeGrid(columns, iter(()))
        return renderers.TreeGrid(columns, self._generator(patterns))
