"""Worker processes that end with the process that started them, leaving no partial file.

A worker of the CLI's pool or a Ray actor whose parent was killed must not go on writing
outputs nobody collects. `die_with_parent` makes it exit as soon as its parent is gone;
`exit_now` first deletes the temporary files of the writes it has in progress.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

from caeadmm.files import remove_partial_files

PARENT_POLL_S = 0.2  # how often the watch thread looks at the parent id
EXIT_CODE = 130
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent: int, *, kernel_signal: bool = True) -> None:
    """Make this process exit (`exit_now`) as soon as process `parent` is gone.

    kernel_signal: on Linux, also ask the kernel for SIGTERM when the parent dies (prctl
    PR_SET_PDEATHSIG; the caller installs `exit_now` as the SIGTERM handler). A daemon thread
    that watches the parent id covers other systems, processes whose SIGTERM belongs to
    someone else (Ray's workers), and a main thread busy in C code, where a Python signal
    handler waits for it to return.
    """
    if kernel_signal and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # gone already
        exit_now()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                     name="caeadmm-parent-watch").start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    exit_now()


def exit_now(*_signal_args: object) -> None:
    """Delete this process's unfinished temporary files and exit at once (no clean-up)."""
    remove_partial_files()
    os._exit(EXIT_CODE)
