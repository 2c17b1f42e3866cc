"""PE header evidence, memory-mapped image parsing and file-layout rebuild.

Pure functions of bytes (no Volatility import) so they can be tested without a memory image.
Injected DLLs often have their ``MZ``/``PE`` magic wiped and pages missing, so the header is
located structurally and every read may fail; problems become warnings, never exceptions.
"""
from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

Reader = Callable[[int, int], Optional[bytes]]
"""Reads ``length`` bytes at an RVA; returns None when any of them is unreadable."""

PAGE = 0x1000
MACHINES = {0x14C: "x86", 0x8664: "x64"}
_MACHINE_CODES = {name: code for code, name in MACHINES.items()}
MAGIC_MACHINE = {0x10B: "x86", 0x20B: "x64"}
MAX_SECTIONS = 96
MAX_EXPORTS = 0x10000
"""Ordinals are 16-bit, so larger export counts are corrupt."""
MAX_STRING = 512
EXPORT_DIR_SIZE = 40
IMPORT_DESCRIPTOR_SIZE = 20
SECTION_HEADER_SIZE = 40
_COFF_SIZE = 20
_OPT_FIXED = {0x10B: 96, 0x20B: 112}
"""Bytes of the optional header before the data directories."""
_NT_FIXED_MAX = 4 + _COFF_SIZE + max(_OPT_FIXED.values())
"""Bytes of NT headers needed before the data directories (PE32+)."""
_DIR_EXPORT, _DIR_IMPORT, _DIR_SECURITY = 0, 1, 4


@dataclass(frozen=True)
class _Section:
    name: bytes
    virtual_size: int
    virtual_address: int
    raw_size: int
    offset: int
    """Offset of this section header in the image."""

    @property
    def span(self) -> int:
        return self.virtual_size or self.raw_size


@dataclass(frozen=True)
class _NtHeaders:
    offset: int
    machine_raw: int
    timestamp: int
    magic: int
    entry_point: int
    image_base: int
    section_alignment: int
    size_of_image: int
    directories: tuple[tuple[int, int], ...]
    sections: tuple[_Section, ...]
    section_count: int
    """NumberOfSections as stored (``sections`` holds only those inside the page)."""

    @property
    def opt_offset(self) -> int:
        return self.offset + 4 + _COFF_SIZE

    @property
    def machine(self) -> str:
        return MACHINES.get(self.machine_raw) or MAGIC_MACHINE[self.magic]

    def directory(self, index: int) -> tuple[int, int]:
        return self.directories[index] if index < len(self.directories) else (0, 0)

    def directory_offset(self, index: int) -> int:
        return self.opt_offset + _OPT_FIXED[self.magic] + 8 * index


@dataclass(frozen=True)
class HeaderEvidence:
    """Whether a region's first page holds PE headers, and why."""

    is_pe: bool
    machine: Optional[str]
    nt_offset: Optional[int]
    mz_present: bool
    signature_present: bool
    sections_valid: bool
    evidence: tuple[str, ...]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ExportEntry:
    """One export; ``forwarder`` is set when the RVA points into the export directory."""

    ordinal: int
    name: Optional[str]
    rva: int
    address: int
    forwarder: Optional[str]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MappedPE:
    """What could be read from a memory-mapped PE image at ``base``.

    ``missing`` lists unreadable page ranges as half-open (start RVA, end RVA) pairs, limited
    to the pages parsing needed. ``has_import_table`` is None when its page was unreadable.
    """

    base: int
    header: HeaderEvidence
    header_image_base: Optional[int] = None
    size_of_image: Optional[int] = None
    machine: Optional[str] = None
    timestamp: Optional[int] = None
    entry_point_rva: Optional[int] = None
    dll_name: Optional[str] = None
    exports: list[ExportEntry] = field(default_factory=list)
    has_import_table: Optional[bool] = None
    missing: list[tuple[int, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment if alignment else value


def _parse_sections(page: bytes, start: int, count: int) -> tuple[_Section, ...]:
    fit = max(0, (len(page) - start) // SECTION_HEADER_SIZE)
    sections = []
    for i in range(min(count, fit)):
        off = start + i * SECTION_HEADER_SIZE
        name, vsize, va, raw_size = struct.unpack_from("<8sIII", page, off)
        sections.append(_Section(name, vsize, va, raw_size, off))
    return tuple(sections)


def _parse_nt_headers(page: bytes, off: int, any_count: bool = False) -> Optional[_NtHeaders]:
    """Parse NT headers at ``off`` ignoring the signature; None if not structurally plausible.
    ``any_count``: accept any NumberOfSections (the headers are known to be there: their
    signature is intact), reading at most MAX_SECTIONS section headers."""
    if off < 4 or off + 4 + _COFF_SIZE + 2 > len(page):
        return None
    machine, nsec, stamp, _, _, opt_size, _ = struct.unpack_from("<HHIIIHH", page, off + 4)
    opt = off + 4 + _COFF_SIZE
    magic = struct.unpack_from("<H", page, opt)[0]
    fixed = _OPT_FIXED.get(magic)
    if fixed is None or not fixed <= opt_size <= PAGE or opt + fixed > len(page):
        return None
    if not (any_count or 1 <= nsec <= MAX_SECTIONS) or machine not in MACHINES and machine != 0:
        return None
    entry = struct.unpack_from("<I", page, opt + 16)[0]
    if magic == 0x10B:
        base = struct.unpack_from("<I", page, opt + 28)[0]
    else:
        base = struct.unpack_from("<Q", page, opt + 24)[0]
    salign = struct.unpack_from("<I", page, opt + 32)[0]
    size_of_image = struct.unpack_from("<I", page, opt + 56)[0]
    ndirs = struct.unpack_from("<I", page, opt + fixed - 4)[0]
    ndirs = min(ndirs, 16, (opt_size - fixed) // 8, (len(page) - opt - fixed) // 8)
    dirs = tuple(struct.unpack_from("<II", page, opt + fixed + 8 * i) for i in range(ndirs))
    return _NtHeaders(off, machine, stamp, magic, entry, base, salign, size_of_image, dirs,
                      _parse_sections(page, opt + opt_size, min(nsec, MAX_SECTIONS)), nsec)


def _e_lfanew(page: bytes) -> Optional[int]:
    return struct.unpack_from("<I", page, 0x3C)[0] if len(page) >= 0x40 else None


def _scan_for_headers(page: bytes) -> Optional[tuple[_NtHeaders, bool]]:
    """Find NT headers anywhere in the page: by signature first, then by structure alone."""
    pos = page.find(b"PE\0\0", 4)
    while pos != -1:
        headers = _parse_nt_headers(page, pos)
        if headers:
            return headers, True
        pos = page.find(b"PE\0\0", pos + 1)
    for off in range(0x40, len(page) - 4 - _COFF_SIZE - 2, 4):
        if page[off + 24:off + 26] in (b"\x0b\x01", b"\x0b\x02"):
            headers = _parse_nt_headers(page, off)
            if headers:
                return headers, False
    return None


def _locate(page: bytes) -> tuple[Optional[_NtHeaders], bool, list[str]]:
    """Return (headers, signature present, evidence about how they were found)."""
    e_lfanew = _e_lfanew(page)
    signed = e_lfanew is not None and page[e_lfanew:e_lfanew + 4] == b"PE\0\0"
    headers = _parse_nt_headers(page, e_lfanew, any_count=signed) if e_lfanew is not None else None
    if headers:
        return headers, signed, []
    note = "e_lfanew missing" if e_lfanew is None else f"e_lfanew 0x{e_lfanew:x} invalid"
    if e_lfanew is not None and len(page) < e_lfanew + _NT_FIXED_MAX and e_lfanew < PAGE:
        note += f" (beyond the 0x{len(page):x} header bytes: truncated?)"
    found = _scan_for_headers(page)
    if not found:
        return None, False, [note]
    return found[0], found[1], [note, f"NT headers found by scan at +0x{found[0].offset:x}"]


def _valid_name(name: bytes) -> bool:
    text, _, pad = name.partition(b"\0")
    return all(0x21 <= c <= 0x7E for c in text) and not pad.strip(b"\0")


def _section_problem(headers: _NtHeaders) -> Optional[str]:
    """Why the section table is not what a loader would accept, or None."""
    if not 1 <= headers.section_count <= MAX_SECTIONS:
        return (f"NumberOfSections {headers.section_count:#x} absurd (at most {MAX_SECTIONS}); "
                f"{len(headers.sections)} section headers read")
    if len(headers.sections) < headers.section_count:
        return "section table runs past the header page"
    if headers.size_of_image == 0:
        return "SizeOfImage is zero"
    limit = _align_up(headers.size_of_image, headers.section_alignment)
    prev_end = 1
    for section in headers.sections:
        label = section.name.rstrip(b"\0").decode("ascii", "backslashreplace")
        if not _valid_name(section.name):
            return f"bad section name {section.name!r}"
        if section.virtual_address < prev_end:
            return f"section {label} not ascending"
        prev_end = section.virtual_address + section.span
        if prev_end > limit:
            return f"section {label} ends past SizeOfImage"
    return None


def _machine_evidence(headers: _NtHeaders) -> str:
    guessed = MAGIC_MACHINE[headers.magic]
    if headers.machine_raw in MACHINES:
        name = MACHINES[headers.machine_raw]
        return f"machine {name}" + ("" if name == guessed else f" (optional header says {guessed})")
    return f"machine field erased; {guessed} guessed from optional header magic"


def inspect_header(page: bytes) -> HeaderEvidence:
    """Decide whether ``page`` (a region's first page) is a PE header, even with wiped magic."""
    return _inspect(bytes(page[:PAGE]))[0]


def _inspect(page: bytes) -> tuple[HeaderEvidence, Optional[_NtHeaders]]:
    mz = page[:2] == b"MZ"
    evidence = ["MZ present" if mz else "MZ erased"]
    headers, signature, notes = _locate(page)
    evidence += notes
    if headers is None:
        evidence.append("no NT headers found")
        return HeaderEvidence(False, None, None, mz, False, False, tuple(evidence)), None
    if signature:
        evidence.append(f"PE signature at +0x{headers.offset:x}")
    else:
        evidence += ["PE signature erased", f"NT headers at +0x{headers.offset:x}"]
    evidence.append(_machine_evidence(headers))
    problem = _section_problem(headers)
    evidence.append(f"section table invalid: {problem}" if problem else "section table valid")
    verdict = problem is None or (mz and signature)
    return HeaderEvidence(verdict, headers.machine, headers.offset, mz, signature,
                          problem is None, tuple(evidence)), headers


class _PagedImage:
    """Page-cached reads of a mapped image that remember which pages were unreadable."""

    def __init__(self, read: Reader, size: int) -> None:
        self._read = read
        self.size = size
        self._pages: dict[int, Optional[bytes]] = {}

    def _page(self, index: int) -> Optional[bytes]:
        if index not in self._pages:
            start = index * PAGE
            length = min(PAGE, self.size - start)
            data = self._read(start, length)
            self._pages[index] = data if data is not None and len(data) == length else None
        return self._pages[index]

    def read(self, rva: int, length: int) -> Optional[bytes]:
        if rva < 0 or length <= 0 or rva + length > self.size:
            return None
        pages = [self._page(i) for i in range(rva // PAGE, (rva + length - 1) // PAGE + 1)]
        if any(p is None for p in pages):
            return None
        start = rva % PAGE
        return b"".join(pages)[start:start + length]

    def u32_array(self, rva: int, count: int) -> list[Optional[int]]:
        data = self.read(rva, 4 * count)
        if data is not None:
            return list(struct.unpack(f"<{count}I", data))
        return [self._u(rva + 4 * i, 4) for i in range(count)]

    def u16_array(self, rva: int, count: int) -> list[Optional[int]]:
        data = self.read(rva, 2 * count)
        if data is not None:
            return list(struct.unpack(f"<{count}H", data))
        return [self._u(rva + 2 * i, 2) for i in range(count)]

    def _u(self, rva: int, width: int) -> Optional[int]:
        data = self.read(rva, width)
        return int.from_bytes(data, "little") if data is not None else None

    def cstring(self, rva: int) -> Optional[str]:
        """NUL-terminated ASCII string (at most MAX_STRING bytes), None if unreadable."""
        out = b""
        while len(out) < MAX_STRING:
            pos = rva + len(out)
            chunk = self.read(pos, min(PAGE - pos % PAGE, self.size - pos))
            if chunk is None:
                return None
            end = chunk.find(b"\0")
            out += chunk if end < 0 else chunk[:end]
            if end >= 0:
                break
        return out[:MAX_STRING].decode("ascii", "backslashreplace")

    def missing(self) -> list[tuple[int, int]]:
        ranges: list[tuple[int, int]] = []
        for index in sorted(i for i, page in self._pages.items() if page is None):
            start, end = index * PAGE, min((index + 1) * PAGE, self.size)
            if ranges and ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], end)
            else:
                ranges.append((start, end))
        return ranges


@dataclass(frozen=True)
class _ExportDirectory:
    rva: int
    size: int
    name_rva: int
    ordinal_base: int
    functions: int
    names: int
    functions_rva: int
    names_rva: int
    ordinals_rva: int


def _read_export_directory(image: _PagedImage, rva: int, size: int,
                           warnings: list[str]) -> Optional[_ExportDirectory]:
    if rva + EXPORT_DIR_SIZE > image.size:
        warnings.append(f"export directory at 0x{rva:x} outside image")
        return None
    raw = image.read(rva, EXPORT_DIR_SIZE)
    if raw is None:
        warnings.append("export directory unreadable")
        return None
    fields = struct.unpack_from("<7I", raw, 12)
    return _ExportDirectory(rva, size, *fields)


def _capped_count(count: int, table_rva: int, width: int, label: str, image: _PagedImage,
                  fallback: int, warnings: list[str]) -> int:
    """Bound a table length by MAX_EXPORTS and the image; an absurd one becomes ``fallback``."""
    fits = max(0, (image.size - table_rva) // width)
    if count <= min(MAX_EXPORTS, fits):
        return count
    capped = min(fallback, MAX_EXPORTS, fits)
    warnings.append(f"{label} 0x{count:x} absurd (table at 0x{table_rva:x}); capped to {capped}")
    return capped


def _named_indices(image: _PagedImage, directory: _ExportDirectory,
                   warnings: list[str]) -> list[tuple[Optional[str], int]]:
    """(name, function index) pairs from the name pointer and ordinal tables."""
    count = _capped_count(directory.names, max(directory.names_rva, directory.ordinals_rva),
                          4, "NumberOfNames", image, directory.functions, warnings)
    pairs = []
    unreadable = 0
    for name_rva, index in zip(image.u32_array(directory.names_rva, count),
                               image.u16_array(directory.ordinals_rva, count)):
        if index is None:
            unreadable += 1
            continue
        name = image.cstring(name_rva) if name_rva is not None else None
        unreadable += name is None
        pairs.append((name, index))
    if unreadable:
        warnings.append(f"{unreadable} export name(s) unreadable")
    return pairs


def _exports(image: _PagedImage, base: int, directory: _ExportDirectory,
             warnings: list[str]) -> list[ExportEntry]:
    named = _named_indices(image, directory, warnings)
    highest = max((index for _, index in named), default=-1) + 1
    count = _capped_count(directory.functions, directory.functions_rva, 4, "NumberOfFunctions",
                          image, highest, warnings)
    rvas = image.u32_array(directory.functions_rva, count)
    names: dict[int, list[Optional[str]]] = {}
    for name, index in named:
        names.setdefault(index, []).append(name)
    dangling = sum(len(v) for k, v in names.items() if k >= count)
    if dangling:
        warnings.append(f"{dangling} export name(s) index past NumberOfFunctions ({count})")
    unreadable = sum(rva is None for rva in rvas)
    if unreadable:
        warnings.append(f"{unreadable} export address(es) unreadable")
    entries = []
    for index, rva in enumerate(rvas):
        if not rva:
            continue
        forwarder = None
        if directory.rva <= rva < directory.rva + directory.size:
            forwarder = image.cstring(rva)
        for name in names.get(index, [None]):
            entries.append(ExportEntry(directory.ordinal_base + index, name, rva, base + rva,
                                       forwarder))
    outside = sum(e.rva >= image.size for e in entries)
    if outside:
        warnings.append(f"{outside} export RVA(s) outside image")
    return sorted(entries, key=lambda e: (e.ordinal, e.name or ""))


def _import_table(image: _PagedImage, headers: _NtHeaders, warnings: list[str]) -> Optional[bool]:
    rva, size = headers.directory(_DIR_IMPORT)
    if rva == 0 or size == 0:
        return False
    if rva + IMPORT_DESCRIPTOR_SIZE > image.size:
        warnings.append(f"import directory at 0x{rva:x} outside image")
        return False
    raw = image.read(rva, IMPORT_DESCRIPTOR_SIZE)
    if raw is None:
        return None
    _, _, _, name_rva, first_thunk = struct.unpack("<5I", raw)
    return 0 < name_rva < image.size and 0 < first_thunk < image.size


def _export_section(image: _PagedImage, result: MappedPE, headers: _NtHeaders) -> None:
    rva, size = headers.directory(_DIR_EXPORT)
    if rva == 0 or size == 0:
        return
    directory = _read_export_directory(image, rva, size, result.warnings)
    if directory is None:
        return
    result.dll_name = image.cstring(directory.name_rva)
    if result.dll_name is None:
        result.warnings.append("export DLL name unreadable")
    result.exports = _exports(image, result.base, directory, result.warnings)


def _image_extent(headers: _NtHeaders, size: int, warnings: list[str]) -> int:
    if headers.size_of_image > size:
        warnings.append(f"SizeOfImage 0x{headers.size_of_image:x} exceeds region size 0x{size:x}")
    return min(headers.size_of_image, size) or size


def parse_mapped_image(read: Reader, size: int, base: int) -> MappedPE:
    """Parse headers, exports and import presence of a memory-mapped PE; never raises."""
    image = _PagedImage(read, size)
    header_page = image.read(0, min(PAGE, size))
    if header_page is None:
        evidence = HeaderEvidence(False, None, None, False, False, False, ("header unreadable",))
        return MappedPE(base, evidence, missing=image.missing(), warnings=["header unreadable"])
    evidence, headers = _inspect(header_page)
    result = MappedPE(base, evidence)
    if headers is None:
        result.warnings.append("no PE headers found")
        return result
    if not evidence.sections_valid:
        result.warnings.append(next(e for e in evidence.evidence if e.startswith("section table")))
    result.header_image_base = headers.image_base
    result.size_of_image = headers.size_of_image
    result.machine = headers.machine
    result.timestamp = headers.timestamp
    result.entry_point_rva = headers.entry_point
    image.size = _image_extent(headers, size, result.warnings)
    _export_section(image, result, headers)
    result.has_import_table = _import_table(image, headers, result.warnings)
    result.missing = image.missing()
    return result


def _sane_alignment(alignment: int) -> int:
    """SectionAlignment if it is a power of two in [0x200, 0x10000], else a page."""
    power_of_two = alignment & (alignment - 1) == 0
    return alignment if power_of_two and 0x200 <= alignment <= 0x10000 else PAGE


def file_layout_header(page: bytes, available: int) -> tuple[bytes, int]:
    """The header page of a mapped image fixed for file layout (raw offset = RVA), and the
    size of the file to write: SizeOfImage, bounded by the ``available`` mapped bytes, aligned.

    Restores wiped ``MZ``/``PE`` magic and machine, sets FileAlignment to SectionAlignment,
    points each section's raw data at its RVA and clears the security directory (a file offset
    that is never mapped). Raises ValueError when no PE headers can be found.
    """
    headers, _, _ = _locate(bytes(page[:PAGE]))
    if headers is None:
        raise ValueError("no PE headers found")
    alignment = _sane_alignment(headers.section_alignment)
    size = _align_up(min(headers.size_of_image, available) or available, alignment)
    out = bytearray(page[:PAGE]).ljust(PAGE, b"\0")
    out[0:2] = b"MZ"
    struct.pack_into("<I", out, 0x3C, headers.offset)
    struct.pack_into("<4sH", out, headers.offset, b"PE\0\0", _MACHINE_CODES[headers.machine])
    struct.pack_into("<I", out, headers.opt_offset + 36, alignment)
    if _DIR_SECURITY < len(headers.directories):
        struct.pack_into("<II", out, headers.directory_offset(_DIR_SECURITY), 0, 0)
    for section in headers.sections:
        va = min(section.virtual_address, size)
        raw_size = min(_align_up(section.span, alignment), size - va)
        struct.pack_into("<II", out, section.offset + 16, raw_size, va)
    return bytes(out[:size]), size
