"""Pin the SpyEye artifact decoders to the ground truth of the fixture blobs."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.artifacts import spyeye_blobs as blobs
from spyeye_plugins.spyeye.parsers import spyeye_artifacts as sa

FUZZ = settings(max_examples=200, deadline=2000)
RECORD_KEYS = ("table", "frame_offset", "declared_fields", "bot_guid", "process_name", "hooked_func", "url",
               "func_data", "keys")


def _reversed_texts(result: sa.C1Result) -> list[str]:
    return [found.text for found in result.strings if found.reversed]


# --- C1 (!EYE) block ---

@pytest.mark.parametrize(
    "make, confidence", [(blobs.c1_block_ascii, 90), (blobs.c1_block_utf16, 95), (blobs.c1_block_xor, 90)]
)
def test_c1_block_decodes_to_exact_fields(make, confidence):
    blob, expected = make()
    result = sa.decode_c1(blob)
    assert result.fields == expected["fields"]
    assert result.xor_key == expected["xor_key"]
    assert result.encoding == expected["encoding"]
    assert _reversed_texts(result) == expected["reversed"]
    assert result.confidence == confidence


def test_c1_zero_run_ends_block_before_decoy_dll():
    blob, expected = blobs.c1_block_ascii()
    result = sa.decode_c1(blob)
    assert result.block_length == expected["block_length"]
    assert "plugin" not in result.fields
    assert all(found.text != "ntdll.dll" for found in result.strings)


def test_c1_utf16_reversed_mutex_recognised_before_generic_shape():
    blob, expected = blobs.c1_block_utf16()
    result = sa.decode_c1(blob)
    assert result.block_length == expected["block_length"]
    mutex = [found for found in result.strings if found.kind == "mutex"]
    assert [(m.text, m.encoding, m.reversed) for m in mutex] == [("__SPYNET__", "utf-16le", True)]
    assert "some strings are stored reversed" in result.reasons


def test_c1_xor_block_reports_key_0x5a_in_reasons():
    blob, _ = blobs.c1_block_xor()
    result = sa.decode_c1(blob)
    assert result.xor_key == 0x5A
    assert "strings readable after XOR with 0x5a" in result.reasons


def test_c1_reasons_in_stable_order_heaviest_first():
    blob, _ = blobs.c1_block_ascii()
    assert sa.decode_c1(blob).reasons == [
        "bot_path string found (+25)", "config_file string found (+20)", "install_dir string found (+20)",
        "mutex string found (+15)", "bot_file string found (+10)"]


@settings(max_examples=40, deadline=2000)
@given(st.integers(min_value=1, max_value=255))
def test_c1_xor_key_recovered_for_any_key(key):
    blob, expected = blobs.c1_block_xor(key)
    result = sa.decode_c1(blob)
    assert (result.xor_key, result.fields) == (key, expected["fields"])


def test_c1_xor_block_found_when_random_memory_follows():
    blob, expected = blobs.c1_block_xor()
    result = sa.decode_c1(blob + blobs.prng(b"heap noise", 0x800))
    assert (result.xor_key, result.fields) == (0x5A, expected["fields"])


def test_c1_marker_in_english_text_rates_low():
    blob, expected = blobs.c1_negative_text()
    result = sa.decode_c1(blob, expected["marker_offset"])
    assert result.confidence <= expected["max_confidence"]
    assert result.fields == expected["fields"]
    assert result.xor_key is None
    assert "marker embedded in printable text (-20)" in result.reasons


def test_c1_page_offset_b20_adds_weight():
    blob = sa.MARKER + b"config.bin\0"
    plain = sa.decode_c1(blob, address=0x7FFD0000B24)
    at_b20 = sa.decode_c1(blob, address=0x7FFD0000B20)
    assert (plain.page_offset_b20, plain.confidence) == (False, 20)
    assert (at_b20.page_offset_b20, at_b20.confidence) == (True, 35)


def test_c1_next_marker_ends_block():
    blob = sa.MARKER + b"\x01\x00config.bin\0" + sa.MARKER + b"C:\\cleansweep.exe\\cleansweep.exe\0"
    assert blob.index(sa.MARKER, 1) == 17
    assert sa.decode_c1(blob).fields == {"config_file": ["config.bin"]}
    assert sa.decode_c1(blob, 17).fields == {"bot_path": ["C:\\cleansweep.exe\\cleansweep.exe"]}


def test_c1_without_marker_at_offset_is_empty():
    result = sa.decode_c1(b"xxxxC:\\cleansweep.exe\\\0", 0)
    assert (result.fields, result.confidence) == ({}, 0)
    assert result.reasons == ["no !EYE marker at the given offset"]


def test_c1_declared_layout_values_reported_with_agreement_but_no_extra_confidence():
    blob, expected = blobs.c1_block_ascii()
    declared = {"build": 10299, "bot_path": expected["fields"]["bot_path"][0], "install_dir": "not a folder",
                "config_file": expected["fields"]["config_file"][0]}
    plain, result = sa.decode_c1(blob), sa.decode_c1(blob, declared=declared)
    assert result.layout_fields == declared
    assert result.layout_agreement == ["bot_path", "config_file"]
    assert result.fields == plain.fields and result.confidence == plain.confidence == 90
    assert result.reasons[-1] == "declared layout (unconfirmed): 2 of 3 text fields hold what their names say"


@pytest.mark.parametrize(
    "stored, text, kind",
    [
        ("_TENYPS__", "__SPYNET_", "mutex"),
        ("EMANTOB%", "%BOTNAME", "webinject"),
        ("exe.peewsnaelc", "cleansweep.exe", "bot_file"),
    ],
)
def test_reversed_strings_recognised(stored, text, kind):
    found = sa.classify(sa.FoundString(0, stored, "ascii"))
    assert (found.text, found.kind, found.reversed) == (text, kind, True)


def test_known_mutex_and_pipe_strings_found():
    blob, expected = blobs.mutex_strings()
    hits = [found.to_dict() for found in sa.find_known_strings(blob)]
    assert hits == expected["strings"]
    assert [hit["text"] for hit in hits if hit["kind"] == "mutex"] == expected["mutexes"]


@pytest.mark.parametrize("text, encoding, reversed_, kind, score, first_reason", [
    ("__CLEANSWEEP__", "utf-16le", False, "mutex", 90, "exact SpyEye mutex name (+80)"),
    ("Global\\__SPYNET__", "ascii", False, "mutex", 80, "exact SpyEye mutex name (+80)"),
    ("zXeRY3a_PtW7c1e", "ascii", False, "mutex", 70, "SpyEye generated-name prefix (+70)"),
    ("SPYNET_CHUNK_EDGE", "ascii", False, "mutex", 40, "contains a SpyEye mutex name (+40)"),
    ("\\\\.\\pipe\\globpluginspipe", "ascii", True, "pipe", 80, "exact SpyEye pipe name (+80)"),
])
def test_known_string_rating(text, encoding, reversed_, kind, score, first_reason):
    found = sa.FoundString(0, text, encoding, kind, reversed_)
    rated, reasons = sa.rate_known_string(found)
    assert (rated, reasons[0]) == (score, first_reason)
    assert ("stored reversed" in reasons) is reversed_
    assert ("kernel object namespace prefix" in reasons) is text.startswith("Global")


def test_mutex_blob_strings_rate_high():
    blob, _ = blobs.mutex_strings()
    scores = [sa.rate_known_string(found)[0] for found in sa.find_known_strings(blob)]
    assert scores == [90, 90, 90, 90, 70, 80]


# --- Webinjects ---

def test_webinject_entry_decodes_exactly_even_after_nul_padding():
    blob, expected = blobs.webinject_block()
    padded = bytes(64) + blob
    decoded = sa.decode_webinject(padded, expected["offset"] + 64).to_dict()
    assert {key: decoded[key] for key in expected} == {**expected, "offset": expected["offset"] + 64}


def test_webinject_set_url_found_after_unrelated_bytes_on_the_same_line():
    blob, expected = blobs.webinject_block()
    noisy = b"\x8b\x45\xf8\x33\xc0 the file data" + blob
    result = sa.decode_webinject(noisy, expected["offset"] + len(noisy) - len(blob))
    assert (result.set_url, result.url_flags, result.confidence) == (expected["set_url"], "GP", 100)


def test_webinject_keyword_in_prose_rates_low_with_warning():
    text = b"The data_before field of the form is optional.\n"
    result = sa.decode_webinject(text, text.index(b"data_before"))
    assert (result.sections, result.set_url, result.confidence) == ({}, None, 0)
    assert result.warnings == ["data_before is not followed by data_end"]


def test_webinject_without_set_url_still_reads_sections():
    blob, expected = blobs.webinject_block()
    result = sa.decode_webinject(blob[expected["offset"]:], 0)
    assert result.sections == expected["sections"] and result.set_url is None
    assert result.confidence == 70


# --- Collector records ---

@pytest.mark.parametrize("make", [blobs.record_ie, blobs.record_firefox])
def test_framed_record_decodes_to_exact_fields(make):
    blob, expected = make()
    result = sa.decode_collector_record(blob, blob.index(b"hooked_func"))
    decoded = result.to_dict()
    assert {key: decoded[key] for key in RECORD_KEYS} == {key: expected[key] for key in RECORD_KEYS}
    assert result.framed and result.warnings == []
    assert result.frame_length == len(blob) - len(blobs.HEAP_PREFIX) - len(blobs.HEAP_TAIL)
    assert result.raw["func_data"].decode("ascii") == expected["func_data_raw"]
    assert result.confidence >= 95


def test_firefox_keys_decoded_from_utf16le():
    blob, _ = blobs.record_firefox()
    result = sa.decode_collector_record(blob, blob.index(b"hooked_func"))
    assert result.keys == "mary\tBarack!2011\r"
    assert result.raw["keys"] == "mary\tBarack!2011\r".encode("utf-16-le")


def test_damaged_record_gives_partial_fields_and_warnings():
    blob, expected = blobs.record_damaged()
    result = sa.decode_collector_record(blob, blob.index(b"hooked_func"))
    decoded = result.to_dict()
    assert {key: decoded[key] for key in RECORD_KEYS} == {key: expected[key] for key in RECORD_KEYS}
    assert result.warnings == [
        "field 'func_data' declares 4608 bytes but only 48 remain; kept those",
        "read 5 of 6 declared fields",
    ]
    assert result.confidence == 85


def test_record_cut_inside_size_field_keeps_earlier_fields():
    blob, expected = blobs.record_ie()
    cut = blob.index(b"func_data\0") + len(b"func_data\0") + 2
    result = sa.decode_collector_record(blob[:cut], blob.index(b"hooked_func"))
    assert (result.hooked_func, result.url, result.func_data) == (expected["hooked_func"], expected["url"], None)
    assert result.warnings == ["size of field 'func_data' cut off by the end of data", "read 4 of 5 declared fields"]


def test_hooked_func_in_source_text_rates_low():
    blob, expected = blobs.record_negative_source()
    result = sa.decode_collector_record(blob, expected["hit_offset"])
    assert result.confidence <= expected["max_confidence"]
    assert (result.framed, result.hooked_func, result.raw) == (False, expected["hooked_func"], {})
    assert result.reasons == ["no record framing and no SpyEye field values near the hit"]


def test_unframed_key_value_record_falls_back():
    text = (b"bot_guid=JOHN!PC01!1A2B3C4D&process_name=C:\\Program Files\\Internet Explorer\\iexplore.exe"
            b"&hooked_func=HttpSendRequestW&url=https://online.bank.example/login.aspx\r\n")
    result = sa.decode_collector_record(text, text.index(b"hooked_func"))
    assert not result.framed
    assert result.bot_guid == sa.BotGuid("JOHN!PC01!1A2B3C4D", "JOHN", "PC01", "1A2B3C4D", True)
    assert result.process_name == "C:\\Program Files\\Internet Explorer\\iexplore.exe"
    assert (result.hooked_func, result.url) == ("HttpSendRequestW", "https://online.bank.example/login.aspx")
    assert result.confidence == 55


def test_bot_guid_of_other_shape_is_kept_but_invalid():
    assert sa.parse_bot_guid("00000000-0000-0000-0000000000000000") == sa.BotGuid(
        "00000000-0000-0000-0000000000000000")


# --- Check-in ---

def test_checkin_decodes_every_parameter():
    blob, expected = blobs.checkin_string()
    decoded = sa.decode_checkin(blob)
    assert {key: decoded[key] for key in expected} == expected
    assert decoded["params"]["stat"] == "online"
    query = blob[blob.index(b"guid="):blob.index(b" HTTP/1.1")]
    assert (decoded["offset"], decoded["length"]) == (blob.index(b"guid="), len(query))
    assert len(decoded["reasons"]) == 5


@pytest.mark.parametrize("number, text", [(10299, "1.2.99"), (10260, "1.2.60"), (10345, "1.3.45"), (10060, "1.0.60")])
def test_bot_version_number_to_text(number, text):
    assert sa.format_bot_version(number) == text
    assert sa.decode_checkin(f"guid=a!b!0000ABCD&ver={number}".encode())["version"] == text


def test_malformed_checkin_warns_per_field():
    decoded = sa.decode_checkin(b"guid=nobody&ver=abc&ccrc=XYZ&md5=12&os=XP&cpu=7")
    assert decoded["guid"]["valid"] is False
    assert (decoded["ver"], decoded["ccrc_valid"], decoded["md5_valid"], decoded["cpu"]) == (None, False, False, 7)
    assert decoded["os_version"] is None
    assert decoded["warnings"] == [
        "guid='nobody' is not user!computer!8HEX",
        "ver='abc' is not an unsigned integer",
        "ccrc='XYZ' has the wrong shape",
        "md5='12' has the wrong shape",
    ]
    assert decoded["confidence"] == 0


def test_bot_guid_field_is_not_a_checkin():
    decoded = sa.decode_checkin(b"bot_guid=JOHN!PC01!1A2B3C4D")
    assert (decoded["params"], decoded["warnings"]) == ({}, ["no guid= query in text"])


# --- config.bin ---

def test_config_image_header_members_and_size():
    blob, expected = blobs.config_image()
    decoded = sa.decode_config_image(b"\xcc" * 100 + blob, 100).to_dict()
    assert {key: decoded[key] for key in expected} == expected
    assert decoded["confidence"] == 100


def test_truncated_config_image_gives_lower_bound_size():
    blob, _ = blobs.config_image()
    decoded = sa.decode_config_image(blob[:3000])
    first_member = 30 + len("config.dat") + 1187 + 16
    assert (decoded.file_name, decoded.truncated, decoded.size_source) == ("config.dat", True, "local_walk")
    assert decoded.estimated_size == first_member
    assert decoded.members == [sa.ZipMember("config.dat", 9, 8, 1187, 2231)]
    assert decoded.warnings[0] == "member 'webinjects.txt' runs past the end of data"


def test_config_image_with_sizes_in_local_header():
    name, payload = b"config.dat", bytes(range(40))
    header = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 1, 0, 0, 0, 0x1234, 40, 40, len(name), 0)
    decoded = sa.decode_config_image(header + name + payload)
    assert (decoded.compressed_size, decoded.crc32, decoded.method_name, decoded.magic_match) == (
        40, 0x1234, "stored", False)
    assert (decoded.estimated_size, decoded.truncated) == (len(header) + len(name) + 40, True)


def test_not_a_zip_at_offset():
    decoded = sa.decode_config_image(b"MZ\x90\x00" + bytes(60))
    assert (decoded.file_name, decoded.confidence) == (None, 0)
    assert decoded.warnings == ["no complete ZIP local file header at offset"]


# --- Fuzzing: random and mutated input never raises ---

def _serialisable(result: dict) -> dict:
    return json.loads(json.dumps(result))


@st.composite
def _mutated(draw, make) -> bytes:
    """A generator's blob with a few bytes overwritten and a random tail cut."""
    blob = bytearray(make()[0])
    for _ in range(draw(st.integers(0, 8))):
        blob[draw(st.integers(0, len(blob) - 1))] = draw(st.integers(0, 255))
    return bytes(blob[:draw(st.integers(0, len(blob)))])


def _mutated_record(make) -> st.SearchStrategy[tuple[bytes, int]]:
    """A mutated record paired with where `hooked_func` stood before mutation."""
    hit = make()[0].index(b"hooked_func")
    return _mutated(make).map(lambda blob: (blob, hit))


@FUZZ
@given(st.binary(max_size=3000), st.integers(0, 0xFFFFFFFF))
def test_fuzz_c1_random_block(body, address):
    result = sa.decode_c1(sa.MARKER + body, 0, address)
    assert 0 <= result.confidence <= 100
    assert _serialisable(result.to_dict())["marker_offset"] == 0


@FUZZ
@given(st.one_of(*(_mutated(make) for make in (blobs.c1_block_ascii, blobs.c1_block_utf16, blobs.c1_block_xor))))
def test_fuzz_c1_mutated_block(blob):
    assert 0 <= sa.decode_c1(blob).confidence <= 100


@FUZZ
@given(st.one_of(*(_mutated_record(make) for make in (blobs.record_ie, blobs.record_firefox, blobs.record_damaged))))
def test_fuzz_record_mutated(mutated):
    result = sa.decode_collector_record(*mutated)
    assert 0 <= result.confidence <= 100
    assert _serialisable(result.to_dict())["hit_offset"] == mutated[1]


@FUZZ
@given(st.binary(max_size=2000), st.integers(0, 2100))
def test_fuzz_record_random(data, hit):
    assert 0 <= sa.decode_collector_record(data, hit).confidence <= 100


@FUZZ
@given(st.one_of(st.binary(max_size=500), _mutated(blobs.checkin_string)))
def test_fuzz_checkin(text):
    assert 0 <= _serialisable(sa.decode_checkin(text))["confidence"] <= 100


@FUZZ
@given(st.one_of(st.binary(max_size=500).map(sa.CONFIG_ZIP_MAGIC.__add__), _mutated(blobs.config_image)))
def test_fuzz_config_image(data):
    assert 0 <= _serialisable(sa.decode_config_image(data).to_dict())["confidence"] <= 100


@FUZZ
@given(st.one_of(st.binary(max_size=2000).map(lambda data: b"data_before" + data), _mutated(blobs.webinject_block)))
def test_fuzz_webinject(data):
    offset = max(data.find(b"data_before"), 0)
    assert 0 <= _serialisable(sa.decode_webinject(data, offset).to_dict())["confidence"] <= 100


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_known_strings(data):
    for found in sa.find_known_strings(data):
        assert found.kind in sa.KNOWN_STRINGS
        assert 0 <= sa.rate_known_string(found)[0] <= 100


@pytest.mark.parametrize("text,name", [
    ("\\BaseNamedObjects\\__CLEANSWEEP_RELOADCFG__", "__CLEANSWEEP_RELOADCFG__"),
    ("\\Sessions\\1\\BaseNamedObjects\\__CLEANSWEEP__", "__CLEANSWEEP__"),
    ("Global\\__SPYNET__", "__SPYNET__"),
    ("local\\zXeRY3a_PtW7c1e", "zXeRY3a_PtW7c1e"),
    ("__CLEANSWEEP_UNINSTALL__", "__CLEANSWEEP_UNINSTALL__"),
    ("\\\\.\\pipe\\globpluginspipe", "\\\\.\\pipe\\globpluginspipe"),   # not an object namespace
])
def test_object_name_is_what_the_object_header_stores(text, name):
    assert sa.object_name(text) == name
