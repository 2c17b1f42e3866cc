"""API-hash algorithms, the hash index, trait detectors, scoring and the fixture resolvers."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import capstone
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spyeye_plugins.spyeye.parsers import api_traits as traits
from spyeye_plugins.spyeye.parsers.api_hashes import ALGORITHMS, HashHit, HashIndex, hash_name
from spyeye_plugins.spyeye.parsers.api_traits import analyse, disassemble

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "shellcode"
BASE = 0x1000


def detect(trait: str, code: bytes, bits: int = 32, has_import_table: bool | None = None) -> list:
    """Run one detector over `code` decoded by linear sweep at BASE."""
    insns = disassemble(code, BASE, bits)
    ctx = traits.Context(insns, bits, HashIndex.default(), has_import_table)
    return traits.WEIGHTS[trait].detect(ctx)


# --- hash algorithms ---------------------------------------------------------

SPYEYE_ROL7_XOR = {  # spyeye-facts section 4
    "CreateMutexA": 0xBF78969C, "VirtualQuery": 0x6A582465, "LoadLibraryA": 0xC8AC8026,
    "GetProcAddress": 0x1FC0EAEE, "kernel32.dll": 0x4B1FFE8E, "explorer.exe": 0x490A0972,
    "services.exe": 0x43048A33, "HttpSendRequestW": 0x9F13857C, "InternetCloseHandle": 0x7314FB0C,
    "GetModuleHandleA": 0xA48D6762, "HttpSendRequestA": 0x9F13856A, "VirtualAlloc": 0x697A6AFE,
    "InternetReadFile": 0x1A212962, "WriteProcessMemory": 0xBEA0BF35, "PR_Write": 0x7EFB3098,
    "CreateRemoteThread": 0xE61874B3, "send": 0x0E797764, "ntdll.dll": 0xAB30A50A,
    "NtQueryDirectoryFile": 0x9F8B3756, "wininet.dll": 0xAB0A90B7, "NtEnumerateValueKey": 0xED04F020,
    "nspr4.dll": 0x2B3EF5FF, "NtResumeThread": 0x0CC8BF39, "ws2_32.dll": 0xD6BC4BCC,
    "LdrLoadDll": 0x78740534, "iexplore.exe": 0x250DFA8F, "TranslateMessage": 0xC45D9631,
    "firefox.exe": 0x7712FEAE,
}


@pytest.mark.parametrize(("name", "expected"), sorted(SPYEYE_ROL7_XOR.items()))
def test_rol7_xor_reproduces_spyeye_and_carberp_constants(name: str, expected: int) -> None:
    assert hash_name("rol7_xor", name) == expected


@pytest.mark.parametrize(
    ("module", "api", "expected"),
    [
        ("kernel32.dll", "LoadLibraryA", 0x0726774C),
        ("kernel32.dll", "VirtualAlloc", 0xE553A458),
        ("kernel32.dll", "ExitProcess", 0x56A2B5F0),
        ("ws2_32.dll", "WSAStartup", 0x006B8029),
    ],
)
def test_ror13_module_reproduces_metasploit_block_api_constants(module: str, api: str, expected: int) -> None:
    assert hash_name("ror13_module", api, module) == expected


def test_ror13_module_hash_ignores_module_name_case() -> None:
    assert hash_name("ror13_module", "LoadLibraryA", "KERNEL32.DLL") == 0x0726774C


@pytest.mark.parametrize(("api", "expected"), [("LoadLibraryA", 0xEC0E4E8E), ("GetProcAddress", 0x7C0DFCAA)])
def test_plain_ror13_reproduces_classic_shellcode_constants(api: str, expected: int) -> None:
    assert hash_name("ror13", api) == expected


def test_carberp_packer_variant_masks_rol7_xor_to_31_bits() -> None:
    assert hash_name("rol7_xor_31", "LoadLibraryA") == 0xC8AC8026 & 0x7FFFFFFF == 0x48AC8026
    assert hash_name("rol7_xor_31", "VirtualQuery") == hash_name("rol7_xor", "VirtualQuery") == 0x6A582465


def test_index_lists_a_name_once_when_two_algorithms_agree() -> None:
    index = HashIndex.default()
    assert index.lookup(0x6A582465) == [HashHit("rol7_xor", "kernel32.dll", "VirtualQuery")]
    assert index.lookup(0x48AC8026) == [HashHit("rol7_xor_31", "kernel32.dll", "LoadLibraryA")]


def test_rol7_xor_sign_extends_high_bytes_like_movsx() -> None:
    assert ALGORITHMS["rol7_xor"].function(b"\xe9") == 0xFFFFFFE9


@pytest.mark.parametrize(
    ("algorithm", "name", "expected"),
    [
        ("crc32", "123456789", 0xCBF43926),  # CRC-32 check value
        ("djb2", "hello", 261238937),
        ("fnv1a32", "a", 0xE40C292C),  # FNV test vectors
        ("fnv1a32", "foobar", 0xBF9CF968),
        ("rol5_add", "ab", (97 << 5) + 98),
        ("ror7_add", "ab", ((97 << 25) & 0xFFFFFFFF) + 98),
        ("rol7_add", "ab", (97 << 7) + 98),
        ("rol13_add", "ab", (97 << 13) + 98),
        ("rol5_xor", "ab", (97 << 5) ^ 98),
        ("rol3_xor", "ab", (97 << 3) ^ 98),
    ],
)
def test_other_algorithms_match_reference_values(algorithm: str, name: str, expected: int) -> None:
    assert hash_name(algorithm, name) == expected


def test_sdbm_is_the_65599_multiplier_recurrence() -> None:
    assert hash_name("sdbm", "LoadLibraryA") == (hash_name("sdbm", "LoadLibrary") * 65599 + ord("A")) % 2**32


def test_crc32_agrees_with_zlib() -> None:
    assert hash_name("crc32", "GetProcAddress") == zlib.crc32(b"GetProcAddress") == 0xC97C1FFF


# --- hash index --------------------------------------------------------------


def test_default_index_resolves_spyeye_constants_to_module_and_api() -> None:
    index = HashIndex.default()
    assert index.lookup(0xBF78969C) == [HashHit("rol7_xor", "kernel32.dll", "CreateMutexA")]
    assert index.lookup(0x9F13857C) == [HashHit("rol7_xor", "wininet.dll", "HttpSendRequestW")]
    assert index.lookup(0x7EFB3098) == [HashHit("rol7_xor", "nspr4.dll", "PR_Write")]
    assert index.lookup(0x0726774C) == [HashHit("ror13_module", "kernel32.dll", "LoadLibraryA")]


def test_default_index_resolves_module_and_process_names() -> None:
    index = HashIndex.default()
    assert [hit.label for hit in index.lookup(0x4B1FFE8E)] == ["kernel32.dll"]
    assert [hit.label for hit in index.lookup(0x490A0972)] == ["explorer.exe"]
    assert [hit.label for hit in index.lookup(0x43048A33)] == ["services.exe"]


@pytest.mark.parametrize("value", [0, 1, 0x30, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFE, 0x12345678])
def test_index_ignores_trivial_and_unknown_constants(value: int) -> None:
    assert HashIndex.default().lookup(value) == []


def test_index_built_from_custom_names_covers_every_algorithm() -> None:
    index = HashIndex.from_names({"evil.dll": ["DoBadThings"]}, ["victim.exe"])
    for algorithm in ALGORITHMS:
        value = hash_name(algorithm, "DoBadThings", "evil.dll")
        assert [hit.label for hit in index.lookup(value)] == ["evil.dll!DoBadThings"], algorithm
    assert HashHit("rol7_xor", "victim.exe", "") in index.lookup(hash_name("rol7_xor", "victim.exe"))


def test_bundled_name_lists_are_several_hundred_per_dll() -> None:
    data = json.loads((Path(traits.__file__).parents[1] / "data" / "api_names.json").read_text())
    sizes = {dll: len(names) for dll, names in data["exports"].items()}
    assert all(sizes[dll] >= 100 for dll in ("kernel32.dll", "ntdll.dll", "advapi32.dll", "user32.dll", "wininet.dll", "ws2_32.dll"))
    assert sum(sizes.values()) > 1500
    assert {"explorer.exe", "services.exe", "iexplore.exe", "firefox.exe"} <= set(data["processes"])


# --- disassembly --------------------------------------------------------------


def test_linear_sweep_skips_an_undecodable_byte_and_resynchronises() -> None:
    insns = disassemble(b"\x06\x90\xc3", BASE, 64)  # 06 is invalid in 64-bit mode; nop; ret
    assert [(i.address, i.mnemonic) for i in insns] == [(BASE + 1, "nop"), (BASE + 2, "ret")]


def test_linear_sweep_decodes_an_instruction_straddling_its_chunk() -> None:
    pad = traits.SWEEP_CHUNK - 2
    insns = disassemble(b"\x90" * pad + bytes.fromhex("64a130000000"), BASE, 32)  # mov eax, fs:[0x30]
    assert insns[-1].address == BASE + pad and insns[-1].text == "mov eax, dword ptr fs:[0x30]"


def test_recursive_descent_follows_branches_and_skips_data() -> None:
    # jmp +2; <2 data bytes 0xff 0xff>; ret
    insns = disassemble(bytes.fromhex("eb02ffffc3"), BASE, 32, entry_points=[BASE])
    assert [(i.address, i.mnemonic) for i in insns] == [(BASE, "jmp"), (BASE + 4, "ret")]


@settings(max_examples=60, deadline=None)
@given(code=st.binary(max_size=600), max_bytes=st.integers(0, 700), bits=st.sampled_from([32, 64]),
       descend=st.booleans())
def test_max_bytes_bounds_the_decoded_bytes(code: bytes, max_bytes: int, bits: int, descend: bool) -> None:
    entries = [BASE, BASE + len(code) // 2] if descend else None
    insns = disassemble(code, BASE, bits, entries, max_bytes)
    assert sum(i.size for i in insns) <= max_bytes
    assert all(BASE <= i.address and i.address + i.size <= BASE + len(code) for i in insns)
    if not descend:
        assert all(i.address + i.size <= BASE + max_bytes for i in insns)


@settings(max_examples=40, deadline=None)
@given(code=st.binary(max_size=2000), bits=st.sampled_from([32, 64]))
def test_garbage_bytes_do_not_crash_and_score_in_range(code: bytes, bits: int) -> None:
    result = analyse(code, BASE, bits, entry_points=[BASE] if code[:1] == b"\x00" else None)
    if result.instructions:
        assert 0 <= result.score <= 100 and result.confidence in ("high", "medium", "low")
    else:
        assert (result.score, result.confidence) == (None, "N/A")


@pytest.mark.parametrize("cut", [1, 7, 50, 101, 150, 211])
def test_truncated_resolver_does_not_crash(cut: int) -> None:
    code = (FIXTURES / "ror13_x86.bin").read_bytes()[:cut]
    assert 0 <= analyse(code, BASE, 32).score <= 100


def test_bits_other_than_32_or_64_are_rejected() -> None:
    with pytest.raises(ValueError):
        disassemble(b"\x90", BASE, 16)


# --- trait detectors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "bits"),
    [
        ("64a130000000", 32),  # mov eax, fs:[0x30]
        ("64a118000000" "8b4030", 32),  # mov eax, fs:[0x18]; mov eax, [eax+0x30]
        ("6a3059" "648b01", 32),  # push 0x30; pop ecx; mov eax, fs:[ecx]
        ("65488b042560000000", 64),  # mov rax, gs:[0x60]
        ("65488b042530000000" "488b4060", 64),  # mov rax, gs:[0x30]; mov rax, [rax+0x60]
    ],
)
def test_peb_access_found(code: str, bits: int) -> None:
    evidence = detect("peb_access", bytes.fromhex(code), bits)
    assert len(evidence) == 1 and "PEB" in evidence[0].detail


@pytest.mark.parametrize(
    ("code", "bits"),
    [
        ("64a100000000", 32),  # mov eax, fs:[0] (SEH chain)
        ("8b4030", 32),  # mov eax, [eax+0x30] from an unknown pointer
        ("648b4230", 32),  # mov eax, fs:[edx+0x30] with edx unknown
        ("65488b042530000000" "488b4008", 64),  # gs:[0x30] then +8 (StackBase)
        ("64488b042560000000", 64),  # fs:[0x60] is not the TEB on x64
    ],
)
def test_peb_access_not_found(code: str, bits: int) -> None:
    assert detect("peb_access", bytes.fromhex(code), bits) == []


def test_ldr_walk_found_x86_in_memory_order() -> None:
    code = bytes.fromhex("64a130000000" "8b400c" "8b4014")  # fs:[0x30]; [eax+0xc]; [eax+0x14]
    details = [ev.detail for ev in detect("ldr_walk", code)]
    assert [d.split(";")[0] for d in details] == ["PEB->Ldr (+0x0c)", "Ldr->InMemoryOrderModuleList (+0x14)"]


def test_ldr_walk_found_x64_in_memory_order() -> None:
    code = bytes.fromhex("65488b042560000000" "488b4018" "488b4020")  # gs:[0x60]; +0x18; +0x20
    assert len(detect("ldr_walk", code, 64)) == 2


@pytest.mark.parametrize(
    ("code", "bits"),
    [
        ("64a130000000" "8b400c", 32),  # PEB->Ldr but no module list
        ("8b430c" "8b4014", 32),  # list offsets from an unknown pointer
        ("65488b042560000000" "488b400c", 64),  # x86 Ldr offset in x64 code
    ],
)
def test_ldr_walk_not_found(code: str, bits: int) -> None:
    assert detect("ldr_walk", bytes.fromhex(code), bits) == []


def test_export_parsing_found_x86() -> None:
    # mov eax, [ebx+0x3c]; mov eax, [ebx+eax+0x78]; add eax, ebx; mov ecx, [eax+0x18]
    evidence = detect("export_parsing", bytes.fromhex("8b433c8b44037801d88b4818"))
    assert [ev.address for ev in evidence] == [BASE + 3, BASE + 9]
    assert "NumberOfNames" in evidence[1].detail


def test_export_parsing_found_x64() -> None:
    # mov eax, [rbx+0x3c]; add rax, rbx; mov eax, [rax+0x88]; add rax, rbx; mov ecx, [rax+0x20]
    evidence = detect("export_parsing", bytes.fromhex("8b433c4801d88b80880000004801d88b4820"), 64)
    assert ["PE32+" in evidence[0].detail, "AddressOfNames" in evidence[1].detail] == [True, True]


def test_export_parsing_follows_pointer_through_stack_frame_local() -> None:
    # mov eax,[edx+0x3c]; add eax,edx; mov eax,[eax+0x78]; mov [ebp-4],eax; xor eax,eax;
    # mov eax,[ebp-4]; mov esi,[eax+0x20]
    evidence = detect("export_parsing", bytes.fromhex("8b423c01d08b40788945fc31c08b45fc8b7020"))
    assert "AddressOfNames" in evidence[-1].detail


@pytest.mark.parametrize(
    "code",
    [
        "8b433c8b440378",  # e_lfanew -> data directory, but no export field read
        "8b48188b5020",  # export-field offsets from an unknown pointer
        "8b44243c8b40788b4818",  # [esp+0x3c] is a stack argument, not e_lfanew
    ],
)
def test_export_parsing_not_found(code: str) -> None:
    assert detect("export_parsing", bytes.fromhex(code)) == []


def test_hash_loop_found_for_ror13_loop() -> None:
    # l: xor eax,eax; lodsb; ror edi,13; add edi,eax; cmp al,ah; jne l
    evidence = detect("hash_loop", bytes.fromhex("31c0acc1cf0d01c738e075f4"))
    assert len(evidence) == 1 and evidence[0].address == BASE + 10
    assert "ror edi, 0xd" in evidence[0].detail and "add edi, eax" in evidence[0].detail


def test_hash_loop_found_for_compiled_rotate_through_a_copy() -> None:
    # SpyEye as compiled: l: mov ecx,eax; shl eax,7; shr ecx,0x19; or eax,ecx;
    # movsx ecx, byte [esi]; xor eax,ecx; inc esi; cmp byte [esi],0; jne l
    (evidence,) = detect("hash_loop", bytes.fromhex("89c1c1e007c1e91909c80fbe0e31c846803e0075eb"))
    assert "shl eax, 7" in evidence.detail and "xor eax, ecx" in evidence.detail


@pytest.mark.parametrize(
    "code",
    [
        "8a16d0ea00d1464b75f6",  # l: mov dl,[esi]; shr dl,1; add cl,dl; ...; jnz l (byte-wide mixing)
        "31c0acc1cf0d01c7",  # the same body without the backward jump
        "8a16881746474975f7",  # byte copy loop: loads but never mixes
        "c1cf0d01c74975f8",  # rotate-and-add loop that loads no bytes
    ],
)
def test_hash_loop_not_found(code: str) -> None:
    assert detect("hash_loop", bytes.fromhex(code)) == []


@pytest.mark.parametrize(
    ("code", "bits", "label"),
    [
        ("689c9678bf", 32, "kernel32.dll!CreateMutexA"),  # push 0xBF78969C
        ("81ff4c772607", 32, "kernel32.dll!LoadLibraryA"),  # cmp edi, 0x726774C
        ("41ba4c772607", 64, "kernel32.dll!LoadLibraryA"),  # mov r10d, 0x726774C
    ],
)
def test_hash_compare_resolves_constant(code: str, bits: int, label: str) -> None:
    (evidence,) = detect("hash_compare", bytes.fromhex(code), bits)
    assert [hit.label for hit in evidence.hits] == [label]


@pytest.mark.parametrize(
    "code",
    [
        "6878563412",  # push 0x12345678
        "83f8ff",  # cmp eax, -1
        "6800000080",  # push 0x80000000 (GENERIC_READ)
    ],
)
def test_hash_compare_ignores_unknown_and_trivial_constants(code: str) -> None:
    assert detect("hash_compare", bytes.fromhex(code)) == []


@pytest.mark.parametrize(
    ("code", "bits"),
    [
        ("ffd0", 32),  # call eax
        ("ff55f8", 32),  # call [ebp-8]
        ("a300304000" "ff1500304000", 32),  # mov [0x403000], eax; call [0x403000]
        ("ffe0", 64),  # jmp rax
    ],
)
def test_indirect_call_found(code: str, bits: int) -> None:
    assert len(detect("indirect_call", bytes.fromhex(code), bits)) == 1


@pytest.mark.parametrize(
    ("code", "bits"),
    [
        ("ff1504204000", 32),  # call [0x402004]: an IAT slot this code never writes
        ("ff1500010000", 64),  # call [rip+0x100]
        ("e800000000", 32),  # call $+5
        ("ff248500104000", 32),  # jmp [eax*4+0x401000]: switch table
    ],
)
def test_indirect_call_not_found(code: str, bits: int) -> None:
    assert detect("indirect_call", bytes.fromhex(code), bits) == []


@pytest.mark.parametrize(("flag", "found"), [(False, 1), (True, 0), (None, 0)])
def test_no_import_table_follows_the_caller_flag(flag: bool | None, found: int) -> None:
    assert len(detect("no_import_table", b"\x90", has_import_table=flag)) == found


# --- scoring ---------------------------------------------------------------------


def test_score_sums_weights_of_matched_traits_only() -> None:
    ev = traits.Evidence(BASE, "nop", "x")
    assert traits.score({"peb_access": [ev], "hash_loop": [ev], "ldr_walk": []}) == (
        10, {"peb_access": 5, "hash_loop": 5})


def test_a_chain_gives_the_other_traits_their_full_weight() -> None:
    ev = traits.Evidence(BASE, "nop", "x")
    assert traits.score({"peb_access": [ev], "ldr_walk": [ev], "hash_loop": [ev], "hash_compare": [ev]}) == (
        70, {"peb_access": 10, "ldr_walk": 20, "hash_loop": 15, "hash_compare": 25})


def test_score_is_capped_at_100() -> None:
    ev = traits.Evidence(BASE, "nop", "x")
    total, breakdown = traits.score({name: [ev] for name in traits.WEIGHTS})
    assert total == 100 and sum(breakdown.values()) == 110


def test_every_trait_without_a_chain_stays_at_20() -> None:
    ev = traits.Evidence(BASE, "nop", "x")
    weak = {name: [ev] for name in traits.WEIGHTS if name not in traits.CHAIN}
    assert traits.score(weak) == (25, {"peb_access": 5, "hash_compare": 5, "hash_loop": 5, "indirect_call": 0,
                                       "no_import_table": 10})
    del weak["no_import_table"]
    assert traits.score(weak)[0] == 15


@pytest.mark.parametrize(("value", "word"), [(None, "N/A"), (0, "low"), (44, "low"), (45, "medium"),
                                             (69, "medium"), (70, "high"), (100, "high")])
def test_confidence_words(value, word) -> None:
    assert traits.confidence(value) == word


# --- fixture blobs -------------------------------------------------------------------

RESOLVER_TRAITS = {"peb_access", "ldr_walk", "export_parsing", "hash_loop", "hash_compare", "indirect_call"}
ROR13_APIS = ("kernel32.dll!ExitProcess", "kernel32.dll!LoadLibraryA", "kernel32.dll!VirtualAlloc", "ws2_32.dll!WSAStartup")
CRC32_APIS = ("kernel32.dll!CreateThread", "kernel32.dll!ExitThread", "kernel32.dll!LoadLibraryA", "kernel32.dll!VirtualProtect")
RESOLVERS = {
    "ror13_x86.bin": ROR13_APIS,
    "ror13_x64.bin": ROR13_APIS,
    "rol7xor_x86.bin": ("kernel32.dll!CreateMutexA", "kernel32.dll!LoadLibraryA", "kernel32.dll!VirtualQuery",
                        "wininet.dll!InternetCloseHandle"),
    "rol7xor_x64.bin": ("kernel32.dll!CreateMutexA", "kernel32.dll!GetProcAddress", "kernel32.dll!LoadLibraryA",
                        "kernel32.dll!VirtualQuery"),
    "crc32_x86.bin": CRC32_APIS,
    "crc32_x64.bin": CRC32_APIS,
}


def _bits(name: str) -> int:
    return 64 if "x64" in name else 32


@pytest.mark.parametrize(("name", "apis"), sorted(RESOLVERS.items()))
def test_planted_resolver_scores_high_with_its_traits_and_apis(name: str, apis: tuple[str, ...]) -> None:
    result = analyse((FIXTURES / name).read_bytes(), 0x7FF0000, _bits(name))
    assert result.score >= 70
    assert set(result.traits) == RESOLVER_TRAITS
    assert result.resolved_apis == apis


@pytest.mark.parametrize("name", sorted(RESOLVERS))
def test_planted_resolver_found_by_recursive_descent_from_its_entry(name: str) -> None:
    result = analyse((FIXTURES / name).read_bytes(), 0x7FF0000, _bits(name), entry_points=[0x7FF0000])
    assert result.score >= 70 and {"peb_access", "ldr_walk", "export_parsing"} <= set(result.traits)


def test_rol7xor_resolver_evidence_names_the_spyeye_push_sites() -> None:
    result = analyse((FIXTURES / "rol7xor_x86.bin").read_bytes(), BASE, 32)
    pushes = [ev.instruction for ev in result.traits["hash_compare"]]
    assert pushes[:2] == ["push 0xbf78969c", "push 0x6a582465"]


def test_resolver_core_without_hash_constants_still_scores_high() -> None:
    code = (FIXTURES / "ror13_x86.bin").read_bytes()
    main = 0x90  # offset of `main` (pop ebp) in ror13_x86.asm: the pushes follow it
    assert code[main] == 0x5D
    result = analyse(code[:main], BASE, 32)
    assert "hash_compare" not in result.traits and result.score >= 70


@pytest.mark.parametrize(
    ("name", "address"),
    [
        ("iat_calls_x86.bin", 0x401000),
        ("iat_calls_x64.bin", 0x140001000),
        ("compiled_x86.bin", 0x401000),
        ("compiled_x64.bin", 0x140001000),
    ],
)
def test_benign_code_scores_low(name: str, address: int) -> None:
    result = analyse((FIXTURES / name).read_bytes(), address, _bits(name))
    assert result.score <= 20
    assert not {"peb_access", "ldr_walk", "export_parsing", "hash_compare"} & set(result.traits)


def test_max_bytes_limits_analysis_to_the_prefix() -> None:
    code = (FIXTURES / "ror13_x86.bin").read_bytes()
    assert analyse(code, BASE, 32, max_bytes=0x20).score < analyse(code, BASE, 32).score


def test_analysis_to_dict_is_json_and_explains_the_score() -> None:
    result = analyse((FIXTURES / "crc32_x86.bin").read_bytes(), BASE, 32, has_import_table=False)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["score"] == 100 and data["breakdown"]["no_import_table"] == 10
    assert data["traits"]["peb_access"][0]["instruction"] == "mov eax, dword ptr fs:[ecx]"
    assert "kernel32.dll!LoadLibraryA" in data["resolved_apis"]


# --- operand text parsing and bounded work ------------------------------------------


def _detail_operands(insn, bits: int) -> list:
    """Operands as capstone's detail mode reports them, in this module's terms."""
    from capstone import x86 as cs_x86

    mask = (1 << bits) - 1

    def family(reg: int) -> str:
        name = insn.reg_name(reg) if reg else ""
        return traits.FAMILIES.get(name, name or "")

    out = []
    for op in insn.operands:
        if op.type == cs_x86.X86_OP_REG:
            out.append(family(op.reg))
        elif op.type == cs_x86.X86_OP_IMM:
            out.append(op.imm & 0xFFFFFFFFFFFFFFFF)
        else:
            m = op.mem
            out.append(_memory_key(family(m.segment), family(m.base), family(m.index), m.scale, m.disp & mask))
    return out


def _memory_key(segment: str, base: str, index: str, scale: int, disp: int) -> tuple:
    """`[ecx]` may be encoded with ecx as base or as unscaled SIB index; the text cannot tell."""
    if not base and index and scale == 1:
        base, index = index, ""
    return segment, base, index, scale if index else 1, disp


def _text_operands(insn: traits.Instruction, bits: int) -> list:
    out = []
    for op in insn.operands:
        if isinstance(op, traits.Mem):
            out.append(_memory_key(op.segment, op.base, op.index, op.scale, op.disp & ((1 << bits) - 1)))
        else:
            out.append(op & 0xFFFFFFFFFFFFFFFF if isinstance(op, int) else op)
    return out


IMPLICIT_OPERAND = {"rcl", "rcr", "rol", "ror", "sal", "sar", "shl", "shr", "fxch", "fcom", "fcomp", "fucom", "fucomp"}


@pytest.mark.parametrize("bits", [32, 64])
def test_operands_parsed_from_text_agree_with_capstone_detail(bits: int) -> None:
    import random

    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32 if bits == 32 else capstone.CS_MODE_64)
    decoder.detail = True
    code = random.Random(bits).randbytes(0x4000) + (FIXTURES / f"compiled_x{86 if bits == 32 else 64}.bin").read_bytes()
    compared, offset = 0, 0
    while offset < len(code):
        insn = next(decoder.disasm(code[offset:offset + 15], BASE + offset, 1), None)
        offset += insn.size if insn else 1
        if insn is None or insn.mnemonic in IMPLICIT_OPERAND:
            continue  # capstone adds an implicit `1` / st(0) operand the text omits
        mine = traits._instruction(insn.address, insn.size, insn.mnemonic, insn.op_str)
        assert _text_operands(mine, bits) == _detail_operands(insn, bits), insn.mnemonic + " " + insn.op_str
        compared += 1
    assert compared > 5000


@pytest.mark.parametrize(
    ("code", "bits", "writes"),
    [
        ("ac", 32, {"rax", "rsi"}),  # lodsb
        ("f7e3", 32, {"rax", "rdx"}),  # mul ebx: ebx is only read
        ("83f801", 32, set()),  # cmp eax, 1
        ("93", 32, {"rax", "rbx"}),  # xchg eax, ebx
        ("59", 32, {"rcx"}),  # pop ecx (rsp is not tracked)
        ("f3ab", 32, {"rcx", "rdi"}),  # rep stosd
        ("ae", 32, {"rdi"}),  # scasb: al is compared, not written
        ("480fafc3", 64, {"rax"}),  # imul rax, rbx
        ("4c8b4008", 64, {"r8"}),  # mov r8, [rax+8]
    ],
)
def test_written_registers_from_text(code: str, bits: int, writes: set) -> None:
    (insn,) = disassemble(bytes.fromhex(code), BASE, bits)
    assert set(insn.writes) - {"rsp"} == writes


def test_linear_sweep_skips_zero_runs_but_keeps_instructions_ending_in_zeros() -> None:
    # mov eax, 0 (b8 00000000) right before 64 zero bytes, then ret
    code = bytes.fromhex("90b800000000") + bytes(64) + b"\xc3"
    insns = disassemble(code, BASE, 32)
    assert [(i.address - BASE, i.text) for i in insns] == [(0, "nop"), (1, "mov eax, 0"), (70, "ret")]


def test_recursive_descent_stops_at_zero_padding() -> None:
    code = bytes.fromhex("eb10") + b"\x90" * 16 + bytes(64)  # jmp +0x10 lands in the zero padding
    insns = disassemble(code, BASE, 32, entry_points=[BASE])
    assert [i.mnemonic for i in insns] == ["jmp"]


def test_structure_chain_far_from_the_start_is_tracked() -> None:
    # 20000 nops, then: mov eax, fs:[0x30]; mov eax, [eax+0xc]; mov eax, [eax+0x14]
    code = b"\x90" * 20000 + bytes.fromhex("64a130000000" "8b400c" "8b4014")
    evidence = detect("ldr_walk", code)
    assert [ev.address - BASE for ev in evidence] == [20006, 20009]


@pytest.mark.parametrize("name", sorted(RESOLVERS) + ["compiled_x64.bin", "compiled_x86.bin"])
def test_windowed_tracking_equals_tracking_every_instruction(name: str) -> None:
    bits = _bits(name)
    insns = disassemble((FIXTURES / name).read_bytes(), 0x401000, bits)
    ctx = traits.Context(insns, bits, HashIndex.default())
    assert ctx.structure_reads == traits.StructureTracker(bits).run(insns)


def test_compiled_code_is_analysed_in_work_bounded_by_max_bytes() -> None:
    code = ((FIXTURES / "compiled_x64.bin").read_bytes() * 10)[:1 << 18]
    result = analyse(code, 0x140001000, 64, max_bytes=len(code))
    assert result.score <= 20 and 60_000 < result.instructions < 100_000
    assert len(code) - 0x100 < result.decoded <= len(code)
    half = analyse(code, 0x140001000, 64, max_bytes=len(code) // 2)
    assert half.instructions < result.instructions * 0.55


# --- functions and windows -------------------------------------------------------------

LDR_CHAIN = "64a130000000" "8b400c" "8b4014"  # fs:[0x30]; PEB->Ldr; ->InMemoryOrderModuleList
EXPORTS = "8b433c" "8b440378" "01d8" "8b4818"  # e_lfanew; export directory; NumberOfNames


def _padded(hex_code: str, size: int = 0x10) -> str:
    """`hex_code` padded with int3 to `size` bytes, as compilers align functions."""
    return hex_code + "cc" * (size - len(hex_code) // 2)


def test_function_starts_are_entries_call_targets_and_code_after_padding() -> None:
    # f: call g; ret; int3 padding | g (0x1010): nop; ret | h (0x1020, after padding): ret
    code = bytes.fromhex(_padded("e80b000000" "c3") + _padded("90c3") + "c3")
    insns = disassemble(code, BASE, 32)
    starts = [insns[i].address for i in traits.function_starts(insns, [])]
    assert starts == [BASE, BASE + 0x10, BASE + 0x20]


def test_chain_split_over_unrelated_functions_scores_its_best_function_only() -> None:
    # f (0x1000): PEB -> Ldr -> list; ret | g (0x1010): export parsing; ret; nothing calls g
    code = bytes.fromhex(_padded(LDR_CHAIN + "c3") + _padded(EXPORTS + "c3"))
    result = analyse(code, BASE, 32)
    assert (result.score, result.confidence, result.function) == (30, "low", "sub_1000")
    assert list(result.traits) == ["peb_access", "ldr_walk"] and result.functions == 2


def test_chain_through_a_call_scores_the_caller_window() -> None:
    # f: PEB -> Ldr -> list; call g; ret | g (0x1020): export parsing; ret
    code = bytes.fromhex(_padded(LDR_CHAIN + "e80f000000" "c3", 0x20) + _padded(EXPORTS + "c3"))
    result = analyse(code, BASE, 32, entry_points=[BASE], names={BASE: "Resolve"})
    assert (result.score, result.confidence, result.function) == (55, "medium", "Resolve")
    assert {ev.function for ev in result.traits["ldr_walk"]} == {"Resolve"}
    assert {ev.function for ev in result.traits["export_parsing"]} == {"sub_1020"}


def test_lone_peb_read_and_byte_mixing_loop_weigh_little() -> None:
    # what system code has: mov eax, fs:[0x30] and a ror13-style checksum loop in one function
    code = bytes.fromhex("64a130000000" "31c0acc1cf0d01c738e075f4" "c3")
    result = analyse(code, BASE, 32)
    assert (result.score, result.breakdown) == (10, {"peb_access": 5, "hash_loop": 5})
    assert result.confidence == "low"


@pytest.mark.parametrize("code", [b"", bytes(64), b"\xff\xff"])
def test_nothing_decoded_is_not_applicable_not_zero(code: bytes) -> None:
    result = analyse(code, BASE, 64)
    assert (result.instructions, result.score, result.confidence, result.function) == (0, None, "N/A", None)
    assert result.to_dict()["score"] is None


# --- real compiled code (fixtures/realdlls: MSVC-built .pyd files from PyPI wheels) ------------

REALDLLS = Path(__file__).resolve().parents[2] / "fixtures" / "realdlls"
INJECTED_AT = 0x0D000000
REAL_SCORES = {  # file: (bits, from entry point and exports, as headerless code: score, traits, function)
    "_psutil_windows.pyd": (64, (0, [], None), (0, [], None)),
    "_bitarray.cp311-win_amd64.pyd": (64, (0, [], None), (5, ["hash_loop", "indirect_call"], "sub_d00a450")),
    "_xxhash.cp311-win32.pyd": (32, (0, [], None), (5, ["hash_loop"], "sub_d009d40")),
    "_speedups.cp311-win32.pyd": (32, (0, [], None), (0, [], None)),
}


def _injected(name: str, folder: Path = REALDLLS) -> tuple[bytes, "traits.MappedPE"]:
    """The DLL laid out as the loader maps it, relocated into private memory."""
    from fixtures.pe_mapper import map_image
    from spyeye_plugins.spyeye.parsers.pe_image import parse_mapped_image

    image = map_image((folder / name).read_bytes(), INJECTED_AT)
    return image, parse_mapped_image(lambda offset, n: image[offset:offset + n], len(image), INJECTED_AT)


@pytest.mark.parametrize("name", sorted(REAL_SCORES))
def test_real_compiled_dlls_score_low_from_their_exports_and_as_headerless_code(name: str) -> None:
    bits, from_exports, headerless = REAL_SCORES[name]
    image, pe = _injected(name)
    assert (pe.machine, pe.has_import_table) == ({32: "x86", 64: "x64"}[bits], True)
    for result, expected in ((traits.analyse_image(image, pe, bits), from_exports),
                             (analyse(image, INJECTED_AT, bits), headerless)):
        assert (result.score, list(result.traits), result.function) == expected
        assert result.confidence == "low" and result.instructions > 200 and result.resolved_apis == ()


@pytest.mark.parametrize("name", sorted(REAL_SCORES))
def test_resolver_next_to_real_code_still_scores_by_itself(name: str) -> None:
    bits, _, _ = REAL_SCORES[name]
    image, _ = _injected(name)
    blob = (FIXTURES / f"ror13_x{86 if bits == 32 else 64}.bin").read_bytes()
    at = INJECTED_AT + len(image) + 0x1000  # the resolver a page after the image, in the same region
    result = analyse(image + bytes(0x1000) + blob, INJECTED_AT, bits)
    assert (result.score, result.function) == (100, f"sub_{at:x}")
    assert result.resolved_apis == ROR13_APIS


DLLS = Path(__file__).resolve().parents[2] / "fixtures" / "dlls"


@pytest.mark.parametrize(("name", "expected"), [
    ("benign_x64.dll", 0), ("nspr4_x86.dll", 0), ("ntdll_x64.dll", 10), ("ntdll_x86.dll", 10),
    ("spyplugin_x86.dll", 0), ("user32_x64.dll", 0), ("wininet_x86.dll", 0), ("ws2_32_x64.dll", 0),
])
def test_mingw_built_fixture_dlls_score_low_when_injected(name: str, expected: int) -> None:
    image, pe = _injected(name, DLLS)
    result = traits.analyse_image(image, pe, 64 if pe.machine == "x64" else 32)
    assert result.score == expected  # 10: the ntdll look-alike has no import table, and nothing else
    assert analyse(image, INJECTED_AT, 64 if pe.machine == "x64" else 32).score == 0


def test_function_starts_work_is_linear_in_long_int3_padding() -> None:
    # ret, 199999 int3 (each a terminator), xor eax, eax; ret: one scan of the padding
    insns = disassemble(b"\xc3" + b"\xcc" * 199_999 + b"\x31\xc0\xc3", BASE, 32)
    starts = traits.function_starts(insns, [])
    assert [insns[i].address - BASE for i in starts] == [0, 200_000]
