"""``spyeye.triage``: one command, a verdict per process with the suite's evidence joined.

The suite's analyses run once over the image through their versioned classmethods: one
process list, one VAD walk and one injected-candidate list per process, shared by
``spyeye.injected``, ``spyeye.apiscore``, ``spyeye.hooks``, ``spyeye.config`` and
``spyeye.timeline``'s correlation.  The parent row of each process carries the verdict
(``infected``, ``suspicious``, ``clean``, ``unknown`` when its memory cannot be read), a
0-100 score and the reasons; child rows are the evidence, each naming the plugin and row.
Unless ``--no-files``, the indicators (STIX 2.1 and CSV), the dumped injected images and an
HTML report go through the file handler (``-o DIR``); see ``docs/triage.md``."""
from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import os
import pickle
import re
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, TypeVar

from volatility3.framework import exceptions, interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints

from . import apiscore, config, hooks, injected, poolscan, report, timeline, vadsearch, vadwalk
from .output import UsageError, text_cell
from .report import Evidence, Finding, Indicator, Mark

vollog = logging.getLogger(__name__)
T = TypeVar("T")

# points per reason; a "strong" reason alone makes a process infected (docs/triage.md)
POINTS = {"spyeye image": 40, "injected image": 15, "resolver": 20, "hook into injected image": 30,
          "hook": 20, "weak hook": 5, "artifact": 30, "weak artifact": 10, "injected-thread-start": 20,
          "thread-burst": 5, "connect-after-start": 10, "after-exit": 10, "event-log record": 5}
STRONG = {"spyeye image", "hook into injected image", "artifact"}
RESOLVER_SCORE = 70          # spyeye.apiscore's score from which a region is a resolver
ARTIFACT_HIGH, ARTIFACT_MEDIUM = 70, 30
PROCESS_RULES = ("injected-thread-start", "thread-burst", "connect-after-start", "after-exit")
SUMMARY_FIELDS = ("bot_path", "install_dir", "mutex", "url", "hooked_func", "guid.raw", "bot_guid.raw", "name",
                  "set_url", "file_name")


@dataclass
class Space:
    """One process's memory as every analysis sees it: read once."""

    proc: object
    pid: int
    name: str
    layer_name: Optional[str]
    vads: List[vadwalk.VadFacts]
    candidates: List[injected.Candidate]

    @property
    def readable(self) -> bool:
        """Whether its memory could be read: an address space and, unless it is a kernel
        process (no PEB: System), some VAD."""
        if self.layer_name is None:
            return False
        try:
            return bool(self.vads) or not self.proc.Peb
        except exceptions.InvalidAddressException:
            return False


class Triage(interfaces.plugins.PluginInterface):
    """A verdict per process, with the suite's evidence joined, indicators and a report."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 1)   # 1.0.1: one pool scan for processes, threads, mutants and sockets
    _pools: Optional[poolscan.PoolObjects] = None     # set by run()

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return vadwalk.kernel_requirements() + [
            requirements.VersionRequirement(name="injected", component=injected.InjectedImages, version=(1, 2, 0)),
            requirements.VersionRequirement(name="apiscore", component=apiscore.ApiScore, version=(2, 1, 0)),
            requirements.VersionRequirement(name="hooks", component=hooks.Hooks, version=(1, 1, 0)),
            requirements.VersionRequirement(name="config", component=config.SpyEyeConfig, version=(1, 3, 0)),
            requirements.VersionRequirement(name="vadsearch", component=vadsearch.VadSearch, version=(1, 1, 0)),
            requirements.VersionRequirement(name="timeline", component=timeline.Timeline, version=(1, 2, 0)),
            *vadwalk.process_filter_requirements(),
            requirements.BooleanRequirement(name="no_files", default=False, optional=True,
                                            description="Write no indicators, images or report (rows only)"),
            requirements.IntRequirement(name="window", default=10, optional=True,
                                        description="Seconds after a process start in which a connection counts"),
            requirements.IntRequirement(name="jobs", default=1, optional=True,
                                        description="Processes to work in: 2 builds the timeline in a second "
                                                    "process beside the memory analyses (idle cores only)"),
        ]

    # --- the shared walk ---------------------------------------------------------------------------
    def _spaces(self, procs: Sequence, peers: hooks.PeerIndex, listed: Set[int], readable: Set[int],
                protect) -> List[Space]:
        spaces = []
        for index, proc in enumerate(procs):
            pid, name = int(proc.UniqueProcessId), vadwalk.process_name(proc)
            self._progress_callback(10.0 * index / max(len(procs), 1), f"Walking the VADs of PID {pid}")
            layer_name = vadwalk.process_layer(proc) if id(proc) in readable else None
            if layer_name is None:
                spaces.append(Space(proc, pid, name, None, [], []))
                continue
            vads = peers.vads(proc) if id(proc) in listed else list(vadwalk.process_vads(proc, protect))
            candidates = list(injected.InjectedImages.list_candidates(self.context, self.config["kernel"], proc,
                                                                      protect, all_exec=True, vads=vads))
            spaces.append(Space(proc, pid, name, layer_name, vads, candidates))
        return spaces

    # --- each analysis ----------------------------------------------------------------------------
    def _timeline(self, listed: Sequence, scanned: Sequence, readable: Sequence, spaces: Sequence[Space],
                  narrowed: bool, protect) -> Tuple[List[timeline.Event], List[timeline.Flag]]:
        kernel, T = self.config["kernel"], timeline.Timeline
        self._progress_callback(40.0, "Timeline: processes, threads, sockets")
        events = T.process_events(self.context, kernel, listed, scanned)
        names = {int(p.UniqueProcessId): vadwalk.process_name(p) for p in [*scanned, *listed]}
        starts = timeline.ThreadStarts(self.context, kernel, [s.proc for s in spaces if s.layer_name])
        for space in spaces:
            if space.layer_name:
                starts.provide(space.proc, timeline.ProcessCode(self.context, kernel, space.proc, protect,
                                                                space.vads, space.candidates))
        events += T.thread_events(self.context, kernel, listed, timeline.process_at(events, names), starts,
                                  self._pools)
        events += T.network_events(self.context, kernel, self.config_path, names, self._pools)
        self._progress_callback(50.0, "Timeline: event-log records")
        events += T.eventlog_events(self.context, kernel, readable, [s.proc for s in spaces if s.layer_name],
                                    not narrowed)
        events = T.check_times(events, T.capture_time(self.context, kernel), T.boot_time(self.context, kernel, listed))
        flags = T.correlate(events, self.config.get("window") or 10, timeline.BURST, timeline.BURST_WINDOW,
                            timeline.STARTUP)
        return events, flags

    def _artifacts(self, spaces: Sequence[Space]) -> Dict[int, List[config.Artifact]]:
        """spyeye.config's artifacts by ``id()`` of each process's space: every process's VADs
        in one stream (reading overlaps matching, as in ``spyeye.config``)."""
        patterns, _ = config.marker_patterns()
        found: Dict[int, List[config.Artifact]] = {}
        mutants: Optional[Dict[str, int]] = None
        readable = [s for s in spaces if s.layer_name]

        def vads():
            for index, space in enumerate(readable):
                self._progress_callback(20.0 + 20.0 * index / max(len(readable), 1),
                                        f"Decoding SpyEye artifacts in PID {space.pid}")
                layer = self.context.layers[space.layer_name]
                yield from ((id(space), layer, vad) for vad in space.vads)
        stream = vadsearch.VadSearch.scan_spaces(vads(), patterns)
        for (key, layer), group in itertools.groupby(stream, key=lambda item: (item[0], item[1])):
            hits = ((vad, address, hit) for _, _, vad, address, hit in group)
            for _, artifact in config.SpyEyeConfig.decode_hits(self.context, layer, hits):
                if artifact.kind == "mutex_name":
                    if mutants is None:
                        mutants = config.SpyEyeConfig.live_mutants(self.context, self.config["kernel"], self._pools)
                    config.confirm_mutex(artifact, mutants)
                found.setdefault(key, []).append(artifact)
        return found

    def _hooks(self, space: Space, peers: hooks.PeerIndex, protect) -> Tuple[List[hooks.Hook], hooks.ProcessView]:
        view = hooks.Hooks.process_view(self.context, self.config["kernel"], space.proc, protect,
                                        vads=space.vads, candidates=space.candidates)
        found = [h for h in hooks.Hooks.find_hooks(self.context, view, peers) if h.confidence != "low"]
        return sorted(found, key=lambda h: (h.module.name.lower(), h.address, h.kind)), view

    def _resolvers(self, space: Space) -> List[apiscore.Scored]:
        bits = apiscore.ApiScore.process_bits(self.context, self.config["kernel"], space.proc)
        scored = []
        for region in apiscore.ApiScore.candidate_regions(space.candidates):
            try:
                result = apiscore.ApiScore.score_region(self.context, region, bits)
            except exceptions.InvalidAddressException as exc:
                vollog.warning("PID %d region %#x unreadable: %s", space.pid, region.vad.start, exc)
                continue
            if (result.analysis.score or 0) >= RESOLVER_SCORE:      # None: nothing decoded
                scored.append(result)
        return scored

    # --- output ------------------------------------------------------------------------------------
    def _generator(self, listed: Sequence, scanned: Sequence, readable: Sequence, procs: Sequence):
        kernel = self.config["kernel"]
        narrowed = bool(self.config.get("pid") or self.config.get("name"))
        protect = vadwalk.protection_values(self.context, kernel)
        peers = hooks.PeerIndex(self.context, listed, protect)
        spaces = self._spaces(procs, peers, {id(p) for p in listed}, {id(p) for p in readable}, protect)
        timeline_result = self._beside(lambda: self._timeline(listed, scanned, readable, spaces, narrowed, protect))
        artifacts = self._artifacts(spaces)
        memory = []
        for index, space in enumerate(spaces):
            self._progress_callback(70.0 + 25.0 * index / max(len(spaces), 1), f"Hooks and resolvers in PID {space.pid}")
            found_hooks, view, resolvers = [], None, []
            if space.layer_name:
                found_hooks, view = self._hooks(space, peers, protect)
                resolvers = self._resolvers(space)
            memory.append((space, artifacts.get(id(space), []), found_hooks, view, resolvers))
        events, flags = timeline_result()
        infos = _process_infos(events)
        counts = collections.Counter(s.name.lower() for s in spaces)
        ambiguous = {name for name, count in counts.items() if count > 1}
        joined: List[Tuple[Finding, Space, List[config.Artifact]]] = []
        for space, found, found_hooks, view, resolvers in memory:
            info = infos.get((space.pid, _created(space.proc)), {"ppid": None, "created": None, "exited": None})
            scored = _memory_reasons(space, found, found_hooks, view, resolvers)
            scored += _timeline_reasons(_flags_of(flags, space.pid), _records_naming(events, space, ambiguous))
            finding = _verdict(space, info, scored)
            if finding.score:
                finding.evidence += [Evidence("timeline", "spyeye.timeline", "connection", text_cell(e.detail),
                                              time=e.time) for e in _connections(events, space.pid)]
                finding.evidence.sort(key=lambda e: report.STAGES.index(e.stage))
            joined.append((finding, space, found))
            yield from _rows(finding)
        if not self.config.get("no_files"):
            self._progress_callback(95.0, "Writing the indicators and the report")
            self._write_files(joined, events, flags)

    def _beside(self, work: Callable[[], T]) -> Callable[[], T]:
        """Run ``work`` in a forked child process while this one goes on (``--jobs 2``, where
        ``os.fork`` exists); the returned function waits for its result.  The child reopens the
        image file (a shared file offset would mix the two processes' reads)."""
        if (self.config.get("jobs") or 1) < 2 or not hasattr(os, "fork"):
            result = work()
            return lambda: result
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:                                       # pragma: no cover (runs in the child)
            status = 1
            try:
                os.close(read_end)
                _reopen_files(self.context)
                self._progress_callback = lambda *_: None
                data = pickle.dumps(work())
                with os.fdopen(write_end, "wb") as out:
                    out.write(data)
                status = 0
            except BaseException:                            # noqa: BLE001  (reported, then the parent redoes it)
                traceback.print_exc()
            finally:
                os._exit(status)
        os.close(write_end)

        def wait() -> T:
            with os.fdopen(read_end, "rb") as inp:
                data = inp.read()
            _, status = os.waitpid(child, 0)
            if status == 0 and data:
                return pickle.loads(data)
            vollog.warning("the timeline's process failed (status %#x): doing its work here", status)
            return work()
        return wait

    def _write_files(self, joined: List[Tuple[Finding, Space, List[config.Artifact]]],
                     events: List[timeline.Event], flags: List[timeline.Flag]) -> None:
        capture = timeline.Timeline.capture_time(self.context, self.config["kernel"])
        indicators: List[Indicator] = []
        for finding, space, artifacts in joined:
            if finding.verdict not in ("infected", "suspicious"):
                continue
            indicators += connection_indicators(_connections(events, finding.pid), finding.pid, finding.name)
            indicators += artifact_indicators(artifacts, finding.pid, finding.name)
            indicators += self._dump_images(space)
        indicators = list(dict.fromkeys(indicators))
        findings = [finding for finding, _, _ in joined]
        self._write("triage.iocs.csv", report.indicators_csv(indicators).encode())
        absent = report.missing()
        if "stix2" in absent:
            vollog.warning("no STIX bundle written: the stix2 library is missing (pip install spyeye-plugins[report])")
        else:
            observed = capture or datetime.now(timezone.utc)
            self._write("triage.stix.json", report.stix_bundle(indicators, observed, "spyeye.triage").encode())
        svg = None
        if "matplotlib" in absent:
            vollog.warning("no timeline picture: matplotlib is missing (pip install spyeye-plugins[report])")
        else:
            svg = report.timeline_svg(picture(findings, events, flags, capture))
        page = report.html_report(findings, indicators, svg, "SpyEye triage",
                                  [f"Image captured {capture.isoformat(sep=' ')}."] if capture else [])
        self._write("triage.html", page.encode())

    def _dump_images(self, space: Space) -> List[Indicator]:
        """Write each PE image injected into the process (as ``spyeye.injected --dump``) and
        return the SHA-256 of each file."""
        out = []
        for candidate in space.candidates:
            if candidate.pe is None:
                continue
            try:
                name, chunks, _ = injected.InjectedImages.image_file(self.context, candidate, space.pid)
                digest = hashlib.sha256()
                with self.open(name) as handle:
                    for chunk in chunks:
                        digest.update(chunk)
                        handle.write(chunk)
            except (ValueError, OSError) as exc:
                vollog.warning("PID %d image at %#x: not dumped (%s)", space.pid, candidate.vad.start, exc)
                continue
            out.append(Indicator("sha256", digest.hexdigest(), space.pid, space.name, "spyeye.injected",
                                 handle.preferred_filename))
        return out

    def _write(self, name: str, data: bytes) -> None:
        try:
            with self.open(name) as handle:
                handle.write(data)
        except OSError as exc:
            vollog.error("cannot write %s: %s", name, exc)
            return
        vollog.info("wrote %s", handle.preferred_filename)

    def run(self) -> renderers.TreeGrid:
        columns = [("PID", int), ("Process", str), ("PPID", int), ("Created", datetime), ("Exited", datetime),
                   ("Verdict", str), ("Score", int), ("Reasons", str), ("Plugin", str), ("Evidence", str),
                   ("Address", format_hints.Hex), ("Time", datetime), ("Detail", str)]
        kernel = self.config["kernel"]
        self._pools = poolscan.PoolObjects(self.context, kernel, [*poolscan.TAGS, poolscan.NETWORK], self.config_path,
                                           self._progress_callback)
        listed, scanned = timeline.Timeline.find_processes(self.context, kernel, self._pools)
        readable = timeline.Timeline.readable_processes(self.context, kernel, listed, scanned)
        procs = self._selected(listed, scanned, readable)
        return renderers.TreeGrid(columns, self._generator(listed, scanned, readable, procs))

    def _selected(self, listed: Sequence, scanned: Sequence, readable: Sequence) -> List:
        """The processes to judge: active ones and exited ones the pool scan finds (memory
        readable or not), those ``--pid``/``--name`` select; a value selecting none is a usage error."""
        procs = list(readable)
        seen = {(int(p.UniqueProcessId), _created(p)) for p in procs}
        procs += [p for p in scanned if (int(p.UniqueProcessId), _created(p)) not in seen and _created(p)]
        pids, names = self.config.get("pid"), self.config.get("name")
        problem = vadwalk.selection_problem([(int(p.UniqueProcessId), vadwalk.process_name(p)) for p in procs], pids,
                                            names, "the active process list or the pool (psscan)")
        if problem:
            raise UsageError(problem)
        wanted, drop = set(pids or []), vadwalk.name_filter(names)
        return [p for p in procs if (not wanted or int(p.UniqueProcessId) in wanted) and not drop(p)]


def _reopen_files(context: interfaces.context.ContextInterface) -> None:
    """Make each file layer open its file anew on its next read (in a forked child: the open
    file's offset is shared with the parent).  The inherited file objects are kept, never closed."""
    kept = []
    for layer in context.layers.values():
        if getattr(layer, "_file_", None) is not None:
            kept.append(layer._file_)
            layer._file_ = None
    _INHERITED.extend(kept)


_INHERITED: list = []


# --------------------------------------------------------------------------- evidence


Scored = List[Tuple[str, str, Evidence]]
"""(kind of reason, what it rests on, the evidence row) of one process."""


def _memory_reasons(space: Space, artifacts: List[config.Artifact], found_hooks: List[hooks.Hook],
                    view: Optional[hooks.ProcessView], resolvers: List[apiscore.Scored]) -> Scored:
    """What spyeye.injected, apiscore, hooks and config found in the process's memory."""
    scored: Scored = [(key, evidence.detail, evidence) for evidence, key in _image_evidence(space.candidates)]
    scored += [("resolver", f"{r.analysis.score} at {r.region.vad.start:#x}", _resolver_evidence(r)) for r in resolvers]
    records = _hooked_funcs(artifacts)
    for hook in found_hooks:
        into = view.candidates.get(hook.region.start) if hook.region is not None else None
        key = ("hook into injected image" if into is not None and into.pe is not None
               else "hook" if hook.confidence == "high" else "weak hook")
        scored.append((key, f"{hook.module.name}!{hook.function}", _hook_evidence(hook, records)))
    for artifact in artifacts:
        if artifact.score >= ARTIFACT_MEDIUM:
            key = "artifact" if artifact.score >= ARTIFACT_HIGH else "weak artifact"
            scored.append((key, f"{artifact.kind} at {artifact.address:#x}", _artifact_evidence(artifact)))
    return scored


def _timeline_reasons(flags: List[timeline.Flag], records: List[timeline.Event]) -> Scored:
    """spyeye.timeline's correlation flags on the process and the event-log records naming it."""
    scored: Scored = [(f.rule, f.detail, Evidence("timeline", "spyeye.timeline", f.rule, text_cell(f.detail),
                                                  time=f.time)) for f in flags]
    scored += [("event-log record", e.detail, Evidence("timeline", "spyeye.timeline", "event-log record",
                                                       text_cell(e.detail), time=e.time)) for e in records]
    return scored


def _image_evidence(candidates: Sequence[injected.Candidate]) -> Iterable[Tuple[Evidence, str]]:
    for candidate in candidates:
        pe = candidate.pe
        if pe is None:
            continue
        name = pe.dll_name or "unnamed image"
        verdict = injected.verdict(pe)
        key = "spyeye image" if verdict.startswith("SpyEye plugin") else "injected image"
        yield Evidence("injected", "spyeye.injected", "injected image", text_cell(
            f"{name}, {candidate.reasons[0]}; {verdict}"), candidate.vad.start), key
        known = [e.name for e in pe.exports if e.name in injected.known_names.known_spyeye_exports()]
        if known:
            yield Evidence("exports", "spyeye.injected", "exports", text_cell(
                f"{name}: {injected.export_summary(pe.exports)}: {', '.join(known)}"), candidate.vad.start), "exports"


def _resolver_evidence(result: apiscore.Scored) -> Evidence:
    analysis = result.analysis
    apis = f"; APIs {', '.join(analysis.resolved_apis)}" if analysis.resolved_apis else ""
    return Evidence("apiscore", "spyeye.apiscore", "API resolver",
                    text_cell(f"score {analysis.score} ({apiscore.MODE_NAMES[result.bits]}): "
                              f"{', '.join(analysis.traits)}{apis}"), result.region.vad.start)


def _hook_evidence(hook: hooks.Hook, records: Dict[str, List[int]]) -> Evidence:
    target = f" -> {hook.target:#x}" if hook.target is not None else ""
    into = f" in {hook.target_module} {hook.target_export or ''}".rstrip() if hook.target_module else ""
    stolen = "".join(f"; stolen record at {a:#x} names it (spyeye.config)" for a in records.get(hook.function, []))
    return Evidence("hooks", "spyeye.hooks", f"{hook.kind} hook",
                    text_cell(f"{hook.module.name}!{hook.function} ({hook.technique}, {hook.confidence}){target}{into}"
                              f": {hook.reason}{stolen}"), hook.address)


def _artifact_evidence(artifact: config.Artifact) -> Evidence:
    fields = dict(artifact.fields)
    summary = ", ".join(f"{key}={fields[key]}" for key in SUMMARY_FIELDS if fields.get(key))
    return Evidence("config", "spyeye.config", artifact.kind,
                    text_cell(f"score {artifact.score} ({config.rating(artifact.score)})" +
                              (f": {summary}" if summary else "")), artifact.address)


def _hooked_funcs(artifacts: Sequence[config.Artifact]) -> Dict[str, List[int]]:
    """``hooked_func`` -> addresses of the stolen records naming it (as ``Hooks.hooked_funcs``)."""
    found: Dict[str, List[int]] = {}
    for artifact in artifacts:
        if artifact.kind == "stolen_record":
            for key, value in artifact.fields:
                if key == "hooked_func":
                    found.setdefault(value, []).append(artifact.address)
    return found


def _verdict(space: Space, info: Dict, scored: Scored) -> Finding:
    """Sum the points (each kind of reason counted once per process, its rows all listed)."""
    kinds: Dict[str, List[str]] = {}
    for key, what, _ in scored:
        if key in POINTS:
            kinds.setdefault(key, []).append(what)
    score = min(100, sum(POINTS[key] for key in kinds))
    reasons = [f"{_PLUGIN_OF[key]}: {key} (+{POINTS[key]}): {_few(whats)}" for key, whats in kinds.items()]
    if any(key in STRONG for key in kinds):
        verdict = "infected"
    elif not space.readable:
        verdict = "unknown"
    else:
        verdict = "suspicious" if score else "clean"
    if verdict == "unknown":
        reasons.insert(0, "memory unreadable (no address space or no VAD)")
    return Finding(space.pid, text_cell(space.name), info["ppid"], info["created"], info["exited"], verdict, score, reasons,
                   [evidence for _, _, evidence in scored])


_PLUGIN_OF = {"spyeye image": "spyeye.injected", "injected image": "spyeye.injected", "resolver": "spyeye.apiscore",
              "hook into injected image": "spyeye.hooks", "hook": "spyeye.hooks", "weak hook": "spyeye.hooks",
              "artifact": "spyeye.config", "weak artifact": "spyeye.config"}
_PLUGIN_OF.update({rule: "spyeye.timeline" for rule in (*PROCESS_RULES, "event-log record")})


def _few(items: List[str], limit: int = 3) -> str:
    """The first ``limit`` items and how many more."""
    shown = "; ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _rows(finding: Finding):
    na = renderers.NotApplicableValue()
    head = (finding.pid, finding.name, vadwalk.optional(finding.ppid), vadwalk.optional(finding.created),
            vadwalk.optional(finding.exited), finding.verdict, finding.score)
    yield 0, (*head, text_cell("; ".join(finding.reasons)), "", "", na, na, "")
    for e in finding.evidence:
        yield 1, (*head, "", e.plugin, e.kind, vadwalk.optional(e.address and format_hints.Hex(e.address)),
                  vadwalk.optional(e.time), e.detail)


# --------------------------------------------------------------------------- timeline joins


def _created(proc) -> Optional[datetime]:
    try:
        return timeline.filetime(proc.CreateTime.QuadPart)
    except exceptions.InvalidAddressException:
        return None


def _process_infos(events: Sequence[timeline.Event]) -> Dict[Tuple[int, Optional[datetime]], Dict]:
    """(PID, create time) -> PPID, created, exited, from the timeline's process rows (a
    process's created and exited rows share their detail)."""
    by_object: Dict[Tuple[int, str], Dict] = {}
    for event in events:
        if event.source != "process" or event.pid is None:
            continue
        entry = by_object.setdefault((event.pid, event.detail), {"ppid": None, "created": None, "exited": None})
        entry["created" if event.action == "created" else "exited"] = event.time
        if event.detail.startswith("PPID "):
            entry["ppid"] = int(event.detail[5:].split(",")[0])
    return {(pid, info["created"]): info for (pid, _), info in by_object.items()}


def _flags_of(flags: Sequence[timeline.Flag], pid: int) -> List[timeline.Flag]:
    return [f for f in flags if f.pid == pid and f.rule in PROCESS_RULES]


def _connections(events: Sequence[timeline.Event], pid: int) -> List[timeline.Event]:
    return [e for e in events if e.source == "network" and e.action == "connected" and e.pid == pid and e.peer]


def _records_naming(events: Sequence[timeline.Event], space: Space, ambiguous: Set[str]) -> List[timeline.Event]:
    """Event-log records (of this computer, dated possibly) whose values name the process's
    PID, as Windows logs it (``0xbc4``), or its image name when no other process has it."""
    names = [re.escape(space.name.lower())] if space.name.lower() not in ambiguous else []
    pattern = re.compile(rf"(?:^|[=\\\s])(?:{'|'.join([re.escape(f'{space.pid:#x}'), *names])})(?:$|[;\s])")
    return [e for e in events if e.source == "eventlog" and not e.flags and ": " in e.detail
            and pattern.search(e.detail.lower().split(": ", 1)[1])]


def connection_indicators(connections: Sequence[timeline.Event], pid: int, process: str) -> List[Indicator]:
    """C2 address and port of each connection the process opened."""
    return [Indicator("c2", e.peer[0], pid, process, "spyeye.timeline", e.provenance, e.peer[1])
            for e in connections if e.peer and e.peer[0] not in ("0.0.0.0", "::")]


def artifact_indicators(artifacts: Sequence[config.Artifact], pid: int, process: str) -> List[Indicator]:
    """URLs, mutex names, file paths and bot GUIDs from high-confidence decoded artifacts."""
    out = []
    for artifact in artifacts:
        if artifact.score < ARTIFACT_HIGH:
            continue
        fields = dict(artifact.fields)
        source = f"{artifact.kind} at {artifact.address:#x}"

        def add(kind: str, value: Optional[str]) -> None:
            if value:
                out.append(Indicator(kind, value, pid, process, "spyeye.config", source))
        add("url", fields.get("url"))
        if artifact.kind == "c1":
            add("mutex", fields.get("mutex"))
            add("file", fields.get("bot_path"))
            add("directory", fields.get("install_dir"))
            if fields.get("install_dir") and fields.get("bot_file"):
                add("file", fields["install_dir"].rstrip("\\") + "\\" + fields["bot_file"])
        if artifact.kind in ("mutex", "mutex_name"):
            add("mutex", fields.get("name"))
        for key in ("guid", "bot_guid"):
            if fields.get(f"{key}.valid") == "true":
                add("bot-guid", fields.get(f"{key}.raw"))
    return out


def picture(findings: Sequence[Finding], events: Sequence[timeline.Event], flags: Sequence[timeline.Flag],
            capture: Optional[datetime]) -> report.Picture:
    """The timeline picture's content: the judged processes' lifelines, their threads and
    connections, the event-log records and flags, and the infection window (the span of the
    timeline evidence of infected processes and the rows it rests on)."""
    judged = {f.pid for f in findings}
    kinds = {"thread": "thread", "network": "connection", "eventlog": "eventlog"}
    marks = [Mark(e.time, kinds[e.source], e.pid, e.detail) for e in events
             if e.source in kinds and e.action in ("created", "connected", "logged")
             and (e.source == "eventlog" or e.pid in judged)]
    marks += [Mark(f.time, "flag", f.pid, f.detail) for f in flags if f.pid in judged]
    infected = {f.pid for f in findings if f.verdict == "infected"}
    times = [event.time for f in flags if f.pid in infected and f.rule in PROCESS_RULES for event in f.basis]
    window = (min(times), max(times)) if times else None
    lifelines = [(f.pid, f.name, f.created, f.exited, f.verdict) for f in findings]
    return report.Picture(lifelines, marks, window, capture)
