"""Progress output: a bar only on a terminal, plain periodic lines in a log."""

from __future__ import annotations

import io

from caeadmm.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_plain_lines_not_a_bar():
    log = io.StringIO()
    with Progress(4, "compress", "file", stream=log, interval_s=0) as progress:
        progress.update()
        progress.update(3)
    assert log.getvalue().splitlines() == [
        "[compress] 1/4 files (25%)", "[compress] 4/4 files (100%)", "[compress] 4/4 files (100%)",
    ]
    assert "\r" not in log.getvalue()


def test_a_terminal_gets_a_bar_and_quiet_gets_nothing():
    terminal = _Terminal()
    with Progress(2, "eval", "point", stream=terminal, interval_s=0) as progress:
        progress.update(2)
    assert "\r" in terminal.getvalue() and "[eval]" not in terminal.getvalue()
    log = io.StringIO()
    with Progress(2, "eval", "point", stream=log, enabled=False, interval_s=0) as progress:
        progress.update(2)
    assert log.getvalue() == ""


def test_an_interrupted_run_prints_no_final_line():
    log = io.StringIO()
    progress = Progress(4, "compress", "file", stream=log, interval_s=3600)
    progress.update()
    progress.close(summary=False)
    assert log.getvalue() == ""
