"""``spyeye.timeline``: one exact timeline of processes, threads, sockets and
event-log records (EVTX and XP-style EVT carved from process and freed memory).

Processes and threads come from both the active lists and pool scans (stock
plugins, through their versioned classmethods), merged per object with their
provenance.  Times keep their sub-second part (Volatility's own conversion
drops it).  ``--correlate`` makes the article's by-eye findings explicit."""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

from volatility3.framework import exceptions, interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.symbols.windows.extensions import network
from volatility3.plugins import timeliner
from volatility3.plugins.windows import netscan, poolscanner, pslist, psscan, thrdscan, threads, vadinfo

from . import vadwalk
from .pageread import PageTableReader
from .parsers import eventlog

vollog = logging.getLogger(__name__)

SOURCES = ("process", "thread", "network", "eventlog")
WINDOW = 0x100000                          # bytes carved at a time
OVERLAP = eventlog.CHUNK_SIZE              # a chunk starting in a window is read whole
# Record magics (every non-empty EVTX chunk holds records), searched without their NUL
# bytes: bytes.find is slow on needles ending in NUL over zeroed pages.
MAGICS = ((b"**", b"\0\0"), (b"LfLe", b""))


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

    def sort_key(self) -> Tuple:
        return (self.time, SOURCES.index(self.source), -1 if self.pid is None else self.pid,
                self.action, self.detail, self.provenance)

    def values(self) -> Tuple:
        return (self.time, self.source, self.action, vadwalk.optional(self.pid),
                vadwalk.optional(self.process), self.detail, self.provenance)


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
    """Offsets of EVTX and EVT record magics in ``data`` (per magic, in order)."""
    for head, tail in MAGICS:
        pos = data.find(head)
        while pos >= 0:
            if data.startswith(tail, pos + len(head)):
                yield pos
            pos = data.find(head, pos + 1)


def _vad_ranges(proc) -> Iterator[Tuple[int, int, object]]:
    """(start, end, vad) of each VAD whose range can be read."""
    try:
        for vad in vadinfo.VadInfo.list_vads(proc):
            try:
                yield vad.get_start(), vad.get_end(), vad
            except exceptions.InvalidAddressException:
                vollog.debug("PID %s: unreadable VAD at %#x", proc.UniqueProcessId, vad.vol.offset)
    except (exceptions.InvalidAddressException, RuntimeError) as exc:
        vollog.warning("VAD tree of PID %s is damaged (%s); using what was read", proc.UniqueProcessId, exc)


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


# --------------------------------------------------------------------------- plugin


class Timeline(interfaces.plugins.PluginInterface, timeliner.TimeLinerInterface):
    """Exact timeline of processes, threads, sockets and carved event-log records."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

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
            requirements.ListRequirement(name="source", element_type=str, optional=True,
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
            requirements.IntRequirement(name="burst", default=5, optional=True,
                                        description="Threads in one process that make a burst"),
            requirements.IntRequirement(name="burst_window", default=1, optional=True,
                                        description="Seconds in which --burst threads make a burst"),
            requirements.StringRequirement(name="body_file", optional=True,
                                           description="Also write a mactime body file with this name"),
        ]

    # --- processes ------------------------------------------------------------
    @classmethod
    def find_processes(cls, context: interfaces.context.ContextInterface,
                       kernel_name: str) -> Tuple[List, List]:
        """(active-list processes, pool-scanned processes), each walk run once."""
        found: Tuple[List, List] = ([], [])
        walks = (("pslist", pslist.PsList.list_processes), ("psscan", psscan.PsScan.scan_processes))
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
        for proc in listed:
            cls._note_process(merged, proc, "pslist", _translate(layer, proc.vol.offset))
        for proc in scanned:
            cls._note_process(merged, proc, "psscan", proc.vol.offset)
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
                      listed: Sequence, owner: Callable[[int, datetime], Optional[str]]) -> List[Event]:
        """Created/exited events of threads in the ``listed`` processes' thread
        lists or in the pool; ``owner(pid, created)`` names the process."""
        merged: Dict[Tuple[int, int], Dict] = {}
        for proc in listed:
            try:
                for thread in threads.Threads.list_threads(context, kernel_name, proc):
                    cls._note_thread(merged, thread, "threads")
            except exceptions.InvalidAddressException as exc:
                vollog.warning("thread list of PID %s stopped early: %s", proc.UniqueProcessId, exc)
        try:
            for thread in thrdscan.ThrdScan.scan_threads(context, kernel_name):
                cls._note_thread(merged, thread, "thrdscan")
        except exceptions.InvalidAddressException as exc:
            vollog.warning("thrdscan stopped early: %s", exc)
        events = []
        for info in merged.values():
            provenance = _merge_provenance("threads", "thrdscan", info["seen"], bool(info["exit"]))
            detail = f"TID {info['tid']}, start {info['start']:#x}, Win32 start {info['win32']:#x}"
            for action, when in (("created", info["create"]), ("exited", info["exit"])):
                if when:
                    events.append(Event(when, "thread", action, info["pid"],
                                        owner(info["pid"], info["create"]), detail, provenance))
        return events

    @staticmethod
    def _note_thread(merged: Dict, thread, origin: str) -> None:
        try:
            pid, tid = int(thread.Cid.UniqueProcess), int(thread.Cid.UniqueThread)
            create, exit_ = int(thread.CreateTime.QuadPart), int(thread.ExitTime.QuadPart)
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
                       config_path: str, names: Dict[int, str]) -> List[Event]:
        """Connected/listening events of the TCP/UDP objects netscan finds."""
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
                return [Event(when, "network", "connected", pid, process, detail, where)]
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
            for start, end, vad in _vad_ranges(proc):
                if not frames.intersection(_mapped_frames(layer, start, end)):
                    continue
                facts = vadwalk.vad_facts(vad, protect)
                if facts is None:
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
                                       f"PID {pid}{file_name} @ {record.offset:#x}"))
        return found, mapped

    @staticmethod
    def record_event(found: Found) -> Optional[Event]:
        """The timeline row of a carved record (None when it has no time)."""
        record = found.record
        if isinstance(record, eventlog.EvtRecord):
            when = next((t for t in (record.time_generated, record.time_written) if t.timestamp() > 0), None)
            if when is None:
                return None                     # TimeGenerated and TimeWritten both 0
            detail = (f"{record.computer} {record.source_name} {record.event_id} (record "
                      f"{record.record_id}, EVT): {'; '.join(record.strings)}")
            return Event(when, "eventlog", "logged", found.pid, found.process,
                         detail, f"evt record in {found.where}")
        if record.time is None:
            return None
        what = record.channel or "(channel unknown)"
        event_id = "?" if record.event_id is None else record.event_id
        detail = (f"{what} {event_id} (record {record.record_id}, {record.provider or 'provider unknown'})"
                  f": {'; '.join(record.data)}")
        kind = "evtx chunk" if record.source == "evtx-chunk" else "evtx record"
        return Event(record.time, "eventlog", "logged", found.pid, found.process, detail,
                     f"{kind} in {found.where}")

    # --- correlation ------------------------------------------------------------
    @staticmethod
    def correlate(events: Sequence[Event], window: float, burst: int, burst_window: float) -> List[Flag]:
        """(a) connections soon after another process started, (b) thread bursts,
        (c) events of processes that had already exited."""
        flags = (_connect_after_start(events, window) + _thread_bursts(events, burst, burst_window)
                 + _after_exit(events))
        return sorted(flags, key=lambda f: (f.time, f.rule, f.pid or 0, f.detail))

    # --- configuration ----------------------------------------------------------
    def _sources(self) -> List[str]:
        wanted = [s.lower() for s in self.config.get("source") or SOURCES]
        unknown = sorted(set(wanted) - set(SOURCES))
        if unknown:
            raise ValueError(f"unknown --source {', '.join(unknown)} (choose from {', '.join(SOURCES)})")
        return wanted

    def _bound(self, name: str) -> Optional[datetime]:
        text = self.config.get(name)
        if not text:
            return None
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"--{name} {text!r} is not an ISO 8601 time") from exc
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)

    def _keep(self, event: Event, after: Optional[datetime], before: Optional[datetime]) -> bool:
        pids = self.config.get("pid") or []
        names = {n.lower() for n in self.config.get("name") or []}
        return not ((after and event.time < after) or (before and event.time > before)
                    or (pids and event.pid not in pids)
                    or (names and (event.process or "").lower() not in names))

    # --- gathering ----------------------------------------------------------------
    def collect(self, sources: Sequence[str]) -> List[Event]:
        """Every event of ``sources``, unfiltered and unsorted."""
        kernel = self.config["kernel"]
        listed, scanned = self.find_processes(self.context, kernel)
        events = self.process_events(self.context, kernel, listed, scanned)
        names = {int(p.UniqueProcessId): vadwalk.process_name(p) for p in [*scanned, *listed]}
        if "thread" in sources:
            events += self.thread_events(self.context, kernel, listed, process_at(events, names))
        if "network" in sources:
            events += self.network_events(self.context, kernel, self.config_path, names)
        if "eventlog" in sources:
            events += self._eventlog_events(listed, scanned)
        return [e for e in events if e.source in sources]

    def _eventlog_events(self, listed: Sequence, scanned: Sequence) -> List[Event]:
        kernel = self.config["kernel"]
        procs = self._carving_processes(listed, scanned)
        narrowed = bool(self.config.get("pid") or self.config.get("name"))
        found = self.carve_event_logs(self.context, kernel, procs, not narrowed, self._progress_callback)
        reported: Set[Tuple] = set()
        events = []
        for item in found:
            _log_warnings(item, reported)
            event = self.record_event(item)
            if event is not None:
                events.append(event)
        return events

    def _carving_processes(self, listed: Sequence, scanned: Sequence) -> List:
        """Linked processes, plus pool-only ones whose kernel address can be recovered."""
        kernel = self.config["kernel"]
        procs = list(listed)
        known = {(int(p.UniqueProcessId), int(p.CreateTime.QuadPart)) for p in procs}
        for proc in scanned:
            try:
                if (int(proc.UniqueProcessId), int(proc.CreateTime.QuadPart)) in known:
                    continue
                virtual = _virtual_process(self.context, kernel, proc)
            except exceptions.InvalidAddressException:
                continue
            if virtual is not None:
                procs.append(virtual)
        wanted = set(self.config.get("pid") or [])
        drop = vadwalk.name_filter(self.config.get("name"))
        return [p for p in procs if (not wanted or int(p.UniqueProcessId) in wanted) and not drop(p)]

    # --- output -------------------------------------------------------------------
    def _rows(self, events: List[Event]) -> Iterator[Tuple[int, Tuple]]:
        if not self.config.get("correlate"):
            for event in events:
                yield 0, event.values()
            return
        flags = self.correlate(events, self.config.get("window", 10), self.config.get("burst", 5),
                               self.config.get("burst_window", 1))
        for flag in flags:
            yield 0, (flag.time, "correlation", flag.rule, vadwalk.optional(flag.pid),
                      vadwalk.optional(flag.process), flag.detail, f"rests on {len(flag.basis)} rows")
            for event in flag.basis:
                yield 1, event.values()

    def _write_body(self, events: Sequence[Event]) -> None:
        lines = []
        for event in events:
            times = [str(int(event.time.timestamp()))] * 4   # as Volatility 2's body output: mactime
            # lists a 0 time as an undated entry, so every time field carries the event's time
            name = (f"[{event.source} {event.action}] {event.time.isoformat()} PID "
                    f"{'-' if event.pid is None else event.pid} {event.process or ''} {event.detail} "
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
        listed, scanned = self.find_processes(self.context, self.config["kernel"])
        for event in sorted(self._eventlog_events(listed, scanned), key=Event.sort_key):
            yield (f"EventLog: {event.detail} [{event.provenance}]", timeliner.TimeLinerType.CREATED,
                   event.time)

    def run(self) -> renderers.TreeGrid:
        columns = [("Time", datetime), ("Source", str), ("Action", str), ("PID", int),
                   ("Process", str), ("Detail", str), ("Provenance", str)]
        vadwalk.check_selection(self.context, self.config["kernel"], self.config.get("pid"), self.config.get("name"),
                                include_exited=True)
        try:
            sources = self._sources()
            after, before = self._bound("after"), self._bound("before")
        except ValueError as exc:
            vollog.error("%s", exc)
            return renderers.TreeGrid(columns, iter(()))
        return renderers.TreeGrid(columns, self._generator(sources, after, before))


# --------------------------------------------------------------------------- helpers


def _virtual_process(context, kernel_name: str, proc):
    """The kernel-virtual EPROCESS of a pool-scanned (physical) one, or None.

    psscan's own bounce goes through a thread, which an exited process lacks;
    an empty list head points at itself, which gives the address directly."""
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


def _thread_bursts(events: Sequence[Event], burst: int, burst_window: float) -> List[Flag]:
    flags = []
    created = [e for e in events if e.source == "thread" and e.action == "created"]
    by_owner: Dict[Tuple[int, str], List[Event]] = {}
    for event in created:                   # a reused PID: bursts stay within one process
        by_owner.setdefault((event.pid, event.process or ""), []).append(event)
    for (pid, _), group in sorted(by_owner.items()):
        group.sort(key=Event.sort_key)
        for cluster in _clusters([e.time for e in group], burst, timedelta(seconds=burst_window)):
            basis = group[cluster[0]:cluster[1]]
            span = (basis[-1].time - basis[0].time).total_seconds()
            flags.append(Flag(basis[0].time, "thread-burst", pid, basis[0].process,
                              f"{len(basis)} threads created in {basis[0].process} ({pid}) within "
                              f"{span:.3f} s", basis))
    return flags


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
