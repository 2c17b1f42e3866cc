"""SpyEye plugin suite for Volatility 3 (``vol -p spyeye_plugins spyeye.<name>``).

Importing this package puts the project's own symbol tables (``symbols/``)
on Volatility's symbol path, so users need no ``-s``.
"""
from __future__ import annotations

from pathlib import Path

import volatility3.symbols
from volatility3.framework import constants

SUITE_VERSION = "0.1.0"
PROJECT_SYMBOLS = Path(__file__).resolve().parents[2] / "symbols"


def register_symbols() -> None:
    """Append the project's symbol directory to Volatility's search path."""
    path = str(PROJECT_SYMBOLS)
    if PROJECT_SYMBOLS.is_dir() and path not in volatility3.symbols.__path__:
        volatility3.symbols.__path__.append(path)
    if PROJECT_SYMBOLS.is_dir() and path not in constants.SYMBOL_BASEPATHS:
        constants.SYMBOL_BASEPATHS.append(path)


register_symbols()
