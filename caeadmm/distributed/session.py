"""Ray start-up for every entry point, and the one switch for Ray Data's console output.

`connect` joins the cluster the user names (an address, or $RAY_ADDRESS, which `ray job
submit` sets) or else starts a local Ray of this process's own (`address="local"`): never
one that something else started on this machine. It says on stderr which one it uses.

A local Ray's GCS and raylet die with this process, but the raylet's agents (dashboard
agent, runtime-env agent) would outlive a killed driver by about a minute: they try to
report the raylet's death to the dead GCS with a 60 s timeout. A small reaper process
(`_start_reaper`) waits for this process to end and then kills those agents.

A cluster address with no Ray head behind it (a stale $RAY_ADDRESS) would make `ray.init`
retry for many minutes; `connect` first checks that a head answers there (a TCP connection
within PROBE_TIMEOUT_S, then the GCS within PROBE_TIMEOUT_S + 10 s) and otherwise raises
ClusterUnreachable, one line that names the address and says how to start a head there or
unset the variable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

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
    Returns True when this call connected, False when the process already was. Raises
    ClusterUnreachable (a SystemExit with its one-line message) when no Ray head answers at
    the address.
    """
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "configure_logging": True, "logging_level": logging.ERROR}
    source = "--address" if address else "$RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _probe(address, source)
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as exc:  # e.g. "auto" with no cluster on this machine
            raise ClusterUnreachable(address, source, " ".join(str(exc).split())) from None
        where = f"the Ray cluster at {address}"
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)
        gcs = ray.get_runtime_context().gcs_address
        where = f"a local Ray of its own at {gcs} (stops with this process)"
        _start_reaper()
        _own_ray.append(gcs)
    if announce is not None:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        announce(f"[ray] using {where}: {cpus} logical CPUs")
    return True


PROBE_TIMEOUT_S = 5  # per check of a cluster address: TCP connection, then the GCS


class ClusterUnreachable(SystemExit):
    """No Ray head answers at the address an entry point was given. A SystemExit whose code
    is the one-line message: uncaught, Python prints that line (no traceback) and exits 1,
    so every entry point that connects fails the same way; `str(exc)` is the line."""

    def __init__(self, address: str, source: str, why: str):
        self.address = address
        if source == "$RAY_ADDRESS":
            remedy = ("`unset RAY_ADDRESS` to run on a local Ray of this process's own")
        else:
            remedy = "leave out --address to run on a local Ray of this process's own"
        port = address.rsplit(":", 1)[-1] if ":" in address else "6379"
        port = port if port.isdigit() else "6379"
        if address.startswith(("http://", "https://")):  # a job server's, as for `ray job`
            super().__init__(
                f"{address} (from {source}) is a Ray job server's address, which `ray job` "
                "commands take (as RAY_API_SERVER_ADDRESS); Ray clients join the head: give "
                "its GCS address, host:port (6379 by default; cluster/start-local.sh's "
                f"client.env sets both), or {remedy}"
            )
            return
        super().__init__(
            f"no Ray cluster at {address} (from {source}): {why}; start a head there "
            f"(`ray start --head --port={port}`, or cluster/start-local.sh), or {remedy}"
        )

    def __str__(self) -> str:
        return str(self.code)


def _probe(address: str, source: str) -> None:
    """Raise ClusterUnreachable unless a Ray head answers at `address` (host:port, "auto",
    or a Ray Client address ray://host:port): within PROBE_TIMEOUT_S when nothing listens
    there, within about 2 x PROBE_TIMEOUT_S + 10 s when something else does."""
    from ray._private.services import canonicalize_bootstrap_address

    client = address.startswith("ray://")
    try:
        target = address[len("ray://"):] if client else canonicalize_bootstrap_address(address)
    except (ValueError, ConnectionError) as exc:  # a malformed address; "auto" with no cluster
        raise ClusterUnreachable(address, source, " ".join(str(exc).split())) from None
    host, _, port = (target or "").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnreachable(address, source, "not an address of the form host:port")
    try:
        socket.create_connection((host.strip("[]"), int(port)), PROBE_TIMEOUT_S).close()
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ClusterUnreachable(address, source, f"cannot connect to {target} ({why})") from None
    if client:
        return
    try:
        with _stderr_silenced():  # the GCS client's own retry warnings
            ray._raylet.InnerGcsClient.standalone(target, None, PROBE_TIMEOUT_S * 1000)
    except Exception as exc:  # RpcError: something answers there, but not a Ray GCS
        raise ClusterUnreachable(
            address, source, f"{target} answers, but not as a Ray head "
            f"({' '.join(str(exc).split())})"
        ) from None


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null inside (native code writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def shutdown_own_ray() -> None:
    """Stop the local Ray that `connect` started in this process, if it is the one connected
    (an interrupted run stops its actors this way before it lists what they finished)."""
    if ray.is_initialized() and ray.get_runtime_context().gcs_address in _own_ray:
        ray.shutdown()


# The reaper: reads its stdin (a pipe only the driver holds) until EOF, then kills each
# process it was given as "PID START_TIME" (the start time guards against a reused pid).
_REAPER = """
import os, signal, sys
targets = [line.split() for line in sys.argv[1:]]
sys.stdin.buffer.read()
for pid, start in targets:
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[19] == start:
                os.kill(int(pid), signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass
"""

_own_ray: list[str] = []  # GCS addresses of the local Rays `connect` started
_reapers: list[subprocess.Popen] = []  # kept referenced: their stdin is the driver's lifeline


def _start_reaper() -> None:
    """Kill the local raylet's child processes once this process ends (Linux only)."""
    raylet = _local_raylet_pid()
    if raylet is None or not Path("/proc").is_dir():
        return
    targets = [f"{pid} {start}" for pid, start in _children(raylet)]
    if targets:
        _reapers.append(subprocess.Popen(
            [sys.executable, "-c", _REAPER, *targets], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))


def _local_raylet_pid() -> int | None:
    node = getattr(ray._private.worker.global_worker, "node", None)
    processes = getattr(node, "all_processes", {}).get("raylet") or []
    return processes[0].process.pid if processes else None


def _children(parent: int) -> list[tuple[int, str]]:
    """(pid, start time) of the processes whose parent is `parent`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                found.append((int(entry), fields[19]))
    return found


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


def ray_logs_dir() -> str:
    """Where Ray writes its own logs on this node: its session's logs folder, which follows
    the cluster's --temp-dir (cluster/start-local.sh keeps it out of /tmp/ray)."""
    node = ray._private.worker._global_node  # no public API names the session folder
    if node is None:
        return "logs/ under the Ray temp dir of each node (default /tmp/ray/session_latest)"
    return node.get_logs_dir_path()


def local_cpus() -> int:
    """Logical CPUs of an embedded local Ray: 2 per core, at least 4, so that Ray Data's
    read tasks find room beside the training workers (as cluster/start-local.sh does)."""
    return max(4, 2 * (os.cpu_count() or 1))
