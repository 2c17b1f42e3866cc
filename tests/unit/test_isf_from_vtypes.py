"""The 32-bit kernel tables: the vtypes converter on every type of both source files
(skipped without ../shared), and the committed tables through Volatility's ISF loader."""
from __future__ import annotations

import json
import lzma
from pathlib import Path
from typing import Any, Dict

import pytest
from volatility3.framework import constants, contexts, objects, symbols
from volatility3.framework.symbols.windows import WindowsKernelIntermedSymbols, versions
from volatility3.framework.symbols.windows.extensions import pool

from fixtures import isf_from_vtypes as conv

ROOT = Path(__file__).resolve().parents[2]
VTYPES = ROOT.parent / "shared" / "reference" / "vtypes"
SOURCES = {"win7-x86": VTYPES / "win7_sp1_x86_vtypes.py", "xp-x86": VTYPES / "xp_sp3_x86_vtypes.py"}


@pytest.fixture(scope="module", params=sorted(SOURCES))
def converted(request):
    """(os, source dict, full converted ISF) for each kernel."""
    if not VTYPES.is_dir():
        pytest.skip(f"no vtypes at {VTYPES}")
    source = conv.read_vtypes(SOURCES[request.param])
    known = conv.x64_enum_members(ROOT / "symbols")
    return request.param, source, conv.convert(source, known, conv.PROFILES[request.param].guid)


def _check(src: list, isf: Dict[str, Any], table: Dict[str, Any], source: Dict) -> None:
    """The ISF type descriptor ``isf`` says what the vtypes type ``src`` says."""
    head = src[0]
    if head == "pointer":
        assert isf["kind"] == "pointer"
        target = src[1]
        if target[0] in conv.BASE_TYPES or target[0] in ("pointer", "pointer64", "array", "Enumeration") \
                or target[0] in source:
            _check(target, isf["subtype"], table, source)
        else:
            assert isf["subtype"] == {"kind": "base", "name": "void"}
    elif head == "pointer64":
        assert isf == {"kind": "base", "name": "unsigned long long"}
    elif head == "array":
        assert (isf["kind"], isf["count"]) == ("array", src[1])
        _check(src[2], isf["subtype"], table, source)
    elif head == "BitField":
        spec = src[1]
        assert isf["kind"] == "bitfield"
        assert (isf["bit_position"], isf["bit_position"] + isf["bit_length"]) == (spec["start_bit"], spec["end_bit"])
        assert isf["type"] == {"kind": "base", "name": spec["native_type"]}
    elif head == "Enumeration":
        enum = table["enums"][isf["name"]]
        assert enum["constants"] == {name: value for value, name in src[1]["choices"].items()}
        assert enum["base"] == src[1]["target"] and enum["size"] == table["base_types"][enum["base"]]["size"]
    elif head in conv.BASE_TYPES:
        assert isf == {"kind": "base", "name": head}
    else:
        assert isf["kind"] in ("struct", "union") and isf["name"] == head
        assert table["user_types"][head]["size"] == source[head][0]


def test_every_type_size_field_offset_and_type(converted):
    _, source, table = converted
    assert set(table["user_types"]) == set(source)
    fields = 0
    for name, (size, members) in source.items():
        out = table["user_types"][name]
        assert out["size"] == size, name
        assert set(out["fields"]) == set(members), name
        for field, (offset, vtype) in members.items():
            assert out["fields"][field]["offset"] == offset, (name, field)
            _check(vtype, out["fields"][field]["type"], table, source)
            fields += 1
    assert fields > 4000


def test_source_counts_match_the_readme(converted):
    os_name, source, table = converted
    assert len(source) == {"xp-x86": 567, "win7-x86": 869}[os_name]
    assert table["base_types"]["pointer"]["size"] == 4 and table["base_types"]["long"]["size"] == 4


def _vol_table(context, isf: Dict[str, Any], tmp_path: Path, name: str = "k"):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(isf))
    table = WindowsKernelIntermedSymbols(context, "test", name, path.as_uri())
    context.symbol_space.append(table)
    return table


def test_volatility_reads_every_converted_type(converted, tmp_path):
    """Volatility's own loader agrees on every size, member offset and bit range."""
    _, source, isf = converted
    context = contexts.Context()
    _vol_table(context, isf, tmp_path)
    assert not symbols.symbol_table_is_64bit(context=context, symbol_table_name="k")
    for name, (size, members) in source.items():
        vol_type = context.symbol_space.get_type(f"k{constants.BANG}{name}")
        assert vol_type.size == size, name
        for field, (offset, vtype) in members.items():
            vol_offset, template = vol_type.vol.members[field]
            assert vol_offset == offset, (name, field)
            if vtype[0] == "BitField":
                assert (template.vol.start_bit, template.vol.end_bit) == (vtype[1]["start_bit"], vtype[1]["end_bit"])
            elif vtype[0] == "pointer":
                assert template.size == 4, (name, field)
            elif vtype[0] == "array":
                assert template.vol.count == vtype[1], (name, field)


def test_enum_names(converted):
    """Named after the x64 table's enum with the same members, else after the first use."""
    os_name, _, isf = converted
    lookaside = isf["user_types"]["_GENERAL_LOOKASIDE"]["fields"]["Type"]["type"]
    assert lookaside == {"kind": "enum", "name": "_POOL_TYPE"}
    assert isf["enums"]["_POOL_TYPE"]["constants"]["NonPagedPoolSession"] == 32
    named = [n for n in isf["enums"] if not n.startswith("__enum_")]
    assert len(named) == {"win7-x86": 30, "xp-x86": 16}[os_name]
    if os_name == "xp-x86":
        proxy = isf["user_types"]["_SECURITY_TOKEN_PROXY_DATA"]["fields"]["ProxyClass"]["type"]["name"]
        assert proxy == "__enum_SECURITY_TOKEN_PROXY_DATA_ProxyClass"


def test_command_line_writes_the_table(converted, tmp_path):
    from fixtures.__main__ import main
    os_name = converted[0]
    assert main(["isf-from-vtypes", "--from", str(SOURCES[os_name]), "--os", os_name, "--out", str(tmp_path),
                 "--full"]) == 0
    table = json.loads(lzma.decompress(conv.table_path(tmp_path, os_name).read_bytes()))
    assert set(table["user_types"]) == set(converted[1]) and "PsActiveProcessHead" in table["symbols"]


def test_union_rule(converted):
    """Every field at offset 0 makes a union; a union whose anonymous struct vtypes
    flattened (``_LARGE_INTEGER``: HighPart at 4) stays a struct, which Volatility reads alike."""
    _, _, isf = converted
    assert isf["user_types"]["_LARGE_INTEGER"]["kind"] == "struct"
    assert isf["user_types"]["_EX_FAST_REF"]["kind"] == "union"
    assert isf["user_types"]["_POOL_HEADER"]["kind"] == "struct"
    assert isf["user_types"]["_LIST_ENTRY"]["kind"] == "struct"


def test_committed_table_is_what_the_converter_writes(converted, tmp_path):
    os_name = converted[0]
    written = conv.write_table(SOURCES[os_name], os_name, tmp_path)
    committed = conv.table_path(ROOT / "symbols", os_name)
    assert lzma.decompress(written.read_bytes()) == lzma.decompress(committed.read_bytes())


# --- the committed tables (no ../shared needed) --------------------------------------

# Values recorded from the source vtypes (see ../shared/reference/vtypes/README.md).
EXPECTED = {
    "xp-x86": {
        "_EPROCESS": (0x260, {"UniqueProcessId": 0x84, "ActiveProcessLinks": 0x88, "VadRoot": 0x11c,
                              "ImageFileName": 0x174, "Peb": 0x1b0, "CreateTime": 0x70, "ObjectTable": 0xc4}),
        "_ETHREAD": (0x258, {"CreateTime": 0x1c0, "Cid": 0x1ec}),
        "_MMVAD": (0x28, {"StartingVpn": 0x0, "EndingVpn": 0x4, "LeftChild": 0xc, "RightChild": 0x10, "u": 0x14}),
        "_MMVAD_SHORT": (0x18, {}), "_MMVAD_LONG": (0x34, {}), "_PEB": (0x210, {}),
        "_POOL_HEADER": (0x8, {"PoolTag": 0x4}),
        "_OBJECT_HEADER": (0x20, {"Type": 0x8, "Body": 0x18}),
    },
    "win7-x86": {
        "_EPROCESS": (0x2c0, {"UniqueProcessId": 0xb4, "ActiveProcessLinks": 0xb8, "VadRoot": 0x278,
                              "ImageFileName": 0x16c, "Peb": 0x1a8, "CreateTime": 0xa0, "ObjectTable": 0xf4}),
        "_ETHREAD": (0x2b8, {"CreateTime": 0x200, "Cid": 0x22c}),
        "_MMVAD": (0x3c, {"LeftChild": 0x4, "RightChild": 0x8, "StartingVpn": 0xc, "EndingVpn": 0x10, "u": 0x14}),
        "_MMVAD_SHORT": (0x20, {}), "_MMVAD_LONG": (0x48, {}), "_MMADDRESS_NODE": (0x14, {}),
        "_PEB": (0x248, {}), "_POOL_HEADER": (0x8, {"PoolTag": 0x4}),
        "_OBJECT_HEADER": (0x20, {"TypeIndex": 0xc, "InfoMask": 0xe, "Body": 0x18}),
    },
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def committed(request):
    """(os, Volatility context, table name) of a committed 32-bit table."""
    context = contexts.Context()
    path = conv.table_path(ROOT / "symbols", request.param)
    table = WindowsKernelIntermedSymbols(context, "test", "k", path.as_uri())
    context.symbol_space.append(table)
    return request.param, context, table


def test_committed_layouts(committed):
    os_name, context, _ = committed
    for name, (size, fields) in EXPECTED[os_name].items():
        vol_type = context.symbol_space.get_type(f"k!{name}")
        assert vol_type.size == size, name
        assert {f: vol_type.vol.members[f][0] for f in fields} == fields, name
    assert not symbols.symbol_table_is_64bit(context=context, symbol_table_name="k")


def test_committed_pointers_bitfields_and_classes(committed):
    os_name, context, _ = committed
    eprocess = context.symbol_space.get_type("k!_EPROCESS")
    peb = eprocess.vol.members["Peb"][1]
    assert peb.vol.object_class is objects.Pointer and peb.size == 4
    name = eprocess.vol.members["ImageFileName"][1]
    assert name.vol.count == {"xp-x86": 16, "win7-x86": 15}[os_name]
    header = context.symbol_space.get_type("k!_POOL_HEADER")
    block = header.vol.members["BlockSize"]
    assert (block[0], block[1].vol.start_bit, block[1].vol.end_bit) == (2, 0, 9)
    expected_class = pool.POOL_HEADER if os_name == "xp-x86" else pool.POOL_HEADER_VISTA
    assert header.vol.object_class is expected_class
    vad_root = eprocess.vol.members["VadRoot"][1]
    if os_name == "xp-x86":   # a plain pointer to the root _MMVAD
        assert vad_root.vol.object_class is objects.Pointer
    else:
        assert vad_root.vol.type_name == "k!_MM_AVL_TABLE"
    assert context.symbol_space.get_enumeration("k!_POOL_TYPE").choices["PagedPool"] == 1


def test_volatility_version_checks(committed):
    """The PE version in the metadata answers Volatility's version checks (the fallback
    probes would call the Windows 7 subset "XP or 2003").  ``is_windows_7`` compares a
    4-part version with ``(6, 1)`` upstream, so it is False for any table that has one."""
    os_name, context, _ = committed
    xp = os_name == "xp-x86"
    assert versions.is_windows_xp(context, "k") is xp and versions.is_windows_xp_sp3(context, "k") is xp
    assert versions.is_vista_or_later(context, "k") is not xp
    assert not versions.is_2003(context, "k") and not versions.is_windows_8_or_later(context, "k")
    assert not versions.is_windows_7(context, "k")


def test_committed_identity_and_globals(committed):
    os_name, _, table = committed
    raw = lzma.decompress(conv.table_path(ROOT / "symbols", os_name).read_bytes())
    windows = json.loads(raw)["metadata"]["windows"]
    assert windows["pdb"] == {"GUID": conv.PROFILES[os_name].guid, "age": 1, "database": "ntkrnlmp.pdb",
                              "machine_type": 0x14C}
    assert windows["pe"] == {"win7-x86": {"major": 6, "minor": 1, "revision": 7601, "build": 17514},
                             "xp-x86": {"major": 5, "minor": 1, "revision": 2600, "build": 5512}}[os_name]
    assert "ntkrnlmp" in constants.windows.KERNEL_MODULE_NAMES
    names = set(table.symbols)
    assert {"PsActiveProcessHead", "PsLoadedModuleList", "KdVersionBlock", "KdDebuggerDataBlock",
            "MmProtectToValue", "KiServiceTable", "PspCidTable"} <= names
    assert ("ObTypeIndexTable" in names) == (os_name == "win7-x86")
    assert ("CmpCallBackVector" in names) == (os_name == "xp-x86")
    addresses = sorted(table.get_symbol(n).address for n in names)
    assert len(set(addresses)) == len(addresses)
    kdbg = table.get_symbol("KdDebuggerDataBlock").address
    assert table.get_symbol("KdpDebuggerDataListHead").address - kdbg >= 0x400  # room for _KDDEBUGGER_DATA64
    head = table.get_symbol("PsActiveProcessHead").address
    assert (head, table.get_symbol("PsLoadedModuleList").address) == (conv.DATA_RVA, conv.DATA_RVA + 0x10)


def test_volatility_finds_the_table_by_pdb_name_and_guid(committed):
    """The lookup the kernel scan makes for an RSDS record naming ntkrnlmp.pdb with this GUID."""
    from volatility3.framework.symbols.intermed import IntermediateSymbolTable

    import spyeye_plugins.spyeye  # noqa: F401  (puts symbols/ on Volatility's path)
    os_name = committed[0]
    urls = list(IntermediateSymbolTable.file_symbol_url("windows", f"ntkrnlmp.pdb/{conv.PROFILES[os_name].guid}-1"))
    assert [u.rsplit("/", 3)[1:] for u in urls] == [
        ["windows", "ntkrnlmp.pdb", f"{conv.PROFILES[os_name].guid}-1.json.xz"]]
