"""Several of Volatility's pool scans (psscan, thrdscan, mutantscan, netscan) in one pass.

Each stock scan reads all of memory and matches its tags with a Python regular expression,
about a second per gigabyte per scan.  Here the same pool constraints are checked by
Volatility's own ``PoolHeaderScanner`` and ``_POOL_HEADER.get_object``, but the tags are
found by the suite's literal matcher (Hyperscan, else YARA) in one pass for every kind, so
the objects are those the stock scans return, in the same order per kind."""
from __future__ import annotations

import logging
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from volatility3.framework import constants, exceptions, interfaces, layers, symbols
from volatility3.framework.symbols.windows import versions
from volatility3.plugins.windows import handles, netscan, poolscanner

from . import xpnet
from .parsers.patterns import PatternSet

vollog = logging.getLogger(__name__)

# kind -> the pool tags its stock scan looks for (with and without the protected bit)
TAGS: Dict[str, Tuple[bytes, ...]] = {
    "process": (b"Pro\xe3", b"Proc"),     # windows.psscan
    "thread": (b"Thr\xe5", b"Thre"),      # windows.thrdscan
    "mutant": (b"Mut\xe1", b"Muta"),      # windows.mutantscan
}
NETWORK = "network"                       # windows.netscan's constraints (its own symbol table)


class TagFinder(layers.scanners.MultiStringScanner):
    """``MultiStringScanner``'s interface, with the literals found in one pass by the
    suite's matcher instead of a regular expression."""

    def __init__(self, tags: Sequence[bytes]) -> None:
        super().__init__(list(tags))
        self._patterns = PatternSet(hex_patterns=[tag.hex() for tag in tags])

    def search(self, haystack: bytes) -> Iterator[Tuple[int, bytes]]:
        hits = sorted((hit.offset, bytes.fromhex(hit.pattern)) for hit in self._patterns.scan(haystack))
        yield from hits


class _HeaderScanner(poolscanner.PoolHeaderScanner):
    def __init__(self, module, constraint_lookup: Dict[bytes, poolscanner.PoolConstraint], alignment: int) -> None:
        super().__init__(module, constraint_lookup, alignment)
        self._subscanner = TagFinder(list(constraint_lookup))


def scan(context: interfaces.context.ContextInterface, kernel_module_name: str,
         constraints: Sequence[poolscanner.PoolConstraint], progress=None
         ) -> Iterator[Tuple[poolscanner.PoolConstraint, interfaces.objects.ObjectInterface]]:
    """``(constraint, object)`` for every pool allocation matching one of ``constraints``,
    as ``PoolScanner.generate_pool_scan`` finds them (same layer, alignment, header and type
    checks), in one pass."""
    kernel = context.modules[kernel_module_name]
    table = kernel.symbol_table_name
    type_map = handles.Handles.get_type_map(context=context, kernel_module_name=kernel_module_name)
    cookie = handles.Handles.find_cookie(context=context, kernel_module_name=kernel_module_name)
    layer_name = kernel.layer_name
    if not versions.is_windows_10(context, table):      # before Windows 10: physical memory
        layer_name = context.layers[layer_name].config["memory_layer"]
    alignment = 0x10 if symbols.symbol_table_is_64bit(context=context, symbol_table_name=table) else 8
    header_table = table if kernel.has_type("_POOL_HEADER") else \
        poolscanner.PoolScanner.get_pool_header_table(context, table)
    module = context.module(header_table, layer_name, offset=kernel.offset)
    lookup = {c.tag: c for c in constraints}
    top_down = versions.is_windows_8_or_later(context, table)
    for constraint, header in context.layers[layer_name].scan(context, _HeaderScanner(module, lookup, alignment),
                                                              progress):
        for obj in header.get_object(constraint=constraint, use_top_down=top_down,
                                     native_layer_name=kernel.layer_name, kernel_symbol_table=table):
            if obj is not None and _type_matches(obj, constraint, type_map, cookie):
                yield constraint, obj


def _type_matches(obj, constraint: poolscanner.PoolConstraint, type_map, cookie) -> bool:
    if constraint.object_type is None or constraint.skip_type_test:
        return True
    try:
        return obj.get_object_header().get_object_type(type_map, cookie) == constraint.object_type
    except exceptions.InvalidAddressException:
        vollog.log(constants.LOGLEVEL_VVV, "Cannot test instance type check for %s", constraint.type_name)
        return False


class PoolObjects:
    """The kernel objects of several kinds (``TAGS`` keys and ``NETWORK``) a pool scan finds,
    scanned once, up front.  A scan that stops early keeps what it found, with a warning."""

    def __init__(self, context: interfaces.context.ContextInterface, kernel_module_name: str,
                 kinds: Sequence[str], config_path: Optional[str] = None, progress=None) -> None:
        self.kinds = set(kinds)
        self.found: Dict[str, List] = {kind: [] for kind in self.kinds}
        table = context.modules[kernel_module_name].symbol_table_name
        kind_of: Dict[bytes, str] = {}
        constraints = []
        for kind in self.kinds - {NETWORK}:
            for constraint in poolscanner.PoolScanner.builtin_constraints(table, list(TAGS[kind])):
                constraints.append(constraint)
                kind_of[constraint.tag] = kind
        if NETWORK in self.kinds:
            for constraint in self._network_constraints(context, kernel_module_name, config_path):
                constraints.append(constraint)
                kind_of[constraint.tag] = NETWORK
        try:
            for constraint, obj in scan(context, kernel_module_name, constraints, progress):
                self.found[kind_of[constraint.tag]].append(obj)
        except exceptions.InvalidAddressException as exc:
            vollog.warning("the pool scan stopped early (%s): later objects are missing", exc)

    @staticmethod
    def _network_constraints(context, kernel_module_name: str, config_path: Optional[str]) -> List:
        if xpnet.XpNet.os_problem(context, kernel_module_name) is None:
            return []    # XP's TCPT/TCPA objects: spyeye.xpnet (netscan starts at Vista)
        try:
            table = netscan.NetScan.create_netscan_symbol_table(context, kernel_module_name, config_path)
        except (NotImplementedError, ValueError, exceptions.VolatilityException) as exc:
            vollog.warning("no network symbols for this kernel (%s): network objects skipped", exc)
            return []
        return netscan.NetScan.create_netscan_constraints(context, table)

    def get(self, kind: str) -> List:
        """The objects of ``kind`` (it must have been asked for)."""
        if kind not in self.kinds:
            raise KeyError(f"pool objects of kind {kind!r} were not scanned")
        return self.found[kind]
