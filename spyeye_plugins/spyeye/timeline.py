"""``spyeye.timeline``: one exact timeline of processes, threads, sockets and
event-log records (EVTX and XP-style EVT carved from process and freed memory).

Processes and threads come from both the active lists and pool scans (stock
plugins, through their versioned classmethods), merged per object with their
provenance.  Times keep their sub-second part (Volatility's own conversion
drops it).  ``--correlate`` makes the article's by-eye findings explicit, and
flags what cannot be right: threads that start in injected code, times after the
capture or before the boot, event-log records another computer wrote."""
from __future__ import annotations

import argparse
import bisect
import functools
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

from volatility3.framework import exceptions, interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.symbols.windows.extensions import network
from volatility3.plugins import timeliner
from volatility3.plugins.windows import info, netscan, poolscanner, pslist, psscan, thrdscan, threads

from . import injected, poolscan, vadwalk, xpnet
from .output import UsageError, text_cell
from .pageread import PageTableReader
from .parsers import eventlog, xp_network
from .parsers.patterns import PatternSet

vollog = logging.getLogger(__name__)

SOURCES = ("process", "thread", "network", "eventlog")
WINDOW = 0x100000                          # bytes carved at a time
OVERLAP = eventlog.CHUNK_SIZE              # a chunk starting in a window is read whole
MAGICS = (eventlog.RECORD_MAGIC, eventlog.EVT_MAGIC)   # every non-empty EVTX chunk holds records
VALUE_CAP = 100                            # characters of one event-log value shown in Detail
# --correlate defaults, see docs/timeline.md "Choosing the burst defaults"
BURST, BURST_WINDOW, STARTUP = 5, 5, 10
# row flags that --correlate gathers into one flag each (None: one per flag text, i.e. per computer)
IMPOSSIBLE = {"after-capture": "dated after the capture time", "before-boot": "dated before the boot",
              "other-computer": None}


@dataclass(frozen=True)
class Event:
    """One timeline row."""

    time: datetime
    source: str
    action: str
    pid: Optional[int]
    process: Optional[str]
    detail: str
    provenance: str
    flags: Tuple[Tuple[str, str], ...] = ()  # (rule, text): what about the row cannot be right
    start_in: Optional[Tuple[str, Optional[str]]] = None  # thread: (injected region, symbol) it starts at
    computer: Optional[str] = None          # event-log record: the Computer that logged it
    found_in: Optional[Tuple[int, str]] = None  # carved record: the process whose memory held it
    peer: Optional[Tuple[str, int]] = None  # TCP connection: (remote address, remote port)

    def sort_key(self) -> Tuple:
        return (self.time, SOURCES.index(self.source), -1 if self.pid is None else self.pid,
                self.action, self.detail, self.provenance)

    def values(self) -> Tuple:
        return (self.time, self.source, self.action, vadwalk.optional(self.pid),
                vadwalk.optional(self.process), text_cell(self.detail), self.flag_text(),
                text_cell(self.provenance))

    def flag_text(self) -> str:
        return "; ".join(text for _, text in self.flags)

    def flagged(self, rule: str, text: str) -> "Event":
        return replace(self, flags=self.flags + ((rule, text),))


@dataclass
class Flag:
    """A correlation finding and the rows it rests on."""

    time: datetime
    rule: str
    pid: Optional[int]
    process: Optional[str]
    detail: str
    basis: List[Event] = field(default_factory=list)


def filetime(value: int) -> Optional[datetime]:
    """Exact (microsecond) UTC time of a FILETIME; None when unset."""
    return eventlog.filetime_to_datetime(int(value))


def thread_created(thread) -> int:
    """``_ETHREAD.CreateTime`` as a FILETIME: XP's (the build with ``ThreadsProcess``) holds it
    shifted left by 3, as Volatility's ``ETHREAD.get_create_time`` reads it."""
    raw = int(thread.CreateTime.QuadPart)
    return raw >> 3 if thread.has_member("ThreadsProcess") else raw


def _merge_provenance(list_name: str, scan_name: str, seen: Set[str], exited: bool) -> str:
    if seen == {list_name, scan_name}:
        return f"{list_name}+{scan_name}"
    if seen == {list_name}:
        return f"{list_name} only"
    return f"{scan_name} only ({'exited, ' if exited else ''}not in the active list)"


# --------------------------------------------------------------------------- carving


@dataclass
class Found:
    """A carved record and where it was found."""

    record: Union[eventlog.EventRecord, eventlog.EvtRecord]
    physical: Optional[int]
    pid: Optional[int] = None
    process: Optional[str] = None
    where: str = ""
    file: Optional[str] = None            # the mapped file (a live log) the record was read from


def carve_windows(chunks: Iterable[Tuple[int, bytes, int]]
                  ) -> Iterator[Union[eventlog.EventRecord, eventlog.EvtRecord]]:
    """Records in ``read_chunks`` windows (overlap >= one EVTX chunk), each once:
    a chunk belongs to the window its header starts in, a lone record to the
    window its first byte is in."""
    taken: Set[int] = set()
    for address, data, owned in chunks:
        if next(magic_offsets(data), None) is None:
            continue
        limit = address + owned
        for record in eventlog.carve_evtx(data, address):
            anchor = record.chunk if record.chunk is not None else record.offset
            if anchor < limit and record.offset not in taken:
                taken.add(record.offset)
                yield record
        for record in eventlog.carve_evt(data, address):
            if record.offset < limit and record.offset not in taken:
                taken.add(record.offset)
                yield record
        taken = {offset for offset in taken if offset >= limit}


def magic_offsets(data: bytes) -> Iterator[int]:
    """Offsets of EVTX and EVT record magics in ``data`` (one pass of the suite's literal
    matcher for both; not in order)."""
    return (hit.offset for hit in _magic_patterns().scan(data))


@functools.lru_cache(maxsize=1)
def _magic_patterns() -> PatternSet:
    return PatternSet(hex_patterns=[magic.hex() for magic in MAGICS])


def _noting_frames(physical, frames: Set[int], progress) -> Iterator[Tuple[int, bytes, int]]:
    """The ``read_chunks`` windows over ``physical`` that hold a record magic; adds
    each frame holding one to ``frames``.  (A window without any holds no record,
    so leaving it out does not change what ``carve_windows`` finds.)"""
    end = physical.maximum_address
    for address, data, owned in vadwalk.read_chunks(physical, physical.minimum_address, end,
                                                    WINDOW, OVERLAP):
        if progress:
            progress(50.0 * address / max(end, 1), "Carving event-log records from physical memory")
        hits = list(magic_offsets(data))
        frames.update((address + pos) >> 12 for pos in hits if pos < owned)
        if hits:
            yield address, data, owned


def _mapped_frames(layer, start: int, end: int) -> Iterator[int]:
    return PageTableReader(layer).frames(start, end + 1 - start)


def _translate(layer, address: int) -> Optional[int]:
    try:
        return layer.translate(address)[0]
    except exceptions.InvalidAddressException:
        return None


def _physical_offset(layer, proc) -> Optional[int]:
    """Where ``proc`` lies in physical memory, whether it was read on ``layer`` or below it."""
    return _translate(layer, proc.vol.offset) if proc.vol.layer_name == layer.name else proc.vol.offset


def _log_warnings(found: Found, reported: Set[Tuple]) -> None:
    record = found.record
    for note in record.warnings:
        lone = "not available" in note or "outside the record" in note
        key = (getattr(record, "chunk", None) or record.offset, note)
        if key in reported:
            continue
        reported.add(key)
        log = vollog.debug if lone else vollog.warning
        log("%s, %s record %s: %s (the readable records are listed)", found.where, record.source,
            record.record_id, note)


# --------------------------------------------------------------------------- event-log values


def _values(fields: Iterable[Tuple[Optional[str], str]]) -> str:
    """``: Name=value; …`` (a bare value where the record names none), each value capped at
    VALUE_CAP characters with an ellipsis; empty without values."""
    def cap(value: str) -> str:
        return value if len(value) <= VALUE_CAP else value[:VALUE_CAP - 1] + "\u2026"
    text = "; ".join(f"{name}={cap(value)}" if name else cap(value) for name, value in fields)
    return f": {text}" if text else ""


def this_computer(procs: Sequence, found: Sequence[Found]) -> Optional[str]:
    """This machine's name: the ``COMPUTERNAME`` most processes' environments hold; without
    one, the Computer most records of the live logs (chunks in mapped ``.evtx`` files) carry;
    without those, the most common Computer of every carved record; None on a tie."""
    from_environment = _majority(environment_computer(proc) for proc in procs)
    if from_environment:
        return from_environment
    live = [f.record.computer for f in found if f.file and f.file.lower().endswith(".evtx")
            and getattr(f.record, "chunk", None) is not None]
    return _majority(live) or _majority(f.record.computer for f in found)


def environment_computer(proc) -> Optional[str]:
    """``COMPUTERNAME`` in the process's environment block, None if absent or unreadable."""
    try:
        if not proc.Peb:
            return None
        return next((value for name, value in proc.environment_variables() if name.upper() == "COMPUTERNAME"),
                    None)
    except (exceptions.VolatilityException, AttributeError, TypeError, ValueError):
        return None


def _majority(names: Iterable[Optional[str]]) -> Optional[str]:
    """The most common machine (by host label, as ``same_computer`` compares), spelt as it
    first appeared; None when there is none or a tie."""
    spelt: Dict[str, str] = {}
    counts: Counter = Counter()
    for name in filter(None, names):
        key = name.split(".", 1)[0].upper()
        spelt.setdefault(key, name)
        counts[key] += 1
    ranked = counts.most_common(2)
    if not ranked or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
        return None
    return spelt[ranked[0][0]]


def same_computer(a: str, b: str) -> bool:
    """NetBIOS name or FQDN, compared by the host label, case-insensitively."""
    return a.split(".", 1)[0].lower() == b.split(".", 1)[0].lower()


# --------------------------------------------------------------------------- thread starts


def _thread_detail(tid: int, start: int, win32: int, space: Optional["ProcessCode"]) -> str:
    """``TID n, start …``; the StartAddress is left out when it is ntdll's thread-start
    thunk (RtlUserThreadStart, the same for every user thread) and a Win32 start is known."""
    if not win32 or win32 == start:
        return f"TID {tid}, start {start:#x}"
    if space is not None and space.is_thread_start_thunk(start):
        return f"TID {tid}, Win32 start {win32:#x}"
    return f"TID {tid}, start {start:#x}, Win32 start {win32:#x}"


def export_at(pe, address: int) -> str:
    """``Name``, ``Name+0x…`` (the nearest export at or before ``address``) or ``RVA 0x…``."""
    before = [e for e in pe.exports if e.forwarder is None and e.address <= address]
    if not before:
        return f"RVA {address - pe.base:#x}"
    nearest = max(before, key=lambda e: (e.address, e.ordinal))
    name = nearest.name or f"ordinal {nearest.ordinal}"
    return name if nearest.address == address else f"{name}+{address - nearest.address:#x}"


class ProcessCode:
    """One process's VADs and the regions ``spyeye.injected`` flags in it (found on first use)."""

    def __init__(self, context, kernel_name: str, proc, protect,
                 vads: Optional[List[vadwalk.VadFacts]] = None,
                 candidates: Optional[Sequence[injected.Candidate]] = None) -> None:
        """``vads`` and ``candidates`` (``list_candidates(..., all_exec=True)``): when already found."""
        self._args = (context, kernel_name, proc, protect)
        self.vads = list(vadwalk.process_vads(proc, protect)) if vads is None else vads
        self._starts = [v.start for v in self.vads]
        self._candidates: Optional[Dict[int, injected.Candidate]] = \
            None if candidates is None else {c.vad.start: c for c in candidates}

    def vad_at(self, address: int) -> Optional[vadwalk.VadFacts]:
        index = bisect.bisect_right(self._starts, address) - 1
        return self.vads[index] if index >= 0 and address <= self.vads[index].end else None

    def is_thread_start_thunk(self, address: int) -> bool:
        """In ntdll.dll, where RtlUserThreadStart is: every user thread's StartAddress."""
        vad = self.vad_at(address)
        return bool(vad and vad.file and vad.file.rsplit("\\", 1)[-1].lower() == "ntdll.dll")

    def candidates(self) -> Dict[int, injected.Candidate]:
        if self._candidates is None:
            context, kernel_name, proc, protect = self._args
            self._candidates = {c.vad.start: c for c in injected.InjectedImages.list_candidates(
                context, kernel_name, proc, protect, all_exec=True, vads=self.vads)}
        return self._candidates

    def thread_start(self, start: int, win32: int) -> Optional[Tuple[str, Optional[str]]]:
        """Where a thread starts, when that is injected code: its Win32 start address, else
        its StartAddress (never the ntdll thunk)."""
        return (self.locate(win32) if win32 else None) or self.locate(start)

    def locate(self, address: int) -> Optional[Tuple[str, Optional[str]]]:
        """(region, symbol) when ``address`` lies in an injected image or private memory:
        ``("ccgrabber.dll (private executable memory 0x…-0x…)", "SpyEye_Start")``; else None."""
        vad = self.vad_at(address)
        if vad is None or self.is_thread_start_thunk(address):
            return None
        candidate = self.candidates().get(vad.start) if vad.private or vad.executable else None
        span = f"{vad.start:#x}-{vad.end:#x}"
        offset = f"+{address - vad.start:#x}"
        if candidate is not None and candidate.pe is not None:
            name = candidate.pe.dll_name or "unnamed image"
            return f"{name} ({candidate.reasons[0]} {span})", export_at(candidate.pe, address)
        if candidate is not None:
            return f"{candidate.reasons[0]} {span}", offset
        if vad.private:
            return f"private memory {span} ({vad.protection})", offset
        return None


class ThreadStarts:
    """``ProcessCode`` of each readable process, built when one of its threads is looked up."""

    def __init__(self, context, kernel_name: str, procs: Sequence) -> None:
        self._args = (context, kernel_name, vadwalk.protection_values(context, kernel_name))
        self._procs: Dict[int, List[Tuple[datetime, object]]] = {}
        for proc in procs:
            try:
                started = filetime(proc.CreateTime.QuadPart) or datetime.min.replace(tzinfo=timezone.utc)
                self._procs.setdefault(int(proc.UniqueProcessId), []).append((started, proc))
            except exceptions.InvalidAddressException:
                continue
        self._spaces: Dict[int, Optional[ProcessCode]] = {}      # by id() of the process object

    def provide(self, proc, code: ProcessCode) -> None:
        """Use ``code`` for ``proc`` (one of the processes given), built by the caller."""
        self._spaces[id(proc)] = code

    def space(self, pid: int, created: Optional[datetime]) -> Optional[ProcessCode]:
        """The code map of the process ``pid`` that a thread created then belongs to (the
        latest one with that PID started by then: PIDs are reused)."""
        owners = [(started, proc) for started, proc in self._procs.get(pid, [])
                  if created is None or started <= created]
        if not owners:
            return None
        proc = max(owners, key=lambda pair: pair[0])[1]
        if id(proc) not in self._spaces:
            context, kernel_name, protect = self._args
            self._spaces[id(proc)] = ProcessCode(context, kernel_name, proc, protect) \
                if vadwalk.process_layer(proc) else None
        return self._spaces[id(proc)]


# --------------------------------------------------------------------------- options


def choice(choices: Sequence[str]) -> type:
    """A str type accepting only ``choices`` (case-insensitively), as a ``ListRequirement``'s
    element type: argparse calls it on each value, so an unknown one fails at the command line
    (usage and one error line, exit status 2, as for a ``ChoiceRequirement``, which takes a
    single value)."""
    class Choice(str):
        def __new__(cls, value: str):
            if value.lower() not in choices:
                raise argparse.ArgumentTypeError(f"unknown value {value!r} (choose from {', '.join(choices)})")
            return super().__new__(cls, value.lower())
    return Choice


# --------------------------------------------------------------------------- plugin


class Timeline(interfaces.plugins.PluginInterface, timeliner.TimeLinerInterface):
    """Exact timeline of processes, threads, sockets and carved event-log records."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 3, 0)   # 1.1: ThreadStarts.provide, ProcessCode(vads=, candidates=), eventlog_events, Event.peer;
    # 1.1.1: pool-scanned processes on the kernel layer (Windows 10); 1.2: find_processes,
    # thread_events, network_events take pools= (one pool scan for every kind: poolscan.py);
    # 1.3: XP's network events (xp_network_events, spyeye.xpnet), XP thread create times

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return vadwalk.kernel_requirements() + [
            requirements.VersionRequirement(name="psscan", component=psscan.PsScan, version=(2, 0, 0)),
            requirements.VersionRequirement(name="threads", component=threads.Threads, version=(3, 0, 0)),
            requirements.VersionRequirement(name="thrdscan", component=thrdscan.ThrdScan, version=(2, 0, 0)),
            requirements.VersionRequirement(name="netscan", component=netscan.NetScan, version=(2, 0, 0)),
            requirements.VersionRequirement(name="poolscanner", component=poolscanner.PoolScanner,
                                            version=(3, 0, 0)),
            requirements.VersionRequirement(name="timeliner", component=timeliner.TimeLinerInterface,
                                            version=(1, 0, 0)),
            requirements.VersionRequirement(name="info", component=info.Info, version=(2, 0, 0)),
            requirements.VersionRequirement(name="injected", component=injected.InjectedImages,
                                            version=(1, 0, 0)),
            requirements.VersionRequirement(name="xpnet", component=xpnet.XpNet, version=(1, 1, 0)),
            requirements.ListRequirement(name="source", element_type=choice(SOURCES), optional=True,
                                         description=f"Sources to include: {', '.join(SOURCES)} (default all)"),
            requirements.StringRequirement(name="after", optional=True,
                                           description="Only events at or after this ISO 8601 time (UTC if no zone)"),
            requirements.StringRequirement(name="before", optional=True,
                                           description="Only events at or before this ISO 8601 time"),
            *vadwalk.process_filter_requirements(),
            requirements.BooleanRequirement(name="correlate", default=False, optional=True,
                                            description="Show correlation flags instead of the timeline"),
            requirements.IntRequirement(name="window", default=10, optional=True,
                                        description="Seconds after a process start in which a connection is flagged"),
            requirements.IntRequirement(name="burst", default=BURST, optional=True,
                                        description="Threads in one process that make a burst"),
            requirements.IntRequirement(name="burst_window", default=BURST_WINDOW, optional=True,
                                        description="Seconds in which --burst threads make a burst"),
            requirements.IntRequirement(name="startup", default=STARTUP, optional=True,
                                        description="Seconds after a process start whose threads are "
                                                    "its start-up, not a burst"),
            requirements.StringRequirement(name="body_file", optional=True,
                                           description="Also write a mactime body file with this name"),
        ]

    # --- processes ------------------------------------------------------------
    @classmethod
    def find_processes(cls, context: interfaces.context.ContextInterface, kernel_name: str,
                       pools: Optional[poolscan.PoolObjects] = None) -> Tuple[List, List]:
        """(active-list processes, pool-scanned processes), each walk run once (the pool scan's
        processes from ``pools`` when given)."""
        found: Tuple[List, List] = ([], [])
        scan = (lambda *_: pools.get("process")) if pools else psscan.PsScan.scan_processes
        walks = (("pslist", pslist.PsList.list_processes), ("psscan", scan))
        for (origin, walk), out in zip(walks, found):
            try:
                out.extend(walk(context, kernel_name))
            except exceptions.InvalidAddressException as exc:
                vollog.warning("%s stopped early: %s", origin, exc)
        return found

    @classmethod
    def process_events(cls, context: interfaces.context.ContextInterface, kernel_name: str,
                       listed: Sequence, scanned: Sequence) -> List[Event]:
        """Created/exited events of every process in the active list or pool,
        one per process object (keyed by PID and raw create time)."""
        merged: Dict[Tuple[int, int], Dict] = {}
        layer = context.layers[context.modules[kernel_name].layer_name]
        for origin, procs in (("pslist", listed), ("psscan", scanned)):
            for proc in procs:
                cls._note_process(merged, proc, origin, _physical_offset(layer, proc))
        events = []
        for info in merged.values():
            provenance = _merge_provenance("pslist", "psscan", info["seen"], bool(info["exit"]))
            detail = f"PPID {info['ppid']}, EPROCESS at physical {info['offset'] or 0:#x}"
            for action, when in (("created", info["create"]), ("exited", info["exit"])):
                if when:
                    events.append(Event(when, "process", action, info["pid"], info["name"], detail, provenance))
        return events

    @staticmethod
    def _note_process(merged: Dict, proc, origin: str, physical: Optional[int]) -> None:
        try:
            pid, ppid = int(proc.UniqueProcessId), int(proc.InheritedFromUniqueProcessId)
            create, exit_ = int(proc.CreateTime.QuadPart), int(proc.ExitTime.QuadPart)
        except exceptions.InvalidAddressException:
            return
        info = merged.setdefault((pid, create), {
            "pid": pid, "ppid": ppid, "name": vadwalk.process_name(proc), "create": filetime(create),
            "exit": filetime(exit_), "offset": physical, "seen": set()})
        info["seen"].add(origin)

    # --- threads ----------------------------------------------------------------
    @classmethod
    def thread_events(cls, context: interfaces.context.ContextInterface, kernel_name: str,
                      listed: Sequence, owner: Callable[[int, datetime], Optional[str]],
                      starts: Optional["ThreadStarts"] = None,
                      pools: Optional[poolscan.PoolObjects] = None) -> List[Event]:
        """Created/exited events of threads in the ``listed`` processes' thread
        lists or in the pool (``pools``' threads when given); ``owner(pid, created)`` names the
        process; ``starts`` tells where start addresses lie (ntdll's thread-start thunk, injected code)."""
        merged: Dict[Tuple[int, int], Dict] = {}
        for proc in listed:
            try:
                for thread in threads.Threads.list_threads(context, kernel_name, proc):
                    cls._note_thread(merged, thread, "threads")
            except exceptions.InvalidAddressException as exc:
                vollog.warning("thread list of PID %s stopped early: %s", proc.UniqueProcessId, exc)
        try:
            for thread in pools.get("thread") if pools else thrdscan.ThrdScan.scan_threads(context, kernel_name):
                cls._note_thread(merged, thread, "thrdscan")
        except exceptions.InvalidAddressException as exc:
            vollog.warning("thrdscan stopped early: %s", exc)
        events = []
        for info in merged.values():
            provenance = _merge_provenance("threads", "thrdscan", info["seen"], bool(info["exit"]))
            space = starts.space(info["pid"], info["create"]) if starts else None
            detail = _thread_detail(info["tid"], info["start"], info["win32"], space)
            start_in = space.thread_start(info["start"], info["win32"]) if space else None
            flags = (("injected-thread-start",
                      f"starts in {start_in[0]}" + (f" at {start_in[1]}" if start_in[1] else "")),) if start_in else ()
            for action, when in (("created", info["create"]), ("exited", info["exit"])):
                if when:
                    events.append(Event(when, "thread", action, info["pid"],
                                        owner(info["pid"], info["create"]), detail, provenance,
                                        flags=flags, start_in=start_in))
        return events

    @staticmethod
    def _note_thread(merged: Dict, thread, origin: str) -> None:
        try:
            pid, tid = int(thread.Cid.UniqueProcess), int(thread.Cid.UniqueThread)
            create, exit_ = thread_created(thread), int(thread.ExitTime.QuadPart)
            start, win32 = int(thread.StartAddress), int(thread.Win32StartAddress)
        except exceptions.InvalidAddressException:
            return
        if pid == 0 or pid % 4 or pid > 0xFFFFFFFC or not create:
            return
        info = merged.setdefault((tid, create), {
            "pid": pid, "tid": tid, "create": filetime(create), "exit": filetime(exit_),
            "start": start, "win32": win32, "seen": set()})
        info["seen"].add(origin)

    # --- network ----------------------------------------------------------------
    @classmethod
    def network_events(cls, context: interfaces.context.ContextInterface, kernel_name: str,
                       config_path: str, names: Dict[int, str],
                       pools: Optional[poolscan.PoolObjects] = None) -> List[Event]:
        """Connected/listening events of the TCP/UDP objects netscan finds (``pools``' when given;
        on Windows XP, the TCPT/TCPA objects ``spyeye.xpnet`` finds)."""
        if xpnet.XpNet.os_problem(context, kernel_name) is None:
            return cls.xp_network_events(context, kernel_name, config_path, names)
        if pools:
            return [event for obj in pools.get(poolscan.NETWORK) for event in cls._socket_events(obj, names)]
        try:
            table = netscan.NetScan.create_netscan_symbol_table(context, kernel_name, config_path)
        except (NotImplementedError, ValueError, exceptions.VolatilityException) as exc:
            vollog.warning("no network symbols for this kernel (%s): network events skipped", exc)
            return []
        events = []
        # one pass per pool tag: the scanner's regex for several tags without a
        # common prefix is an order of magnitude slower than one literal each
        for constraint in netscan.NetScan.create_netscan_constraints(context, table):
            try:
                for _, obj, _ in poolscanner.PoolScanner.generate_pool_scan(context, kernel_name, [constraint]):
                    events.extend(cls._socket_events(obj, names))
            except exceptions.InvalidAddressException as exc:
                vollog.warning("netscan (%r) stopped early: %s", constraint.tag, exc)
        return events

    @staticmethod
    def xp_network_events(context: interfaces.context.ContextInterface, kernel_name: str,
                          config_path: str, names: Dict[int, str]) -> List[Event]:
        """XP: a connection at the time of the socket it was made through, other sockets
        listening from their creation; a connection no socket dates is left out, with a warning."""
        found = []
        try:
            found.extend(obj for _, obj in xpnet.XpNet.scan(context, kernel_name, config_path))
        except exceptions.InvalidAddressException as exc:
            vollog.warning("the XP network pool scan stopped early (%s): later connections are missing", exc)
        bound = xp_network.bound_sockets(found)
        dating = set(bound.values())
        events = []
        for obj in found:
            where = f"xpnet (pool scan) {'freed ' if obj.freed else ''}{obj.kind} @ {obj.offset:#x}"
            if obj.kind == "socket" and obj not in dating:
                state = " LISTENING" if obj.proto == "TCP" else ""
                events.append(Event(obj.created, "network", "listening", obj.pid, names.get(obj.pid),
                                    f"{obj.proto}v4 {obj.local_addr}:{obj.local_port}{state}", where))
            elif obj in bound:
                socket = bound[obj]
                events.append(Event(
                    socket.created, "network", "connected", obj.pid, names.get(obj.pid),
                    f"TCPv4 {obj.local_addr}:{obj.local_port} -> {obj.remote_addr}:{obj.remote_port}"
                    f"{' CLOSED' if obj.freed else ''}", f"{where}, time of its socket @ {socket.offset:#x}",
                    peer=(obj.remote_addr, obj.remote_port)))
        undated = sum(1 for obj in found if obj.kind == "connection" and obj not in bound)
        if undated:
            vollog.warning("%d XP connection(s) have no socket to date them: not in the timeline "
                           "(spyeye.xpnet lists them)", undated)
        return events

    @staticmethod
    def _socket_events(obj, names: Dict[int, str]) -> List[Event]:
        try:
            if not obj.is_valid() or obj.get_create_time() is None:
                return []
            when = filetime(obj.CreateTime.QuadPart)
            if when is None:
                return []
            pid = obj.get_owner_pid()
            pid = None if pid is None else int(pid)
            process = obj.get_owner_procname() or names.get(pid)
            where = f"netscan (pool scan) @ {obj.vol.offset:#x}"
            if isinstance(obj, network._TCP_ENDPOINT):
                family = {network.AF_INET: "v4", network.AF_INET6: "v6"}.get(obj.get_address_family(), "?")
                try:
                    state = obj.State.description
                except ValueError:
                    state = "state unreadable"
                detail = (f"TCP{family} {obj.get_local_address()}:{obj.LocalPort} -> "
                          f"{obj.get_remote_address()}:{obj.RemotePort} {state}")
                return [Event(when, "network", "connected", pid, process, detail, where,
                              peer=(str(obj.get_remote_address()), int(obj.RemotePort)))]
            proto = "UDP" if isinstance(obj, network._UDP_ENDPOINT) else "TCP"
            state = "" if proto == "UDP" else " LISTENING"
            return [Event(when, "network", "listening", pid, process,
                          f"{proto}{ver} {laddr}:{obj.Port}{state}", where)
                    for ver, laddr, _ in obj.dual_stack_sockets()]
        except exceptions.InvalidAddressException:
            return []

    # --- event logs -------------------------------------------------------------
    @classmethod
    def carve_event_logs(cls, context: interfaces.context.ContextInterface, kernel_name: str,
                         procs: Sequence, scan_physical: bool = True,
                         progress: Optional[Callable] = None) -> List[Found]:
        """EVTX/EVT records in the processes' VADs and (``scan_physical``) in
        physical memory no scanned VAD explains.  The physical pass runs first and
        tells which frames hold a record magic: VADs mapping none are not read."""
        kernel = context.modules[kernel_name]
        physical = context.layers[context.layers[kernel.layer_name].config["memory_layer"]]
        frames: Set[int] = set()
        loose = cls.carve_physical(physical, frames, scan_physical, progress)
        found, mapped = cls._carve_processes(context, kernel_name, procs, frames, progress)
        freed = [f for f in loose if f.physical not in mapped]
        for item in freed:
            item.where = f"physical {item.physical:#x}, no process maps it (freed or kernel memory)"
        return found + freed

    @staticmethod
    def carve_physical(layer, frames: Set[int], report: bool = True,
                       progress: Optional[Callable] = None) -> List[Found]:
        """One pass over a physical layer: adds every frame holding a record magic
        to ``frames`` and (``report``) returns the records there."""
        windows = _noting_frames(layer, frames, progress)
        if not report:
            for _ in windows:  # only the frames are wanted
                pass
            return []
        return [Found(record, record.offset, where=f"physical {record.offset:#x}")
                for record in carve_windows(windows)]

    @classmethod
    def _carve_processes(cls, context, kernel_name: str, procs: Sequence, frames: Set[int],
                         progress) -> Tuple[List[Found], Set[int]]:
        protect = vadwalk.protection_values(context, kernel_name)
        found: List[Found] = []
        mapped: Set[int] = set()
        for index, proc in enumerate(procs):
            pid, name = int(proc.UniqueProcessId), vadwalk.process_name(proc)
            try:
                layer = context.layers[proc.add_process_layer()]
            except (exceptions.InvalidAddressException, TypeError):
                vollog.debug("PID %d: no readable address space", pid)
                continue
            if progress:
                progress(50.0 + 50.0 * index / max(len(procs), 1), f"Carving event-log records in PID {pid}")
            for facts in vadwalk.process_vads(proc, protect):
                start, end = facts.scan_start, facts.scan_end
                if not frames.intersection(_mapped_frames(layer, start, end)):
                    continue
                chunks = vadwalk.read_chunks(layer, start, end, WINDOW, OVERLAP)
                for record in carve_windows(chunks):
                    pa = _translate(layer, record.offset)
                    if pa in mapped:
                        continue
                    if pa is not None:
                        mapped.add(pa)
                    file_name = f" {facts.file.rsplit(chr(92), 1)[-1]}" if facts.file else ""
                    found.append(Found(record, pa, pid, name,
                                       f"PID {pid}{file_name} @ {record.offset:#x}", facts.file))
        return found, mapped

    @staticmethod
    def record_event(found: Found) -> Optional[Event]:
        """The timeline row of a carved record (None when it has no time).  PID and Process
        stay empty: the process whose memory held a record did not log it (that is in the
        provenance)."""
        record = found.record
        holder = None if found.pid is None else (found.pid, found.process or "")
        if isinstance(record, eventlog.EvtRecord):
            when = next((t for t in (record.time_generated, record.time_written) if t.timestamp() > 0), None)
            if when is None:
                return None                     # TimeGenerated and TimeWritten both 0
            detail = (f"{record.source_name} {record.event_id} (record {record.record_id}, EVT) on "
                      f"{record.computer or '?'}{_values((None, s) for s in record.strings)}")
            return Event(when, "eventlog", "logged", None, None, detail, f"evt record in {found.where}",
                         computer=record.computer or None, found_in=holder)
        if record.time is None:
            return None
        what = record.channel or "(channel unknown)"
        event_id = "?" if record.event_id is None else record.event_id
        detail = (f"{what} {event_id} (record {record.record_id}, {record.provider or 'provider unknown'})"
                  f" on {record.computer or '?'}{_values(record.fields())}")
        kind = "evtx chunk" if record.source == "evtx-chunk" else "evtx record"
        return Event(record.time, "eventlog", "logged", None, None, detail, f"{kind} in {found.where}",
                     computer=record.computer, found_in=holder)

    # --- correlation ------------------------------------------------------------
    @staticmethod
    def correlate(events: Sequence[Event], window: float, burst: int, burst_window: float,
                  startup: float = 0) -> List[Flag]:
        """(a) connections soon after another process started, (b) thread bursts after
        the start-up, (c) events of processes that had already exited, (d) threads that
        start in injected code, (e) rows whose time or computer cannot be right."""
        flags = (_connect_after_start(events, window) + _thread_bursts(events, burst, burst_window, startup)
                 + _after_exit(events) + _injected_starts(events) + _impossible(events))
        return sorted(flags, key=lambda f: (f.time, f.rule, f.pid or 0, f.detail))

    # --- time and machine checks ----------------------------------------------------
    @classmethod
    def capture_time(cls, context: interfaces.context.ContextInterface, kernel_name: str) -> Optional[datetime]:
        """When the image was taken: ``_KUSER_SHARED_DATA.SystemTime`` (None if unreadable)."""
        try:
            system_time = info.Info.get_kuser_structure(context, kernel_name).SystemTime
            return filetime((int(system_time.High1Time) << 32) | int(system_time.LowPart))
        except (exceptions.InvalidAddressException, exceptions.SymbolError, AttributeError, TypeError) as exc:
            vollog.warning("capture time unreadable (%s): rows are not checked against it", exc)
            return None

    @classmethod
    def boot_time(cls, context: interfaces.context.ContextInterface, kernel_name: str,
                  listed: Sequence) -> Optional[datetime]:
        """When the system booted: the System process's create time, or (where the kernel
        leaves that 0) the creation of System's first thread."""
        system = next((p for p in listed if int(p.UniqueProcessId) == 4), None)
        if system is None:
            return None
        try:
            created = filetime(system.CreateTime.QuadPart)
            if created is None:
                system_threads = threads.Threads.list_threads(context, kernel_name, system)
                created = min(filter(None, (filetime(thread_created(t)) for t in system_threads)), default=None)
        except exceptions.InvalidAddressException:
            return None
        return created

    @staticmethod
    def check_times(events: Sequence[Event], capture: Optional[datetime],
                    boot: Optional[datetime]) -> List[Event]:
        """Flag rows dated after the capture, and process, thread and socket rows dated
        before the boot (event logs keep records of earlier boots: those are normal)."""
        out = []
        for event in events:
            if capture and event.time > capture:
                event = event.flagged("after-capture", f"after the capture time (+{_span(event.time - capture)})")
            elif boot and event.time < boot and event.source != "eventlog":
                event = event.flagged("before-boot", f"before the boot (-{_span(boot - event.time)})")
            out.append(event)
        return out

    # --- configuration ----------------------------------------------------------
    def _bound(self, name: str) -> Optional[datetime]:
        text = self.config.get(name)
        if not text:
            return None
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise UsageError(f"--{name} {text!r} is not an ISO 8601 time "
                             "(e.g. 2011-11-27T10:00:05 or 2011-11-27T10:00:05+09:00)") from exc
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)

    def _keep(self, event: Event, after: Optional[datetime], before: Optional[datetime]) -> bool:
        """Inside the time bounds, and of the ``--pid``/``--name`` processes (a carved record
        by the process whose memory held it)."""
        pids = self.config.get("pid") or []
        names = {n.lower() for n in self.config.get("name") or []}
        pid, process = event.found_in or (event.pid, event.process)
        return not ((after and event.time < after) or (before and event.time > before)
                    or (pids and pid not in pids)
                    or (names and (process or "").lower() not in names))

    # --- gathering ----------------------------------------------------------------
    def collect(self, sources: Sequence[str]) -> List[Event]:
        """Every event of ``sources``, unfiltered and unsorted, with their flags."""
        kernel = self.config["kernel"]
        kinds = ["process"] + [kind for source, kind in (("thread", "thread"), ("network", poolscan.NETWORK))
                               if source in sources]
        pools = poolscan.PoolObjects(self.context, kernel, kinds, self.config_path, self._progress_callback)
        listed, scanned = self.find_processes(self.context, kernel, pools)
        events = self.process_events(self.context, kernel, listed, scanned)
        names = {int(p.UniqueProcessId): vadwalk.process_name(p) for p in [*scanned, *listed]}
        readable = self.readable_processes(self.context, kernel, listed, scanned) \
            if {"thread", "eventlog"} & set(sources) else []
        if "thread" in sources:
            events += self.thread_events(self.context, kernel, listed, process_at(events, names),
                                         ThreadStarts(self.context, kernel, readable), pools)
        if "network" in sources:
            events += self.network_events(self.context, kernel, self.config_path, names, pools)
        if "eventlog" in sources:
            events += self._eventlog_events(readable)
        return self.check_times([e for e in events if e.source in sources],
                                self.capture_time(self.context, kernel),
                                self.boot_time(self.context, kernel, listed))

    def _eventlog_events(self, readable: Sequence) -> List[Event]:
        """Rows of the records carved from ``readable`` processes (those ``--pid``/``--name``
        select) and from physical memory; those another computer logged are flagged."""
        narrowed = bool(self.config.get("pid") or self.config.get("name"))
        return self.eventlog_events(self.context, self.config["kernel"], readable,
                                    self._carving_processes(readable), not narrowed, self._progress_callback)

    @classmethod
    def eventlog_events(cls, context: interfaces.context.ContextInterface, kernel_name: str, readable: Sequence,
                        procs: Sequence, scan_physical: bool = True,
                        progress: Optional[Callable] = None) -> List[Event]:
        """Rows of the records carved from ``procs`` and (``scan_physical``) physical memory;
        those a computer other than this one (told from ``readable``) logged are flagged."""
        found = cls.carve_event_logs(context, kernel_name, procs, scan_physical, progress)
        machine = this_computer(readable, found)
        if machine is None and found:
            vollog.warning("this machine's name cannot be told from the event logs: Computer not checked")
        reported: Set[Tuple] = set()
        events = []
        for item in found:
            _log_warnings(item, reported)
            event = cls.record_event(item)
            if event is None:
                continue
            if machine and event.computer and not same_computer(event.computer, machine):
                event = event.flagged("other-computer", f"logged on {event.computer}, not on this machine ({machine})")
            events.append(event)
        return events

    @classmethod
    def readable_processes(cls, context: interfaces.context.ContextInterface, kernel_name: str,
                           listed: Sequence, scanned: Sequence) -> List:
        """Linked processes, plus pool-only ones whose kernel address can be recovered
        (their memory can still be read: VADs, records, where their threads started)."""
        procs = list(listed)
        known = {(int(p.UniqueProcessId), int(p.CreateTime.QuadPart)) for p in procs}
        for proc in scanned:
            try:
                if (int(proc.UniqueProcessId), int(proc.CreateTime.QuadPart)) in known:
                    continue
                virtual = _virtual_process(context, kernel_name, proc)
            except exceptions.InvalidAddressException:
                continue
            if virtual is not None:
                procs.append(virtual)
        return procs

    def _carving_processes(self, procs: Sequence) -> List:
        """The readable processes ``--pid``/``--name`` select."""
        wanted = set(self.config.get("pid") or [])
        drop = vadwalk.name_filter(self.config.get("name"))
        return [p for p in procs if (not wanted or int(p.UniqueProcessId) in wanted) and not drop(p)]

    # --- output -------------------------------------------------------------------
    def _rows(self, events: List[Event]) -> Iterator[Tuple[int, Tuple]]:
        if not self.config.get("correlate"):
            for event in events:
                yield 0, event.values()
            return
        flags = self.correlate(events, self.config.get("window", 10), self.config.get("burst", BURST),
                               self.config.get("burst_window", BURST_WINDOW), self.config.get("startup", STARTUP))
        for flag in flags:
            yield 0, (flag.time, "correlation", flag.rule, vadwalk.optional(flag.pid),
                      vadwalk.optional(flag.process), text_cell(flag.detail), "",
                      f"rests on {len(flag.basis)} row{'s' if len(flag.basis) != 1 else ''}")
            for event in flag.basis:
                yield 1, event.values()

    def _write_body(self, events: Sequence[Event]) -> None:
        lines = []
        for event in events:
            times = [str(int(event.time.timestamp()))] * 4   # as Volatility 2's body output: mactime
            # lists a 0 time as an undated entry, so every time field carries the event's time
            flags = f" [{event.flag_text()}]" if event.flags else ""
            name = (f"[{event.source} {event.action}] {event.time.isoformat()} PID "
                    f"{'-' if event.pid is None else event.pid} {event.process or ''} {event.detail}{flags} "
                    f"({event.provenance})")
            name = " ".join(name.split()).replace("|", "/")    # one line: log strings hold CR/LF
            lines.append("|".join(["0", name, "0", "0", "0", "0", "0", *times]) + "\n")
        with self.open(self.config["body_file"]) as handle:
            handle.write("".join(lines).encode("utf-8"))

    def _generator(self, sources: List[str], after, before) -> Iterator[Tuple[int, Tuple]]:
        events = sorted((e for e in self.collect(sources) if self._keep(e, after, before)),
                        key=Event.sort_key)
        if self.config.get("body_file"):
            self._write_body(events)
        yield from self._rows(events)

    def generate_timeline(self) -> Iterator[Tuple[str, timeliner.TimeLinerType, datetime]]:
        """Event-log records for stock ``timeliner`` (its other sources it has)."""
        kernel = self.config["kernel"]
        readable = self.readable_processes(self.context, kernel, *self.find_processes(self.context, kernel))
        for event in sorted(self._eventlog_events(readable), key=Event.sort_key):
            yield (f"EventLog: {event.detail} [{event.provenance}]", timeliner.TimeLinerType.CREATED,
                   event.time)

    def run(self) -> renderers.TreeGrid:
        """Bad options raise ``UsageError`` here, before any row (one line, exit status 1);
        an unknown ``--source`` only gets here through the Python API (Volatility does not
        check optional requirements; the command line rejects it)."""
        columns = [("Time", datetime), ("Source", str), ("Action", str), ("PID", int),
                   ("Process", str), ("Detail", str), ("Flags", str), ("Provenance", str)]
        wanted = {s.lower() for s in self.config.get("source") or SOURCES}
        if wanted - set(SOURCES):
            raise UsageError(f"unknown --source {', '.join(sorted(wanted - set(SOURCES)))} "
                             f"(choose from {', '.join(SOURCES)})")
        sources = [s for s in SOURCES if s in wanted]
        after, before = self._bound("after"), self._bound("before")
        if after and before and after > before:
            raise UsageError(f"--after {after.isoformat()} is later than --before {before.isoformat()}")
        vadwalk.check_selection(self.context, self.config["kernel"], self.config.get("pid"), self.config.get("name"),
                                include_exited=True)
        return renderers.TreeGrid(columns, self._generator(sources, after, before))


# --------------------------------------------------------------------------- helpers


def _virtual_process(context, kernel_name: str, proc):
    """The kernel-virtual EPROCESS of a pool-scanned one, or None: itself when the
    scan ran on the kernel layer (Windows 10), else bounced from the physical one.

    psscan's own bounce goes through a thread, which an exited process lacks;
    an empty list head points at itself, which gives the address directly."""
    if proc.vol.layer_name == context.modules[kernel_name].layer_name:
        return proc
    try:
        found = psscan.PsScan.virtual_process_from_physical(context, kernel_name, proc)
        if found is not None:
            return found
    except exceptions.InvalidAddressException:
        pass  # the list head does not lead to a thread: try it as an empty list
    kernel = context.modules[kernel_name]
    layer = context.layers[kernel.layer_name]
    eprocess = kernel.get_type("_EPROCESS")
    for member in ("ThreadListHead", "ActiveProcessLinks"):
        candidate = int(proc.member(member).Flink) - eprocess.relative_child_offset(member)
        if _translate(layer, candidate) == proc.vol.offset:
            return kernel.object("_EPROCESS", offset=candidate, absolute=True)
    return None


def process_at(events: Sequence[Event], names: Dict[int, str]) -> Callable[[int, datetime], Optional[str]]:
    """``owner(pid, when)``: the name of the process with ``pid`` alive at ``when`` (PIDs are
    reused: an exited process and a later one may share one), else the last name seen for it."""
    lives: Dict[int, List[Tuple[datetime, Optional[datetime], Optional[str]]]] = {}
    for pid, group in _pid_index([e for e in events if e.source == "process"]).items():
        for start in (e for e in group if e.action == "created"):
            end = next((e.time for e in group if e.action == "exited" and e.detail == start.detail), None)
            lives.setdefault(pid, []).append((start.time, end, start.process))

    def owner(pid: int, when: datetime) -> Optional[str]:
        alive = [name for start, end, name in lives.get(pid, []) if start <= when and (end is None or when <= end)]
        return alive[-1] if alive else names.get(pid)
    return owner


def _pid_index(events: Sequence[Event]) -> Dict[int, List[Event]]:
    index: Dict[int, List[Event]] = {}
    for event in events:
        if event.pid is not None:
            index.setdefault(event.pid, []).append(event)
    return index


def _connect_after_start(events: Sequence[Event], window: float) -> List[Flag]:
    starts = sorted((e for e in events if e.source == "process" and e.action == "created"),
                    key=Event.sort_key)
    times = [e.time for e in starts]
    flags = []
    for conn in (e for e in events if e.source == "network" and e.action == "connected"):
        lo = bisect.bisect_left(times, conn.time - timedelta(seconds=window))
        hi = bisect.bisect_right(times, conn.time)
        for start in starts[lo:hi]:
            if conn.pid is None or start.pid == conn.pid:   # owner unknown: nothing to relate
                continue
            gap = (conn.time - start.time).total_seconds()
            flags.append(Flag(conn.time, "connect-after-start", conn.pid, conn.process,
                              f"{conn.process} ({conn.pid}) connected {gap:.3f} s after "
                              f"{start.process} ({start.pid}) started: {conn.detail}", [start, conn]))
    return flags


def _thread_bursts(events: Sequence[Event], burst: int, burst_window: float, startup: float = 0) -> List[Flag]:
    """At least ``burst`` threads of one process within ``burst_window`` seconds, not
    counting its start-up (threads created within ``startup`` seconds of its start)."""
    flags = []
    started = _starts(events)
    created = [e for e in events if e.source == "thread" and e.action == "created"
               and not _in_startup(e, started.get(e.pid, []), startup)]
    by_owner: Dict[Tuple[int, str], List[Event]] = {}
    for event in created:                   # a reused PID: bursts stay within one process
        by_owner.setdefault((event.pid, event.process or ""), []).append(event)
    for (pid, _), group in sorted(by_owner.items()):
        group.sort(key=Event.sort_key)
        for cluster in _clusters([e.time for e in group], burst, timedelta(seconds=burst_window)):
            basis = group[cluster[0]:cluster[1]]
            span = (basis[-1].time - basis[0].time).total_seconds()
            injected_starts = sum(1 for e in basis if e.start_in)
            note = f", {injected_starts} of them in injected code" if injected_starts else ""
            flags.append(Flag(basis[0].time, "thread-burst", pid, basis[0].process,
                              f"{len(basis)} threads created in {basis[0].process} ({pid}) within "
                              f"{span:.3f} s{note}", basis))
    return flags


def _starts(events: Sequence[Event]) -> Dict[int, List[datetime]]:
    """Create times of the processes of each PID."""
    starts: Dict[int, List[datetime]] = {}
    for event in events:
        if event.source == "process" and event.action == "created" and event.pid is not None:
            starts.setdefault(event.pid, []).append(event.time)
    return starts


def _in_startup(thread: Event, starts: Sequence[datetime], startup: float) -> bool:
    """Created within ``startup`` seconds after the start of its process (the latest
    process with its PID that had started by then)."""
    before = [t for t in starts if t <= thread.time]
    return bool(before) and (thread.time - max(before)).total_seconds() < startup


def _injected_starts(events: Sequence[Event]) -> List[Flag]:
    """One flag per process whose threads start in injected code or private memory."""
    by_owner: Dict[Tuple[int, str], List[Event]] = {}
    for event in events:
        if event.source == "thread" and event.action == "created" and event.start_in:
            by_owner.setdefault((event.pid, event.process or ""), []).append(event)
    flags = []
    for (pid, process), group in sorted(by_owner.items()):
        group.sort(key=Event.sort_key)
        regions: Dict[str, List[str]] = {}
        for event in group:
            region, symbol = event.start_in
            symbols = regions.setdefault(region, [])
            if symbol and symbol not in symbols:
                symbols.append(symbol)
        where = "; ".join(region + (f" at {', '.join(symbols)}" if symbols else "")
                          for region, symbols in regions.items())
        count = f"{len(group)} thread{'s' if len(group) > 1 else ''}"
        flags.append(Flag(group[0].time, "injected-thread-start", pid, process,
                          f"{count} of {process} ({pid}) start in injected code: {where}", group))
    return flags


def _impossible(events: Sequence[Event]) -> List[Flag]:
    """One flag per kind of row that cannot be right: dated after the capture, before the
    boot, or logged on another computer (one flag per computer)."""
    groups: Dict[Tuple[str, str], List[Event]] = {}
    for event in events:
        for rule, text in event.flags:
            if rule in IMPOSSIBLE:
                groups.setdefault((rule, IMPOSSIBLE[rule] or text), []).append(event)
    flags = []
    for (rule, what), basis in groups.items():
        basis.sort(key=Event.sort_key)
        rows = f"{len(basis)} row{'s' if len(basis) > 1 else ''}"
        flags.append(Flag(basis[0].time, rule, None, None, f"{rows} {what}", basis))
    return flags


def _span(delta: timedelta) -> str:
    """``2.750 s`` below a minute, ``2 days, 0:00:00.500000`` above."""
    seconds = delta.total_seconds()
    return f"{seconds:.3f} s" if seconds < 60 else str(delta)


def _clusters(times: Sequence[datetime], size: int, span: timedelta) -> List[Tuple[int, int]]:
    """Maximal index ranges covered by windows of ``span`` holding >= ``size`` times."""
    ranges: List[Tuple[int, int]] = []
    for lo in range(len(times)):
        hi = bisect.bisect_right(times, times[lo] + span)
        if hi - lo < size:
            continue
        if ranges and lo < ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], hi))
        else:
            ranges.append((lo, hi))
    return ranges


def _after_exit(events: Sequence[Event]) -> List[Flag]:
    lives: Dict[int, List[Tuple[datetime, Optional[datetime], Event]]] = {}
    for pid, group in _pid_index([e for e in events if e.source == "process"]).items():
        created = [e for e in group if e.action == "created"]
        for start in created:
            end = next((e for e in group if e.action == "exited" and e.detail == start.detail), None)
            lives.setdefault(pid, []).append((start.time, end.time if end else None, end or start))
    flags = []
    for event in events:
        # a carved record's PID is the process whose memory held it, not the one that logged it
        if event.source in ("process", "eventlog") or event.pid not in lives:
            continue
        spans = lives[event.pid]
        alive = any(start <= event.time and (end is None or event.time <= end) for start, end, _ in spans)
        ended = [(end, row) for start, end, row in spans if end is not None and end < event.time]
        if alive or not ended:
            continue
        end, row = max(ended, key=lambda pair: pair[0])
        gap = (event.time - end).total_seconds()
        flags.append(Flag(event.time, "after-exit", event.pid, event.process,
                          f"{event.source} {event.action} {gap:.3f} s after PID {event.pid} "
                          f"({row.process}) exited: {event.detail}", [row, event]))
    return flags
