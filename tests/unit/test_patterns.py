"""Pattern compilation and chunked scanning, without an image."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spyeye_plugins.spyeye.parsers import patterns as patterns_module
from spyeye_plugins.spyeye.parsers.patterns import PatternError, PatternSet, hex_tokens, nonzero_windows
from spyeye_plugins.spyeye import vadwalk

needs_hyperscan = pytest.mark.skipif(patterns_module.hyperscan is None,
                                     reason="hyperscan has no wheel for this platform (YARA matches alone)")


class FakeLayer:
    """A virtual layer over a bytes buffer with some pages missing."""

    def __init__(self, data: bytes, missing=()) -> None:
        self.data, self.missing = data, set(missing)

    def is_valid(self, address: int, length: int = 1) -> bool:
        return address // 0x1000 not in self.missing

    def read(self, address: int, length: int, pad: bool = False) -> bytes:
        out = bytearray(self.data[address:address + length])
        for page in self.missing:
            lo, hi = max(page * 0x1000, address), min((page + 1) * 0x1000, address + length)
            if lo < hi:
                out[lo - address:hi - address] = b"\0" * (hi - lo)
        return bytes(out)


def _scan(data: bytes, patterns: PatternSet, chunk: int, missing=()):
    from spyeye_plugins.spyeye.vadsearch import VadSearch
    vad = vadwalk.VadFacts(0, len(data) - 1, "PAGE_READWRITE", True, None)
    return [(a, h.pattern, h.encoding) for a, h in VadSearch.scan_vad(FakeLayer(data, missing), vad,
                                                                      patterns, chunk)]


def test_keyword_matched_ascii_and_utf16_once_each():
    data = bytearray(0x3000)
    data[0x100:0x106] = b"SpyEye"
    data[0x2000:0x200C] = "SpyEye".encode("utf-16-le")
    hits = _scan(bytes(data), PatternSet(keywords=["SpyEye"]), 0x1000)
    assert hits == [(0x100, "SpyEye", "ascii"), (0x2000, "SpyEye", "utf-16le")]


@pytest.mark.parametrize("edge_shift", range(-12, 2))
def test_match_across_chunk_edge_found_exactly_once(edge_shift):
    data = bytearray(0x4000)
    at = 0x2000 + edge_shift
    data[at:at + 11] = b"hooked_func"
    hits = _scan(bytes(data), PatternSet(keywords=["hooked_func"], encodings=["ascii"]), 0x1000)
    assert hits == [(at, "hooked_func", "ascii")]


def test_match_on_missing_page_dropped():
    data = bytearray(0x3000)
    data[0x1010:0x1016] = b"SpyEye"
    data[0x2010:0x2016] = b"SpyEye"
    hits = _scan(bytes(data), PatternSet(keywords=["SpyEye"], encodings=["ascii"]), 0x1000, missing=[1])
    assert hits == [(0x2010, "SpyEye", "ascii")]


def test_ignore_case_and_hex_wildcards():
    data = b"xxSPYeyexx" + b"\x4d\x5a\x90\x00"
    ps = PatternSet(keywords=["spyeye"], hex_patterns=["4D5A??00"], ignore_case=True, encodings=["ascii"])
    assert sorted((h.offset, h.kind) for h in ps.scan(data)) == [(2, "keyword"), (10, "hex")]


@pytest.mark.parametrize("kwargs,message", [
    ({}, "no pattern given"),
    ({"keywords": [""]}, "empty keyword"),
    ({"regexes": ["("]}, "invalid regex"),
    ({"yara_source": "rule x {"}, "invalid YARA"),
    ({"hex_patterns": ["?? ??"]}, "only wildcards"),
    ({"keywords": ["a"], "encodings": ["utf-32"]}, "unknown encoding"),
])
def test_bad_patterns_raise_pattern_error(kwargs, message):
    with pytest.raises(PatternError, match=message):
        PatternSet(**kwargs)


def test_hex_tokens_accept_spacing():
    assert hex_tokens("4d 5A ??") == ["4d", "5A", "??"]


def test_contiguity():
    assert vadwalk.contiguous([0x5000, 0x6000])
    assert not vadwalk.contiguous([0x5000, 0x9000])
    assert not vadwalk.contiguous([0x5000, None])


def test_several_vads_scanned_ahead_give_hits_in_order_with_their_keys():
    from spyeye_plugins.spyeye.vadsearch import VadSearch
    data = bytearray(0x40000)
    spots = [0x0FF0, 0x9000, 0x1FFFC, 0x20010, 0x3F000]          # some on chunk edges
    for spot in spots:
        data[spot:spot + 6] = b"SpyEye"
    layer = FakeLayer(bytes(data))
    vads = [vadwalk.VadFacts(start, start + 0xFFFF, "PAGE_READWRITE", True, None)
            for start in range(0, 0x40000, 0x10000)]
    found = [(key, vad.start, address) for key, _, vad, address, _ in VadSearch.scan_spaces(
        [(f"vad{i}", layer, vad) for i, vad in enumerate(vads)], PatternSet(keywords=["SpyEye"],
                                                                            encodings=["ascii"]), 0x1000)]
    # the hit at 0x1FFFC straddles two VADs: each VAD reads only its own bytes, so it is not found
    assert found == [("vad0", 0x0, 0x0FF0), ("vad0", 0x0, 0x9000), ("vad2", 0x20000, 0x20010),
                     ("vad3", 0x30000, 0x3F000)]


@pytest.mark.parametrize("engine", ["yara", pytest.param("hyperscan", marks=needs_hyperscan)])
def test_yara_match_limit_is_recorded_not_printed(recwarn, engine):
    """Past a million matches in a buffer Hyperscan hands the buffer to YARA, whose caps apply."""
    patterns = PatternSet(hex_patterns=["00 00"], engine=engine,
                          yara_source='rule z { strings: $z = { 00 00 00 } condition: $z }')
    hits = list(patterns.scan(bytes(3_000_000)))
    assert len(hits) == 2_000_000                                   # 1,000,000 per string: YARA's cap
    assert patterns.overflowed == {"00 00", "z:$z"}
    assert not [w for w in recwarn if "too many matches" in str(w.message)]


# --- zero pages are not handed to the matchers --------------------------------------------------
_ZERO_WORDS = [b"hooked_func", "hooked_func".encode("utf-16-le"), b"\x00\x00A\x01B", b"C\x00\x00",
               b"X\x00\x00\x00Y"]


def _zero_skipping_set() -> PatternSet:
    return PatternSet(keywords=["hooked_func"], hex_patterns=["00 00 41 ?? 42", "43 00 00"],
                      regexes=["X\x00{3}Y"])


def _key(hit):
    return hit.offset, hit.pattern, hit.encoding


@settings(max_examples=200, deadline=None)
@given(zero_pages=st.lists(st.booleans(), min_size=1, max_size=12),
       words=st.lists(st.tuples(st.integers(0, 12 * 0x1000), st.sampled_from(_ZERO_WORDS)), max_size=8),
       cut=st.integers(0, 0x1000))
def test_skipping_zero_pages_finds_exactly_what_a_whole_scan_finds(zero_pages, words, cut):
    """Words dropped anywhere (on page edges, next to zero pages) in a buffer of zero and
    non-zero pages: the windowed scan returns the whole-buffer scan's hits, no more."""
    data = bytearray(b"".join(bytes(0x1000) if zero else bytes(range(1, 256)) * 16 + b"\x01" * 16
                              for zero in zero_pages))
    for position, word in words:
        data[position:position + len(word)] = word
    data = bytes(data[:max(1, len(data) - cut)])
    patterns = _zero_skipping_set()
    assert patterns.skips_zeros
    assert sorted(patterns.scan(data), key=_key) == sorted(patterns._scan(data), key=_key)


def test_zero_pages_are_skipped_and_windows_merge():
    data = b"A" * 10 + bytes(0x3000 - 10) + b"B" * 0x1000 + bytes(0x1000) + b"C" * 0x1000
    assert nonzero_windows(data, 15) == [(0, 0x1000 + 15), (0x3000 - 15, 0x4000 + 15),
                                         (0x5000 - 15, len(data))]
    assert nonzero_windows(data, 0x900) == [(0, 0x1900), (0x2700, len(data))]   # gaps under 2 pads
    assert nonzero_windows(bytes(0x2000), 15) == []
    assert nonzero_windows(data[:0x800], 15) == [(0, 0x800)]      # under a page: never skipped


@pytest.mark.parametrize("kwargs", [dict(hex_patterns=["00 00"]), dict(hex_patterns=["?? 00"]),
                                    dict(regexes=["\x00+"]), dict(yara_source="rule r { condition: true }")])
def test_patterns_that_can_match_zeros_scan_every_byte(kwargs):
    patterns = PatternSet(**kwargs)
    assert not patterns.skips_zeros
    if "hex_patterns" in kwargs:
        assert [h.offset for h in patterns.scan(bytes(0x3000))][:3] == [0, 1, 2]


# --- Hyperscan and YARA match the same fixed patterns -------------------------------------------
_ALPHABET = b"aAbB\x00\x01\xc3\xa9zZ-"


@needs_hyperscan
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600) | st.lists(st.sampled_from(list(_ALPHABET)), max_size=600).map(bytes),
       words=st.lists(st.text(alphabet="aAbBzZ-\xe9\u0100", min_size=1, max_size=4), max_size=4),
       hexes=st.lists(st.lists(st.sampled_from(["61", "41", "00", "??", "C3", "A9", "01"]), min_size=1,
                               max_size=4).filter(lambda t: set(t) != {"??"}), max_size=3),
       ignore_case=st.booleans())
def test_hyperscan_and_yara_report_the_same_hits(data, words, hexes, ignore_case):
    """Overlapping matches, nocase (ASCII folding only), UTF-16LE of non-ASCII words and
    wildcards: both engines report the same hits (offset, length, pattern, encoding)."""
    if not (words or hexes):
        return
    kwargs = dict(keywords=words, hex_patterns=[" ".join(h) for h in hexes], ignore_case=ignore_case)
    hyper, yara_only = PatternSet(engine="hyperscan", **kwargs), PatternSet(engine="yara", **kwargs)
    assert (hyper.engine, yara_only.engine) == ("hyperscan", "yara")
    assert sorted(hyper._scan(data), key=_key) == sorted(yara_only._scan(data), key=_key)


@needs_hyperscan
def test_hyperscan_finds_overlapping_and_wide_hits_at_their_start():
    hits = PatternSet(keywords=["aa", "Ab"], ignore_case=True, engine="hyperscan")._scan(b"aaaAb a\x00B\x00")
    assert sorted((h.offset, h.length, h.pattern, h.encoding) for h in hits) == [
        (0, 2, "aa", "ascii"), (1, 2, "aa", "ascii"), (2, 2, "aa", "ascii"), (3, 2, "Ab", "ascii"),
        (6, 4, "Ab", "utf-16le")]


def test_unknown_engine_and_unavailable_hyperscan_are_pattern_errors(monkeypatch):
    with pytest.raises(PatternError, match="unknown engine"):
        PatternSet(keywords=["x"], engine="grep")
    monkeypatch.setattr(patterns_module, "hyperscan", None)
    with pytest.raises(PatternError, match="hyperscan is not installed"):
        PatternSet(keywords=["x"], engine="hyperscan")
    assert PatternSet(keywords=["x"]).engine == "yara"       # auto falls back to YARA
