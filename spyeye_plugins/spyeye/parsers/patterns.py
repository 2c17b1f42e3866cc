"""Search patterns (keywords, hex with ``??`` wildcards, regexes, YARA) compiled
once into matchers that scan a buffer and report ``Hit``s.  Pure functions of
bytes: the plugin feeds them memory chunks."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Set, Tuple

import yara

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


class PatternSet:
    """Every pattern of one run, scanned in a single pass per buffer."""

    def __init__(self, keywords: Sequence[str] = (), hex_patterns: Sequence[str] = (),
                 regexes: Sequence[str] = (), yara_source: Optional[str] = None,
                 encodings: Sequence[str] = ENCODINGS, ignore_case: bool = False,
                 max_regex_length: int = 256) -> None:
        self._names: List[Tuple[str, str, str]] = []  # identifier index -> (pattern, kind, encoding)
        self.max_length = 1
        self.overflowed: Set[str] = set()   # patterns YARA stopped counting in some buffer
        rule_strings = self._keyword_strings(keywords, encodings, ignore_case)
        rule_strings += self._hex_strings(hex_patterns)
        self._builtin = self._compile_builtin(rule_strings)
        self._regexes = self._compile_regexes(regexes, ignore_case)
        if self._regexes:
            self.max_length = max(self.max_length, max_regex_length)
        self._user_rules = self._compile_yara(yara_source) if yara_source else None
        if self._user_rules is not None:
            self.max_length = max(self.max_length, max_regex_length)
        if not (self._builtin or self._regexes or self._user_rules):
            raise PatternError("no pattern given: use --keyword, --hex, --regex or --yara-*")
        self.skips_zeros = self._user_rules is None and not any(self._scan(bytes(2 * self.max_length)))

    def _add(self, pattern: str, kind: str, encoding: str, body: str, length: int) -> str:
        ident = f"$p{len(self._names)}"
        self._names.append((pattern, kind, encoding))
        self.max_length = max(self.max_length, length)
        return f"{ident} = {body}"

    def _keyword_strings(self, keywords, encodings, ignore_case) -> List[str]:
        bad = [e for e in encodings if e not in ENCODINGS]
        if bad:
            raise PatternError(f"unknown encoding {bad[0]!r} (choose from {', '.join(ENCODINGS)})")
        out = []
        for word in keywords:
            if not word:
                raise PatternError("empty keyword")
            raw = word.encode("utf-8")
            nocase = " nocase" if ignore_case else ""
            if "ascii" in encodings:
                out.append(self._add(word, "keyword", "ascii", f'"{_escape(raw)}"{nocase}', len(raw)))
            if "utf-16le" in encodings:
                wide = word.encode("utf-16-le")
                if word.isascii():
                    body = f'"{_escape(raw)}" wide{nocase}'
                else:
                    body = "{ " + " ".join(f"{b:02X}" for b in wide) + " }"
                out.append(self._add(word, "keyword", "utf-16le", body, len(wide)))
        return out

    def _hex_strings(self, hex_patterns) -> List[str]:
        out = []
        for text in hex_patterns:
            tokens = hex_tokens(text)
            out.append(self._add(text, "hex", "bytes", "{ " + " ".join(tokens) + " }", len(tokens)))
        return out

    @staticmethod
    def _compile_builtin(strings: List[str]) -> Optional[yara.Rules]:
        if not strings:
            return None
        source = "rule spyeye_search {\n strings:\n  " + "\n  ".join(strings) + \
            "\n condition:\n  any of them\n}\n"
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
            self.overflowed.add(self._names[int(string.string[2:])][0])
        return yara.CALLBACK_CONTINUE

    def _user_warning(self, kind: int, string) -> int:
        if kind == yara.CALLBACK_TOO_MANY_MATCHES:
            self.overflowed.add(f"{string.rule}:{string.string}")
        return yara.CALLBACK_CONTINUE

    def scan(self, data: bytes) -> Iterator[Hit]:
        """Every hit in ``data`` (overlapping hits of different patterns included).

        When no pattern can match bytes that are all zero (``skips_zeros``: keywords, hex
        and regexes that need a non-zero byte; never user YARA rules, whose conditions see
        the whole buffer), runs of zero pages are not handed to the matchers: every match
        then holds a non-zero byte and lies in a window around the non-zero bytes."""
        if not self.skips_zeros:
            yield from self._scan(data)
            return
        view = memoryview(data)
        for start, end in nonzero_windows(data, self.max_length - 1):
            whole = start == 0 and end == len(data)
            for hit in self._scan(data if whole else view[start:end]):
                yield hit if not start else Hit(hit.offset + start, hit.length, hit.pattern, hit.kind, hit.encoding)

    def _scan(self, data) -> Iterator[Hit]:
        if self._builtin is not None:
            for match in self._builtin.match(data=data, warnings_callback=self._builtin_warning):
                for string in match.strings:
                    pattern, kind, encoding = self._names[int(string.identifier[2:])]
                    for inst in string.instances:
                        yield Hit(inst.offset, inst.matched_length, pattern, kind, encoding)
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
