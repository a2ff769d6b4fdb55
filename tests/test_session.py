"""Ray start-up policy (which cluster an entry point uses) and the quiet Ray Data switch.

`ray.init` is replaced by a recorder: what matters is what the session module asks of it.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
session = pytest.importorskip("caeadmm.distributed.session")
DataContext = pytest.importorskip("ray.data").DataContext


class _Context:
    gcs_address = "127.0.0.1:54321"


@pytest.fixture
def init_calls(monkeypatch):
    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: bool(calls))
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray, "get_runtime_context", _Context)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0})
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(session, "_probe", lambda address, source: None)  # no cluster to ask
    return calls


def test_without_an_address_it_starts_a_local_ray_of_its_own(init_calls):
    lines = []
    assert session.connect(num_cpus=3, announce=lines.append) is True
    (call,) = init_calls
    assert call["address"] == "local"  # never None: that attaches to any head on the machine
    assert call["num_cpus"] == 3
    assert lines == ["[ray] using a local Ray of its own at 127.0.0.1:54321 (stops with this "
                     "process): 4 logical CPUs"]


def test_a_named_cluster_is_joined(init_calls, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    lines = []
    session.connect(num_cpus=3, announce=lines.append)
    assert init_calls[0]["address"] == "10.0.0.5:6379"
    assert "num_cpus" not in init_calls[0]  # a cluster has its own
    assert lines[0].startswith("[ray] using the Ray cluster at 10.0.0.5:6379")
    init_calls.clear()
    session.connect("127.0.0.1:7000", announce=None)  # the argument beats $RAY_ADDRESS
    assert init_calls[0]["address"] == "127.0.0.1:7000"


def test_a_connected_process_is_left_as_it_is(init_calls):
    assert session.connect(announce=None) is True
    assert session.connect("somewhere:1", announce=None) is False
    assert len(init_calls) == 1


def test_the_eval_command_starts_its_own_ray(init_calls, monkeypatch, tmp_path):
    from caeadmm.cli import main

    def stop(address, num_cpus):
        session.connect(address, num_cpus, announce=None)
        raise SystemExit(0)

    monkeypatch.setattr("caeadmm.distributed.evaluate.connect", stop)
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    with pytest.raises(SystemExit):
        main(["eval", str(tmp_path), "--codecs", "jpeg", "--out", str(tmp_path / "out")])
    assert init_calls[0]["address"] == "local"


def _closed_port() -> int:
    """A local TCP port with nothing listening on it (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_stale_address_fails_at_once_in_one_line(monkeypatch):
    """Nothing at $RAY_ADDRESS: ray.init would retry for many minutes; connect refuses at
    once, naming the address and both ways out."""
    port = _closed_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: pytest.fail("ray.init was called"))
    start = time.monotonic()
    with pytest.raises(session.ClusterUnreachable) as info:
        session.connect(announce=None)
    assert time.monotonic() - start < session.PROBE_TIMEOUT_S
    line = str(info.value)
    assert "\n" not in line
    assert f"127.0.0.1:{port} (from $RAY_ADDRESS)" in line
    assert f"ray start --head --port={port}" in line
    assert "unset RAY_ADDRESS" in line
    with pytest.raises(session.ClusterUnreachable, match="leave out --address"):
        session.connect(f"ray://127.0.0.1:{port}", announce=None)


@pytest.mark.slow  # waits out the connection's bound: about 10 s
def test_an_address_where_something_else_answers_fails_in_bounded_time(monkeypatch):
    """A port that accepts connections but is no Ray head: the GCS check gives up after
    about 10 s of Ray's own connect timeouts plus PROBE_TIMEOUT_S (1 s here), instead of
    Ray's minutes of retries."""
    monkeypatch.setattr(session, "PROBE_TIMEOUT_S", 1)
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(session.ClusterUnreachable, match="answers, but not as a Ray head"):
            session._probe(address, "--address")
    assert time.monotonic() - start < 20


@pytest.mark.slow  # two entry points started in subprocesses: 5-10 s each
@pytest.mark.parametrize("command", [["-m", "caeadmm", "eval"], ["jobs/compress.py"]])
def test_entry_points_fail_within_30_s_on_a_stale_ray_address(command, tmp_path):
    """`caeadmm eval` and a job, with RAY_ADDRESS naming a port where nothing listens: each
    exits within 30 s with one line naming the address, no traceback."""
    from PIL import Image

    root = Path(__file__).resolve().parents[1]
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    port = _closed_port()
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}", "PYTHONPATH": str(root)}
    args = [str(tmp_path / "a.png"), "-o", str(tmp_path / "out")]
    if "eval" in command:
        args += ["--codecs", "jpeg"]
    start = time.monotonic()
    result = subprocess.run([sys.executable, *command, *args], cwd=root, env=env, text=True,
                            capture_output=True, timeout=120)
    assert time.monotonic() - start < 30
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    (line,) = [s for s in result.stderr.splitlines() if "no Ray cluster" in s]
    assert f"127.0.0.1:{port} (from $RAY_ADDRESS)" in line
    assert "unset RAY_ADDRESS" in line


def test_quiet_data_silences_the_console_and_puts_everything_back():
    ctx = DataContext.get_current()
    logger = logging.getLogger("ray.data")
    console = logging.StreamHandler()
    log_file = logging.FileHandler("/dev/null")
    logger.addHandler(console)
    logger.addHandler(log_file)
    before = ctx.enable_progress_bars, ctx.print_on_execution_start
    order = ctx.execution_options.preserve_order
    try:
        with session.quiet_data(preserve_order=not order):
            assert not ctx.enable_progress_bars and not ctx.print_on_execution_start
            assert ctx.execution_options.preserve_order is (not order)
            assert console.level == logging.ERROR
            assert log_file.level == logging.NOTSET  # the log file keeps everything
        assert (ctx.enable_progress_bars, ctx.print_on_execution_start) == before
        assert ctx.execution_options.preserve_order is order
        assert console.level == logging.NOTSET
        with session.quiet_data(progress=True):
            assert ctx.enable_progress_bars and console.level == logging.NOTSET
    finally:
        logger.removeHandler(console)
        logger.removeHandler(log_file)
        log_file.close()


def test_a_submitted_training_job_refuses_a_relative_storage_path(monkeypatch, capsys):
    import importlib.util
    from pathlib import Path

    from caeadmm.cli import flags

    path = Path(__file__).resolve().parents[1] / "jobs" / "train.py"
    spec = importlib.util.spec_from_file_location("jobs_train", path)
    job = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(job)
    except ImportError as exc:  # the training layer it imports is absent from this tree
        pytest.skip(f"jobs/train.py cannot be imported here: {exc}")
    monkeypatch.setenv(flags.SUBMITTED_JOB_ENV, "{}")
    monkeypatch.setattr(job, "connect", lambda *a, **k: pytest.fail("must not start Ray"))
    assert job.main(["storage_path=runs"]) == 2
    err = capsys.readouterr().err
    assert "storage_path=runs is relative" in err and "`storage_path=$PWD/runs`" in err


def test_a_job_server_address_in_ray_address_says_what_to_give_instead(monkeypatch):
    """`export RAY_ADDRESS=http://127.0.0.1:8265` (Ray's docs for `ray job submit`; the
    client.env of older heads): one line saying that Ray clients need the head's GCS
    address, not a traceback from ray.init or advice to start a head on the job server's
    port."""
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    with pytest.raises(session.ClusterUnreachable) as refused:
        session.connect()
    message = str(refused.value)
    assert "is a Ray job server's address" in message and "RAY_API_SERVER_ADDRESS" in message
    assert "GCS address, host:port" in message and "unset RAY_ADDRESS" in message
    assert "--port=8265" not in message
