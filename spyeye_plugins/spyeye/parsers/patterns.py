"""Search patterns (keywords, hex with ``??`` wildcards, regexes, YARA) compiled
once into matchers that scan a buffer and report ``Hit``s.  Pure functions of
bytes: the plugin feeds them memory chunks.

Keywords and hex patterns (fixed-length byte patterns) are matched by Hyperscan
when it is installed and runs on this CPU (about 4x YARA's speed on memory
pages), by YARA otherwise; both report the same hits."""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Set, Tuple

import yara

try:
    import hyperscan
except ImportError:     # optional accelerator: YARA matches the same patterns
    hyperscan = None

vollog = logging.getLogger(__name__)

ENCODINGS = ("ascii", "utf-16le")
_HEX_TOKEN = re.compile(r"^(?:[0-9A-Fa-f]{2}|\?\?)$")


class PatternError(ValueError):
    """A pattern the user gave cannot be used (the message says why)."""


@dataclass(frozen=True)
class Hit:
    offset: int      # into the scanned buffer
    length: int
    pattern: str     # what the user asked for (keyword text, hex, regex, rule name)
    kind: str        # keyword / hex / regex / yara
    encoding: str    # ascii / utf-16le / bytes


def hex_tokens(text: str) -> List[str]:
    """Validate ``4D 5A ?? 00`` (spaces optional) and return its byte tokens."""
    compact = re.sub(r"\s+", "", text)
    if not compact or len(compact) % 2:
        raise PatternError(f"hex pattern {text!r}: needs an even number of hex digits")
    tokens = [compact[i:i + 2] for i in range(0, len(compact), 2)]
    bad = [t for t in tokens if not _HEX_TOKEN.match(t)]
    if bad:
        raise PatternError(f"hex pattern {text!r}: bad token {bad[0]!r} (use hex bytes or ??)")
    if all(t == "??" for t in tokens):
        raise PatternError(f"hex pattern {text!r}: only wildcards")
    return tokens


def _escape(data: bytes) -> str:
    return "".join(f"\\x{b:02x}" for b in data)


@dataclass(frozen=True)
class FixedPattern:
    """A fixed-length byte pattern: ``tokens`` are byte values, ``None`` for any byte;
    ``caseless`` folds ASCII letters only (as YARA's ``nocase`` does)."""

    pattern: str
    kind: str
    encoding: str
    tokens: Tuple[Optional[int], ...]
    caseless: bool = False

    def yara_string(self) -> str:
        if None in self.tokens:
            return "{ " + " ".join("??" if t is None else f"{t:02X}" for t in self.tokens) + " }"
        return f'"{_escape(bytes(self.tokens))}"' + (" nocase" if self.caseless else "")

    def hyperscan_expression(self) -> bytes:
        return b"".join(b"." if t is None else b"\\x%02x" % t for t in self.tokens)


class HyperscanMatcher:
    """Fixed-length patterns in one Hyperscan database (block mode, one scratch per thread).
    Raises ``hyperscan.error`` when the library cannot compile or run here."""

    LIMIT = 1_000_000     # matches per buffer; past it the caller rescans with YARA, whose caps apply

    def __init__(self, patterns: Sequence[FixedPattern]) -> None:
        self._lengths = [len(p.tokens) for p in patterns]
        self._db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        self._db.compile(
            expressions=[p.hyperscan_expression() for p in patterns], ids=list(range(len(patterns))),
            elements=len(patterns),
            flags=[hyperscan.HS_FLAG_DOTALL | (hyperscan.HS_FLAG_CASELESS if p.caseless else 0)
                   for p in patterns])
        self._local = threading.local()
        self._scratch()       # allocation fails here, not in a worker thread, on an unusable CPU

    def _scratch(self):
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = hyperscan.Scratch(self._db)
        return scratch

    def matches(self, data) -> Optional[List[Tuple[int, int]]]:
        """``(pattern index, offset)`` of every match, or None past ``LIMIT`` matches."""
        ends: List[Tuple[int, int]] = []
        limit, append = self.LIMIT, ends.append

        def on_match(index: int, _from: int, end: int, _flags: int, _context) -> bool:
            append((index, end))
            return len(ends) > limit
        try:
            self._db.scan(data, match_event_handler=on_match, scratch=self._scratch())
        except hyperscan.ScanTerminated:
            return None
        lengths = self._lengths
        return [(index, end - lengths[index]) for index, end in ends]


def _hyperscan_matcher(fixed: Sequence[FixedPattern], engine: str) -> Optional[HyperscanMatcher]:
    if not fixed or engine == "yara":
        return None
    if hyperscan is None:
        if engine == "hyperscan":
            raise PatternError("the hyperscan engine was asked for, but hyperscan is not installed")
        return None
    try:
        return HyperscanMatcher(fixed)
    except hyperscan.error as exc:
        if engine == "hyperscan":
            raise PatternError(f"hyperscan cannot be used here: {exc}") from exc
        vollog.info("Hyperscan unusable here (%s): matching keywords and hex with YARA", exc)
        return None


class PatternSet:
    """Every pattern of one run, scanned in a single pass per buffer.  ``engine`` picks the
    matcher of keywords and hex: ``auto`` (Hyperscan when usable), ``hyperscan`` or ``yara``."""

    def __init__(self, keywords: Sequence[str] = (), hex_patterns: Sequence[str] = (),
                 regexes: Sequence[str] = (), yara_source: Optional[str] = None,
                 encodings: Sequence[str] = ENCODINGS, ignore_case: bool = False,
                 max_regex_length: int = 256, engine: str = "auto") -> None:
        if engine not in ("auto", "hyperscan", "yara"):
            raise PatternError(f"unknown engine {engine!r} (choose from auto, hyperscan, yara)")
        self.overflowed: Set[str] = set()   # patterns YARA stopped counting in some buffer
        self._fixed = self._keyword_patterns(keywords, encodings, ignore_case) + \
            [FixedPattern(text, "hex", "bytes", tuple(None if t == "??" else int(t, 16) for t in hex_tokens(text)))
             for text in hex_patterns]
        self.max_length = max([1] + [len(p.tokens) for p in self._fixed])
        self._builtin = self._compile_builtin(self._fixed)
        self._hyperscan = _hyperscan_matcher(self._fixed, engine)
        self.engine = "hyperscan" if self._hyperscan else "yara"
        self._regexes = self._compile_regexes(regexes, ignore_case)
        if self._regexes:
            self.max_length = max(self.max_length, max_regex_length)
        self._user_rules = self._compile_yara(yara_source) if yara_source else None
        if self._user_rules is not None:
            self.max_length = max(self.max_length, max_regex_length)
        if not (self._builtin or self._regexes or self._user_rules):
            raise PatternError("no pattern given: use --keyword, --hex, --regex or --yara-*")
        # finding the zero pages costs more than Hyperscan takes to scan them: worth it for YARA and re
        slow = self._regexes or (self._builtin is not None and self._hyperscan is None)
        self.skips_zeros = bool(slow) and self._user_rules is None and \
            not any(self._scan(bytes(2 * self.max_length)))

    @staticmethod
    def _keyword_patterns(keywords, encodings, ignore_case) -> List[FixedPattern]:
        bad = [e for e in encodings if e not in ENCODINGS]
        if bad:
            raise PatternError(f"unknown encoding {bad[0]!r} (choose from {', '.join(ENCODINGS)})")
        out = []
        for word in keywords:
            if not word:
                raise PatternError("empty keyword")
            if "ascii" in encodings:
                out.append(FixedPattern(word, "keyword", "ascii", tuple(word.encode("utf-8")), ignore_case))
            if "utf-16le" in encodings:   # case folding stays ASCII-only, as YARA's nocase wide
                out.append(FixedPattern(word, "keyword", "utf-16le", tuple(word.encode("utf-16-le")),
                                        ignore_case and word.isascii()))
        return out

    @staticmethod
    def _compile_builtin(fixed: Sequence[FixedPattern]) -> Optional[yara.Rules]:
        if not fixed:
            return None
        source = "rule spyeye_search {\n strings:\n  " + "\n  ".join(
            f"$p{i} = {p.yara_string()}" for i, p in enumerate(fixed)) + "\n condition:\n  any of them\n}\n"
        try:
            return yara.compile(source=source)
        except yara.Error as exc:
            raise PatternError(f"pattern could not be compiled: {exc}") from exc

    @staticmethod
    def _compile_regexes(regexes, ignore_case) -> List[Tuple[str, "re.Pattern[bytes]"]]:
        compiled = []
        for text in regexes:
            if not text:
                raise PatternError("empty regex")
            try:
                compiled.append((text, re.compile(text.encode("utf-8"),
                                                  re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)))
            except re.error as exc:
                raise PatternError(f"invalid regex {text!r}: {exc}") from exc
        return compiled

    @staticmethod
    def _compile_yara(source: str) -> yara.Rules:
        try:
            return yara.compile(source=source)
        except yara.Error as exc:
            raise PatternError(f"invalid YARA rules: {exc}") from exc

    def _builtin_warning(self, kind: int, string) -> int:
        if kind == yara.CALLBACK_TOO_MANY_MATCHES:
            self.overflowed.add(self._fixed[int(string.string[2:])].pattern)
        return yara.CALLBACK_CONTINUE

    def _user_warning(self, kind: int, string) -> int:
        if kind == yara.CALLBACK_TOO_MANY_MATCHES:
            self.overflowed.add(f"{string.rule}:{string.string}")
        return yara.CALLBACK_CONTINUE

    def scan(self, data: bytes) -> Iterator[Hit]:
        """Every hit in ``data`` (overlapping hits of different patterns included).

        When no pattern can match bytes that are all zero (``skips_zeros``: keywords, hex
        and regexes that need a non-zero byte; never user YARA rules, whose conditions see
        the whole buffer) and a slow matcher is in use (YARA for keywords and hex, or a
        regex), runs of zero pages are not handed to the matchers: every match then holds
        a non-zero byte and lies in a window around the non-zero bytes."""
        if not self.skips_zeros:
            yield from self._scan(data)
            return
        view = memoryview(data)
        for start, end in nonzero_windows(data, self.max_length - 1):
            whole = start == 0 and end == len(data)
            for hit in self._scan(data if whole else view[start:end]):
                yield hit if not start else Hit(hit.offset + start, hit.length, hit.pattern, hit.kind, hit.encoding)

    def _scan(self, data) -> Iterator[Hit]:
        yield from self._scan_fixed(data)
        for text, regex in self._regexes:
            for m in regex.finditer(data):
                if m.end() > m.start():
                    yield Hit(m.start(), m.end() - m.start(), text, "regex", "bytes")
        if self._user_rules is not None:
            for match in self._user_rules.match(data=data, warnings_callback=self._user_warning):
                for string in match.strings:
                    for inst in string.instances:
                        yield Hit(inst.offset, inst.matched_length,
                                  f"{match.rule}:{string.identifier}", "yara", "bytes")

    def _scan_fixed(self, data) -> Iterator[Hit]:
        found = self._hyperscan.matches(data) if self._hyperscan is not None else None
        if found is not None:
            for index, offset in found:
                fixed = self._fixed[index]
                yield Hit(offset, len(fixed.tokens), fixed.pattern, fixed.kind, fixed.encoding)
        elif self._builtin is not None:
            for match in self._builtin.match(data=data, warnings_callback=self._builtin_warning):
                for string in match.strings:
                    fixed = self._fixed[int(string.identifier[2:])]
                    for inst in string.instances:
                        yield Hit(inst.offset, inst.matched_length, fixed.pattern, fixed.kind, fixed.encoding)


PAGE = 0x1000
_ZERO_PAGE = bytes(PAGE)


def zero_runs(data: bytes, page: int = PAGE) -> Iterator[Tuple[int, int]]:
    """``[start, end)`` of each run of whole all-zero pages (offsets from ``data``'s start)."""
    run = None
    last = len(data) - page
    for offset in range(0, last + 1, page):
        if not data[offset] and not data[offset + page - 1] and data.startswith(_ZERO_PAGE, offset):
            if run is None:
                run = offset
        elif run is not None:
            yield run, offset
            run = None
    if run is not None:
        yield run, last - last % page + page


def nonzero_windows(data: bytes, pad: int, page: int = PAGE) -> List[Tuple[int, int]]:
    """``[start, end)`` windows of ``data`` that together hold every match of at most
    ``pad + 1`` bytes containing a non-zero byte, each inside one window: the stretches
    between zero-page runs, widened by ``pad`` bytes either side, overlapping ones merged."""
    windows: List[Tuple[int, int]] = []
    cursor = 0                           # where the current non-zero stretch begins
    for start, end in zero_runs(data, page):
        if start > cursor:
            _add_window(windows, max(0, cursor - pad), min(len(data), start + pad))
        cursor = end
    if cursor < len(data):
        _add_window(windows, max(0, cursor - pad), len(data))
    return windows


def _add_window(windows: List[Tuple[int, int]], start: int, end: int) -> None:
    if windows and windows[-1][1] >= start:
        windows[-1] = (windows[-1][0], end)
    else:
        windows.append((start, end))
