"""Progress output: a bar only on a terminal, plain periodic lines in a log."""

from __future__ import annotations

import io

from caeadmm.progress import Progress, duration


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_plain_lines_not_a_bar():
    """With the time so far and, until the end, the time left at the rate so far."""
    log = io.StringIO()
    clock = iter([100.0, 110.0, 110.0, 140.0, 140.0, 140.0]).__next__
    with Progress(4, "compress", "file", stream=log, interval_s=0, clock=clock) as progress:
        progress.update()
        progress.update(3)
    assert log.getvalue().splitlines() == [
        "[compress] 1/4 files (25%), 10s elapsed, about 30s left",
        "[compress] 4/4 files (100%), 40s elapsed",
        "[compress] 4/4 files (100%), 40s elapsed",
    ]
    assert "\r" not in log.getvalue()


def test_durations_read_as_people_write_them():
    assert [duration(s) for s in (0, 44.6, 60, 185, 3599, 3600, 7620)] == \
        ["0s", "45s", "1m00s", "3m05s", "59m59s", "1h00m", "2h07m"]


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
