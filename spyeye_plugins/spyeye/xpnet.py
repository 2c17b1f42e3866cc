"""``spyeye.xpnet``: Windows XP x86 TCP connections and sockets, active and closed.

Volatility 3 has no network plugin for XP (``windows.netscan`` starts at Vista).  XP's
tcpip.sys keeps a connection in a ``_TCPT_OBJECT`` (pool tag ``TCPT``) and a socket in an
``_ADDRESS_OBJECT`` (``TCPA``); this plugin scans the kernel's physical memory for those
pool blocks with Volatility's pool scanner, decodes them with the layouts of
``symbols/spyeye/xp_tcpip_x86.json`` (:mod:`.parsers.xp_network`) and reports each one
with its owner, and whether its pool block is still in use or already freed.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from volatility3.framework import exceptions, interfaces, renderers, symbols
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints
from volatility3.framework.symbols import intermed
from volatility3.framework.symbols.windows import versions
from volatility3.plugins.windows import info, poolscanner, pslist, psscan

from . import vadwalk
from .output import UsageError, text_cell
from .parsers import xp_network
from .parsers.xp_network import NetObject, StructLayout

vollog = logging.getLogger(__name__)

TABLE = "xp_tcpip_x86"                    # symbols/spyeye/xp_tcpip_x86.json
TAGS = {b"TCPT": ("connection", "_TCPT_OBJECT"), b"TCPA": ("socket", "_ADDRESS_OBJECT")}
COLUMNS = [("Offset(P)", format_hints.Hex), ("Proto", str), ("LocalAddr", str), ("LocalPort", int),
           ("RemoteAddr", str), ("RemotePort", int), ("State", str), ("PID", int), ("Owner", str),
           ("Created", datetime), ("Provenance", str)]


def struct_layout(context: interfaces.context.ContextInterface, type_name: str) -> StructLayout:
    """A :class:`StructLayout` of a symbol table type (fields: integers or byte arrays)."""
    template = context.symbol_space.get_type(type_name)
    fields = {}
    for name, (offset, member) in template.vol.members.items():
        if "count" in member.vol:
            fields[name] = xp_network.FieldSpec(offset, member.size, count=member.vol.count)
        else:
            fields[name] = xp_network.FieldSpec(offset, member.size, member.vol.data_format.byteorder)
    return StructLayout(template.size, fields)


def load_layouts(context: interfaces.context.ContextInterface, config_path: str) -> Dict[bytes, StructLayout]:
    """Pool tag -> layout of the object it holds, from ``symbols/spyeye/xp_tcpip_x86.json``."""
    table = intermed.IntermediateSymbolTable.create(context, config_path, "spyeye", TABLE)
    return {tag: struct_layout(context, f"{table}!{type_name}") for tag, (_, type_name) in TAGS.items()}


Row = Tuple[bytes, NetObject, Optional[str], Optional[str]]


def selected(found: Iterable[Tuple[bytes, NetObject]], names: Dict[int, Tuple[str, str]],
             pids: Optional[Iterable[int]], wanted: Optional[Iterable[str]]) -> List[Row]:
    """(tag, object, owner name, where the name came from) for the objects ``--pid`` and
    ``--name`` select (both, when both are given), connections first, by offset."""
    pids, wanted = set(pids or []), {n.lower() for n in wanted or []}
    rows = []
    for tag, obj in sorted(found, key=lambda f: (f[1].kind, f[1].offset)):
        owner, origin = names.get(obj.pid, (None, None))
        if (not pids or obj.pid in pids) and (not wanted or (owner or "").lower() in wanted):
            rows.append((tag, obj, owner, origin))
    return rows


class XpNet(interfaces.plugins.PluginInterface):
    """Lists Windows XP x86 TCP connections and sockets (TCPT/TCPA pool blocks, in use and freed)."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 1, 0)   # 1.1: row(socket=): a connection dated by the socket it was made through

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return vadwalk.kernel_requirements()[:2] + vadwalk.process_filter_requirements() + [
            requirements.VersionRequirement(name="poolscanner", component=poolscanner.PoolScanner,
                                            version=(3, 0, 0)),
            requirements.VersionRequirement(name="psscan", component=psscan.PsScan, version=(2, 0, 0)),
            requirements.VersionRequirement(name="info", component=info.Info, version=(2, 0, 0)),
        ]

    # --- for other plugins (the timeline) ---------------------------------------
    @classmethod
    def os_problem(cls, context: interfaces.context.ContextInterface, kernel_name: str) -> Optional[str]:
        """Why this image is not Windows XP x86 (one line), or None when it is."""
        kernel = context.modules[kernel_name]
        if symbols.symbol_table_is_64bit(context=context, symbol_table_name=kernel.symbol_table_name):
            return "spyeye.xpnet reads Windows XP x86 network objects; this is a 64-bit kernel (use windows.netscan)"
        try:
            kuser = info.Info.get_kuser_structure(context, kernel_name)
            version = (int(kuser.NtMajorVersion), int(kuser.NtMinorVersion))
        except exceptions.InvalidAddressException:
            return None if versions.is_windows_xp(context, kernel.symbol_table_name) else \
                "spyeye.xpnet reads Windows XP x86 network objects; this kernel's symbols are not XP's"
        if version != (5, 1):
            return (f"spyeye.xpnet reads Windows XP x86 network objects; this image is Windows "
                    f"{version[0]}.{version[1]} (use windows.netscan)")
        return None

    @classmethod
    def scan(cls, context: interfaces.context.ContextInterface, kernel_name: str, config_path: str,
             progress_callback: Optional[Callable] = None) -> Iterator[Tuple[bytes, NetObject]]:
        """(pool tag, decoded object) of every non-paged or free TCPT/TCPA pool block, at
        least header + object long, that decodes."""
        kernel = context.modules[kernel_name]
        layouts = load_layouts(context, config_path)
        physical = context.layers[kernel.layer_name].config["memory_layer"]
        header_size = kernel.get_type("_POOL_HEADER").size
        in_use_or_freed = poolscanner.PoolType.NONPAGED | poolscanner.PoolType.FREE
        constraints = [poolscanner.PoolConstraint(tag, type_name, page_type=in_use_or_freed,
                                                  size=(header_size + layouts[tag].size, None))
                       for tag, (_, type_name) in TAGS.items()]
        layer = context.layers[physical]
        for constraint, header in poolscanner.PoolScanner.pool_scan(
                context, kernel_name, physical, kernel.symbol_table_name, constraints,
                alignment=8, progress_callback=progress_callback):
            kind, layout = TAGS[constraint.tag][0], layouts[constraint.tag]
            body_offset = header.vol.offset + header_size
            try:
                freed = bool(header.is_free_pool())
                body = layer.read(body_offset, layout.size, pad=True)
            except exceptions.InvalidAddressException:
                continue
            found = xp_network.DECODERS[kind](body, layout, body_offset, freed)
            if found is not None:
                yield constraint.tag, found

    @staticmethod
    def owner_names(context: interfaces.context.ContextInterface, kernel_name: str,
                    pids: Iterable[int]) -> Dict[int, Tuple[str, str]]:
        """PID -> (image name, where it came from): the active list, then a process pool
        scan for PIDs it lacks (exited processes own most closed connections)."""
        names = {int(p.UniqueProcessId): (vadwalk.process_name(p), "pslist")
                 for p in pslist.PsList.list_processes(context, kernel_name)}
        if set(pids) - set(names):
            try:
                for proc in psscan.PsScan.scan_processes(context, kernel_name):
                    names.setdefault(int(proc.UniqueProcessId), (vadwalk.process_name(proc), "psscan"))
            except exceptions.VolatilityException as exc:
                vollog.warning("process pool scan failed (%s): owners of closed objects may be missing", exc)
        return names

    # --- the plugin ---------------------------------------------------------------
    @staticmethod
    def row(tag: bytes, obj: NetObject, owner: Optional[str], origin: Optional[str],
            socket: Optional[NetObject] = None) -> tuple:
        """One row of :data:`COLUMNS`; a connection's time is that of ``socket``, the address
        object it was made through (:func:`.parsers.xp_network.bound_sockets`)."""
        provenance = f"pool scan, {tag.decode()} block {'freed' if obj.freed else 'in use'}"
        if origin:
            provenance += f"; owner from {origin}"
        if socket is not None:
            provenance += f"; time of its socket (TCPA @ {socket.offset:#x})"
        created = socket.created if socket is not None else obj.created
        return (format_hints.Hex(obj.offset), obj.proto, obj.local_addr, obj.local_port,
                obj.remote_addr if obj.remote_addr is not None else "*", obj.remote_port or 0,
                obj.state, obj.pid, text_cell(owner) if owner else renderers.NotAvailableValue(),
                created if created else renderers.NotAvailableValue(), provenance)

    def _generator(self):
        kernel = self.config["kernel"]
        found = list(self.scan(self.context, kernel, self.config_path, self._progress_callback))
        bound = xp_network.bound_sockets(obj for _, obj in found)
        names = self.owner_names(self.context, kernel, {obj.pid for _, obj in found})
        for tag, obj, owner, origin in selected(found, names, self.config.get("pid"), self.config.get("name")):
            yield 0, self.row(tag, obj, owner, origin, bound.get(obj))

    def run(self) -> renderers.TreeGrid:
        """Non-XP images and bad ``--pid``/``--name`` fail here with one line."""
        kernel = self.config["kernel"]
        problem = self.os_problem(self.context, kernel)
        if problem:
            raise UsageError(problem)
        vadwalk.check_selection(self.context, kernel, self.config.get("pid"), self.config.get("name"),
                                include_exited=True)
        return renderers.TreeGrid(COLUMNS, self._generator())
