"""XP network objects (``parsers/xp_network.py``, ``spyeye.xpnet``) on bytes built from the
layouts of ``symbols/spyeye/xp_tcpip_x86.json``; the pool scan on a made-up physical layer."""
from __future__ import annotations

import random
from datetime import datetime, timezone

import pytest
from volatility3.framework import contexts
from volatility3.framework.layers.intel import WindowsIntel
from volatility3.framework.layers.physical import BufferDataLayer
from volatility3.framework.symbols.windows import WindowsKernelIntermedSymbols

from fixtures.isf_from_vtypes import table_path
from fixtures.layout import Layout
from spyeye_plugins.spyeye import PROJECT_SYMBOLS, xpnet
from spyeye_plugins.spyeye.parsers import xp_network as xn

CREATED = datetime(2011, 3, 14, 9, 26, 53, 589793, tzinfo=timezone.utc)
CREATED_FT = int((CREATED - datetime(1601, 1, 1, tzinfo=timezone.utc)).total_seconds()) * 10_000_000 + 5_897_930


@pytest.fixture(scope="module")
def layouts():
    return xpnet.load_layouts(contexts.Context(), "test")


def _ip(text: str) -> bytes:
    return bytes(int(p) for p in text.split("."))


def _conn(layout, local="192.168.1.10", lport=1042, remote="91.211.117.12", rport=80, pid=1484, fill=b"\0"):
    return layout.pack({"Next": 0x81234560, "LocalIpAddress": _ip(local), "LocalPort": lport,
                        "RemoteIpAddress": _ip(remote), "RemotePort": rport, "Pid": pid}, fill)


def _sock(layout, local="0.0.0.0", port=445, proto=6, pid=4, created=CREATED_FT, fill=b"\0"):
    return layout.pack({"LocalIpAddress": _ip(local), "LocalPort": port, "Protocol": proto,
                        "Pid": pid, "CreateTime": created}, fill)


def test_layouts_are_the_vtypes_facts(layouts):
    """The values of ../shared/reference/vtypes/README.md (Volatility 2's tcpip_vtypes.py)."""
    tcpt, tcpa = layouts[b"TCPT"], layouts[b"TCPA"]
    assert tcpt.size == 0x20 and tcpa.size == 0x160
    assert {n: (f.offset, f.size) for n, f in tcpt.fields.items()} == {
        "Next": (0, 4), "RemoteIpAddress": (0xc, 4), "LocalIpAddress": (0x10, 4),
        "RemotePort": (0x14, 2), "LocalPort": (0x16, 2), "Pid": (0x18, 4)}
    assert {n: (f.offset, f.size) for n, f in tcpa.fields.items()} == {
        "Next": (0, 4), "LocalIpAddress": (0x2c, 4), "LocalPort": (0x30, 2), "Protocol": (0x32, 2),
        "Pid": (0x148, 4), "CreateTime": (0x158, 8)}
    assert tcpt.fields["LocalPort"].endian == "big" and tcpa.fields["Protocol"].endian == "little"
    assert tcpt.fields["RemoteIpAddress"].count == 4


def test_port_bytes_are_big_endian(layouts):
    body = _conn(layouts[b"TCPT"], lport=0x1234)
    assert body[0x16:0x18] == b"\x12\x34" and body[0x10:0x14] == bytes([192, 168, 1, 10])


def test_connection_active_and_freed(layouts):
    body = _conn(layouts[b"TCPT"])
    got = xn.decode_connection(body, layouts[b"TCPT"], 0x2A0008)
    assert got == xn.NetObject("connection", "TCP", "192.168.1.10", 1042, "91.211.117.12", 80, 1484,
                               None, False, 0x2A0008)
    freed = xn.decode_connection(body, layouts[b"TCPT"], 0x2A0008, freed=True)
    assert freed.freed and freed.state == "connection (freed)" and got.state == "connection"


def test_freed_block_with_free_list_links_still_decodes(layouts):
    """A freed XP pool block reuses the body's first 8 bytes as a list entry."""
    body = bytearray(_conn(layouts[b"TCPT"]))
    body[0:8] = (0x8155A008).to_bytes(4, "little") + (0x8155B100).to_bytes(4, "little")
    assert xn.decode_connection(bytes(body), layouts[b"TCPT"], freed=True).pid == 1484


def test_socket_tcp_udp_raw(layouts):
    tcpa = layouts[b"TCPA"]
    got = xn.decode_socket(_sock(tcpa), tcpa, 0x3000)
    assert got == xn.NetObject("socket", "TCP", "0.0.0.0", 445, None, None, 4, CREATED, False, 0x3000)
    udp = xn.decode_socket(_sock(tcpa, "192.168.1.10", 137, 17, 1032), tcpa)
    assert (udp.proto, udp.local_addr, udp.local_port, udp.pid) == ("UDP", "192.168.1.10", 137, 1032)
    raw = xn.decode_socket(_sock(tcpa, port=0, proto=255, pid=1484), tcpa)
    assert (raw.proto, raw.local_port) == ("RAW", 0)


@pytest.mark.parametrize("change", [
    {"lport": 0}, {"rport": 0}, {"pid": 0}, {"pid": 1485}, {"pid": 0x40000}, {"remote": "0.0.0.0"},
    {"remote": "255.255.255.255"}, {"remote": "224.0.0.1"}, {"local": "239.255.255.250"},
])
def test_garbage_connection_rejected(layouts, change):
    assert xn.decode_connection(_conn(layouts[b"TCPT"], **change), layouts[b"TCPT"]) is None


@pytest.mark.parametrize("change", [
    {"proto": 0}, {"proto": 7}, {"port": 0}, {"proto": 17, "port": 0}, {"pid": 0}, {"pid": 6},
    {"created": 0}, {"created": 116444736000000000},  # 1970
    {"created": 0x7FFFFFFFFFFFFFFF}, {"local": "255.255.255.255"},
])
def test_garbage_socket_rejected(layouts, change):
    assert xn.decode_socket(_sock(layouts[b"TCPA"], **change), layouts[b"TCPA"]) is None


def test_short_body_rejected(layouts):
    assert xn.decode_socket(_sock(layouts[b"TCPA"])[:0x150], layouts[b"TCPA"]) is None
    assert xn.decode_connection(_conn(layouts[b"TCPT"])[:0x1b], layouts[b"TCPT"]) is None


def test_random_bytes_never_decode(layouts):
    rng = random.Random(14)
    bodies = [bytes(rng.getrandbits(8) for _ in range(0x160)) for _ in range(3000)]
    assert [b for b in bodies if xn.decode_connection(b, layouts[b"TCPT"])] == []
    assert [b for b in bodies if xn.decode_socket(b, layouts[b"TCPA"])] == []


# --- the pool scan over a physical layer ------------------------------------------------

def _pool_block(nt: Layout, tag: bytes, body: bytes, pool_type: int, blocks: int = 0) -> bytes:
    size = 8 + len(body)
    header = nt.new("_POOL_HEADER", {"BlockSize": blocks or (size + 7) // 8, "PoolType": pool_type,
                                         "PoolTag": int.from_bytes(tag, "little")})
    return bytes(header) + body + b"\0" * (-size % 8)


def test_scan_finds_active_and_freed_blocks(layouts):
    """Pool blocks at known physical offsets: in use, freed, garbage, one too small, one paged."""
    xp_table = table_path(PROJECT_SYMBOLS, "xp-x86")
    nt = Layout(xp_table, "xp")
    memory = bytearray(0x10000)
    blocks = {
        0x1000: _pool_block(nt, b"TCPT", _conn(layouts[b"TCPT"]), 1),
        0x1040: _pool_block(nt, b"TCPT", _conn(layouts[b"TCPT"], remote="10.0.0.5", rport=443, pid=1856), 0),
        0x1080: _pool_block(nt, b"TCPT", _conn(layouts[b"TCPT"], pid=3), 1),           # not a PID
        0x2000: _pool_block(nt, b"TCPA", _sock(layouts[b"TCPA"]), 1),
        0x2200: _pool_block(nt, b"TCPA", _sock(layouts[b"TCPA"], port=1900, proto=17, pid=1032), 0),
        0x2400: _pool_block(nt, b"TCPA", _sock(layouts[b"TCPA"], pid=8), 1, blocks=4),   # block too small
        0x2600: _pool_block(nt, b"TCPA", _sock(layouts[b"TCPA"], pid=12), 2),            # paged pool
        0x3000: b"....TCPT....TCPA" * 4,                                                    # tags in plain data
    }
    for offset, blob in blocks.items():
        memory[offset:offset + len(blob)] = blob
    context = contexts.Context()
    context.config["phys.location"] = "buffer"
    context.layers.add_layer(BufferDataLayer(context, "phys", "phys", bytes(memory)))
    context.config["virt.memory_layer"] = "phys"
    context.config["virt.page_map_offset"] = 0
    context.layers.add_layer(WindowsIntel(context, "virt", "virt"))
    table = WindowsKernelIntermedSymbols(context, "xp", "xp", xp_table.resolve().as_uri())
    context.symbol_space.append(table)
    kernel = context.module("xp", "virt", 0x804D7000)     # context.module registers it by name
    found = [(tag, obj.offset, obj.freed, obj.pid, obj.remote_addr or obj.proto)
             for tag, obj in xpnet.XpNet.scan(context, kernel.name, "test")]
    assert found == [
        (b"TCPT", 0x1008, False, 1484, "91.211.117.12"),
        (b"TCPT", 0x1048, True, 1856, "10.0.0.5"),
        (b"TCPA", 0x2008, False, 4, "TCP"),
        (b"TCPA", 0x2208, True, 1032, "UDP"),
    ]


def test_selection_by_pid_and_name(layouts):
    conn = xn.decode_connection(_conn(layouts[b"TCPT"]), layouts[b"TCPT"], 0x50)
    gone = xn.decode_connection(_conn(layouts[b"TCPT"], pid=1856), layouts[b"TCPT"], 0x10, freed=True)
    sock = xn.decode_socket(_sock(layouts[b"TCPA"]), layouts[b"TCPA"], 0x20)
    found = [(b"TCPA", sock), (b"TCPT", conn), (b"TCPT", gone)]
    names = {1484: ("explorer.exe", "pslist"), 4: ("System", "pslist"), 1856: ("cleansweep.exe", "psscan")}
    everything = xpnet.selected(found, names, None, None)
    assert [(o.offset, owner, origin) for _, o, owner, origin in everything] == [
        (0x10, "cleansweep.exe", "psscan"), (0x50, "explorer.exe", "pslist"), (0x20, "System", "pslist")]
    assert [o.pid for _, o, _, _ in xpnet.selected(found, names, [4, 1856], None)] == [1856, 4]
    assert [o.pid for _, o, _, _ in xpnet.selected(found, names, None, ["EXPLORER.EXE"])] == [1484]
    assert xpnet.selected(found, names, [4], ["explorer.exe"]) == []
    assert [o.pid for _, o, _, _ in xpnet.selected(found, {}, [1484], None)] == [1484]


def test_rows_render_as_json(layouts):
    """Typed cells: every renderer gets them right (a socket's time, a connection's N/A)."""
    import io
    import json
    from contextlib import redirect_stdout

    from volatility3.cli import text_renderer
    from volatility3.framework import renderers

    conn = xn.decode_connection(_conn(layouts[b"TCPT"]), layouts[b"TCPT"], 0x1008, freed=True)
    sock = xn.decode_socket(_sock(layouts[b"TCPA"]), layouts[b"TCPA"], 0x2008)
    rows = [xpnet.XpNet.row(b"TCPT", conn, "cleansweep\t.exe", "psscan"), xpnet.XpNet.row(b"TCPA", sock, None, None)]
    grid = renderers.TreeGrid(xpnet.COLUMNS, iter([(0, r) for r in rows]))
    out = io.StringIO()
    with redirect_stdout(out):
        text_renderer.JsonRenderer().render(grid)
    parsed = [{k: v for k, v in r.items() if k != "__children"} for r in json.loads(out.getvalue())]
    assert parsed == [
        {"Offset(P)": 0x1008, "Proto": "TCP", "LocalAddr": "192.168.1.10", "LocalPort": 1042,
         "RemoteAddr": "91.211.117.12", "RemotePort": 80, "State": "connection (freed)", "PID": 1484,
         "Owner": "cleansweep\\t.exe", "Created": None,
         "Provenance": "pool scan, TCPT block freed; owner from psscan"},
        {"Offset(P)": 0x2008, "Proto": "TCP", "LocalAddr": "0.0.0.0", "LocalPort": 445, "RemoteAddr": "*",
         "RemotePort": 0, "State": "socket", "PID": 4, "Owner": None, "Created": CREATED.isoformat(),
         "Provenance": "pool scan, TCPA block in use"},
    ]


def _net(kind, pid, lport, created=None, freed=False, local="192.168.1.10", proto="TCP", offset=0):
    remote = ("91.211.117.12", 80) if kind == "connection" else (None, None)
    return xn.NetObject(kind, proto, local, lport, *remote, pid, created, freed, offset)


def test_each_connection_is_dated_by_the_socket_bound_to_its_port():
    """Same PID and local port, TCP, local address or 0.0.0.0; freed like the connection first,
    then the latest; a socket dates one connection; a listener elsewhere is left alone."""
    later = CREATED.replace(minute=30)
    conn, closed = _net("connection", 1484, 1042), _net("connection", 1484, 1043, freed=True)
    own = _net("socket", 1484, 1042, CREATED, offset=1)
    freed_old, freed_new = (_net("socket", 1484, 1043, t, freed=True, offset=o) for t, o in ((CREATED, 2), (later, 3)))
    live_reuse = _net("socket", 1484, 1043, later.replace(hour=10), offset=4)
    others = [_net("socket", 1488, 1042, CREATED),                         # another process
              _net("socket", 1484, 1042, CREATED, proto="UDP"),            # not TCP
              _net("socket", 1484, 1042, CREATED, local="10.0.0.1"),       # another address
              _net("socket", 4, 445, CREATED, local="0.0.0.0")]            # a listener
    assert xn.bound_sockets([conn, closed, own, freed_old, freed_new, live_reuse, *others]) == {
        conn: own, closed: freed_new}
    assert xn.bound_sockets([conn, _net("connection", 1484, 1042, offset=9), own]) == {conn: own}
    assert xn.bound_sockets([conn, *others]) == {}
