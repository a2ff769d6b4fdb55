"""Ray start-up policy (which cluster an entry point uses) and the quiet Ray Data switch.

`ray.init` is replaced by a recorder: what matters is what the session module asks of it.
"""

from __future__ import annotations

import logging

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
