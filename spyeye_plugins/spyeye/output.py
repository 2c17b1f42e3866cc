"""What every plugin of the suite shares about its output: bad commands and text cells."""
from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


class UsageError(SystemExit):
    """A bad command (unknown PID, invalid pattern, unreadable file).

    Raised from a plugin's ``run()`` before any row is rendered: ``vol`` prints the
    one line on stderr and exits with status 1, without a traceback; callers in
    Python catch it by this class."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")
        self.message = message


def text_cell(value: str) -> str:
    """``value`` with control characters escaped (``\\t``, ``\\n``, ``\\x1b`` …), so a
    stolen password's TAB cannot shift a renderer's columns.  Backslashes are left
    alone: Windows paths are full of them."""
    if not _CONTROL.search(value):
        return value
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}"), value)
