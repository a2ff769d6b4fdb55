"""Ray start-up for every entry point, and the one switch for Ray Data's console output.

`connect` joins the cluster the user names (an address, or $RAY_ADDRESS, which `ray job
submit` sets) or else starts a local Ray of this process's own (`address="local"`): never
one that something else started on this machine. It says on stderr which one it uses.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator

import ray
from ray.data import DataContext


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def connect(
    address: str | None = None,
    num_cpus: int | None = None,
    *,
    announce: Callable[[str], None] | None = _to_stderr,
) -> bool:
    """Connect this process to Ray, quietly, unless it already is.

    address: a cluster to join; else $RAY_ADDRESS; else a new local Ray with `num_cpus`
    logical CPUs (default: Ray's count of this machine's cores), which lives as long as this
    process or until ray.shutdown(). `announce` gets one line naming the cluster.
    Returns True when this call connected, False when the process already was.
    """
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "configure_logging": True, "logging_level": logging.ERROR}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **quiet)
        where = f"the Ray cluster at {address}"
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)
        gcs = ray.get_runtime_context().gcs_address
        where = f"a local Ray of its own at {gcs} (stops with this process)"
    if announce is not None:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        announce(f"[ray] using {where}: {cpus} logical CPUs")
    return True


@contextlib.contextmanager
def quiet_data(*, progress: bool = False, preserve_order: bool | None = None) -> Iterator[None]:
    """Ray Data's options for the datasets set up and run inside, the caller's put back after.

    progress False: no progress bars, no banner when a dataset starts, and Ray Data's console
    log lines only from ERROR up (its log file keeps everything). progress True: Ray Data's
    own progress display (bars on a terminal, periodic lines otherwise). preserve_order:
    when given, whether datasets keep their row order.
    """
    ctx = DataContext.get_current()
    options = ctx.execution_options
    saved = ctx.enable_progress_bars, ctx.print_on_execution_start, options.preserve_order
    consoles = [
        (h, h.level) for h in logging.getLogger("ray.data").handlers
        if not progress and isinstance(h, logging.StreamHandler)
        and not isinstance(h, logging.FileHandler)
    ]
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = progress and saved[1]
    if preserve_order is not None:
        options.preserve_order = preserve_order
    for handler, _ in consoles:
        handler.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start, options.preserve_order = saved
        for handler, level in consoles:
            handler.setLevel(level)


def local_cpus() -> int:
    """Logical CPUs of an embedded local Ray: 2 per core, at least 4, so that Ray Data's
    read tasks find room beside the training workers (as cluster/start-local.sh does)."""
    return max(4, 2 * (os.cpu_count() or 1))
