"""Carve Windows event-log records from raw bytes: EVTX chunks/records and legacy EVT.

Pure functions of bytes with bounded memory: callers feed any window of memory (for
example 1 MiB with overlap) and pass the window's absolute address as ``base``; every
result reports ``base + offset`` and never raises on malformed input.
"""

from __future__ import annotations

import bisect
import struct
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterator, Optional, Union

CHUNK_MAGIC = b"ElfChnk\x00"
RECORD_MAGIC = b"**\x00\x00"
EVT_MAGIC = b"LfLe"
CHUNK_SIZE = 0x10000
CHUNK_HEADER_SIZE = 0x200
_RECORD_MIN, _RECORD_MAX = 0x20, CHUNK_SIZE - CHUNK_HEADER_SIZE
_EVT_FIXED, _EVT_MIN = 0x38, 0x40
_EVT_MAX = 0x10000   # larger EVENTLOGRECORDs are not carved (ReportEvent caps an event near 64 KiB)
_MAX_ELEMENT_DEPTH, _MAX_BXML_DEPTH = 48, 4
_EPOCH_1601 = datetime(1601, 1, 1, tzinfo=timezone.utc)
_U8, _U16, _U32, _U64 = (struct.Struct(f) for f in ("<B", "<H", "<I", "<Q"))
_PARSE_ERRORS = (struct.error, ValueError, OverflowError, IndexError, RecursionError)


@dataclass
class EventRecord:
    """One EVTX record; fields that could not be decoded are None."""

    offset: int
    source: str
    record_id: int
    time: Optional[datetime]
    time_source: str = "header"
    event_id: Optional[int] = None
    level: Optional[int] = None
    provider: Optional[str] = None
    channel: Optional[str] = None
    computer: Optional[str] = None
    data: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    chunk: Optional[int] = None  # absolute start of the enclosing chunk, if carved from one
    names: list[Optional[str]] = field(default_factory=list)
    """Field name of each ``data`` value: the Data element's ``Name`` (EventData) or the
    element name (UserData); None where the template gives none."""

    def fields(self) -> list[tuple[Optional[str], str]]:
        """(name, value) of each EventData/UserData value."""
        return list(zip(self.names + [None] * (len(self.data) - len(self.names)), self.data))

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["time"] = self.time.isoformat() if self.time else None
        return out


@dataclass
class EvtRecord:
    """One legacy (XP/2003) EVENTLOGRECORD."""

    offset: int
    record_id: int
    time_generated: datetime
    time_written: datetime
    event_id: int
    event_id_full: int
    event_type: int
    category: int
    source_name: str
    computer: str
    strings: list[str]
    user_sid: Optional[str]
    data: bytes
    source: str = "evt-record"
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["time_generated"] = self.time_generated.isoformat()
        out["time_written"] = self.time_written.isoformat()
        out["data"] = self.data.hex()
        return out


class _ParseError(Exception):
    """Malformed or unavailable BinXML."""


def _read(fmt: struct.Struct, buf: bytes, index: int) -> int:
    if index < 0 or index + fmt.size > len(buf):
        raise _ParseError(f"read past buffer at {index:#x}")
    return fmt.unpack_from(buf, index)[0]


def filetime_to_datetime(value: int) -> Optional[datetime]:
    """UTC datetime of a FILETIME; None for 0 or out of range."""
    if value <= 0:
        return None
    try:
        return _EPOCH_1601 + timedelta(microseconds=value // 10)
    except OverflowError:
        return None


def sid_to_string(raw: bytes) -> Optional[str]:
    """'S-1-5-...' of a binary SID; None if malformed."""
    if len(raw) < 8 or raw[0] != 1 or len(raw) < 8 + 4 * raw[1]:
        return None
    authority = int.from_bytes(raw[2:8], "big")
    subs = struct.unpack_from(f"<{raw[1]}I", raw, 8)
    return "-".join(["S", "1", str(authority), *map(str, subs)])


# --------------------------------------------------------------------------- BinXML


@dataclass
class _Element:
    """Template-level element: parts are str, _Element or _Sub."""

    name: Optional[str]
    attrs: list[tuple[Optional[str], object]]
    parts: list[object]


@dataclass(frozen=True)
class _Sub:
    index: int


@dataclass
class _Node:
    """Instantiated element: children are _Node or scalar values."""

    name: Optional[str]
    attrs: dict[str, object]
    children: list[object]


class _Context:
    """Chunk-relative addressing: chunk offset ``r`` is ``buf[r - origin]``.

    ``origin`` is None when the chunk position of ``buf`` is unknown.
    """

    def __init__(self, buf: bytes, origin: Optional[int]) -> None:
        self.buf = buf
        self.origin = origin
        self.names: dict[int, str] = {}
        self.templates: dict[int, Union[_Element, _ParseError]] = {}
        self.unresolved_names = 0

    def is_here(self, chunk_offset: int, index: int) -> bool:
        return self.origin is not None and chunk_offset == index + self.origin

    def index(self, chunk_offset: int) -> Optional[int]:
        if self.origin is None or not 0 <= chunk_offset - self.origin < len(self.buf):
            return None
        return chunk_offset - self.origin


class _BinXml:
    """Minimal BinXML reader: template instances, elements, values, substitutions."""

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx
        self.buf = ctx.buf

    def fragment(self, i: int, end: int, depth: int = 0) -> tuple[list[_Node], int]:
        """Fragment at ``i`` (header optional) as instantiated nodes, and the end index."""
        if depth > _MAX_BXML_DEPTH:
            raise _ParseError("BinXML nested too deeply")
        if _read(_U8, self.buf, i) & 0x0F == 0x0F:
            i += 4
        token = _read(_U8, self.buf, i) & 0x0F
        if token == 0x0C:
            return self._template_instance(i, end, depth)
        if token == 0x01:
            element, i = self._element(i, 0)
            return [_instantiate(element, [])], i
        raise _ParseError(f"unexpected token {token:#x} at {i:#x}")

    def _template_instance(self, i: int, end: int, depth: int) -> tuple[list[_Node], int]:
        template_id = _read(_U32, self.buf, i + 2)
        chunk_offset = _read(_U32, self.buf, i + 6)
        after = i + 10
        if self.ctx.is_here(chunk_offset, after):
            after += 24 + _read(_U32, self.buf, after + 20)
        template = self._template(chunk_offset, template_id)
        values, after = self._substitutions(after, end, depth)
        return [_instantiate(template, values)], after

    def _template(self, chunk_offset: int, template_id: int) -> _Element:
        cached = self.ctx.templates.get(chunk_offset)
        if cached is None:
            try:
                cached = self._parse_template(chunk_offset, template_id)
            except _ParseError as exc:
                cached = exc
            self.ctx.templates[chunk_offset] = cached
        if isinstance(cached, _ParseError):
            raise cached
        return cached

    def _parse_template(self, chunk_offset: int, template_id: int) -> _Element:
        start = self.ctx.index(chunk_offset)
        if start is None:
            raise _ParseError(f"template at chunk offset {chunk_offset:#x} not available")
        if _read(_U32, self.buf, start + 4) != template_id:
            raise _ParseError(f"template id mismatch at chunk offset {chunk_offset:#x}")
        i = start + 24
        if _read(_U8, self.buf, i) & 0x0F == 0x0F:
            i += 4
        return self._element(i, 0)[0]

    def _substitutions(self, i: int, end: int, depth: int) -> tuple[list[object], int]:
        count = _read(_U32, self.buf, i)
        if count > (end - i - 4) // 4:
            raise _ParseError(f"implausible substitution count {count}")
        specs = [(_read(_U16, self.buf, i + 4 + 4 * n), self.buf[i + 6 + 4 * n]) for n in range(count)]
        i += 4 + 4 * count
        values = []
        for size, value_type in specs:
            if i + size > end:
                raise _ParseError("substitution value past record end")
            values.append(self._value(value_type, i, size, depth))
            i += size
        return values, i

    def _value(self, value_type: int, i: int, size: int, depth: int) -> object:
        if value_type == 0x21:
            return self.fragment(i, i + size, depth + 1)[0]
        return decode_value(value_type, self.buf[i:i + size])

    def _element(self, i: int, depth: int) -> tuple[_Element, int]:
        token = _read(_U8, self.buf, i)
        if token & 0x0F != 0x01 or depth > _MAX_ELEMENT_DEPTH:
            raise _ParseError(f"bad element at {i:#x}")
        name, i = self._name(_read(_U32, self.buf, i + 7), i + 11)
        attrs: list[tuple[Optional[str], object]] = []
        if token & 0x40:
            i += 4
            while _read(_U8, self.buf, i) & 0x0F == 0x06:
                attr_name, i = self._name(_read(_U32, self.buf, i + 1), i + 5)
                value, i = self._part(i, depth)
                attrs.append((attr_name, value))
        element = _Element(name, attrs, [])
        close = _read(_U8, self.buf, i)
        if close & 0x0F == 0x03:
            return element, i + 1
        if close & 0x0F != 0x02:
            raise _ParseError(f"bad close-start token {close:#x} at {i:#x}")
        i += 1
        while _read(_U8, self.buf, i) & 0x0F != 0x04:
            part, i = self._part(i, depth)
            element.parts.append(part)
        return element, i + 1

    def _part(self, i: int, depth: int) -> tuple[object, int]:
        token = _read(_U8, self.buf, i) & 0x0F
        if token == 0x01:
            return self._element(i, depth + 1)
        if token == 0x05:
            value_type, length = _read(_U8, self.buf, i + 1), _read(_U16, self.buf, i + 2)
            if value_type != 0x01:
                raise _ParseError(f"value type {value_type:#x} in template")
            return self._wide(i + 4, length), i + 4 + 2 * length
        if token in (0x0D, 0x0E):
            return _Sub(_read(_U16, self.buf, i + 1)), i + 4
        if token == 0x07:
            length = _read(_U16, self.buf, i + 1)
            return self._wide(i + 3, length), i + 3 + 2 * length
        if token == 0x08:
            return chr(_read(_U16, self.buf, i + 1)), i + 3
        if token == 0x09:
            name, after = self._name(_read(_U32, self.buf, i + 1), i + 5)
            return f"&{name};", after
        raise _ParseError(f"unsupported token {token:#x} at {i:#x}")

    def _wide(self, i: int, chars: int) -> str:
        if i + 2 * chars > len(self.buf):
            raise _ParseError("string past buffer")
        return self.buf[i:i + 2 * chars].decode("utf-16-le", "replace")

    def _name(self, chunk_offset: int, i: int) -> tuple[Optional[str], int]:
        """Name at ``chunk_offset``; skips it when stored inline at ``i``."""
        if self.ctx.is_here(chunk_offset, i):
            length = _read(_U16, self.buf, i + 6)
            name = self._wide(i + 8, length)
            self.ctx.names[chunk_offset] = name
            return name, i + 10 + 2 * length
        return self._lookup_name(chunk_offset), i

    def _lookup_name(self, chunk_offset: int) -> Optional[str]:
        if chunk_offset in self.ctx.names:
            return self.ctx.names[chunk_offset]
        start = self.ctx.index(chunk_offset)
        if start is None:
            self.ctx.unresolved_names += 1
            return None
        name = self._wide(start + 8, _read(_U16, self.buf, start + 6))
        self.ctx.names[chunk_offset] = name
        return name


def decode_value(value_type: int, raw: bytes) -> object:
    """Python value of a BinXML substitution (type codes of the EVTX format)."""
    if value_type == 0x00 or not raw:
        return None
    if value_type == 0x01:
        return raw.decode("utf-16-le", "replace").rstrip("\0")
    if value_type == 0x02:
        return raw.decode("latin-1").rstrip("\0")
    if 0x03 <= value_type <= 0x0A or value_type == 0x10:
        return int.from_bytes(raw, "little", signed=value_type in (0x03, 0x05, 0x07, 0x09))
    if value_type == 0x0D:
        return bool(int.from_bytes(raw, "little"))
    if value_type == 0x0F and len(raw) == 16:
        return "{" + str(uuid.UUID(bytes_le=raw)) + "}"
    if value_type == 0x11 and len(raw) == 8:
        return filetime_to_datetime(_U64.unpack(raw)[0])
    if value_type == 0x12 and len(raw) == 16:
        year, month, _, day, hour, minute, second, millis = struct.unpack("<8H", raw)
        return datetime(year, month, day, hour, minute, second, millis * 1000, tzinfo=timezone.utc)
    if value_type == 0x13:
        return sid_to_string(raw)
    if value_type in (0x14, 0x15):
        return f"0x{int.from_bytes(raw, 'little'):0{2 * len(raw)}x}"
    if value_type == 0x81:
        return ", ".join(raw.decode("utf-16-le", "replace").rstrip("\0").split("\0"))
    return raw.hex()


def _instantiate(element: _Element, values: list[object]) -> _Node:
    """Apply substitution values to a template element."""
    node = _Node(element.name, {}, [])
    for name, part in element.attrs:
        if name is not None:
            node.attrs[name] = _fill(part, values)
    for part in element.parts:
        if isinstance(part, _Element):
            node.children.append(_instantiate(part, values))
            continue
        value = _fill(part, values)
        node.children.extend(value if isinstance(value, list) else [value])
    return node


def _fill(part: object, values: list[object]) -> object:
    if isinstance(part, _Sub):
        return values[part.index] if part.index < len(values) else None
    return part


def _text(value: object) -> str:
    if isinstance(value, _Node):
        return "".join(_text(child) for child in value.children)
    if isinstance(value, datetime):
        return value.isoformat()
    return "" if value is None else str(value)


def _child(node: Optional[_Node], name: str) -> Optional[_Node]:
    if node is None:
        return None
    return next((c for c in node.children if isinstance(c, _Node) and c.name == name), None)


def _leaves(node: _Node) -> list[tuple[Optional[str], str]]:
    """(element name, text) of each leaf element under ``node``."""
    elements = [c for c in node.children if isinstance(c, _Node)]
    if not elements:
        return [(node.name, _text(node))]
    return [leaf for child in elements for leaf in _leaves(child)]


def _data_name(node: _Node) -> Optional[str]:
    name = node.attrs.get("Name")
    return _text(name) or None if name is not None else None


def _as_int(text: str) -> Optional[int]:
    try:
        return int(text, 0)
    except ValueError:
        return None


def _apply_fields(record: EventRecord, nodes: list[_Node]) -> None:
    """Copy System/EventData fields of the rendered event into ``record``."""
    event = next((n for n in nodes if n.name == "Event"), nodes[0] if nodes else None)
    system = _child(event, "System")
    provider = _child(system, "Provider")
    if provider is not None:
        record.provider = _text(provider.attrs.get("Name")) or None
    for attr, name in (("channel", "Channel"), ("computer", "Computer")):
        element = _child(system, name)
        setattr(record, attr, _text(element) if element is not None else None)
    for attr, name in (("event_id", "EventID"), ("level", "Level")):
        element = _child(system, name)
        setattr(record, attr, _as_int(_text(element)) if element is not None else None)
    event_data, user_data = _child(event, "EventData"), _child(event, "UserData")
    if event_data is not None:
        items = [c for c in event_data.children if isinstance(c, _Node) and c.name == "Data"]
        record.names, record.data = [_data_name(c) for c in items], [_text(c) for c in items]
    elif user_data is not None:
        leaves = _leaves(user_data)
        record.names, record.data = [name for name, _ in leaves], [text for _, text in leaves]
    created = _child(system, "TimeCreated")
    stamp = created.attrs.get("SystemTime") if created is not None else None
    if record.time is None and isinstance(stamp, datetime):
        record.time, record.time_source = stamp, "xml"
        record.warnings.append("record header FILETIME is 0; time taken from TimeCreated")


# --------------------------------------------------------------------------- EVTX records


def _record_size(buf: bytes, pos: int) -> int:
    """Size of a valid ``**\\0\\0`` record at ``pos`` or 0."""
    if buf[pos:pos + 4] != RECORD_MAGIC or pos + 24 > len(buf):
        return 0
    size = _U32.unpack_from(buf, pos + 4)[0]
    if not _RECORD_MIN <= size <= _RECORD_MAX or pos + size > len(buf):
        return 0
    if _U32.unpack_from(buf, pos + size - 4)[0] != size or _U64.unpack_from(buf, pos + 8)[0] == 0:
        return 0
    return size


def _record_header(buf: bytes, pos: int, offset: int, source: str) -> EventRecord:
    record_id, stamp = struct.unpack_from("<QQ", buf, pos + 8)
    time = filetime_to_datetime(stamp)
    return EventRecord(offset, source, record_id, time, "header" if time else "none")


def _decode_record(ctx: _Context, pos: int, size: int, offset: int, source: str) -> EventRecord:
    """EventRecord for the validated record at ``ctx.buf[pos:pos+size]``."""
    record = _record_header(ctx.buf, pos, offset, source)
    unresolved = ctx.unresolved_names
    try:
        _apply_fields(record, _BinXml(ctx).fragment(pos + 24, pos + size - 4)[0])
    except _ParseError as exc:
        record.warnings.append(f"BinXML not decoded: {exc}")
    except _PARSE_ERRORS as exc:
        record.warnings.append(f"BinXML not decoded: {type(exc).__name__}")
    if ctx.unresolved_names > unresolved:
        record.warnings.append("element names outside the record (chunk not available)")
    if record.time is None:
        record.warnings.append("no usable timestamp")
    return record


def _lone_origin(rec: bytes) -> Optional[int]:
    """Chunk offset of a lone record, inferred from an inline template definition."""
    i = 24 + (4 if rec[24] & 0x0F == 0x0F else 0)
    if rec[i] & 0x0F != 0x0C or i + 34 > len(rec):
        return None
    template_id, chunk_offset = struct.unpack_from("<II", rec, i + 2)
    origin = chunk_offset - (i + 10)
    if not CHUNK_HEADER_SIZE <= origin <= CHUNK_SIZE - len(rec):
        return None
    return origin if _U32.unpack_from(rec, i + 14)[0] == template_id else None


def _decode_lone(rec: bytes, offset: int) -> EventRecord:
    """A record outside any chunk: decodable only if its template is inline."""
    origin = _lone_origin(rec)
    if origin is not None:
        return _decode_record(_Context(rec, origin), 0, len(rec), offset, "evtx-record")
    record = _record_header(rec, 0, offset, "evtx-record")
    record.warnings.append("template is a reference into a chunk that is not available; "
                           "only header fields known")
    if record.time is None:
        record.warnings.append("no usable timestamp")
    return record


# --------------------------------------------------------------------------- EVTX chunks


def _chunk_warnings(view: bytes) -> Optional[list[str]]:
    """Chunk-level warnings, or None when ``view`` is not a usable chunk."""
    if len(view) < CHUNK_HEADER_SIZE:
        return None
    notes = []
    header_crc = zlib.crc32(view[:0x78] + view[0x80:CHUNK_HEADER_SIZE])
    if header_crc != _U32.unpack_from(view, 0x7C)[0]:
        if not _record_size(view, CHUNK_HEADER_SIZE):
            return None
        notes.append("chunk header CRC mismatch")
    free = _U32.unpack_from(view, 0x30)[0]
    if not CHUNK_HEADER_SIZE <= free <= CHUNK_SIZE:
        notes.append(f"chunk free-space offset {free:#x} invalid")
    elif free > len(view):
        notes.append(f"chunk truncated at {len(view):#x}; records CRC not checked")
    elif zlib.crc32(view[CHUNK_HEADER_SIZE:free]) != _U32.unpack_from(view, 0x34)[0]:
        notes.append("chunk event-records CRC mismatch")
    return notes


def _walk_chunk(view: bytes, end: int) -> Iterator[tuple[int, int, list[str]]]:
    """(position, size, warnings) of records from the first one up to ``end``."""
    pos, notes = CHUNK_HEADER_SIZE, []
    while pos + 28 <= end:
        size = _record_size(view, pos)
        if size:
            yield pos, size, notes
            pos, notes = pos + size, []
            continue
        found = view.find(RECORD_MAGIC, pos + 1, end)
        if found < 0:
            return
        notes = [f"skipped {found - pos} unreadable bytes at chunk offset {pos:#x}"]
        pos = found


def _slack_records(view: bytes, start: int) -> Iterator[tuple[int, int]]:
    pos = view.find(RECORD_MAGIC, start)
    while pos >= 0:
        size = _record_size(view, pos)
        if size:
            yield pos, size
        pos = view.find(RECORD_MAGIC, pos + (size or 1))


def _carve_chunk(view: bytes, offset: int) -> Optional[list[EventRecord]]:
    """Records of the chunk in ``view`` (live and slack), or None if it is no chunk."""
    notes = _chunk_warnings(view)
    if notes is None:
        return None
    free = _U32.unpack_from(view, 0x30)[0]
    live_end = free if CHUNK_HEADER_SIZE <= free <= len(view) else len(view)
    ctx, records, walked_to = _Context(view, 0), [], CHUNK_HEADER_SIZE
    first, last = struct.unpack_from("<QQ", view, 0x18)   # first and last record identifiers
    for pos, size, gaps in _walk_chunk(view, live_end):
        record = _decode_record(ctx, pos, size, offset + pos, "evtx-chunk")
        record.warnings[:0] = notes + gaps
        if first <= last and not first <= record.record_id <= last:
            record.warnings.append(f"record id outside the chunk header's range {first}-{last} "
                                   "(left over from an older chunk?)")
        record.chunk = offset
        records.append(record)
        walked_to = pos + size
    # searched from the end of the last live record, not from the free-space offset: a
    # damaged offset inside a record must not lose it
    for pos, size in _slack_records(view, walked_to):
        record = _decode_record(ctx, pos, size, offset + pos, "evtx-record")
        record.warnings.insert(0, f"in chunk slack at {pos:#x} (beyond free-space offset)" if pos >= live_end
                               else f"runs past the chunk's free-space offset {free:#x}")
        record.chunk = offset
        records.append(record)
    return records


def _find_all(data: bytes, magic: bytes) -> Iterator[int]:
    pos = data.find(magic)
    while pos >= 0:
        yield pos
        pos = data.find(magic, pos + 1)


def _chunk_views(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(start, bytes) per usable chunk, each cut at the next usable chunk."""
    starts = [pos for pos in _find_all(data, CHUNK_MAGIC)
              if _chunk_warnings(data[pos:pos + CHUNK_SIZE]) is not None]
    for start, nxt in zip(starts, starts[1:] + [len(data)]):
        yield start, data[start:min(start + CHUNK_SIZE, nxt)]


def _lone_records(data: bytes, base: int, covered: list[tuple[int, int]]) -> Iterator[EventRecord]:
    starts = [start for start, _ in covered]
    pos = data.find(RECORD_MAGIC)
    while pos >= 0:
        slot = bisect.bisect_right(starts, pos) - 1
        inside = slot >= 0 and pos < covered[slot][1]
        size = 0 if inside else _record_size(data, pos)
        if size:
            yield _decode_lone(data[pos:pos + size], base + pos)
        pos = data.find(RECORD_MAGIC, pos + (size or 1))


def carve_evtx(data: bytes, base: int = 0) -> Iterator[EventRecord]:
    """EVTX records in ``data`` (chunks first, then lone records), ordered by offset."""
    data = bytes(data)
    found: list[EventRecord] = []
    covered: list[tuple[int, int]] = []
    for start, view in _chunk_views(data):
        records = _carve_chunk(view, base + start)
        if records is not None:
            found.extend(records)
            covered.append((start, start + len(view)))
    found.extend(_lone_records(data, base, covered))
    yield from sorted(found, key=lambda r: r.offset)


# --------------------------------------------------------------------------- legacy EVT


def _wide_z(buf: bytes, start: int, end: int) -> tuple[str, int]:
    """NUL-terminated UTF-16LE string in ``buf[start:end]`` and the index after it."""
    pos = start
    while pos + 1 < end and buf[pos:pos + 2] != b"\0\0":
        pos += 2
    return buf[start:pos].decode("utf-16-le", "replace"), min(pos + 2, end)


def _evt_strings(rec: bytes, count: int, offset: int, warnings: list[str]) -> list[str]:
    end = len(rec) - 4
    if count and not _EVT_FIXED <= offset < end:
        warnings.append(f"StringOffset {offset:#x} outside record")
        return []
    strings = []
    for _ in range(count):
        if offset >= end:
            warnings.append(f"only {len(strings)} of {count} strings present")
            break
        text, offset = _wide_z(rec, offset, end)
        strings.append(text)
    return strings


def _evt_blob(rec: bytes, length: int, offset: int, what: str, warnings: list[str]) -> bytes:
    if length and not (_EVT_FIXED <= offset and offset + length <= len(rec) - 4):
        warnings.append(f"{what} outside record")
        return b""
    return rec[offset:offset + length]


def _evt_record(rec: bytes, offset: int) -> EvtRecord:
    """EvtRecord of a length-validated EVENTLOGRECORD ``rec``."""
    (number, generated, written, event_id, event_type, num_strings, category, _, _,
     string_offset, sid_length, sid_offset, data_length, data_offset) = struct.unpack_from(
        "<IIIIHHHHIIIIII", rec, 8)
    warnings: list[str] = []
    source_name, after = _wide_z(rec, _EVT_FIXED, len(rec) - 4)
    computer, _ = _wide_z(rec, after, len(rec) - 4)
    sid = _evt_blob(rec, sid_length, sid_offset, "UserSid", warnings)
    return EvtRecord(
        offset=offset, record_id=number,
        time_generated=datetime.fromtimestamp(generated, timezone.utc),
        time_written=datetime.fromtimestamp(written, timezone.utc),
        event_id=event_id & 0xFFFF, event_id_full=event_id, event_type=event_type,
        category=category, source_name=source_name, computer=computer,
        strings=_evt_strings(rec, num_strings, string_offset, warnings),
        user_sid=sid_to_string(sid) if sid else None,
        data=_evt_blob(rec, data_length, data_offset, "Data", warnings), warnings=warnings)


def carve_evt(data: bytes, base: int = 0) -> Iterator[EvtRecord]:
    """EVENTLOGRECORDs whose leading and trailing lengths agree, ordered by offset."""
    data = bytes(data)
    pos = data.find(EVT_MAGIC, 4)
    while pos >= 0:
        start = pos - 4
        length = _U32.unpack_from(data, start)[0]
        valid = (_EVT_MIN <= length <= _EVT_MAX and start + length <= len(data)
                 and _U32.unpack_from(data, start + length - 4)[0] == length)
        if valid:
            yield _evt_record(data[start:start + length], base + start)
        pos = data.find(EVT_MAGIC, start + length if valid else pos + 1)
