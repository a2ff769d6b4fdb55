"""cluster/start-local.sh and stop-local.sh start and stop their own head and no other.

A "foreign" head (started with `ray start`, as a user would for something else) runs through
the whole module; each script run must leave it alive. All heads use ports of their own, so
the tests never meet a Ray that the machine runs outside them.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux") or not shutil.which("setsid"),
                       reason="the scripts need Linux and setsid"),
]

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")


def _free_block(start: int, size: int = 1000) -> int:
    """The first port P >= start (in steps of `size`) with P .. P+size-1 all free on 127.0.0.1."""
    for base in range(start, 32000, size):
        try:
            for port in range(base, base + size):
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    pytest.skip("no free block of ports")


def _stat(pid: str) -> list[str]:
    """Fields of /proc/PID/stat after the command name: state, ppid, pgrp, session, ..."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _alive(pid: int) -> bool:
    try:
        return _stat(str(pid))[0] != "Z"
    except OSError:
        return False


def _session(sid: int) -> list[int]:
    """Live processes of a session."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            state, _, _, session = _stat(proc.name)[:4]
        except OSError:
            continue
        if int(session) == sid and state != "Z":
            pids.append(int(proc.name))
    return pids


def _command_pid(*words: str) -> int:
    """The process whose command line holds all the words."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if all(w in args for w in words) and _alive(int(proc.name)):
            return int(proc.name)
    raise LookupError(words)


def _listening() -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket, IPv4-mapped IPv6 as "::ffff:a.b.c.d"."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state != "0A":
                continue
            address, port = local.split(":")
            raw = bytes.fromhex(address)
            words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]  # little-endian words
            ip = ipaddress.ip_address(b"".join(words))
            if ip.version == 6 and ip.ipv4_mapped:
                ip = f"::ffff:{ip.ipv4_mapped}"
            found.add((str(ip), int(port, 16)))
    return found


def _environment(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment less what an in-process Ray put there (RAY_ADDRESS,
    RAY_AUTH_MODE), with a home of the tests' own."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    return {**env, "HOME": str(home), **extra}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A home folder of the tests' own: Ray's auth token goes there, not into the user's."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def foreign_head(home):
    """A head started with plain `ray start` in a session of its own; its GCS process."""
    base = _free_block(24000)
    temp = Path(os.path.realpath("/tmp")) / f"caeadmm-test-foreign-{os.getpid()}"
    env = _environment(home, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled")
    ports = [f"--port={base}", f"--dashboard-port={base + 1}",
             f"--dashboard-agent-listen-port={base + 2}", f"--dashboard-agent-grpc-port={base + 3}",
             f"--runtime-env-agent-port={base + 4}", f"--metrics-export-port={base + 5}",
             f"--node-manager-port={base + 6}", f"--object-manager-port={base + 7}",
             f"--ray-client-server-port={base + 8}", f"--min-worker-port={base + 100}",
             f"--max-worker-port={base + 999}"]
    env |= {"AUTOSCALER_METRIC_PORT": str(base + 9), "DASHBOARD_METRIC_PORT": str(base + 10)}
    started = subprocess.run(["setsid", "--wait", str(RAY), "start", "--head", "--num-cpus=1",
                              "--include-dashboard=false", "--disable-usage-stats",
                              f"--temp-dir={temp}", *ports],
                             env=env, capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stdout + started.stderr
    gcs = _command_pid("gcs_server", str(temp))
    sid = os.getsid(gcs)
    yield {"gcs": gcs, "port": base}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session(sid):
            os.kill(pid, sig)
        time.sleep(3)
    shutil.rmtree(temp, ignore_errors=True)


def _script(name: str, port: int, base: int, home: Path) -> subprocess.CompletedProcess:
    env = _environment(
        home,
        VIRTUAL_ENV=str(Path(sys.executable).parents[1]),  # scripts/venv.sh: use it as is
        CAEADMM_RAY_PORT=str(port),
        CAEADMM_RAY_DASHBOARD_PORT=str(port + 1),
        CAEADMM_RAY_PORT_BASE=str(base),
        RAY_NUM_CPUS="1",
    )
    return subprocess.run(["bash", str(REPO / "cluster" / name)], env=env, capture_output=True,
                          text=True, timeout=300)


def test_stop_local_stops_its_own_head_and_no_other(foreign_head, home):
    base = _free_block(foreign_head["port"] + 1000)
    port = base + 10  # the GCS and dashboard just above the block's named ports
    head_dir = Path(f"/tmp/caeadmm-ray-{os.getuid()}-{port}")
    started = _script("start-local.sh", port, base, home)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"GCS 127.0.0.1:{port}" in started.stdout
        exports = (f"export RAY_ADDRESS=127.0.0.1:{port} "
                   f"RAY_API_SERVER_ADDRESS=http://127.0.0.1:{port + 1} RAY_AUTH_MODE=token")
        assert exports in started.stdout
        # In a shell that sourced client.env (as the README says), Ray clients join this head
        # (ray.init refused the job server's http:// address) and `ray job` reaches its job
        # server.
        join = ("from caeadmm.distributed.session import connect; import ray; "
                "connect(announce=None); print('joined', ray.get_runtime_context().gcs_address)")
        client = subprocess.run(
            ["bash", "-c", f'source "{head_dir}/client.env" && "{sys.executable}" -c "{join}" '
             f'&& "{RAY}" job list'],
            env=_environment(home, PYTHONPATH=str(REPO)), capture_output=True, text=True,
            timeout=300,
        )
        assert client.returncode == 0, client.stdout + client.stderr
        assert f"joined 127.0.0.1:{port}" in client.stdout
        sid = int((head_dir / "head.sid").read_text())
        ours = _session(sid)
        assert len(ours) > 3 and foreign_head["gcs"] not in ours

        own = {(ip, p) for ip, p in _listening() if p in (port, port + 1) or base <= p < base + 9}
        assert {p for _, p in own} >= {port, port + 1, base}  # GCS, job server, agent
        assert {ip for ip, _ in own} <= {"127.0.0.1", "::ffff:127.0.0.1"}  # loopback only

        again = _script("start-local.sh", port, base, home)  # a second start changes nothing
        assert again.returncode == 0 and "is running" in again.stdout
        assert int((head_dir / "head.sid").read_text()) == sid
    finally:
        stopped = _script("stop-local.sh", port, base, home)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped the Ray head" in stopped.stdout
    assert _session(sid) == []
    assert not head_dir.exists()
    assert _alive(foreign_head["gcs"])


def test_a_head_it_did_not_start_is_refused_and_left_alone(foreign_head, home):
    port = foreign_head["port"]  # the foreign head's GCS port
    base = _free_block(port + 2000)
    started = _script("start-local.sh", port, base, home)
    assert started.returncode == 1
    assert f"port(s) {port} " in started.stderr and "left alone" in started.stderr
    stopped = _script("stop-local.sh", port, base, home)
    assert stopped.returncode == 0 and "nothing stopped" in stopped.stdout
    assert _alive(foreign_head["gcs"])
