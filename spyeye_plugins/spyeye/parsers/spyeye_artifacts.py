"""Pure-bytes decoders for SpyEye artifacts found in process memory.

Each decoder takes bytes plus the offset of a hit and returns a result whose
`to_dict()` is JSON-serialisable, so a plugin only finds candidate bytes and
adds provenance (PID, VAD, address). Nothing here imports Volatility.

What is decoded, and how sure the public record is (spyeye-facts §0-§5):
* the `!EYE` ("C1") block: the marker is certain, the layout after it is not,
  so strings are pulled out and classified rather than read at fixed offsets;
* form-grabber records for the Collector (`table\\0` + field framing);
* web-panel check-in query strings;
* known mutex and pipe names (rated by how exactly they match);
* webinject entries (`set_url`, `data_before` ... `data_end`);
* the encrypted-ZIP `config.bin` image.
"""

from __future__ import annotations

import re
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional
from urllib.parse import parse_qsl

# --- Known SpyEye strings and constants: the one table the decoders share ---

MARKER = b"!EYE"
B20_PAGE_OFFSET = 0xB20  # EyeStye.N reads the marker at (page base of its code) + 0xB20
CONFIG_ZIP_MAGIC = bytes.fromhex("504B0304140009000800")

KNOWN_STRINGS: dict[str, tuple[str, ...]] = {
    "mutex": (
        "__CLEANSWEEP_UNINSTALL__",
        "__CLEANSWEEP_RELOADCFG__",
        "__CLEANSWEEP__",
        "__SPYNET__",
        "SPYNET",
        "zXeRY3a_PtW",  # a prefix: builds append a suffix
    ),
    "pipe": ("\\\\.\\pipe\\globpluginspipe",),
    "webinject": ("data_inject", "data_before", "data_after", "data_end", "%BOTNAME%", "justreplace="),
    "plugin": (
        "webfakes.dll", "billinghammer.dll", "block.dll", "bugreport.dll", "ccgrabber.dll",
        "connector2.dll", "creditgrab.dll", "customconnector.dll", "ffcertgrabber.dll",
        "ftpbc.dll", "rdp.dll", "rt_2_4.dll", "socks5.dll", "spySpread.dll", "w2chek4_4.dll",
        "w2chek4_6.dll", "keylog.dll", "socks.dll", "ddos.dll", "ActiveAZ.dll",
    ),
    "config_member": ("config.dat", "collectors.txt", "webinjects.txt", "screenshots.txt"),
}
HOOKED_FUNCS = ("HttpSendRequestA", "HttpSendRequestW", "InternetCloseHandle", "PR_Write")
RECORD_FIELDS = ("bot_guid", "process_name", "hooked_func", "url", "func_data", "keys")

# C1 string kinds and their weight as evidence (confidence points, summed per kind).
C1_KIND_WEIGHTS: dict[str, int] = {
    "bot_path": 25,
    "install_dir": 20,
    "config_file": 20,
    "bot_file": 10,
    "mutex": 15,
    "pipe": 10,
    "url": 5,
    "plugin": 5,
    "webinject": 5,
    "config_member": 5,
}

C1_WINDOW = 0x800  # bytes read after the marker
# A zero run this long ends the block. Longer than a UTF-16 MAX_PATH field's
# slack (520 bytes), so fixed-size path buffers do not cut the block short.
C1_ZERO_RUN = 0x240
XOR_MIN_SCORE = 20  # an XOR key must reveal at least one strong C1 field
FRAGMENT_MIN = 8  # shortest prefix of a known string still recognised (e.g. `__SPYNET_`)


class _Serialisable:
    """Adds a JSON-friendly `to_dict()` (bytes as hex) to a dataclass."""

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))  # type: ignore[call-overload]


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def _u32(data: bytes, offset: int) -> int:
    return struct.unpack_from("<I", data, offset)[0]


# --- Strings: extraction and classification ---

_ASCII_RE = re.compile(rb"[\x20-\x7e]{4,}")
_UTF16_RE = re.compile(rb"(?:[\x20-\x7e]\x00){4,}")
_DRIVE = r"(?:\\\?\?\\)?(?:[A-Za-z]:|%\w+%)\\"
_PART = r'[^\\/:*?"<>|]+'
_KIND_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("install_dir", re.compile(rf"^{_DRIVE}(?:{_PART}\\)+$")),
    ("bot_path", re.compile(rf"^{_DRIVE}(?:{_PART}\\)*{_PART}\.exe$", re.I)),
    ("config_file", re.compile(rf"^(?:{_DRIVE}(?:{_PART}\\)*)?{_PART}\.bin$", re.I)),
    ("bot_file", re.compile(r"^[\w.-]+\.exe$", re.I)),
    ("plugin", re.compile(r"^[\w.-]+\.dll$", re.I)),
    ("url", re.compile(r"^(?:https?|ftp)://\S+$", re.I)),
    ("pipe", re.compile(r"^\\\\\.\\pipe\\\S+$", re.I)),
)
_MUTEX_LIKE = re.compile(r"^(?:Global\\|Local\\)?__[A-Z0-9_]{3,}__$")
_KNOWN_PAIRS = tuple((name, kind) for kind, names in KNOWN_STRINGS.items() for name in names)


@dataclass
class FoundString(_Serialisable):
    """A string pulled from memory; `text` is already un-reversed when `reversed`."""

    offset: int
    text: str
    encoding: str
    kind: Optional[str] = None
    reversed: bool = False


def extract_strings(data: bytes, base: int = 0) -> list[FoundString]:
    """Printable ASCII and UTF-16LE runs of 4+ characters, in offset order."""
    found = [FoundString(base + m.start(), m.group().decode("ascii"), "ascii") for m in _ASCII_RE.finditer(data)]
    found += [
        FoundString(base + m.start(), m.group().decode("utf-16-le"), "utf-16le") for m in _UTF16_RE.finditer(data)
    ]
    return sorted(found, key=lambda item: item.offset)


def known_kind(text: str) -> Optional[str]:
    """The KNOWN_STRINGS kind `text` contains, or is a long-enough fragment of."""
    for name, kind in _KNOWN_PAIRS:
        if name in text or (len(text) >= FRAGMENT_MIN and name.startswith(text)):
            return kind
    return None


def _kind_of(text: str) -> Optional[str]:
    for kind, pattern in _KIND_PATTERNS:
        if pattern.match(text):
            return kind
    return known_kind(text)


def classify(found: FoundString) -> FoundString:
    """Set `kind`; the reversed text is tried before the generic mutex-like shape."""
    text = found.text
    kind = _kind_of(text)
    if kind is None and (kind := _kind_of(text[::-1])) is not None:
        found.text, found.reversed = text[::-1], True
    found.kind = kind or ("mutex" if _MUTEX_LIKE.match(text) else None)
    return found


def find_known_strings(data: bytes) -> list[FoundString]:
    """Known SpyEye mutex, pipe, webinject, plugin and config-member strings (also reversed)."""
    hits = []
    for found in extract_strings(data):
        found.kind = known_kind(found.text)
        if found.kind is None and (kind := known_kind(found.text[::-1])) is not None:
            found.text, found.reversed, found.kind = found.text[::-1], True, kind
        if found.kind is not None:
            hits.append(found)
    return hits


KNOWN_PREFIXES = ("zXeRY3a_PtW",)  # known names that builds extend with a suffix
_OBJECT_NAMESPACE = re.compile(r"^(?:\\Sessions\\\d+)?(?:\\BaseNamedObjects\\|Global\\|Local\\)", re.I)


def object_name(text: str) -> str:
    """A kernel object's own name: ``text`` without a ``\\Sessions\\N\\BaseNamedObjects\\``,
    ``Global\\`` or ``Local\\`` prefix (the object header stores only this last part)."""
    return _OBJECT_NAMESPACE.sub("", text)


def rate_known_string(found: FoundString) -> tuple[int, list[str]]:
    """Confidence (0-100) and reasons for a `find_known_strings` hit as a mutex or pipe name."""
    name = object_name(found.text)
    names = KNOWN_STRINGS.get(found.kind or "", ())
    if name in names:
        score, reasons = 80, [f"exact SpyEye {found.kind} name (+80)"]
    elif any(name.startswith(prefix) for prefix in KNOWN_PREFIXES):
        score, reasons = 70, ["SpyEye generated-name prefix (+70)"]
    else:
        score, reasons = 40, [f"contains a SpyEye {found.kind} name (+40)"]
    if name != found.text:
        reasons.append("kernel object namespace prefix")
    if found.encoding == "utf-16le":
        score += 10
        reasons.append("UTF-16LE, as the kernel stores object names (+10)")
    if found.reversed:
        reasons.append("stored reversed")
    return min(score, 100), reasons


# --- The `!EYE` (C1) block ---

@dataclass
class C1Result(_Serialisable):
    """What the bytes after one `!EYE` marker appear to hold."""

    marker_offset: int
    address: Optional[int] = None
    page_offset_b20: bool = False
    block_length: int = 0
    xor_key: Optional[int] = None
    encoding: str = "none"
    fields: dict[str, list[Any]] = field(default_factory=dict)
    strings: list[FoundString] = field(default_factory=list)
    layout_fields: dict[str, Any] = field(default_factory=dict)
    layout_agreement: list[str] = field(default_factory=list)
    confidence: int = 0
    reasons: list[str] = field(default_factory=list)


_XOR_TABLES = [bytes(b ^ key for b in range(256)) for key in range(256)]
_TEXT_BYTES = bytes([0, 9, 10, 13, *range(0x20, 0x7F)])
# Decoded with the right key, a block's text ends where unrelated memory begins: the first run
# of this many non-text bytes (random data has one every ~50 bytes) ends the block.
_NOISE_RE = re.compile(rb"[^\x00\x09\x0a\x0d\x20-\x7e]{8}")


def _c1_window(data: bytes, marker_offset: int) -> bytes:
    """Bytes after the marker, up to the next marker or C1_WINDOW."""
    start = marker_offset + len(MARKER)
    body = data[start:start + C1_WINDOW]
    following = body.find(MARKER)
    return body if following < 0 else body[:following]


def _cut_zero_run(body: bytes) -> bytes:
    """The block up to a long zero run, keeping one zero so a final UTF-16 character stays whole."""
    end = body.find(bytes(C1_ZERO_RUN))
    return body if end < 0 else body[:end + 1]


def _classified(body: bytes) -> list[FoundString]:
    return [classify(found) for found in extract_strings(body, len(MARKER))]


def _score(strings: list[FoundString]) -> tuple[int, int]:
    kinds = {found.kind for found in strings if found.kind}
    return sum(C1_KIND_WEIGHTS[kind] for kind in kinds), sum(1 for found in strings if found.kind)


def _best_xor(body: bytes) -> Optional[tuple[int, bytes, list[FoundString]]]:
    """The single-byte XOR key whose output classifies best, if any reveals a strong field."""
    best: Optional[tuple[tuple[int, int], int, bytes, list[FoundString]]] = None
    for key in range(1, 256):
        decoded = body.translate(_XOR_TABLES[key])
        noise = _NOISE_RE.search(decoded)
        decoded = decoded[:noise.start()] if noise else decoded
        if not decoded or len(decoded.translate(None, _TEXT_BYTES)) * 2 > len(decoded):
            continue  # mostly non-text after this key: cannot hold the strings sought
        decoded = _cut_zero_run(decoded)
        strings = _classified(decoded)
        score = _score(strings)
        if best is None or score > best[0]:
            best = (score, key, decoded, strings)
    if best is None or best[0][0] < XOR_MIN_SCORE:
        return None
    return best[1], best[2], best[3]


def _layout_agreement(declared: Mapping[str, Any]) -> list[str]:
    """Declared text fields whose value classifies as the kind the field is named for."""
    return [name for name, value in declared.items()
            if isinstance(value, str) and classify(FoundString(0, value, "layout")).kind == name]


def _group(strings: list[FoundString]) -> dict[str, list[Any]]:
    fields: dict[str, list[Any]] = {}
    for found in strings:
        if found.kind and found.text not in fields.setdefault(found.kind, []):
            fields[found.kind].append(found.text)
    return fields


def _encoding_summary(strings: list[FoundString]) -> str:
    encodings = {found.encoding for found in strings if found.kind}
    if not encodings:
        return "none"
    return encodings.pop() if len(encodings) == 1 else "mixed"


def _in_text(data: bytes, marker_offset: int) -> bool:
    """True when the marker sits inside prose (8 printable bytes before it, one a space)."""
    before = data[max(0, marker_offset - 8):marker_offset]
    return len(before) == 8 and b" " in before and all(0x20 <= b < 0x7F for b in before)


def _c1_confidence(result: C1Result, data: bytes, strings: list[FoundString]) -> None:
    for kind in sorted({found.kind for found in strings if found.kind}, key=lambda k: (-C1_KIND_WEIGHTS[k], k)):
        result.confidence += C1_KIND_WEIGHTS[kind]
        result.reasons.append(f"{kind} string found (+{C1_KIND_WEIGHTS[kind]})")
    if any(found.reversed and found.kind for found in strings):
        result.reasons.append("some strings are stored reversed")
    if result.xor_key is not None:
        result.reasons.append(f"strings readable after XOR with {result.xor_key:#04x}")
    if result.page_offset_b20:
        result.confidence += 15
        result.reasons.append("marker at page offset 0xB20, where EyeStye.N looks for it (+15)")
    if _in_text(data, result.marker_offset):
        result.confidence -= 20
        result.reasons.append("marker embedded in printable text (-20)")
    if not result.fields:
        result.reasons.append("no SpyEye-like string after the marker")
    result.confidence = max(0, min(100, result.confidence))


def decode_c1(
    data: bytes,
    marker_offset: int = 0,
    address: Optional[int] = None,
    declared: Optional[Mapping[str, Any]] = None,
) -> C1Result:
    """Decode the block after the `!EYE` marker at `data[marker_offset]`.

    `address` is the marker's virtual address (enables the 0xB20 check).
    Strings are classified by shape because the real layout is unpublished; if
    none classifies, single-byte XOR keys are tried. `declared` holds values a
    caller read through a declared (unconfirmed) layout: they are reported with
    how many agree with their field names, and do not change the confidence.
    """
    result = C1Result(marker_offset, address, address is not None and address & 0xFFF == B20_PAGE_OFFSET)
    if data[marker_offset:marker_offset + len(MARKER)] != MARKER:
        result.reasons.append("no !EYE marker at the given offset")
        return result
    body = _cut_zero_run(_c1_window(data, marker_offset))
    strings = _classified(body)
    if _score(strings)[0] == 0 and (found := _best_xor(body)) is not None:
        result.xor_key, body, strings = found
    result.block_length, result.strings = len(body), strings
    result.fields = _group(strings)
    result.encoding = _encoding_summary(strings)
    _c1_confidence(result, data, strings)
    if declared is not None:
        result.layout_fields = dict(declared)
        result.layout_agreement = _layout_agreement(declared)
        texts = sum(1 for value in declared.values() if isinstance(value, str))
        result.reasons.append(f"declared layout (unconfirmed): {len(result.layout_agreement)} of {texts} "
                              "text fields hold what their names say")
    return result


# --- Form-grabber records for the Collector ---

MAX_FIELDS = 32
FRAME_SEARCH_BACK = 0x1000  # how far before the hit a frame may start
PAIR_WINDOW = 0x800  # how far from the hit the key/value fallback looks
_IDENT_RE = re.compile(rb"[A-Za-z_][A-Za-z0-9_]{0,63}\x00")
_GUID_RE = re.compile(r"^([^!\x00-\x1f]{1,64})!([^!\x00-\x1f]{1,64})!([0-9A-Fa-f]{8})$")
_REQUEST_RE = re.compile(r"^[A-Z]{3,7} \S+ HTTP/\d\.\d$")
_URL_LINE_RE = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$", re.I)
_HEADER_RE = re.compile(r"^([!-9;-~]+):[ \t]*(.*)$")
_PAIR_VALUE_RE = re.compile(rb"[ \t]*([^&\r\n\x00]+)")
_PRINTABLE_RE = re.compile(rb"[\x20-\x7e]+")


@dataclass
class BotGuid(_Serialisable):
    """A bot ID `user!computer!8HEX` (1.2/1.3 builds)."""

    raw: str
    user: Optional[str] = None
    computer: Optional[str] = None
    id: Optional[str] = None
    valid: bool = False


def parse_bot_guid(text: str) -> BotGuid:
    """Split a bot ID into its parts; `valid` is False when it has another shape."""
    match = _GUID_RE.match(text)
    if match is None:
        return BotGuid(text)
    return BotGuid(text, match.group(1), match.group(2), match.group(3), True)


@dataclass
class FuncData(_Serialisable):
    """A captured HTTP request: URL line, request line, headers, then the POST body."""

    url_line: Optional[str] = None
    request_line: Optional[str] = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: str = ""


def parse_func_data(raw: bytes) -> FuncData:
    """Split `func_data` at the blank line; classify each head line."""
    text = _text(raw)
    head, _, body = text.partition("\r\n\r\n") if "\r\n\r\n" in text else text.partition("\n\n")
    parsed = FuncData(body=body)
    for line in head.splitlines():
        if parsed.request_line is None and _REQUEST_RE.match(line):
            parsed.request_line = line
        elif parsed.url_line is None and _URL_LINE_RE.match(line):
            parsed.url_line = line
        elif (header := _HEADER_RE.match(line)) is not None:
            parsed.headers.append((header.group(1), header.group(2)))
    return parsed


@dataclass
class RecordResult(_Serialisable):
    """One stolen-data record found around a `hooked_func` hit."""

    hit_offset: int
    framed: bool = False
    frame_offset: Optional[int] = None
    frame_length: Optional[int] = None
    table: Optional[str] = None
    declared_fields: Optional[int] = None
    raw: dict[str, bytes] = field(default_factory=dict)
    bot_guid: Optional[BotGuid] = None
    process_name: Optional[str] = None
    hooked_func: Optional[str] = None
    url: Optional[str] = None
    func_data: Optional[FuncData] = None
    keys: Optional[str] = None
    warnings: list[str] = field(default_factory=list)
    confidence: int = 0
    reasons: list[str] = field(default_factory=list)


def _text(raw: bytes) -> str:
    """ANSI field text: UTF-8 when valid, else Latin-1 (lossless); trailing NULs dropped."""
    raw = raw.rstrip(b"\0")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _read_ident(data: bytes, pos: int) -> tuple[Optional[str], int]:
    match = _IDENT_RE.match(data, pos)
    return (match.group()[:-1].decode("ascii"), match.end()) if match else (None, pos)


def _parse_fields(data: bytes, pos: int, count: int) -> tuple[list[tuple[str, int, bytes]], list[str], int]:
    """Read up to `count` `name\\0 + DWORD size + bytes` fields; stop at the first damage.

    Returns the fields, warnings, and where the last field read ends."""
    fields: list[tuple[str, int, bytes]] = []
    warnings: list[str] = []
    end = pos
    for _ in range(count):
        name, after = _read_ident(data, pos)
        if name is None:
            warnings.append(f"field name at +{pos:#x} unreadable")
            break
        if after + 4 > len(data):
            warnings.append(f"size of field {name!r} cut off by the end of data")
            break
        size = _u32(data, after)
        value = data[after + 4:after + 4 + size]
        fields.append((name, pos, value))
        end = after + 4 + len(value)
        if len(value) < size:
            warnings.append(f"field {name!r} declares {size} bytes but only {len(value)} remain; kept those")
            break
        pos = after + 4 + size
    if len(fields) < count:
        warnings.append(f"read {len(fields)} of {count} declared fields")
    return fields, warnings, end


def _frame_at(data: bytes, start: int, hit: int) -> Optional[RecordResult]:
    """A frame starting at `start` whose fields include the name at `hit`, else None."""
    table, pos = _read_ident(data, start)
    if table is None or pos + 4 > len(data) or not 1 <= _u32(data, pos) <= MAX_FIELDS:
        return None
    count = _u32(data, pos)
    fields, warnings, end = _parse_fields(data, pos + 4, count)
    if not any(offset == hit for _, offset, _ in fields):
        return None
    raw = {name: value for name, _, value in fields}
    return RecordResult(hit, framed=True, frame_offset=start, frame_length=end - start, table=table,
                        declared_fields=count, raw=raw, warnings=warnings)


def _find_frame(data: bytes, hit: int) -> Optional[RecordResult]:
    """Search backwards from the hit for the nearest valid `table\\0 + count` header."""
    starts = [m.start() for m in _IDENT_RE.finditer(data, max(0, hit - FRAME_SEARCH_BACK), hit)]
    for start in reversed(starts):
        if (record := _frame_at(data, start, hit)) is not None:
            return record
    return None


def _value_after(data: bytes, pos: int) -> Optional[bytes]:
    """The value following a field name: `\\0 + DWORD size + bytes`, `\\0string`, `=v` or `: v`."""
    separator = data[pos:pos + 1]
    if separator in (b"=", b":"):
        pair = _PAIR_VALUE_RE.match(data, pos + 1)
        return pair.group(1) if pair else None
    if separator != b"\0":
        return None
    if pos + 5 <= len(data) and 0 < _u32(data, pos + 1) <= len(data) - pos - 5:
        return data[pos + 5:pos + 5 + _u32(data, pos + 1)]
    text = _PRINTABLE_RE.match(data, pos + 1)
    return text.group() if text else None


def _scan_pairs(data: bytes, hit: int) -> dict[str, bytes]:
    """Key/value fallback: for each field name, the value at its occurrence nearest the hit."""
    low, high = max(0, hit - PAIR_WINDOW), min(len(data), hit + PAIR_WINDOW)
    found: dict[str, bytes] = {}
    for name in RECORD_FIELDS:
        pattern = re.compile(rb"(?<![A-Za-z0-9_])" + name.encode() + rb"(?=[\x00=:])")
        matches = sorted(pattern.finditer(data, low, high), key=lambda m: abs(m.start() - hit))
        for match in matches:
            if (value := _value_after(data, match.end())) is not None:
                found[name] = value
                break
    return found


def _decode_keys(raw: bytes, warnings: list[str]) -> str:
    if len(raw) % 2:
        warnings.append("keys field has an odd byte count; last byte dropped")
        raw = raw[:-1]
    return raw.decode("utf-16-le", "replace").rstrip("\0")


def _interpret(record: RecordResult) -> None:
    raw = record.raw
    if "bot_guid" in raw:
        record.bot_guid = parse_bot_guid(_text(raw["bot_guid"]))
    for name in ("process_name", "hooked_func", "url"):
        if name in raw:
            setattr(record, name, _text(raw[name]))
    if "func_data" in raw:
        record.func_data = parse_func_data(raw["func_data"])
    if "keys" in raw:
        record.keys = _decode_keys(raw["keys"], record.warnings)


def _record_evidence(record: RecordResult) -> list[tuple[bool, int, str]]:
    """(holds, points, reason) for each piece of evidence a record can show."""
    func, data = record.hooked_func or "", record.func_data
    return [
        (record.framed, 35, f"valid table/field framing (table {record.table!r}, {record.declared_fields} fields)"),
        (func in HOOKED_FUNCS, 25, f"hooked_func is a SpyEye form-grab hook ({func})"),
        (func not in HOOKED_FUNCS and func.isidentifier(), 5, "hooked_func is an identifier"),
        (bool(record.bot_guid and record.bot_guid.valid), 15, "bot_guid has the user!computer!8HEX shape"),
        (bool(record.process_name and record.process_name.lower().endswith(".exe")), 10, "process_name is an .exe"),
        (bool(record.url and _URL_LINE_RE.match(record.url)), 5, "url is a URL"),
        (bool(data and (data.request_line or data.headers)), 5, "func_data holds an HTTP request"),
        (bool(record.keys), 5, "keys decoded as UTF-16LE"),
    ]


def decode_collector_record(data: bytes, hit_offset: int) -> RecordResult:
    """Decode the record around `hooked_func` at `data[hit_offset]`.

    The framed form (spyeye-facts §2.2) is tried first; without a valid frame
    the values next to each field name are taken. Damage gives warnings and
    whatever fields could be read, never an exception.
    """
    record = _find_frame(data, hit_offset)
    if record is None:
        record = RecordResult(hit_offset, raw=_scan_pairs(data, hit_offset))
        record.warnings.append("no valid table/field frame; values taken from key/value pairs near the hit")
    _interpret(record)
    for holds, points, reason in _record_evidence(record):
        if holds:
            record.confidence += points
            record.reasons.append(f"{reason} (+{points})")
    if record.framed and record.warnings:
        record.confidence -= 10
        record.reasons.append("frame damaged (-10)")
    if not record.reasons:
        record.reasons.append("no record framing and no SpyEye field values near the hit")
    record.confidence = max(0, min(100, record.confidence))
    return record


# --- Web-panel check-in ---

_CHECKIN_RE = re.compile(rb"(?<![A-Za-z0-9_])guid=[\x21-\x7e]*")
_HEX8_RE = re.compile(r"^[0-9A-Fa-f]{8}$")
_HEX32_RE = re.compile(r"^[0-9A-Fa-f]{32}$")
_OS_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


def format_bot_version(value: int) -> str:
    """Bot version number as text: 10299 -> "1.2.99", 10345 -> "1.3.45"."""
    return f"{value // 10000}.{value // 100 % 100}.{value % 100:02d}"


def _int_param(params: dict[str, str], name: str, warnings: list[str]) -> Optional[int]:
    if name not in params:
        return None
    if params[name].isdigit():
        return int(params[name])
    warnings.append(f"{name}={params[name]!r} is not an unsigned integer")
    return None


def _checked(params: dict[str, str], name: str, pattern: re.Pattern[str], warnings: list[str]) -> bool:
    valid = bool(pattern.match(params.get(name, "")))
    if name in params and not valid:
        warnings.append(f"{name}={params[name]!r} has the wrong shape")
    return valid


def decode_checkin(text: bytes) -> dict[str, Any]:
    """Decode a `guid=…&ver=…&…` gate query found anywhere in `text` (JSON-ready dict)."""
    match = _CHECKIN_RE.search(text)
    query = match.group().decode("ascii") if match else ""
    params = dict(parse_qsl(query, keep_blank_values=True))
    warnings: list[str] = [] if match else ["no guid= query in text"]
    guid = parse_bot_guid(params["guid"]) if "guid" in params else None
    if guid is not None and not guid.valid:
        warnings.append(f"guid={guid.raw!r} is not user!computer!8HEX")
    ver = _int_param(params, "ver", warnings)
    os_match = _OS_RE.match(params.get("os", ""))
    result = {
        "offset": match.start() if match else None,
        "length": len(match.group()) if match else 0,
        "params": params,
        "guid": guid.to_dict() if guid else None,
        "ver": ver,
        "version": format_bot_version(ver) if ver is not None else None,
        "ie": params.get("ie"),
        "os": params.get("os"),
        "os_version": [int(part) for part in os_match.groups()] if os_match else None,
        "ut": params.get("ut"),
        "cpu": _int_param(params, "cpu", warnings),
        "ccrc": params.get("ccrc"),
        "ccrc_valid": _checked(params, "ccrc", _HEX8_RE, warnings),
        "md5": params.get("md5"),
        "md5_valid": _checked(params, "md5", _HEX32_RE, warnings),
        "plugins": [name for name in params.get("plg", "").split(",") if name],
        "wake": _int_param(params, "wake", warnings),
        "stat": params.get("stat"),
        "rep": params.get("rep"),
        "warnings": warnings,
    }
    checks = (
        (bool(guid and guid.valid), "guid is user!computer!8HEX"),
        (ver is not None, "ver is a number"),
        (result["ccrc_valid"], "ccrc is 8 hex digits"),
        (result["md5_valid"], "md5 is 32 hex digits"),
        (bool(os_match), "os is major.minor.build"),
    )
    result["confidence"] = 20 * sum(holds for holds, _ in checks)
    result["reasons"] = [f"{reason} (+20)" for holds, reason in checks if holds]
    return result


# --- Webinject blocks (webinjects.txt, decrypted in memory) ---

WEBINJECT_BACK = 0x400  # how far before `data_before` the `set_url` line may start
WEBINJECT_WINDOW = 0x2000  # how far after `data_before` the sections may run
_SECTION_RE = re.compile(rb"(data_before|data_inject|data_after)[ \t]*\r?\n(.*?)(?:\r?\n)?data_end", re.S)
_SET_URL_RE = re.compile(rb"set_url[ \t]+(\S+)(?:[ \t]+(\S+))?")
_MACRO_RE = re.compile(rb"%[A-Z_]{3,20}%")


@dataclass
class WebinjectResult(_Serialisable):
    """One `set_url` / `data_before` ... `data_end` webinject entry."""

    offset: int
    length: int = 0
    set_url: Optional[str] = None
    url_flags: Optional[str] = None
    sections: dict[str, str] = field(default_factory=dict)
    macros: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    confidence: int = 0
    reasons: list[str] = field(default_factory=list)


def _set_url_before(data: bytes, offset: int) -> Optional[re.Match[bytes]]:
    """The `set_url` line directly before `offset` (only blank space between), if any."""
    head = data[max(0, offset - WEBINJECT_BACK):offset].rstrip()
    last = re.split(rb"[\r\n\0]", head)[-1]
    return _SET_URL_RE.fullmatch(last, max(last.rfind(b"set_url"), 0))


def decode_webinject(data: bytes, offset: int) -> WebinjectResult:
    """Decode the webinject entry whose `data_before` keyword is at `data[offset]`."""
    result = WebinjectResult(offset)
    pos, end = offset, min(len(data), offset + WEBINJECT_WINDOW)
    while (match := _SECTION_RE.match(data, pos, end)) is not None:
        name = match.group(1).decode("ascii")
        if name in result.sections:
            break
        result.sections[name] = _text(match.group(2))
        pos = match.end()
        while pos < end and data[pos] in b" \t\r\n":
            pos += 1
    result.length = pos - offset
    if "data_before" not in result.sections:
        result.warnings.append("data_before is not followed by data_end")
    if (set_url := _set_url_before(data, offset)) is not None:
        result.set_url = set_url.group(1).decode("latin-1")
        result.url_flags = set_url.group(2).decode("latin-1") if set_url.group(2) else None
    inject = result.sections.get("data_inject", "").encode("latin-1", "replace")
    result.macros = sorted({macro.decode("ascii") for macro in _MACRO_RE.findall(inject)})
    evidence = (
        (result.set_url is not None, 30, "set_url line before data_before"),
        ("data_before" in result.sections, 30, "data_before closed by data_end"),
        ("data_inject" in result.sections, 20, "data_inject section"),
        (bool(set(result.macros) & set(KNOWN_STRINGS["webinject"])), 20, "SpyEye macro in the injected HTML"),
    )
    for holds, points, reason in evidence:
        if holds:
            result.confidence += points
            result.reasons.append(f"{reason} (+{points})")
    return result


# --- config.bin image (encrypted ZIP) ---

_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # local file header, 30 bytes
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # central directory entry, 46 bytes
_END = struct.Struct("<4sHHHHIIH")  # end of central directory, 22 bytes
_DESCRIPTOR = struct.Struct("<4sIII")  # data descriptor with signature, 16 bytes
LOCAL_SIG, CENTRAL_SIG, END_SIG, DESCRIPTOR_SIG = b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"PK\x07\x08"
ZIP_METHODS = {0: "stored", 8: "deflate", 9: "deflate64", 12: "bzip2", 14: "lzma", 99: "aes"}
MAX_MEMBERS = 256


@dataclass
class ZipMember(_Serialisable):
    """One archive member as the central directory (or a local header walk) gives it."""

    name: str
    flags: int
    method: int
    compressed_size: int
    uncompressed_size: int


@dataclass
class ConfigImageResult(_Serialisable):
    """The first local header of a config.bin image, plus its members and size."""

    offset: int
    magic_match: bool = False
    version_needed: Optional[int] = None
    flags: Optional[int] = None
    encrypted: bool = False
    data_descriptor: bool = False
    method: Optional[int] = None
    method_name: Optional[str] = None
    crc32: Optional[int] = None
    compressed_size: Optional[int] = None
    uncompressed_size: Optional[int] = None
    file_name: Optional[str] = None
    members: list[ZipMember] = field(default_factory=list)
    estimated_size: Optional[int] = None
    size_source: str = "none"
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)
    confidence: int = 0
    reasons: list[str] = field(default_factory=list)


def _local_header(data: bytes, pos: int) -> Optional[tuple[tuple[int, ...], str, int]]:
    """(header fields, file name, data start) of a complete local header at `pos`."""
    if data[pos:pos + 4] != LOCAL_SIG or pos + _LOCAL.size > len(data):
        return None
    header = _LOCAL.unpack_from(data, pos)
    name_end = pos + _LOCAL.size + header[9]
    if name_end > len(data):
        return None
    return header, data[pos + _LOCAL.size:name_end].decode("cp437"), name_end + header[10]


def _central_members(data: bytes, pos: int, end: int) -> tuple[list[ZipMember], int]:
    """Central directory entries from `pos` up to `end`, and where they stop."""
    members: list[ZipMember] = []
    while pos + _CENTRAL.size <= end and data[pos:pos + 4] == CENTRAL_SIG and len(members) < MAX_MEMBERS:
        entry = _CENTRAL.unpack_from(data, pos)
        name = data[pos + _CENTRAL.size:pos + _CENTRAL.size + entry[10]].decode("cp437")
        members.append(ZipMember(name, entry[3], entry[4], entry[8], entry[9]))
        pos += _CENTRAL.size + entry[10] + entry[11] + entry[12]
    return members, pos


def _size_from_end(data: bytes, start: int) -> Optional[tuple[int, list[ZipMember]]]:
    """Size and members from the first end record whose directory checks out."""
    pos = data.find(END_SIG, start)
    while 0 <= pos <= len(data) - _END.size:
        _, _, _, _, _, cd_size, cd_offset, comment = _END.unpack_from(data, pos)
        if start + cd_offset + cd_size == pos and data[start + cd_offset:start + cd_offset + 4] == CENTRAL_SIG:
            return pos + _END.size + comment - start, _central_members(data, start + cd_offset, pos)[0]
        pos = data.find(END_SIG, pos + 1)
    return None


def _member_extent(data: bytes, header: tuple[int, ...], data_start: int) -> Optional[tuple[int, int, int]]:
    """(end, compressed size, uncompressed size) of a member, reading its data descriptor if needed."""
    flags, compressed, uncompressed = header[2], header[7], header[8]
    if not flags & 8 or compressed:
        return data_start + compressed + (_DESCRIPTOR.size if flags & 8 else 0), compressed, uncompressed
    pos = data.find(DESCRIPTOR_SIG, data_start)
    while 0 <= pos <= len(data) - _DESCRIPTOR.size:
        _, _, compressed, uncompressed = _DESCRIPTOR.unpack_from(data, pos)
        if compressed == pos - data_start:
            return pos + _DESCRIPTOR.size, compressed, uncompressed
        pos = data.find(DESCRIPTOR_SIG, pos + 1)
    return None


def _walk_locals(data: bytes, start: int, result: ConfigImageResult) -> None:
    """Lower-bound size by walking local headers, then any central directory and end record."""
    pos = start
    while (local := _local_header(data, pos)) is not None and len(result.members) < MAX_MEMBERS:
        header, name, data_start = local
        extent = _member_extent(data, header, data_start)
        if extent is None or extent[0] > len(data):
            result.warnings.append(f"member {name!r} runs past the end of data")
            break
        pos = extent[0]
        result.members.append(ZipMember(name, header[2], header[3], extent[1], extent[2]))
    pos = _central_members(data, pos, len(data))[1]
    if data[pos:pos + 4] == END_SIG and pos + _END.size <= len(data):
        pos += _END.size
    else:
        result.truncated = True
        result.warnings.append("no end-of-central-directory record: image truncated or damaged")
    result.estimated_size, result.size_source = pos - start, "local_walk"


def _config_confidence(result: ConfigImageResult) -> None:
    evidence = (
        (result.magic_match, 60, "first 10 bytes match SpyEye's config.bin (encrypted, deflate, descriptor)"),
        (result.size_source == "eocd", 20, "central directory and end record are consistent"),
        (any(m.name in KNOWN_STRINGS["config_member"] for m in result.members), 20, "a known config member name"),
    )
    for holds, points, reason in evidence:
        if holds:
            result.confidence += points
            result.reasons.append(f"{reason} (+{points})")


def decode_config_image(data: bytes, offset: int = 0) -> ConfigImageResult:
    """Decode the ZIP local header at `data[offset]` and estimate the archive's size."""
    result = ConfigImageResult(offset, data[offset:offset + len(CONFIG_ZIP_MAGIC)] == CONFIG_ZIP_MAGIC)
    local = _local_header(data, offset)
    if local is None:
        result.warnings.append("no complete ZIP local file header at offset")
        return result
    header, result.file_name, _ = local
    result.version_needed, result.flags, result.method = header[1], header[2], header[3]
    result.encrypted, result.data_descriptor = bool(header[2] & 1), bool(header[2] & 8)
    result.method_name = ZIP_METHODS.get(header[3], "unknown")
    sizes_given = not result.data_descriptor or header[7] != 0
    result.crc32, result.compressed_size, result.uncompressed_size = (
        header[6:9] if sizes_given else (None, None, None)
    )
    from_end = _size_from_end(data, offset)
    if from_end is not None:
        (result.estimated_size, result.members), result.size_source = from_end, "eocd"
    else:
        _walk_locals(data, offset, result)
    _config_confidence(result)
    return result
