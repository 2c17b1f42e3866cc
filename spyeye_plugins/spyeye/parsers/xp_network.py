"""Windows XP x86 network objects of tcpip.sys, decoded from pool block bytes.

XP keeps a TCP connection in a ``_TCPT_OBJECT`` (pool tag ``TCPT``) and a socket
(address object) in an ``_ADDRESS_OBJECT`` (tag ``TCPA``).  Active ones hang off
tcpip.sys hash tables; closed ones stay in freed pool until it is reused, so a pool
scan finds both.  The layouts come from a symbol table (``symbols/spyeye/xp_tcpip_x86.json``)
as :class:`StructLayout`; this module only decodes bytes and rejects what cannot be one
of these objects (ports, PIDs, addresses, protocol, create time out of range).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Dict, Iterable, List, Mapping, Optional, Union

from .eventlog import filetime_to_datetime

PROTOCOLS = {1: "ICMP", 2: "IGMP", 6: "TCP", 17: "UDP", 47: "GRE", 255: "RAW"}
PORTED = {"TCP", "UDP"}
MAX_PID = 0x3FFFC                 # XP PIDs are multiples of 4 from a handle table: well below this
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)   # before any XP system existed
LATEST = datetime(2100, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class FieldSpec:
    """Where one field lives: ``count`` > 0 for a byte array, else an integer."""

    offset: int
    size: int
    endian: str = "little"
    count: int = 0

    def read(self, data: bytes) -> Union[int, bytes]:
        raw = data[self.offset:self.offset + self.size]
        return raw if self.count else int.from_bytes(raw, self.endian)  # type: ignore[arg-type]

    def pack(self, value: Union[int, bytes]) -> bytes:
        if self.count:
            return bytes(value).ljust(self.size, b"\0")[:self.size]  # type: ignore[arg-type]
        return int(value).to_bytes(self.size, self.endian)  # type: ignore[arg-type]


@dataclass(frozen=True)
class StructLayout:
    """A structure's size and fields, as a symbol table declares them."""

    size: int
    fields: Mapping[str, FieldSpec]

    def read(self, data: bytes) -> Dict[str, Union[int, bytes]]:
        return {name: spec.read(data) for name, spec in self.fields.items()}

    def pack(self, values: Mapping[str, Union[int, bytes]], fill: bytes = b"\0") -> bytes:
        """``size`` bytes with ``values`` at their fields (tests and image builders)."""
        out = bytearray((fill * self.size)[:self.size])
        for name, value in values.items():
            spec = self.fields[name]
            out[spec.offset:spec.offset + spec.size] = spec.pack(value)
        return bytes(out)


@dataclass(frozen=True)
class NetObject:
    """One decoded connection or socket; ``freed`` when its pool block is free."""

    kind: str                     # "connection" or "socket"
    proto: str
    local_addr: str
    local_port: int
    remote_addr: Optional[str]    # None for a socket
    remote_port: Optional[int]
    pid: int
    created: Optional[datetime]   # sockets only
    freed: bool
    offset: int                   # physical offset of the object (after the pool header)

    @property
    def state(self) -> str:
        return f"{self.kind} (freed)" if self.freed else self.kind


def _ipv4(raw: Union[int, bytes]) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(bytes(raw) if isinstance(raw, (bytes, bytearray)) else int(raw).to_bytes(4, "big"))


def _pid_ok(pid: int) -> bool:
    return 0 < pid <= MAX_PID and pid % 4 == 0


def _unicast(address: ipaddress.IPv4Address) -> bool:
    return not (address.is_multicast or address == ipaddress.IPv4Address("255.255.255.255"))


def decode_connection(body: bytes, layout: StructLayout, offset: int = 0,
                      freed: bool = False) -> Optional[NetObject]:
    """The ``_TCPT_OBJECT`` at the start of ``body``, or None when it cannot be one
    (port 0, a PID that is no PID, remote 0.0.0.0, multicast or broadcast)."""
    if len(body) < layout.size:
        return None
    v = layout.read(body)
    local, remote = _ipv4(v["LocalIpAddress"]), _ipv4(v["RemoteIpAddress"])
    if not (v["LocalPort"] and v["RemotePort"] and _pid_ok(int(v["Pid"]))):
        return None
    if not (_unicast(local) and _unicast(remote)) or remote.is_unspecified:
        return None
    return NetObject("connection", "TCP", str(local), int(v["LocalPort"]), str(remote), int(v["RemotePort"]),
                     int(v["Pid"]), None, freed, offset)


def decode_socket(body: bytes, layout: StructLayout, offset: int = 0,
                  freed: bool = False) -> Optional[NetObject]:
    """The ``_ADDRESS_OBJECT`` at the start of ``body``, or None when it cannot be one
    (unknown protocol, TCP/UDP port 0, bad PID, create time unset or outside 2000-2100)."""
    if len(body) < layout.size:
        return None
    v = layout.read(body)
    proto = PROTOCOLS.get(int(v["Protocol"]))
    if proto is None or not _pid_ok(int(v["Pid"])) or (proto in PORTED and not v["LocalPort"]):
        return None
    created = filetime_to_datetime(int(v["CreateTime"]))
    if created is None or not EARLIEST <= created < LATEST:
        return None
    local = _ipv4(v["LocalIpAddress"])
    if not _unicast(local):
        return None
    return NetObject("socket", proto, str(local), int(v["LocalPort"]), None, None, int(v["Pid"]),
                     created, freed, offset)


DECODERS = {"connection": decode_connection, "socket": decode_socket}


def bound_sockets(found: Iterable[NetObject]) -> Dict[NetObject, NetObject]:
    """Connection -> the socket (address object) it was made through.

    XP's ``_TCPT_OBJECT`` has no time; the ``_ADDRESS_OBJECT`` a client socket bound to its
    local port has, so it dates the connection.  The socket is TCP, of the same PID and local
    port, on the connection's local address or 0.0.0.0; of several, one freed (or not) like
    the connection, then the latest created.  A socket dates one connection at most."""
    objects = list(found)
    sockets: Dict[tuple, List[NetObject]] = {}
    for obj in objects:
        if obj.kind == "socket" and obj.proto == "TCP":
            sockets.setdefault((obj.pid, obj.local_port), []).append(obj)
    out: Dict[NetObject, NetObject] = {}
    used = set()
    for conn in (o for o in objects if o.kind == "connection"):
        candidates = [s for s in sockets.get((conn.pid, conn.local_port), [])
                      if s.local_addr in (conn.local_addr, "0.0.0.0") and s not in used]
        if candidates:
            out[conn] = max(candidates, key=lambda s: (s.freed == conn.freed, s.created))
            used.add(out[conn])
    return out
