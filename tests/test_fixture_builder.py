"""The image builder itself: deterministic, scattered, faithful ground truth."""
from __future__ import annotations

import hashlib
import json
import struct

import pefile
import pytest
from volatility3.plugins.windows import pslist

from fixtures import profiles, scenarios
from fixtures.pe_mapper import DLL_DIR
from tests.vol_runner import construct


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module", params=["win7_image", "win10_image", "win7_x86_image", "xp_x86_image"])
def built_any(request):
    """(image, truth) of the default scenario on every OS profile, 32-bit ones included."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module", params=["win7_image", "win10_image"])
def built_os(request):
    """(image, truth) of the default scenario on each x64 profile (WoW64, x64 hooks and IATs)."""
    return request.getfixturevalue(request.param)


def test_same_scenario_builds_the_same_bytes(tmp_path, built_any):
    """``python -m fixtures build --scenario spyeye --os OS`` rebuilds the session's image exactly."""
    from fixtures.__main__ import main
    os_name = built_any[1]["os"]
    assert main(["build", "--scenario", "spyeye", "--os", os_name, "--out", str(tmp_path)]) == 0
    image = tmp_path / built_any[0].name
    assert _digest(image) == _digest(built_any[0])
    assert json.loads(image.with_suffix(".truth.json").read_text()) == built_any[1]


def test_straddling_plants_sit_on_physically_distant_pages(built_any):
    image, truth = built_any
    raw = image.read_bytes()
    straddling = [p for p in truth["plants"] if "straddle" in p["label"] and p["resident"]]
    assert len(straddling) >= 3
    for plant in straddling:
        first, second = plant["pages"]
        data = bytes.fromhex(plant["data"])
        assert abs(second["pa"] - first["pa"]) >= 16 << 20
        assert raw[first["pa"]:first["pa"] + len(data)] != data  # a linear scan cannot see it


def test_resident_single_page_plants_are_at_their_physical_address(built_any):
    image, truth = built_any
    raw = image.read_bytes()
    singles = [p for p in truth["plants"] if p["resident"] and len(p["pages"]) <= 1]
    assert len(singles) >= 5
    for plant in singles:
        data = bytes.fromhex(plant["data"])
        assert raw[plant["pa"]:plant["pa"] + len(data)] == data


def test_paged_out_plant_is_not_in_the_image(built_any):
    image, truth = built_any
    (plant,) = [p for p in truth["plants"] if p["label"] == "bot-pagedout"]
    assert plant["pa"] is None and not plant["resident"]
    assert bytes.fromhex(plant["data"]) not in image.read_bytes()


def test_scenario_has_exited_unlinked_process_closed_socket_and_wow64(built_os):
    _, truth = built_os
    exited = [p for p in truth["processes"] if p["exit_time"]]
    assert [(p["name"], p["linked"]) for p in exited] == [("invoice_0311.exe", False)]
    assert {c["pid"] for c in truth["connections"] if c["closed"]} == {2940}
    assert [p["name"] for p in truth["processes"] if p["wow64"]] == ["firefox.exe"]
    shared = [p for p in truth["plants"] if p["label"] == "shared-mapping"]
    assert {p["pid"] for p in shared} == {1484, 2172} and len({p["pa"] for p in shared}) == 1


def test_kernel_layout_comes_from_the_symbol_table(built_os):
    _, truth = built_os
    serial = {"win7-x64": 1, "win10-x64": 2}[truth["os"]]
    assert truth["pdb"] == {"guid": f"5350594559454649585455524500000{serial}", "age": 1}
    assert truth["dtb"] == {"win7-x64": 0x187000, "win10-x64": 0x1AD000}[truth["os"]]


# --- shared image pages, copy-on-write hooks (fixtures/plants/hooks.py) ---------------------

@pytest.fixture(scope="module")
def process_layers(built_os):
    """PID -> Volatility process layer of every linked user process."""
    image, _ = built_os
    plugin = construct(image, "windows.pslist.PsList")
    return {int(proc.UniqueProcessId): plugin.context.layers[proc.add_process_layer()]
            for proc in pslist.PsList.list_processes(plugin.context, plugin.config["kernel"])
            if int(proc.UniqueProcessId) != 4}


def _frame(layer, va: int) -> int:
    return layer.translate(va)[0] >> 12


def _patched_vad(truth, hook):
    """The image VAD the hook's bytes were written into (for iat: the importer's)."""
    (vad,) = [v for v in truth["vads"] if v["pid"] == hook["pid"] and v["start"] <= hook["patch_address"] <= v["end"]]
    return vad


def _clean_copy(truth, vad):
    """A clean process mapping an image at the VAD's base (the same DLL), or None."""
    return next((m["pid"] for m in truth["modules"]
                 if m["pid"] in truth["hook_negatives"]["clean_pids"] and m["base"] == vad["start"]), None)


def test_hooked_pages_are_private_copies_and_other_image_pages_shared(built_os, process_layers):
    _, truth = built_os
    compared = 0
    for hook in truth["hooks"]:
        vad = _patched_vad(truth, hook)
        clean = _clean_copy(truth, vad)
        if clean is None:
            continue                            # firefox's 32-bit modules: mapped by no other process
        hooked, other = process_layers[hook["pid"]], process_layers[clean]
        patched = hook["patch_address"] & ~0xFFF
        assert _frame(hooked, patched) != _frame(other, patched), hook
        assert patched in vad["cow_pages"] and vad["file"]
        for page in range(vad["start"], vad["end"] + 1, 0x1000):
            if page not in vad["cow_pages"]:
                assert _frame(hooked, page) == _frame(other, page), (hook["function"], hex(page))
        original = bytes.fromhex(hook["original"])
        assert other.read(hook["patch_address"], len(original)) == original
        compared += 1
    assert compared >= 10


def _decoded_target(layer, hook) -> int:
    """Where the patch at ``hook`` sends control, decoded from the bytes in memory."""
    at, bits, technique = hook["patch_address"], hook["bitness"], hook["technique"]
    code = layer.read(at, 16)
    word = "<Q" if bits == 64 else "<I"
    if technique in ("jmp_rel32", "call", "hotpatch", "syscall_jmp"):
        assert code[0] in (0xE8, 0xE9)
        return at + 5 + struct.unpack_from("<i", code, 1)[0]
    if technique == "jmp_indirect":
        assert code[:2] == b"\xff\x25"
        disp = struct.unpack_from("<i" if bits == 64 else "<I", code, 2)[0]
        pointer = at + 6 + disp if bits == 64 else disp
        return struct.unpack(word, layer.read(pointer, bits // 8))[0]
    if technique == "push_ret":
        assert code[0] == 0x68 and code[5] == 0xC3
        return struct.unpack_from("<i" if bits == 64 else "<I", code, 1)[0]
    if technique in ("mov_jmp", "mov_call"):
        skip = 2 if bits == 64 else 1
        assert code[skip - 1] in (0xB8, 0xBB) and code[skip + bits // 8] in (0xFF, 0x41)
        return struct.unpack_from(word, code, skip)[0]
    if technique == "iat":
        return struct.unpack_from(word, code)[0]
    if technique == "eat":
        return (hook["module_base"] + struct.unpack_from("<I", code)[0]) & ((1 << bits) - 1)
    raise AssertionError(technique)


def test_every_hook_is_in_memory_and_leads_to_its_target(built_os, process_layers):
    _, truth = built_os
    hooks = truth["hooks"]
    kinds = {(h["kind"], h["technique"], h["bitness"]) for h in hooks}
    assert {("inline", t, 64) for t in ("jmp_rel32", "jmp_indirect", "push_ret", "mov_jmp", "mov_call",
                                         "call", "int3", "ud2")} <= kinds
    assert {("iat", "iat", 64), ("eat", "eat", 64), ("modified", "modified", 64),
            ("syscall", "syscall_number", 64), ("syscall", "syscall_jmp", 64), ("inline", "hotpatch", 32),
            ("iat", "iat", 32), ("eat", "eat", 32)} <= kinds
    vads = {(v["pid"], v["start"]): v for v in truth["vads"]}
    for hook in hooks:
        layer = process_layers[hook["pid"]]
        patch = bytes.fromhex(hook["patch"])
        assert layer.read(hook["patch_address"], len(patch)) == patch, hook
        if hook["target"] is None:
            assert hook["technique"] in ("int3", "ud2", "modified", "syscall_number")
            continue
        assert _decoded_target(layer, hook) == hook["target"], hook
        start, end = hook["target_vad"]
        assert start <= hook["target"] <= end
        vad = vads[(hook["pid"], start)]
        assert vad["private"] and vad["protection"] == "PAGE_EXECUTE_READWRITE" and vad["end"] == end


def test_hooks_match_the_stolen_records_and_the_clean_processes_are_untouched(built_os, process_layers):
    _, truth = built_os
    hooked = {(h["pid"], h["function"]) for h in truth["hooks"] if h["kind"] == "inline"}
    assert {(2172, "HttpSendRequestA"), (2172, "HttpSendRequestW"), (2172, "InternetCloseHandle"),
            (2356, "PR_Write")} <= hooked
    clean = truth["hook_negatives"]["clean_pids"]
    assert 860 in clean and not {h["pid"] for h in truth["hooks"]} & set(clean)
    for forwarder in truth["hook_negatives"]["forwarders"]:
        layer = process_layers[forwarder["pid"]]
        code = layer.read(forwarder["address"], 6)
        assert code[:2] == b"\xff\x25"                   # jmp [IAT slot] into the listed ntdll
        slot = (forwarder["address"] + 6 + struct.unpack_from("<i", code, 2)[0] if forwarder["bitness"] == 64
                else struct.unpack_from("<I", code, 2)[0])
        value = layer.read(slot, forwarder["bitness"] // 8)
        assert int.from_bytes(value, "little") == forwarder["target"]
    assert {f["pid"] for f in truth["hook_negatives"]["forwarders"]} == {860, 1484, 2172, 2356}


def test_import_tables_are_bound_to_the_loaded_exports(built_os, process_layers):
    """In a clean process each IAT slot holds its export's address, as the loader binds it."""
    _, truth = built_os
    bases = {m["name"].lower(): m["base"] for m in truth["modules"] if m["pid"] == 860}
    exports = {}
    for name in ("ntdll", "ws2_32"):
        pe = pefile.PE(str(DLL_DIR / f"{name}_x64.dll"))
        exports[f"{name}.dll"] = {s.name.decode(): bases[f"{name}.dll"] + s.address
                                  for s in pe.DIRECTORY_ENTRY_EXPORT.symbols}
    layer, checked = process_layers[860], 0
    for name in ("wininet", "user32", "ws2_32"):
        pe = pefile.PE(str(DLL_DIR / f"{name}_x64.dll"))
        for entry in pe.DIRECTORY_ENTRY_IMPORT:
            for imp in entry.imports:
                slot = bases[f"{name}.dll"] + imp.address - pe.OPTIONAL_HEADER.ImageBase
                value = struct.unpack("<Q", layer.read(slot, 8))[0]
                assert value == exports[entry.dll.decode().lower()][imp.name.decode()], (name, imp.name)
                checked += 1
    assert checked == 11


# --- Windows 10 19041 x64 specifics (fixtures/profiles/win10_x64.py) ---------------------------

class Win10Image:
    """Raw reads of a Windows 10 image: kernel globals through the profile's kernel mapping."""

    def __init__(self, image, truth) -> None:
        from fixtures import profiles
        from fixtures.layout import Layout
        self.raw, self.truth = image.read_bytes(), truth
        self.profile = profiles.get(truth["os"])
        self.layout = Layout(self.profile.isf)

    def u64(self, pa: int) -> int:
        return struct.unpack_from("<Q", self.raw, pa)[0]

    def global_pa(self, name: str) -> int:
        return self.profile.kernel_phys + self.layout.symbol(name)


@pytest.fixture(scope="module")
def win10(win10_image) -> Win10Image:
    return Win10Image(*win10_image)


def test_win10_self_map_slot_is_randomised_and_the_only_self_reference(win10):
    index, dtb = win10.truth["self_map_index"], win10.truth["dtb"]
    assert 0x100 <= index <= 0x1FE and index != 0x1ED
    entries = [win10.u64(dtb + 8 * i) for i in range(512)]
    assert [i for i, e in enumerate(entries) if e & 1 and e & 0x000FFFFFFFFFF000 == dtb] == [index]
    pte_base = win10.u64(win10.global_pa("MmPteBase"))
    assert pte_base == 0xFFFF000000000000 | index << 39


def test_win10_type_index_is_encoded_with_the_cookie_and_header_address(win10):
    cookie = struct.unpack_from("<I", win10.raw, win10.global_pa("ObHeaderCookie"))[0]
    body = win10.layout.offset("_OBJECT_HEADER", "Body")
    type_index = win10.layout.offset("_OBJECT_HEADER", "TypeIndex")
    stored = set()
    for proc in win10.truth["processes"]:
        header_va = proc["eprocess"] - body
        raw = win10.raw[proc["eprocess_phys"] - body + type_index]
        stored.add(raw)
        assert (raw ^ cookie ^ (header_va >> 8)) & 0xFF == win10.profile.object_types.index("Process") + 2 == 7
    assert 0 < cookie < 256 and len(stored) > 1      # the header address changes the stored byte


def test_win10_kdbg_is_encoded_and_decodes_to_the_real_block(win10):
    from fixtures.profiles.kernelrules import EncodedKdbg
    never, always = (win10.u64(win10.global_pa(n)) for n in ("KiWaitNever", "KiWaitAlways"))
    where = win10.truth["kernel_base"] + win10.layout.symbol("KdpDataBlockEncoded")
    assert win10.raw[win10.global_pa("KdpDataBlockEncoded")] == 1

    def decode(q: int) -> int:
        q ^= never
        q = ((q << (never & 0xFF) % 64) | (q >> (64 - (never & 0xFF) % 64))) & (1 << 64) - 1
        return int.from_bytes((q ^ where).to_bytes(8, "little"), "big") ^ always

    kdbg = win10.global_pa("KdDebuggerDataBlock")
    words = [decode(win10.u64(kdbg + 8 * i)) for i in range(4)]
    assert words[2] & 0xFFFFFFFF == 0x4742444B                     # Header.OwnerTag "KDBG"
    assert words[3] == win10.truth["kernel_base"]                  # KernBase
    assert EncodedKdbg().encode(words[3], never, always, where) == win10.u64(kdbg + 24)
    assert struct.pack("<Q", words[2]) not in win10.raw             # no clear "KDBG" header anywhere


def test_win10_low_stub_leads_to_the_kernel(win10):
    stub = 0x1000
    assert win10.u64(stub) & 0xFFFFFFFFFFFF00FF == 0x00000001000600E9
    assert win10.u64(stub + 0xA0) == win10.truth["dtb"]
    target = win10.u64(stub + 0x70)
    assert target == win10.truth["kernel_base"] + win10.layout.symbol("HalpLMStub")
    base_pa = win10.profile.kernel_phys
    assert win10.raw[base_pa:base_pa + 2] == b"MZ" and base_pa != win10.truth["kernel_base"] - 0xFFFFF80000000000


def test_win10_every_process_has_the_cfg_bitmap_reservation_above_16_tib(win10):
    user = [p["pid"] for p in win10.truth["processes"] if p["pid"] != 4]
    cfg = [v for v in win10.truth["vads"] if v["start"] == 0x7DF5FF440000]
    assert sorted(v["pid"] for v in cfg) == sorted(user)
    for vad in cfg:
        assert vad["end"] - vad["start"] + 1 == 2 << 40 and vad["start"] >> 44 == 7
        assert (vad["protection"], vad["private"], vad["file"], vad["tag"], vad["committed_bytes"]) == (
            "PAGE_READONLY", False, None, "Vad ", 0)


def test_win10_wow64_process_points_at_an_ewow64process(win10_image):
    image, truth = win10_image
    plugin = construct(image, "windows.pslist.PsList")
    procs = {int(p.UniqueProcessId): p for p in pslist.PsList.list_processes(plugin.context, plugin.config["kernel"])}
    firefox = procs[2356]
    wow = firefox.WoW64Process.dereference()
    assert (int(wow.Machine), str(wow.NtdllType.description)) == (0x14C, "PsWowX86SystemDll")
    assert int(wow.Peb) == next(v["start"] for v in truth["vads"] if v["pid"] == 2356 and v["start"] == 0xA01000)
    assert not int(procs[1484].WoW64Process)


@pytest.mark.parametrize("os_name", sorted(profiles.PROFILES))
def test_every_scenario_fits_each_profiles_user_space(os_name):
    """Every VAD of every scenario lies in the profile's user space and no two of a process
    overlap (bench-large's 1.5 GiB reservation included, below the x86 DLLs on 32-bit)."""
    limit = profiles.get(os_name).highest_user_address
    for make in (scenarios.spyeye, scenarios.bench_large):
        scenario = make(os_name)
        for proc in scenario.processes:
            spans = sorted((v.start, v.end) for v in proc.vads)
            assert all(end <= limit for _, end in spans), (scenario.name, proc.pid, hex(spans[-1][1]))
            assert all(a_end < b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), (scenario.name, proc.pid)
    bigmem = next(p for p in scenario.processes if p.pid == 4400)       # bench-large's huge VADs
    assert sorted(v.end - v.start + 1 for v in bigmem.vads)[-2:] == [320 << 20, 1536 << 20]
