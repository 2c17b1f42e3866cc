"""Run Volatility 3 plugins in-process and collect their rows as dicts."""
from __future__ import annotations

import datetime
import functools
import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import volatility3.plugins
import volatility3.symbols
from volatility3 import framework
from volatility3.framework import automagic, contexts, interfaces, plugins, renderers

ROOT = Path(__file__).resolve().parent.parent
SYMBOLS = ROOT / "symbols"


@functools.lru_cache(maxsize=None)
def _load_plugins() -> Dict[str, Any]:
    plugin_dir = str(ROOT / "spyeye_plugins")
    if plugin_dir not in volatility3.plugins.__path__:
        volatility3.plugins.__path__.insert(0, plugin_dir)
    if str(SYMBOLS) not in volatility3.symbols.__path__:     # last: Volatility writes downloads to the
        volatility3.symbols.__path__.append(str(SYMBOLS))    # first writable entry (upstream issue 1255)
    framework.require_interface_version(2, 0, 0)
    framework.import_files(volatility3.plugins, True)
    return framework.list_plugins()


def plugin_module(name: str) -> Any:
    """The suite's module ``name`` (e.g. ``spyeye.pageread``) as Volatility loaded it."""
    _load_plugins()
    return importlib.import_module(f"volatility3.plugins.{name}")


class FileCollector(interfaces.plugins.FileHandlerInterface):
    """Keeps files a plugin writes in memory, keyed by preferred name."""

    files: Dict[str, bytes] = {}

    def __init__(self, filename: str) -> None:
        super().__init__(filename)
        self._chunks: List[bytes] = []

    def write(self, data):  # type: ignore[override]
        self._chunks.append(bytes(data))
        return len(data)

    def close(self) -> None:
        FileCollector.files[self.preferred_filename] = b"".join(self._chunks)

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


def _plain(value: Any) -> Any:
    if isinstance(value, interfaces.renderers.BaseAbsentValue):
        return None
    if isinstance(value, datetime.datetime):
        return value
    if isinstance(value, renderers.format_hints.MultiTypeData):
        return bytes(value)
    if isinstance(value, bytes):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return value


def construct(image: Path, plugin: str, config: Optional[Dict[str, Any]] = None,
              isf_dirs: Optional[List[Path]] = None) -> interfaces.plugins.PluginInterface:
    """``plugin`` (e.g. ``windows.pslist.PsList``) with its context built for ``image``."""
    plugin_list = _load_plugins()
    for extra in isf_dirs or []:
        if str(extra) not in volatility3.symbols.__path__:
            volatility3.symbols.__path__.append(str(extra))
    cls = plugin_list[plugin]
    ctx = contexts.Context()
    base = "plugins"
    ctx.config["automagic.LayerStacker.single_location"] = Path(image).resolve().as_uri()
    for key, value in (config or {}).items():
        ctx.config[interfaces.configuration.path_join(base, cls.__name__, key)] = value
    magics = automagic.choose_automagic(automagic.available(ctx), cls)
    FileCollector.files = {}
    return plugins.construct_plugin(ctx, magics, cls, base, None, FileCollector)


def run_plugin(image: Path, plugin: str, config: Optional[Dict[str, Any]] = None,
               isf_dirs: Optional[List[Path]] = None) -> List[Dict[str, Any]]:
    """Run ``plugin`` on ``image``; rows as dicts with a ``__depth`` key for tree levels."""
    grid = construct(image, plugin, config, isf_dirs).run()
    rows: List[Dict[str, Any]] = []
    names = [c.name for c in grid.columns]

    def visit(node, accumulator):
        row = {name: _plain(v) for name, v in zip(names, node.values)}
        row["__depth"] = node.path_depth - 1
        accumulator.append(row)
        return accumulator

    grid.populate(visit, rows)
    return rows


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``vol -q -p spyeye_plugins ARGS`` in a child process (the user's command line)."""
    vol = Path(sys.executable).parent / "vol"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([str(vol), "-q", "-p", str(ROOT / "spyeye_plugins"), *args],
                          capture_output=True, text=True, env=env, timeout=300)
