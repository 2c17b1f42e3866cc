"""The files ``spyeye.triage`` hands over, built from its joined findings: the indicators as a
STIX 2.1 bundle and as CSV, and a self-contained HTML report with the infection's timeline
drawn as SVG.

Pure: no Volatility.  ``stix2`` and ``matplotlib`` come with the ``report`` extra
(``pip install spyeye-plugins[report]``); :func:`missing` names those that are absent."""
from __future__ import annotations

import csv
import html
import importlib.util
import io
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

STAGES = ("timeline", "injected", "exports", "apiscore", "config", "hooks")
"""The seed article's order of reasoning, which each process's chain of evidence follows."""
STAGE_TITLES = {"timeline": "Timeline", "injected": "Injected code", "exports": "Exports",
                "apiscore": "API resolution", "config": "Configuration and stolen data", "hooks": "Hooks"}
VERDICTS = ("infected", "suspicious", "unknown", "clean")
CSV_COLUMNS = ("kind", "value", "port", "pid", "process", "plugin", "source")


@dataclass
class Evidence:
    """One joined piece of evidence: which plugin found it, at which row."""

    stage: str                          # one of STAGES
    plugin: str                         # e.g. spyeye.hooks
    kind: str                           # e.g. injected image, inline hook, connect-after-start
    detail: str
    address: Optional[int] = None
    time: Optional[datetime] = None


@dataclass
class Finding:
    """One process's verdict, score, reasons and evidence."""

    pid: int
    name: str
    ppid: Optional[int]
    created: Optional[datetime]
    exited: Optional[datetime]
    verdict: str
    score: int
    reasons: List[str] = field(default_factory=list)
    evidence: List[Evidence] = field(default_factory=list)


@dataclass(frozen=True)
class Indicator:
    """An indicator and the process and plugin row it came from.

    ``kind``: ``c2`` (IPv4 address and ``port``), ``url``, ``mutex``, ``file`` (a full path),
    ``directory``, ``bot-guid``, ``sha256`` (of a dumped injected image, ``source`` its file)."""

    kind: str
    value: str
    pid: int
    process: str
    plugin: str
    source: str
    port: Optional[int] = None


@dataclass(frozen=True)
class Mark:
    """A dated point on the timeline picture: ``thread``, ``connection``, ``eventlog`` or ``flag``."""

    time: datetime
    kind: str
    pid: Optional[int]
    label: str


def missing() -> List[str]:
    """The report extra's libraries that are not installed."""
    return [name for name in ("stix2", "matplotlib") if importlib.util.find_spec(name) is None]


# --------------------------------------------------------------------------- CSV


def indicators_csv(indicators: Sequence[Indicator]) -> str:
    """One row per indicator, with the process and the plugin row it came from."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for item in indicators:
        writer.writerow([item.kind, item.value, "" if item.port is None else item.port, item.pid, item.process,
                         item.plugin, item.source])
    return out.getvalue()


# --------------------------------------------------------------------------- STIX 2.1


def _quote(value: str) -> str:
    """A STIX pattern string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _split_path(path: str) -> Tuple[str, str]:
    """(directory, name) of a Windows path."""
    head, _, tail = path.rstrip("\\").rpartition("\\")
    return head, tail


def stix_pattern(item: Indicator) -> str:
    """The STIX pattern that matches ``item``."""
    value = _quote(item.value)
    if item.kind == "c2":
        port = f" AND network-traffic:dst_port = {item.port}" if item.port is not None else ""
        return f"[network-traffic:dst_ref.type = 'ipv4-addr' AND network-traffic:dst_ref.value = {value}{port}]"
    if item.kind == "file":
        directory, name = _split_path(item.value)
        return f"[file:name = {_quote(name)} AND file:parent_directory_ref.path = {_quote(directory)}]"
    return {"url": f"[url:value = {value}]", "mutex": f"[mutex:name = {value}]",
            "directory": f"[directory:path = {_quote(item.value.rstrip(chr(92)))}]",
            "bot-guid": f"[x-spyeye-bot:guid = {value}]",
            "sha256": f"[file:hashes.'SHA-256' = {value}]"}[item.kind]


def _bot_type():
    """The custom observable for a SpyEye bot GUID (STIX has none), defined once."""
    import stix2
    from stix2.properties import StringProperty
    from stix2.registry import class_for_type
    registered = class_for_type("x-spyeye-bot", "2.1", "observables")   # by another copy of this module
    if registered is not None:
        return registered

    @stix2.v21.CustomObservable("x-spyeye-bot", [("guid", StringProperty(required=True))], ["guid"])
    class SpyEyeBot:
        """A SpyEye bot, named by the GUID it reports (``USER!COMPUTER!ID``)."""
    return SpyEyeBot


def _observables(item: Indicator) -> list:
    """The cyber observables an indicator's value is."""
    import stix2
    if item.kind == "c2":
        address = stix2.IPv4Address(value=item.value)
        traffic = stix2.NetworkTraffic(dst_ref=address.id, dst_port=item.port, protocols=["tcp"])
        return [address, traffic]
    if item.kind == "file":
        directory, name = _split_path(item.value)
        folder = stix2.Directory(path=directory)
        return [folder, stix2.File(name=name, parent_directory_ref=folder.id)]
    if item.kind == "directory":
        return [stix2.Directory(path=item.value.rstrip("\\"))]
    if item.kind == "sha256":
        return [stix2.File(name=item.source, hashes={"SHA-256": item.value})]
    if item.kind == "bot-guid":
        return [_bot_type()(guid=item.value)]
    return [{"url": stix2.URL, "mutex": stix2.Mutex}[item.kind](
        **{"url": {"value": item.value}, "mutex": {"name": item.value}}[item.kind])]


def stix_bundle(indicators: Sequence[Indicator], observed: datetime, tool: str) -> str:
    """A STIX 2.1 bundle: per indicator an Indicator (its pattern), and Observed Data with
    the observables and the process (PID and image name) it came from."""
    import stix2
    objects: Dict[str, object] = {}
    identity = stix2.Identity(name=tool, identity_class="system")
    objects[identity.id] = identity
    for item in indicators:
        image = stix2.File(name=item.process)
        process = stix2.Process(pid=item.pid, image_ref=image.id)
        found = _observables(item)
        for obj in (image, process, *found):
            objects.setdefault(obj.id, obj)
        where = f"PID {item.pid} ({item.process}), {item.plugin}: {item.source}"
        indicator = stix2.Indicator(name=f"SpyEye {item.kind}: {item.value}" + (f":{item.port}" if item.port else ""),
                                    description=f"Found in {where}", pattern=stix_pattern(item), pattern_type="stix",
                                    valid_from=observed, indicator_types=["malicious-activity"],
                                    created_by_ref=identity.id, allow_custom=True)
        sighting = stix2.ObservedData(first_observed=observed, last_observed=observed, number_observed=1,
                                      object_refs=[obj.id for obj in (*found, process)],
                                      created_by_ref=identity.id, allow_custom=True)
        relation = stix2.Relationship(indicator, "based-on", sighting, created_by_ref=identity.id)
        for obj in (indicator, sighting, relation):
            objects[obj.id] = obj
    # indented, not pretty=True: stix2's property sorting took seconds on a large bundle
    return stix2.Bundle(list(objects.values()), allow_custom=True).serialize(indent=2)


# --------------------------------------------------------------------------- timeline picture


@dataclass
class Picture:
    """What the timeline picture shows: a lifeline per process, dated marks, the infection window."""

    lifelines: List[Tuple[int, str, Optional[datetime], Optional[datetime], str]]  # pid, name, start, end, verdict
    marks: List[Mark]
    window: Optional[Tuple[datetime, datetime]]
    capture: Optional[datetime]


COLOURS = {"infected": "#c0392b", "suspicious": "#e67e22", "unknown": "#7f8c8d", "clean": "#2c3e50"}
MARK_STYLE = {"thread": ("|", "#8e44ad"), "connection": ("o", "#2980b9"), "eventlog": ("s", "#16a085"),
              "flag": ("*", "#c0392b")}


def _zoom(picture: Picture) -> Tuple[datetime, datetime]:
    """The span of the lower panel: the infection window with a margin, else the last hour."""
    if picture.window:
        start, end = picture.window
        margin = max((end - start) / 5, timedelta(seconds=5))
        return start - margin, end + margin
    times = [m.time for m in picture.marks] + [s for _, _, s, _, _ in picture.lifelines if s]
    end = picture.capture or max(times, default=datetime.now())
    return end - timedelta(hours=1), end


def timeline_svg(picture: Picture) -> str:
    """The picture as SVG text: above, every process's lifeline from start to exit (or the
    capture) over the whole span; below, the infection window up close with thread creations,
    connections, event-log records and correlation flags.  Lifelines carry ``id="lifeline-PID"``."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib import dates as mdates
    rows = {pid: index for index, (pid, *_rest) in enumerate(picture.lifelines)}
    labels = [f"{name} ({pid})" for pid, name, *_rest in picture.lifelines]
    with matplotlib.rc_context({"svg.hashsalt": "spyeye-triage", "svg.fonttype": "path"}):
        figure, (overview, zoom) = pyplot.subplots(2, 1, figsize=(11, 2 + 0.45 * len(rows) * 2),
                                                   gridspec_kw={"hspace": 0.35})
        for axis, prefix, span in ((overview, "lifeline", None), (zoom, "zoom-lifeline", _zoom(picture))):
            _draw_lifelines(axis, picture, prefix, span)
            axis.set_yticks(range(len(labels)), labels, fontsize=7)
            axis.set_ylim(len(labels) - 0.5, -1.5)
            axis.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
            axis.tick_params(axis="x", labelsize=7)
            if picture.window:
                band = axis.axvspan(*picture.window, color="#f9e79f", alpha=0.6, zorder=0)
                band.set_gid(f"{prefix}-infection-window")
        _draw_marks(zoom, picture.marks, rows, labels)
        zoom.set_xlim(*_zoom(picture))
        overview.set_title("Process lifelines (infection window shaded)", fontsize=9)
        zoom.set_title("Infection window: threads |, connections o, event-log records s, correlation flags *",
                       fontsize=9)
        out = io.StringIO()
        figure.savefig(out, format="svg", bbox_inches="tight", metadata={"Date": None})
        pyplot.close(figure)
    text = out.getvalue()
    return text[text.index("<svg"):]


def _draw_lifelines(axis, picture: Picture, prefix: str, span: Optional[Tuple[datetime, datetime]]) -> None:
    end_default = picture.capture or max((s for _, _, s, _, _ in picture.lifelines if s), default=None)
    for row, (pid, _, start, end, verdict) in enumerate(picture.lifelines):
        if start is None:
            continue
        stop = end or end_default or start
        if span is not None:
            start, stop = max(start, span[0]), min(stop, span[1])
            if start > stop:
                continue
        line, = axis.plot([start, stop], [row, row], color=COLOURS.get(verdict, "#2c3e50"), linewidth=3,
                          solid_capstyle="butt")
        line.set_gid(f"{prefix}-{pid}")


def _draw_marks(axis, marks: Sequence[Mark], rows: Dict[int, int], labels: List[str]) -> None:
    """Marks on their process's lifeline; event-log records (logged by no process shown) on a row above."""
    for kind, (marker, colour) in MARK_STYLE.items():
        points = [(m.time, rows.get(m.pid, -1)) for m in marks if m.kind == kind]
        if points:
            times, ys = zip(*points)
            dots = axis.scatter(times, ys, marker=marker, color=colour, s=40, zorder=3, label=kind)
            dots.set_gid(f"marks-{kind}")
    axis.set_yticks(range(-1, len(rows)), ["event logs", *labels], fontsize=7)
    if marks:
        axis.legend(loc="lower right", fontsize=7)


# --------------------------------------------------------------------------- HTML

_STYLE = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;font-size:13px}
th{background:#eee}.infected{background:#f5b7b1}.suspicious{background:#fad7a0}.unknown{background:#d5dbdb}
code{font-size:12px}svg{max-width:100%;height:auto}h3{margin-top:1.5em}"""


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return html.escape(value.isoformat(sep=" "))
    return html.escape(str(value))


def _verdict_table(findings: Sequence[Finding]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("PID", "Process", "PPID", "Created", "Exited", "Verdict", "Score",
                                              "Reasons"))
    rows = []
    for f in findings:
        reasons = "<br>".join(html.escape(r) for r in f.reasons)
        rows.append(f'<tr class="{f.verdict}" data-pid="{f.pid}"><td>{f.pid}</td><td>{_cell(f.name)}</td>'
                    f"<td>{_cell(f.ppid)}</td><td>{_cell(f.created)}</td><td>{_cell(f.exited)}</td>"
                    f"<td>{f.verdict}</td><td>{f.score}</td><td>{reasons}</td></tr>")
    return f'<table id="verdicts"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _chain(finding: Finding) -> str:
    parts = [f'<section class="chain" data-pid="{finding.pid}"><h3>{_cell(finding.name)} (PID {finding.pid}): '
             f"{finding.verdict}, score {finding.score}</h3>"]
    for stage in STAGES:
        items = [e for e in finding.evidence if e.stage == stage]
        if not items:
            continue
        parts.append(f"<h4>{STAGE_TITLES[stage]}</h4><ul>")
        for e in items:
            where = f" at <code>{e.address:#x}</code>" if e.address is not None else ""
            when = f"{_cell(e.time)}: " if e.time else ""
            parts.append(f"<li>{when}<b>{_cell(e.kind)}</b>{where} ({_cell(e.plugin)}): {_cell(e.detail)}</li>")
        parts.append("</ul>")
    parts.append("</section>")
    return "".join(parts)


def html_report(findings: Sequence[Finding], indicators: Sequence[Indicator], svg: Optional[str],
                title: str, notes: Iterable[str] = ()) -> str:
    """The report: verdict table, timeline picture, each infected or suspicious process's chain
    of evidence in the article's order, and the indicators.  No script, no external resource."""
    chains = "".join(_chain(f) for f in findings if f.verdict in ("infected", "suspicious"))
    iocs = "".join(f"<tr><td>{_cell(i.kind)}</td><td><code>{_cell(i.value)}</code></td><td>{_cell(i.port)}</td>"
                   f"<td>{i.pid}</td><td>{_cell(i.process)}</td><td>{_cell(i.plugin)}: {_cell(i.source)}</td></tr>"
                   for i in indicators)
    counts = ", ".join(f"{sum(1 for f in findings if f.verdict == v)} {v}" for v in VERDICTS)
    notes_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    picture = f'<div id="timeline">{svg}</div>' if svg else "<p>No timeline picture (matplotlib missing).</p>"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{counts}.</p>{notes_html}"
            f"<h2>Verdicts</h2>{_verdict_table(findings)}<h2>Timeline</h2>{picture}"
            f"<h2>Chains of evidence</h2>{chains or '<p>No infected or suspicious process.</p>'}"
            f'<h2>Indicators</h2><table id="indicators"><thead><tr><th>Kind</th><th>Value</th><th>Port</th>'
            f"<th>PID</th><th>Process</th><th>Found by</th></tr></thead><tbody>{iocs}</tbody></table>"
            f"</body></html>\n")


def safe_name(text: str) -> str:
    """``text`` usable in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)
