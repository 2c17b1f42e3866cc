"""Known SpyEye plugin export and module names, loaded from ``data/spyeye_exports.json``."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "spyeye_exports.json"


@dataclass(frozen=True)
class KnownExport:
    """An export name with its role and provenance (source keys resolve via ``sources()``)."""

    name: str
    role: str
    confidence: str
    sources: tuple[str, ...]
    module: Optional[str] = None
    note: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=1)
def _document() -> dict:
    return json.loads(DATA_FILE.read_text(encoding="utf-8"))


def _entries(key: str) -> dict[str, KnownExport]:
    return {e["name"]: KnownExport(**{**e, "sources": tuple(e["sources"])})
            for e in _document()[key]}


def known_spyeye_exports() -> dict[str, KnownExport]:
    """SpyEye plugin export names (the bot resolves these by name in every plugin)."""
    return _entries("spyeye_plugin_exports")


def zeus_host_exports() -> dict[str, KnownExport]:
    """Exports of the Zeus-derived plugin host: evidence against a SpyEye attribution."""
    return _entries("zeus_derived_host_exports")


def plugin_module_names() -> frozenset[str]:
    """Known SpyEye plugin DLL file names, lower-cased."""
    return frozenset(m["name"].lower() for m in _document()["plugin_module_names"])


def sources() -> dict[str, str]:
    """Source key -> citation."""
    return dict(_document()["sources"])


def export_tag(name: str) -> Optional[str]:
    """A short tag for an export name the data file knows, e.g. ``SpyEye plugin export (entry: run)``."""
    known = known_spyeye_exports().get(name)
    if known is not None:
        return f"SpyEye plugin export ({known.role})"
    host = zeus_host_exports().get(name)
    return f"Zeus-derived plugin host export ({host.role})" if host is not None else None
