"""API-name hash algorithms used by dynamic API resolvers, and a reverse index.

Shellcode and bots avoid an import table by walking the loaded modules' export
names, hashing each one and comparing it with a constant baked into the code.
`ALGORITHMS` is the single table of those hash functions; `HashIndex` maps a
32-bit constant back to the (algorithm, module, export) pairs that produce it.
"""

from __future__ import annotations

import functools
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

MASK32 = 0xFFFFFFFF
NAMES_FILE = Path(__file__).resolve().parents[1] / "data" / "api_names.json"


def _rol(value: int, count: int) -> int:
    return ((value << count) | (value >> (32 - count))) & MASK32


def _ror(value: int, count: int) -> int:
    return ((value >> count) | (value << (32 - count))) & MASK32


def _signed_char(byte: int) -> int:
    """The 32-bit value of a sign-extended C `char` (as `movsx` produces)."""
    return byte | 0xFFFFFF00 if byte & 0x80 else byte


def rotate_add(rotate: Callable[[int, int], int], count: int) -> Callable[[bytes], int]:
    """`h = rotate(h, count) + c` over the name, no terminator (e.g. classic ror13)."""

    def digest(name: bytes) -> int:
        value = 0
        for byte in name:
            value = (rotate(value, count) + byte) & MASK32
        return value

    return digest


def rotate_xor(rotate: Callable[[int, int], int], count: int) -> Callable[[bytes], int]:
    """`h = rotate(h, count) ^ (signed char)c` over the name (e.g. SpyEye rol7-xor)."""

    def digest(name: bytes) -> int:
        value = 0
        for byte in name:
            value = rotate(value, count) ^ _signed_char(byte)
        return value

    return digest


ror13 = rotate_add(_ror, 13)
rol7_xor = rotate_xor(_rol, 7)


def rol7_xor_31(name: bytes) -> int:
    """Carberp's packer variant of ROL7-XOR: the result masked to 31 bits."""
    return rol7_xor(name) & 0x7FFFFFFF


def ror13_module(name: bytes, module: bytes) -> int:
    """Metasploit block_api: ror13(UTF-16LE upper module + NUL) + ror13(name + NUL)."""
    wide = (module.decode("latin-1").upper() + "\0").encode("utf-16-le")
    return (ror13(wide) + ror13(name + b"\0")) & MASK32


def crc32(name: bytes) -> int:
    """Standard (zlib) CRC-32 of the name."""
    return zlib.crc32(name) & MASK32


def djb2(name: bytes) -> int:
    """Bernstein's `h = h * 33 + c` seeded with 5381."""
    value = 5381
    for byte in name:
        value = (value * 33 + byte) & MASK32
    return value


def fnv1a32(name: bytes) -> int:
    """FNV-1a, 32-bit."""
    value = 0x811C9DC5
    for byte in name:
        value = ((value ^ byte) * 0x01000193) & MASK32
    return value


def sdbm(name: bytes) -> int:
    """`h = c + (h << 6) + (h << 16) - h`."""
    value = 0
    for byte in name:
        value = (byte + (value << 6) + (value << 16) - value) & MASK32
    return value


@dataclass(frozen=True)
class Algorithm:
    """A name hash; `keyed` ones take `(name, module)` and mix in the module name."""

    function: Callable[..., int]
    keyed: bool = False


ALGORITHMS: dict[str, Algorithm] = {
    "ror13": Algorithm(ror13),
    "ror13_module": Algorithm(ror13_module, keyed=True),
    "rol7_xor": Algorithm(rol7_xor),
    "rol7_xor_31": Algorithm(rol7_xor_31),
    "ror7_add": Algorithm(rotate_add(_ror, 7)),
    "rol5_add": Algorithm(rotate_add(_rol, 5)),
    "rol7_add": Algorithm(rotate_add(_rol, 7)),
    "rol13_add": Algorithm(rotate_add(_rol, 13)),
    "rol5_xor": Algorithm(rotate_xor(_rol, 5)),
    "rol3_xor": Algorithm(rotate_xor(_rol, 3)),
    "crc32": Algorithm(crc32),
    "djb2": Algorithm(djb2),
    "fnv1a32": Algorithm(fnv1a32),
    "sdbm": Algorithm(sdbm),
}


def hash_name(algorithm: str, name: str, module: str = "") -> int:
    """Hash `name` (an export, module or process name) with a table algorithm."""
    entry = ALGORITHMS[algorithm]
    if entry.keyed:
        return entry.function(name.encode("latin-1"), module.encode("latin-1"))
    return entry.function(name.encode("latin-1"))


def is_trivial(value: int) -> bool:
    """Constants too common to mean anything: small values and small negatives."""
    value &= MASK32
    return value < 0x10000 or value >= 0xFFFF0000


class HashHit(NamedTuple):
    """One name that hashes to a constant; `api` is empty for module/process names."""

    algorithm: str
    dll: str
    api: str

    @property
    def label(self) -> str:
        return f"{self.dll}!{self.api}" if self.api else self.dll


class HashIndex:
    """Reverse map from 32-bit constant to the names that hash to it."""

    def __init__(self, hits: Iterable[tuple[int, HashHit]]) -> None:
        """A name is listed once per value, under the first algorithm (in `ALGORITHMS`
        order) that produces it: rol7_xor_31 equals rol7_xor whenever bit 31 is clear."""
        self._table: dict[int, list[HashHit]] = {}
        for value, hit in hits:
            if is_trivial(value):
                continue
            known = self._table.setdefault(value, [])
            if all((other.dll, other.api) != (hit.dll, hit.api) for other in known):
                known.append(hit)

    def lookup(self, value: int) -> list[HashHit]:
        """All names whose hash equals `value` (empty for trivial constants)."""
        return list(self._table.get(value & MASK32, ()))

    @classmethod
    def from_names(
        cls, exports: dict[str, list[str]], extra_names: Iterable[str] = ()
    ) -> "HashIndex":
        """Index every export (per module) plus module/process names under every algorithm."""
        names = sorted(set(exports) | set(extra_names))
        return cls(_export_hits(exports) + _name_hits(names))

    @classmethod
    @functools.lru_cache(maxsize=1)
    def default(cls) -> "HashIndex":
        """The index over the bundled `api_names.json` (built once)."""
        data = json.loads(NAMES_FILE.read_text(encoding="utf-8"))
        return cls.from_names(data["exports"], data["processes"])


def _export_hits(exports: dict[str, list[str]]) -> list[tuple[int, HashHit]]:
    return [
        (hash_name(algorithm, api, dll), HashHit(algorithm, dll, api))
        for algorithm in ALGORITHMS
        for dll, apis in exports.items()
        for api in apis
    ]


def _name_hits(names: list[str]) -> list[tuple[int, HashHit]]:
    """Module and process names, as written and upper-cased (BaseDllName casing varies)."""
    return [
        (hash_name(algorithm, variant), HashHit(algorithm, name, ""))
        for algorithm, entry in ALGORITHMS.items()
        if not entry.keyed
        for name in names
        for variant in {name.lower(), name.upper()}
    ]
