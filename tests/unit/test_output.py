"""``output``: the one-line error of a bad command and text cells with control characters escaped."""
from __future__ import annotations

import pytest

from spyeye_plugins.spyeye.output import UsageError, text_cell


@pytest.mark.parametrize("value,cell", [
    ("mary\tBarack!2011\r", "mary\\tBarack!2011\\r"),
    ("line one\nline two", "line one\\nline two"),
    ("\x1b[31mred\x00", "\\x1b[31mred\\x00"),
    ("C:\\Windows\\System32\\ntdll.dll", "C:\\Windows\\System32\\ntdll.dll"),   # backslashes kept
    ("caf\u00e9 \u043f\u0440\u0438\u0432\u0435\u0442", "caf\u00e9 \u043f\u0440\u0438\u0432\u0435\u0442"),
    ("\x7f\x85\x9f", "\\x7f\\x85\\x9f"),                                         # DEL and C1 controls
    ("", ""),
])
def test_text_cell_escapes_control_characters_only(value, cell):
    assert text_cell(value) == cell
    assert "\t" not in text_cell(value) and "\n" not in text_cell(value)


def test_usage_error_is_a_one_line_system_exit():
    with pytest.raises(SystemExit) as raised:
        raise UsageError("no process with PID 99999 in the active process list")
    assert isinstance(raised.value, UsageError)
    assert raised.value.code == "error: no process with PID 99999 in the active process list"
    assert raised.value.message == "no process with PID 99999 in the active process list"
