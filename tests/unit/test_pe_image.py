"""Tests for the memory-mapped PE parser, run against the committed fixture DLLs."""
from __future__ import annotations

import json
import struct
from typing import Callable, Optional

import pefile
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.pe_mapper import DLL_DIR, map_image
from spyeye_plugins.spyeye.parsers.known_names import (
    known_spyeye_exports,
    plugin_module_names,
    sources,
    zeus_host_exports,
)
from spyeye_plugins.spyeye.parsers.pe_image import (
    MappedPE,
    file_layout_header,
    inspect_header,
    parse_mapped_image,
)

DLLS = ["spyplugin_x86.dll", "spyplugin_x64.dll", "ordinals_x86.dll", "ordinals_x64.dll",
        "benign_x64.dll"]
BASE = 0x7FF6_1000_0000
TIMESTAMP = 1300190400
SPYPLUGIN_NAMES = {
    "Init", "Start", "Stop", "SpyEye_Init", "SpyEye_Start", "SpyEye_Stop", "TakeBotGuid",
    "TakeBotPath", "TakeBotVersion", "TakeGateToCollector", "TakeGetPage", "TakeFreeMem",
    "Callback_OnBeforeProcessUrl", "Callback_OnBeforeLoadPage3", "Callback_OnAfterLoadingPage",
    "Callback_ChangePostRequest", "KeepAlive", "IsGlobal", "GetState",
}


def _file(name: str) -> bytes:
    return (DLL_DIR / name).read_bytes()


def _reader(image: bytes, missing_pages: frozenset[int] = frozenset()
            ) -> Callable[[int, int], Optional[bytes]]:
    def read(rva: int, length: int) -> Optional[bytes]:
        pages = range(rva // 0x1000, (rva + length - 1) // 0x1000 + 1)
        if any(p in missing_pages for p in pages) or rva + length > len(image):
            return None
        return image[rva:rva + length]
    return read


def _parse(image: bytes, missing_pages: frozenset[int] = frozenset()) -> MappedPE:
    return parse_mapped_image(_reader(image, missing_pages), len(image), BASE)


def _pefile_exports(data: bytes) -> list[tuple]:
    pe = pefile.PE(data=data)
    return sorted(
        (s.ordinal, s.name.decode() if s.name else None, s.address,
         s.forwarder.decode() if s.forwarder else None)
        for s in pe.DIRECTORY_ENTRY_EXPORT.symbols)


def _exports(result: MappedPE) -> list[tuple]:
    return [(e.ordinal, e.name, e.rva, e.forwarder) for e in result.exports]


def _patched(image: bytes, offset: int, fmt: str, *values: int) -> bytes:
    out = bytearray(image)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def _export_dir_rva(name: str) -> int:
    pe = pefile.PE(data=_file(name), fast_load=True)
    return pe.OPTIONAL_HEADER.DATA_DIRECTORY[0].VirtualAddress


def _wiped(image: bytes, *, mz: bool = False, signature: bool = False) -> bytes:
    out = bytearray(image)
    if mz:
        out[0:2] = b"\0\0"
    if signature:
        out[0x80:0x84] = b"\0\0\0\0"
    return bytes(out)


@pytest.mark.parametrize("name", DLLS)
def test_mapped_exports_equal_pefile_reading_of_file(name: str) -> None:
    data = _file(name)
    pe = pefile.PE(data=data, fast_load=True)
    result = _parse(map_image(data))
    assert _exports(result) == _pefile_exports(data)
    assert all(e.address == BASE + e.rva for e in result.exports)
    assert result.machine == name.split("_")[1][:3]
    assert result.timestamp == TIMESTAMP
    assert result.header_image_base == pe.OPTIONAL_HEADER.ImageBase
    assert result.size_of_image == pe.OPTIONAL_HEADER.SizeOfImage
    assert result.entry_point_rva == pe.OPTIONAL_HEADER.AddressOfEntryPoint
    assert result.header.is_pe and result.header.sections_valid
    assert (result.warnings, result.missing) == ([], [])


@pytest.mark.parametrize("name,dll_name,has_imports", [
    ("spyplugin_x86.dll", "ccgrabber.dll", True),
    ("spyplugin_x64.dll", "ccgrabber.dll", True),
    ("ordinals_x86.dll", "ordinals.dll", False),
    ("ordinals_x64.dll", "ordinals.dll", False),
    ("benign_x64.dll", "imgutil.dll", True),
])
def test_dll_name_and_import_table_presence(name: str, dll_name: str, has_imports: bool) -> None:
    result = _parse(map_image(_file(name)))
    assert result.dll_name == dll_name
    assert result.has_import_table is has_imports


@pytest.mark.parametrize("name", ["spyplugin_x86.dll", "spyplugin_x64.dll"])
def test_spyplugin_exports_are_the_known_spyeye_names(name: str) -> None:
    result = _parse(map_image(_file(name)))
    names = [e.name for e in result.exports]
    assert set(names) == SPYPLUGIN_NAMES and len(names) == 19
    assert [e.ordinal for e in result.exports] == list(range(1, 20))
    assert SPYPLUGIN_NAMES <= set(known_spyeye_exports())
    assert "ccgrabber.dll" in plugin_module_names()


def test_known_names_have_resolvable_sources_and_exclude_host_exports() -> None:
    known = known_spyeye_exports()
    assert known["TakeBotGuid"].confidence == "H"
    assert known["GetPluginId"].module == "socks5.dll"
    assert "Callback_ProcessContent" not in known
    assert "TakeGateToCollector3" in zeus_host_exports()
    assert not set(known) & set(zeus_host_exports())
    cited = {s for e in [*known.values(), *zeus_host_exports().values()] for s in e.sources}
    assert cited <= set(sources())


@pytest.mark.parametrize("name", ["ordinals_x86.dll", "ordinals_x64.dll"])
def test_ordinal_only_named_and_forwarded_exports(name: str) -> None:
    result = _parse(map_image(_file(name)))
    rows = [(e.ordinal, e.name, e.forwarder) for e in result.exports]
    assert rows == [(10, None, None), (11, None, None), (12, None, None),
                    (20, "OrdinalsVersion", None), (21, "MyGetTickCount", "kernel32.GetTickCount")]
    forwarder = result.exports[-1]
    export_dir = _export_dir_rva(name)
    assert export_dir <= forwarder.rva < export_dir + 0x1000


@pytest.mark.parametrize("name", ["spyplugin_x86.dll", "benign_x64.dll"])
def test_wiped_mz_still_parses_with_mz_erased_evidence(name: str) -> None:
    data = _file(name)
    result = _parse(_wiped(map_image(data), mz=True))
    assert result.header.evidence[:2] == ("MZ erased", "PE signature at +0x80")
    assert result.header.is_pe and not result.header.mz_present
    assert _exports(result) == _pefile_exports(data)


@pytest.mark.parametrize("name", ["spyplugin_x86.dll", "spyplugin_x64.dll"])
def test_wiped_mz_and_pe_signature_found_structurally(name: str) -> None:
    data = _file(name)
    result = _parse(_wiped(map_image(data), mz=True, signature=True))
    evidence = result.header.evidence
    assert "PE signature erased" in evidence and "NT headers at +0x80" in evidence
    assert "section table valid" in evidence and result.header.is_pe
    assert result.header.nt_offset == 0x80 and not result.header.signature_present
    assert _exports(result) == _pefile_exports(data)


def test_wiped_e_lfanew_and_machine_found_by_scan_and_guessed_from_magic() -> None:
    image = _wiped(map_image(_file("spyplugin_x64.dll")), mz=True, signature=True)
    image = _patched(_patched(image, 0x3C, "<I", 0), 0x84, "<H", 0)
    evidence = inspect_header(image[:0x1000])
    assert evidence.is_pe and evidence.machine == "x64" and evidence.nt_offset == 0x80
    assert "e_lfanew 0x0 invalid" in evidence.evidence
    assert "NT headers found by scan at +0x80" in evidence.evidence
    assert "machine field erased; x64 guessed from optional header magic" in evidence.evidence


@pytest.mark.parametrize("page", [bytes(0x1000), b"This program cannot be run" * 100, b"MZ"])
def test_non_pe_pages_are_rejected(page: bytes) -> None:
    evidence = inspect_header(page)
    assert not evidence.is_pe and evidence.nt_offset is None
    assert evidence.evidence[-1] == "no NT headers found"


def test_unordered_section_table_is_invalid_and_rejected_without_magic() -> None:
    image = map_image(_file("spyplugin_x86.dll"))
    table = 0x80 + 24 + 0xE0
    swapped = _patched(image, table + 12, "<I", 0x3000)
    swapped = _patched(swapped, table + 40 + 12, "<I", 0x1000)
    assert "section table invalid: section .bss not ascending" in inspect_header(swapped).evidence
    assert inspect_header(swapped).is_pe  # both magics still vouch for it
    assert not inspect_header(_wiped(swapped, mz=True, signature=True)).is_pe


def test_paged_out_import_page_gives_partial_result_and_missing_range() -> None:
    data = _file("spyplugin_x64.dll")
    result = _parse(map_image(data), frozenset({4}))  # .idata at RVA 0x4000
    assert _exports(result) == _pefile_exports(data)
    assert result.has_import_table is None
    assert result.missing == [(0x4000, 0x5000)]


def test_paged_out_export_page_keeps_header_facts() -> None:
    result = _parse(map_image(_file("spyplugin_x86.dll")), frozenset({3}))  # .edata
    assert result.exports == [] and result.dll_name is None
    assert result.warnings == ["export directory unreadable"]
    assert result.missing == [(0x3000, 0x4000)]
    assert (result.machine, result.timestamp, result.has_import_table) == ("x86", TIMESTAMP, True)


def test_paged_out_header_reports_header_unreadable() -> None:
    result = _parse(map_image(_file("benign_x64.dll")), frozenset({0}))
    assert result.warnings == ["header unreadable"] and not result.header.is_pe
    assert result.missing == [(0, 0x1000)]


def test_truncated_header_warns_instead_of_raising() -> None:
    image = map_image(_file("spyplugin_x64.dll"))[:0x100]
    result = _parse(image)
    assert result.warnings == ["no PE headers found"]
    assert "e_lfanew 0x80 invalid (beyond the 0x100 header bytes: truncated?)" in \
        result.header.evidence


def test_export_directory_outside_image_warns() -> None:
    image = map_image(_file("spyplugin_x86.dll"))
    result = _parse(_patched(image, 0x80 + 24 + 96, "<I", 0x100000))
    assert result.exports == []
    assert result.warnings == ["export directory at 0x100000 outside image"]


@pytest.mark.parametrize("name", ["spyplugin_x86.dll", "spyplugin_x64.dll"])
def test_absurd_number_of_functions_is_capped_to_named_range(name: str) -> None:
    data = _file(name)
    export_dir = _export_dir_rva(name)
    result = _parse(_patched(map_image(data), export_dir + 20, "<I", 0xFFFFFFFF))
    assert _exports(result) == _pefile_exports(data)
    assert result.warnings == [
        f"NumberOfFunctions 0xffffffff absurd (table at 0x{export_dir + 40:x}); capped to 19"]


def test_absurd_number_of_names_warns() -> None:
    export_dir = _export_dir_rva("spyplugin_x86.dll")
    image = _patched(map_image(_file("spyplugin_x86.dll")), export_dir + 24, "<I", 0xFFFFFFFF)
    result = _parse(image)
    assert result.warnings[0].startswith("NumberOfNames 0xffffffff absurd")
    assert SPYPLUGIN_NAMES <= {e.name for e in result.exports}


def test_export_name_outside_image_becomes_unnamed_with_warning() -> None:
    export_dir = _export_dir_rva("ordinals_x86.dll")
    image = map_image(_file("ordinals_x86.dll"))
    names_rva = struct.unpack_from("<I", image, export_dir + 32)[0]
    result = _parse(_patched(image, names_rva, "<I", 0x7FFFFFF0))
    assert result.warnings == ["1 export name(s) unreadable"]
    rows = [(e.ordinal, e.name) for e in result.exports]
    assert rows[3:] == [(20, "OrdinalsVersion"), (21, None)]


def rebuild_file_layout(image: bytes) -> bytes:
    """A whole mapped image as a file, the way ``spyeye.injected --dump`` writes it in chunks."""
    header, size = file_layout_header(image[:0x1000], len(image))
    return (header + bytes(image[len(header):size])).ljust(size, b"\0")


@pytest.mark.parametrize("name", DLLS)
def test_rebuilt_file_layout_loads_in_pefile_with_identical_exports(name: str) -> None:
    data = _file(name)
    rebuilt = rebuild_file_layout(_wiped(map_image(data), mz=True, signature=True))
    pe = pefile.PE(data=rebuilt)
    assert rebuilt[:2] == b"MZ" and rebuilt[0x80:0x84] == b"PE\0\0"
    assert pe.OPTIONAL_HEADER.FileAlignment == pe.OPTIONAL_HEADER.SectionAlignment
    assert all(s.PointerToRawData == s.VirtualAddress for s in pe.sections)
    assert _pefile_exports(rebuilt) == _pefile_exports(data)


def test_rebuild_rejects_non_pe() -> None:
    with pytest.raises(ValueError, match="no PE headers found"):
        rebuild_file_layout(bytes(0x2000))


def test_file_layout_header_alone_matches_the_whole_rebuild_and_bounds_the_size() -> None:
    image = map_image(_file("spyplugin_x64.dll"))
    header, size = file_layout_header(image[:0x1000], len(image))
    assert size == len(image) == 0x5000
    assert rebuild_file_layout(image) == header + image[0x1000:]
    header, size = file_layout_header(image[:0x1000], 0x1000)
    assert size == len(header) == 0x1000


def test_file_layout_header_of_a_tiny_region_does_not_write_past_it() -> None:
    image = bytearray(map_image(_file("ordinals_x64.dll"))[:0x200])
    struct.pack_into("<I", image, 0x80 + 24 + 32, 0x200)   # SectionAlignment 0x200
    header, size = file_layout_header(bytes(image), len(image))
    assert size == len(header) == 0x200 and header[:2] == b"MZ"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=0x1200),
                 st.builds(lambda index, edits: _edited(_MAPPED[index][:0x1000], edits),
                           st.sampled_from(range(len(DLLS))),
                           st.lists(st.tuples(st.integers(0, 0x3FF), st.integers(0, 255)), max_size=12))),
       st.integers(0, 0x100000))
def test_file_layout_header_raises_only_value_error(page: bytes, available: int) -> None:
    try:
        header, size = file_layout_header(page, available)
    except ValueError:
        return
    assert len(header) == min(size, 0x1000)


def _edited(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for offset, value in edits:
        out[offset] = value
    return bytes(out)


def test_map_image_at_other_base_applies_relocations() -> None:
    data = _file("spyplugin_x86.dll")
    pe = pefile.PE(data=data)
    new_base = 0x20000000
    delta = new_base - pe.OPTIONAL_HEADER.ImageBase
    original, moved = map_image(data), map_image(data, new_base)
    fixup = pe.DIRECTORY_ENTRY_BASERELOC[0].entries[0].rva
    before, after = (struct.unpack_from("<I", img, fixup)[0] for img in (original, moved))
    assert after == before + delta
    assert _parse(moved).header_image_base == new_base


def test_result_to_dict_is_json_serialisable() -> None:
    result = _parse(map_image(_file("ordinals_x64.dll")))
    decoded = json.loads(json.dumps(result.to_dict()))
    assert decoded["exports"][-1] == {
        "ordinal": 21, "name": "MyGetTickCount", "rva": result.exports[-1].rva,
        "address": BASE + result.exports[-1].rva, "forwarder": "kernel32.GetTickCount"}
    assert decoded["header"]["evidence"][0] == "MZ present"


_MAPPED = [map_image(_file(name)) for name in DLLS]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=0x1400), st.integers(0, 0xFFFF_FFFF_FFFF))
def test_random_bytes_never_raise(data: bytes, base: int) -> None:
    inspect_header(data)
    result = parse_mapped_image(_reader(data), len(data), base)
    assert all(e.address == base + e.rva for e in result.exports)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(DLLS))),
       st.lists(st.tuples(st.integers(0, 0x3FF), st.integers(0, 255)), max_size=12),
       st.frozensets(st.integers(0, 5), max_size=2))
def test_mutated_real_headers_never_raise(index: int, edits: list[tuple[int, int]],
                                          missing: frozenset[int]) -> None:
    image = bytearray(_MAPPED[index])
    for offset, value in edits:
        image[offset] = value
    inspect_header(bytes(image[:0x1000]))
    result = parse_mapped_image(_reader(bytes(image), missing), len(image), BASE)
    assert all(0 <= start < end <= len(image) for start, end in result.missing)
