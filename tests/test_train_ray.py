"""caeadmm.distributed.train and jobs/train.py on real Ray: the ADMM consensus across two
nodes, recovery from a worker failure, resubmitting a run, and `ray job submit`.

Training runs on a two-node test cluster (a head with the job server and a second raylet,
started with `ray start --block` in subprocesses, with their own ports and temp dir), driven
by jobs/train.py in subprocesses, either directly (RAY_ADDRESS) or by `ray job submit`; it
never touches this process's Ray (nor uses the session's `ray_local`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray")
torch = pytest.importorskip("torch")
ray_train = pytest.importorskip("caeadmm.distributed.train")

from caeadmm.admm import ADMM  # noqa: E402
from caeadmm.checkpoint import (  # noqa: E402
    CheckpointError,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from caeadmm.config import ConfigError, load_config  # noqa: E402
from caeadmm.distributed.shards import MANIFEST_FORMAT, MANIFEST_NAME  # noqa: E402
from caeadmm.model import CAE  # noqa: E402
from caeadmm.train_loop import Schedule  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "ray_smoke.yaml"
RAY_CLI = Path(sys.executable).with_name("ray")


def _images(folder: Path, n: int = 6) -> Path:
    """n smooth 64 x 64 colour images with some noise (a codec has something to learn)."""
    folder.mkdir(parents=True)
    ramp = np.linspace(0, 1, 64)
    for i in range(n):
        rng = np.random.default_rng(i)
        base = np.outer(ramp, rng.random(64))[..., None] * rng.random(3) * 255
        noise = rng.normal(0, 12, (64, 64, 3))
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def shards(cluster, tmp_path_factory) -> Path:
    """Shards of 32 px patches, cut by jobs/prepare_data.py on the test cluster: 6 images x 9
    grid positions (stride 16) = 54 patches."""
    root = tmp_path_factory.mktemp("train_ray")
    out = root / "shards"
    proc = subprocess.run(
        [sys.executable, "jobs/prepare_data.py", str(_images(root / "images")), "--out",
         str(out), "--patch-size", "32", "--grid", "--stride", "16", "--rows-per-shard", "16",
         "--no-progress"],
        env=cluster.driver_env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return out


def _checkpoint(run: Path, step: int) -> dict:
    return load_checkpoint(run / f"checkpoint_{step:07d}" / ray_train.CHECKPOINT_FILE)


def _log_steps(run: Path) -> list[int]:
    lines = (run / ray_train.LOG_FILE).read_text().splitlines()[1:]
    return [int(float(line.split(",")[0])) for line in lines]


# ---------------------------------------------------------------------------------------------
# Set-up errors (no training)


def _empty_shards(folder: Path, patch_size: int) -> Path:
    """A shard folder whose manifest names no shards (set-up checks only)."""
    folder.mkdir()
    manifest = {"format": MANIFEST_FORMAT, "patch_size": patch_size, "shards": [], "sources": {}}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    return folder


def test_fit_needs_shards(tmp_path):
    cfg = load_config(SMOKE, [f"storage_path={tmp_path}"])
    with pytest.raises(ray_train.TrainRayError, match="shards"):
        ray_train.fit(cfg)


def test_fit_refuses_shards_of_another_patch_size(tmp_path):
    shards = _empty_shards(tmp_path / "shards", patch_size=32)
    cfg = load_config(SMOKE, [f"shards={shards}", f"storage_path={tmp_path}",
                              "model.patch_size=48"])  # fmt: skip
    with pytest.raises(ray_train.TrainRayError, match="32 px patches"):
        ray_train.fit(cfg)


def test_fit_refuses_init_from_a_model_of_another_config(tmp_path):
    shards = _empty_shards(tmp_path / "shards", patch_size=32)
    cfg = load_config(SMOKE, [f"shards={shards}", f"storage_path={tmp_path}"])
    other = dataclasses.replace(cfg.model, latent_channels=4)
    path = save_checkpoint(tmp_path / "other.pt", model=CAE(other), admm=None, optimizer=None,
                           step=0, config=cfg)  # fmt: skip
    with pytest.raises(ConfigError, match="holds a model of config"):
        ray_train.fit(dataclasses.replace(cfg, init_from=str(path)))


def test_job_refuses_a_bad_override(capsys):
    spec = importlib.util.spec_from_file_location("jobs_train", REPO / "jobs" / "train.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main(["--config", str(SMOKE), "no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# A two-node test cluster in subprocesses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A Ray head (with the job server) and a second raylet on 127.0.0.1, 2 CPUs each."""

    def __init__(self, logs: Path):
        self.gcs_port, self.dashboard_port = _free_port(), _free_port()
        # Ray's temp dir holds its Unix sockets, whose paths may not exceed 107 bytes: a
        # pytest folder (/tmp/pytest-of-root/pytest-102/...) plus Ray's session and socket
        # names is over that, so the temp dir is a short one of its own, removed at stop.
        self.temp = Path(tempfile.mkdtemp(prefix="caeadmm-rc-", dir=os.path.realpath("/tmp")))
        # This cluster stays apart from any other Ray on the machine: its own temp dir and
        # ports, no token from ~/.ray (it only listens on 127.0.0.1), and RAY_ADDRESS in its
        # processes' environment, so that Ray code in them that looks for "the" cluster (Ray
        # Train's placement-group cleaner asks the state API) never finds the one that the
        # last `ray start` on this machine recorded in /tmp/ray/ray_current_cluster.
        self.env = {
            **os.environ,
            "PATH": f"{RAY_CLI.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(REPO),
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            # Ray Train's controller polls its workers every 2 s; 0.5 s notices an end or a
            # failure sooner (Ray passes this on from the driver).
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
        }
        self.driver_env = {**self.env, "RAY_ADDRESS": f"127.0.0.1:{self.gcs_port}"}
        common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
                  "--min-worker-port", "0", "--max-worker-port", "0",
                  "--object-store-memory", str(200 * 1024 * 1024)]  # fmt: skip
        head = [
            "--head", "--port", str(self.gcs_port), "--temp-dir", str(self.temp),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
            "--ray-client-server-port", str(_free_port()),
        ]
        self.logs = logs
        self.procs: list[subprocess.Popen] = []
        self._start([*common, *head, "--dashboard-agent-listen-port", str(_free_port())])
        self._wait_for(nodes=1)
        worker = ["--address", f"127.0.0.1:{self.gcs_port}"]
        self._start([*common, *worker, "--dashboard-agent-listen-port", str(_free_port())])
        self._wait_for(nodes=2)

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, args: list[str]) -> None:
        with self.logs.open("a") as log:
            self.procs.append(subprocess.Popen(
                [str(RAY_CLI), "start", *args], env=self.driver_env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            ))  # fmt: skip

    def _wait_for(self, nodes: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = subprocess.run(
                [str(RAY_CLI), "status", "--address", f"127.0.0.1:{self.gcs_port}"],
                env=self.env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if status.stdout.count(" node_") >= nodes:
                return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(1)
        self.stop()
        tail = "\n".join(self.logs.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"the test cluster did not come up; the end of {self.logs}:\n{tail}")

    def stop(self) -> None:
        """SIGTERM each `ray start --block` (it stops the Ray processes it started), then
        SIGKILL what is left of its process group: the cluster keeps nothing worth saving."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not RAY_CLI.exists():
        pytest.skip(f"no ray command beside {sys.executable}")
    cluster = LocalCluster(tmp_path_factory.mktemp("raycluster") / "nodes.log")
    yield cluster
    cluster.stop()


# ---------------------------------------------------------------------------------------------
# Recovery and resubmission: jobs/train.py as a driver on the test cluster ($RAY_ADDRESS)


def _train(cluster: LocalCluster, shards: Path, storage: Path, *args: str, rc: int = 0):
    """Run jobs/train.py with configs/ray_smoke.yaml on the cluster; check its exit status."""
    proc = subprocess.run(
        [sys.executable, "jobs/train.py", "--config", str(SMOKE), f"shards={shards}",
         f"storage_path={storage}", *args],
        env=cluster.driver_env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == rc, f"exit status {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_worker_failure_resumes_with_admm_state_mask_and_step(cluster, shards, tmp_path):
    # Prune before step 12; checkpoints every 4 steps; worker 1 dies at step 17, so the run
    # must come back from step 16 with Z, U AND the mask, and finish at 20.
    args = ["finetune_steps=8", "fail_at_step=17", "run_name=ft"]
    proc = _train(cluster, shards, tmp_path, "--debug", "--max-failures", "1",
                  "--keep-checkpoints", "0", *args)  # fmt: skip
    run = tmp_path / "ft"

    assert "[train] resumed from the checkpoint at step 16 (run ft)" in proc.stdout
    saved = _checkpoint(run, 16)
    assert saved["model"]["mask"] is not None  # the checkpoint is past the prune
    for rank in (0, 1):
        restored = torch.load(run / "debug" / f"resume_step0000016_rank{rank}.pt")
        assert restored["step"] == 16
        assert torch.equal(restored["Z"], saved["admm"]["Z"])
        assert torch.equal(restored["U"], saved["admm"]["U"])
        assert torch.equal(restored["mask"], saved["model"]["mask"])
        assert restored["updates"] == saved["admm"]["updates"] == 3

    final = _checkpoint(run, 20)
    cfg = load_config(SMOKE, args)
    expected_updates = sum(Schedule(cfg).update_due(s) for s in range(cfg.total_steps()))
    assert final["step"] == 20 and final["extra"]["metrics"]["start_step"] == 16
    assert final["admm"]["updates"] == expected_updates
    assert torch.equal(final["model"]["mask"], final["admm"]["support"])
    # Rows the failed attempt logged after step 16 were dropped, then written again once.
    assert _log_steps(run) == [4, 8, 12, 16, 20]
    model = load_model(run / "checkpoint_0000020" / ray_train.MODEL_FILE)
    assert torch.equal(model.mask, final["admm"]["support"])


def _ray_job(cluster: LocalCluster, *args: str, timeout: float = 120) -> str:
    """`ray job ARGS --address <the test cluster>`; its output (it must succeed)."""
    proc = subprocess.run(
        [str(RAY_CLI), "job", args[0], "--address", cluster.dashboard, *args[1:]],
        env=cluster.env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, f"ray job {args[0]}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _complete_steps(run: Path) -> list[int]:
    """The steps of the checkpoints in `run` that load, ascending."""
    steps = []
    for path in run.glob(f"checkpoint_*/{ray_train.CHECKPOINT_FILE}"):
        with contextlib.suppress(CheckpointError):
            steps.append(load_checkpoint(path)["step"])
    return sorted(steps)


def _stopped_with_checkpoints(cluster: LocalCluster, job: str, run: Path, count: int) -> None:
    """Wait until `run` holds `count` checkpoints that load, then `ray job stop` the job and
    wait until its files stay as they are (its workers may outlive its driver briefly)."""
    deadline = checked = time.monotonic()
    deadline += 480
    while len(_complete_steps(run)) < count:
        if time.monotonic() > checked + 5:  # a job that ended cannot get there
            status = _ray_job(cluster, "status", job)
            assert "RUNNING" in status or "PENDING" in status, _ray_job(cluster, "logs", job)
            assert time.monotonic() < deadline, _ray_job(cluster, "logs", job)
            checked = time.monotonic()
        time.sleep(0.2)
    _ray_job(cluster, "stop", job)
    files = None
    while files != (files := sorted(run.glob("checkpoint_*/*"))):
        time.sleep(3)


@pytest.mark.slow
def test_ray_job_stop_then_resubmit_resumes_from_the_newest_complete_checkpoint(
    cluster, shards, tmp_path
):
    # The form a user runs: `ray job submit`, `ray job stop` between checkpoints, the same
    # command again. The resumed step is the newest checkpoint on disk that loads, whatever
    # Ray Train recorded (its record can lag behind the disk); the newest file, torn as by a
    # stop while writing it, is passed over.
    entrypoint = ["python", "jobs/train.py", "--config", "configs/ray_smoke.yaml",
                  f"shards={shards}", f"storage_path={tmp_path}", "run_name=stopped",
                  "--keep-checkpoints", "0", "warmup_steps=400", "admm_steps=400",
                  "admm_every=10", "checkpoint_every=10", "log_every=10"]  # fmt: skip
    run = tmp_path / "stopped"

    def submit(job: str) -> None:
        _ray_job(cluster, "submit", "--no-wait", "--submission-id", job,
                 "--working-dir", str(REPO), "--", *entrypoint)  # fmt: skip

    submit("stopped-1")
    _stopped_with_checkpoints(cluster, "stopped-1", run, 3)
    assert "was stopped" in _ray_job(cluster, "status", "stopped-1")
    newest = max(run.glob(f"checkpoint_*/{ray_train.CHECKPOINT_FILE}"))
    newest.write_bytes(newest.read_bytes()[:1000])
    expected = _complete_steps(run)[-1]
    assert expected < int(newest.parent.name.split("_")[1])

    submit("stopped-2")
    _stopped_with_checkpoints(cluster, "stopped-2", run, len(_complete_steps(run)) + 1)
    log = _ray_job(cluster, "logs", "stopped-2")
    assert f"[train] resumed from the checkpoint at step {expected} (run stopped)" in log
    resumed = [s for s in _complete_steps(run) if s > expected]
    assert load_checkpoint(run / f"checkpoint_{resumed[0]:07d}" / ray_train.CHECKPOINT_FILE)[
        "extra"
    ]["metrics"]["start_step"] == expected


# One job on the cluster, checked by the two tests below: 2 workers of 1.5 CPUs on nodes of
# 2 CPUs (so one worker per node), with the consensus records of --debug. 16 steps, 3 updates.
# The submitted run trains the rate-aware model (an entropy model, the rate term on), so the
# consensus test below checks identical Z and U on all ranks with the rate term on.
SUBMITTED = ["num_workers=2", "cpus_per_worker=1.5", "run_name=submitted",
             "model.latent_norm=none", "model.entropy_model=factorized",
             "model.train_rounding=mixed", "rate_lambda=8"]


@pytest.fixture(scope="module")
def submitted(cluster, shards, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """`ray job submit` of jobs/train.py, as a user runs it; (the finished CLI, the run)."""
    storage = tmp_path_factory.mktemp("submitted")
    proc = subprocess.run(
        [str(RAY_CLI), "job", "submit", "--address", cluster.dashboard,
         "--working-dir", str(REPO), "--", "python", "jobs/train.py", "--debug",
         "--config", "configs/ray_smoke.yaml", f"shards={shards}", f"storage_path={storage}",
         *SUBMITTED],
        env=cluster.env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return proc, storage / "submitted"


@pytest.mark.slow
def test_ray_job_submit_trains_to_a_checkpoint(submitted):
    proc, run = submitted
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "succeeded" in proc.stdout
    assert "[train] step 16/16 [finetune]" in proc.stdout  # rank 0's progress reaches the log
    assert "est-bpp " in proc.stdout  # the rate estimate is trained and logged (NaN: left out)
    assert "RayTrainWorker" not in proc.stdout  # but none of Ray's worker chatter
    logs = re.search(r"Ray's own logs: +(\S+) ", proc.stdout).group(1)
    assert Path(logs).is_dir() and list(Path(logs).glob("raylet*"))  # the cluster's, really
    checkpoint = run / "checkpoint_0000016"
    assert f"latest checkpoint: {checkpoint}/checkpoint.pt" in proc.stdout
    model = load_model(checkpoint / ray_train.MODEL_FILE)
    assert model.mask is not None and int(model.mask.sum()) == ADMM(
        model.config.latent_shape(), 0.5, 1.0
    ).k


@pytest.mark.slow
def test_resubmitting_a_finished_run_trains_nothing(cluster, shards, submitted):
    # (Resuming an unfinished run on resubmission: the `ray job stop` test above.)
    _, run = submitted
    again = _train(cluster, shards, run.parent, *SUBMITTED)
    assert "had already finished at step 16" in again.stdout
    assert "[train] step " not in again.stdout  # no training step ran
    assert f"latest checkpoint: {run}/checkpoint_0000016/checkpoint.pt" in again.stdout


@pytest.mark.slow
def test_consensus_on_two_nodes_matches_one_process(submitted):
    proc, run = submitted
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    cfg = load_config(SMOKE, SUBMITTED)
    n_updates = sum(Schedule(cfg).update_due(s) for s in range(cfg.total_steps()))
    assert n_updates == 3
    replay = ADMM(cfg.model.latent_shape(), cfg.pruning_ratio, cfg.rho)
    rank0_only = ADMM(cfg.model.latent_shape(), cfg.pruning_ratio, cfg.rho)
    for n in range(1, n_updates + 1):
        r0, r1 = (torch.load(run / "debug" / f"update{n:04d}_rank{r}.pt") for r in (0, 1))
        assert r0["node_id"] != r1["node_id"]
        assert r0["updates"] == r1["updates"] == n and r0["world"] == 2
        # Every rank holds the same Z and U...
        assert torch.equal(r0["Z"], r1["Z"]) and torch.equal(r0["U"], r1["U"])
        # ...the ones one process computes from the union of both ranks' latents...
        replay.update(r0["local_sums"] + r1["local_sums"], r0["local_count"] + r1["local_count"])
        assert torch.equal(replay.Z, r0["Z"]) and torch.equal(replay.U, r0["U"])
        # ...which differ from what one rank's latents alone would give.
        assert r0["local_count"] > 0 and not torch.equal(r0["local_sums"], r1["local_sums"])
        rank0_only.update(r0["local_sums"], r0["local_count"])
    assert not torch.equal(rank0_only.U, replay.U)
    final = _checkpoint(run, cfg.total_steps())
    assert torch.equal(final["admm"]["Z"], replay.Z) and torch.equal(final["admm"]["U"], replay.U)


@pytest.mark.slow
def test_variable_rate_training_keeps_the_consensus(cluster, shards, tmp_path):
    """A variable-rate model with nested supports under Ray Train on two nodes, each image of
    each worker's batch at its own quality: after every ADMM update both ranks hold the same
    Z and U (from latents that differ between them), and the exported model codes at any
    quality, its stream holding one channel at quality 0 and every kept one at the top."""
    from caeadmm import codec

    args = ["run_name=vr", "model.latent_norm=none", "model.entropy_model=factorized",
            "model.train_rounding=mixed", "model.quality_levels=3", "rate_lambda=0.01",
            "rate_lambda_max=0.1", "model.lowest_quality_channels=1"]  # fmt: skip
    _train(cluster, shards, tmp_path, "--debug", *args)
    run = tmp_path / "vr"
    cfg = load_config(SMOKE, args)
    updates = sum(Schedule(cfg).update_due(s) for s in range(cfg.total_steps()))
    assert updates >= 2
    for n in range(1, updates + 1):
        r0, r1 = (torch.load(run / "debug" / f"update{n:04d}_rank{r}.pt") for r in (0, 1))
        assert torch.equal(r0["Z"], r1["Z"]) and torch.equal(r0["U"], r1["U"])
        assert not torch.equal(r0["local_sums"], r1["local_sums"])
    model = load_model(run / f"checkpoint_{cfg.total_steps():07d}" / ray_train.MODEL_FILE)
    assert model.config.quality_levels == 3 and model.mask is not None
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    sizes = []
    for quality in (0.0, 1.5, 2.0):
        data = codec.compress(image, model, quality=quality)
        assert codec.decompress(data, model).shape == image.shape
        sizes.append(len(data))
    assert sizes[0] <= sizes[-1]
    kept = len(model.kept_channels())
    assert [len(model.stream_channels(q)) for q in (0.0, 2.0)] == [1, kept]
