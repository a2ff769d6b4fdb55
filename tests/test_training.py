"""Configuration, schedule, train_step, the effect of ADMM, and the local trainer end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from caeadmm.admm import ADMM, ConsensusError, admm_update, check_consensus, hard_prune
from caeadmm.checkpoint import load_checkpoint, load_model
from caeadmm.cli import main as cli_main
from caeadmm.config import ConfigError, ModelConfig, TrainConfig, load_config
from caeadmm.entropy_fit import ENTROPY_FIT_BATCHES
from caeadmm.model import CAE
from caeadmm.run_log import LOG_COLUMNS, progress_line
from caeadmm.train_local import TrainDataError, train
from caeadmm.train_loop import (
    InjectedFailure,
    Schedule,
    gather_from_ranks,
    make_optimizer,
    new_admm,
    new_scaler,
    sum_over_ranks,
    train_step,
)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


# -- configuration ----------------------------------------------------------------------------


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  preset: paper\n  latent_channels: 16\nrho: 2\nbatch_size: 4\n")
    cfg = load_config(path, ["model.patch_size=64", "lr=3e-4", "use_gpu=true", "init_from=null"])
    assert cfg.model == ModelConfig(
        preset="paper", width=128, n_blocks=15, latent_channels=16, patch_size=64
    )
    assert (cfg.rho, cfg.batch_size, cfg.lr, cfg.use_gpu) == (2.0, 4, 3e-4, True)
    assert isinstance(cfg.rho, float)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    # switching the preset switches the sizes the file does not pin
    assert load_config(path, ["model.preset=small"]).model.width == 64


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["bogus=1"], "unknown config keys"),
        (["model.bogus=1"], "unknown config keys"),
        (["batch_size=two"], "batch_size must be int"),
        (["use_gpu=1"], "use_gpu must be bool"),
        (["batch_size=true"], "batch_size must be int"),
        (["pruning_ratio=1.0"], "pruning_ratio"),
        (["model.patch_size=60"], "multiple of 8"),
        (["model.preset=huge"], "unknown model preset"),
        (["noequals"], "key=value"),
        (["a.b.c=1"], "keys are"),
        (["warmup_steps=0", "admm_steps=0", "finetune_steps=0"], "must be positive"),
        (["warmup_steps=0", "admm_steps=0"], "hard prune needs"),
        (["entropy_fit_steps=-1"], "entropy_fit_steps must not be negative"),
        (["entropy_fit_steps=10"], "entropy_fit_steps > 0 needs a model.entropy_model"),
        (["model.latent_norm=none", "model.entropy_model=factorized", "rate_lambda=8",
          "model.rate_estimate=adaptive", "entropy_fit_steps=10"],
         "with model.rate_estimate: adaptive set entropy_fit_steps: 0"),
        (["model.latent_norm=none", "model.entropy_model=factorized", "rate_lambda=8",
          "model.rate_estimate=adaptive-runs", "entropy_fit_steps=10"],
         "with model.rate_estimate: adaptive-runs set entropy_fit_steps: 0"),
        (["model.rate_estimate=runs"], "rate_estimate"),
    ],
)
def test_bad_config_is_refused_with_the_reason(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_entropy_fit_steps_round_trips_and_defaults_to_no_fit():
    rate = ["model.latent_norm=none", "model.entropy_model=factorized", "rate_lambda=8"]
    cfg = load_config(None, [*rate, "entropy_fit_steps=300"])
    assert cfg.entropy_fit_steps == 300
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    old = load_config(None, rate).to_dict()
    del old["entropy_fit_steps"]  # a config written before the field existed
    assert TrainConfig.from_dict(old).entropy_fit_steps == 0
    assert TrainConfig().entropy_fit_steps == 0


def test_bad_config_files_are_refused(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "broken.yaml").write_text("model: [\n")
    for name in ("list.yaml", "broken.yaml", "missing.yaml"):
        with pytest.raises(ConfigError):
            load_config(tmp_path / name, [])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    cfg = load_config(path, [])
    assert cfg.total_steps() > 0
    assert cfg.model.preset in ("tiny", "small", "paper")
    if path.stem in ("small", "paper", "gpu_small", "gpu_paper"):
        assert cfg.model.preset == path.stem.removeprefix("gpu_")


# -- schedule -----------------------------------------------------------------------------------


def schedule_of(**kw) -> Schedule:
    return Schedule(load_config(None, [f"{k}={v}" for k, v in kw.items()]))


def test_schedule_phases_updates_and_prune():
    s = schedule_of(warmup_steps=4, admm_steps=7, finetune_steps=5, admm_every=3, lr=1e-3,
                    lr_final_scale=0.1)
    assert [s.phase(i) for i in (0, 3, 4, 10, 11, 15)] == [
        "warmup", "warmup", "admm", "admm", "finetune", "finetune"
    ]
    assert [i for i in range(16) if s.update_due(i)] == [3, 6, 9, 10]
    assert [i for i in range(16) if s.accumulates(i)] == list(range(1, 11))
    assert [i for i in range(16) if s.prune_at(i)] == [11]
    assert [i for i in range(16) if s.penalized(i)] == list(range(4, 11))
    assert s.lr_at(0) == s.lr_at(10) == 1e-3
    assert s.lr_at(11) == pytest.approx(1e-3)
    assert s.lr_at(15) == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 4 / 5)))
    assert s.lr_at(10**6) == pytest.approx(1e-4)


def test_schedule_without_warm_up_and_without_pruning():
    s = schedule_of(warmup_steps=0, admm_steps=4, finetune_steps=2, admm_every=2)
    assert [i for i in range(6) if s.update_due(i)] == [1, 3]
    assert s.phase(0) == "admm" and s.prune_at(4)
    plain = schedule_of(pruning_ratio=0, warmup_steps=2, admm_steps=2, finetune_steps=2)
    assert not any(plain.update_due(i) or plain.prune_at(i) or plain.penalized(i)
                   for i in range(6))


# -- train_step -------------------------------------------------------------------------------


TINY = ["model.preset=tiny", "w_msssim=0", "batch_size=4"]


class Wrapper(torch.nn.Module):
    """Stands in for DistributedDataParallel: forwards and exposes `.module`."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x, **kwargs):
        return self.module(x, **kwargs)


def test_train_step_through_a_wrapper_runs_every_phase_and_accumulates():
    torch.manual_seed(0)
    cfg = load_config(None, [*TINY, "warmup_steps=1", "admm_steps=2", "finetune_steps=1",
                             "admm_every=1"])
    net = CAE(cfg.model)
    model, admm = Wrapper(net), new_admm(cfg)
    optimizer, schedule = make_optimizer(model, cfg), Schedule(cfg)
    before = [p.detach().clone() for p in net.parameters()]
    batch = torch.rand(4, 3, 48, 48)
    metrics = []
    for step in range(schedule.total):
        if schedule.prune_at(step):
            hard_prune(model, admm)
        metrics.append(train_step(model, admm, optimizer, batch, step, cfg, schedule))
        if step < 3:
            assert admm.pending()[1] == 4  # this step's latents are pending
        if schedule.update_due(step):
            admm_update(admm)
    assert [m["phase"] for m in metrics] == [0.0, 1.0, 1.0, 2.0]
    assert all(math.isfinite(float(v)) for m in metrics for v in m.values())
    # The measured metrics stay on the device (0-d tensors): the loop reads them per log step.
    assert all(isinstance(m[k], torch.Tensor) and m[k].dim() == 0 and not m[k].requires_grad
               for m in metrics for k in ("loss", "penalty", "mse", "msssim", "grad_norm"))
    assert float(metrics[0]["loss"]) == pytest.approx(1e4 * float(metrics[0]["mse"]), rel=1e-5)
    assert metrics[1]["penalty"] > 0 and metrics[3]["penalty"] == 0
    assert torch.equal(net.mask, admm.mask()) and int(net.mask.sum()) == admm.k
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_train_step_under_autocast_keeps_weights_latent_and_rate_in_float32(precision):
    torch.manual_seed(0)
    cfg = load_config(None, [*TINY, "warmup_steps=1", "admm_steps=2", "finetune_steps=0",
                             "model.entropy_model=factorized", "model.latent_norm=none",
                             "rate_lambda=1", f"precision={precision}"])  # fmt: skip
    model, admm = CAE(cfg.model), new_admm(cfg)
    optimizer, schedule = make_optimizer(model, cfg), Schedule(cfg)
    scaler = new_scaler(cfg, torch.device("cpu"))
    assert (scaler is not None) == (precision == "fp16")
    before = [p.detach().clone() for p in model.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_hat, latent, bits = model.train()(torch.rand(4, 3, 48, 48), rate=True)
    assert x_hat.dtype == torch.bfloat16  # the network ran in bfloat16 ...
    assert latent.dtype == bits.dtype == torch.float32  # ... the rounding and the rate did not
    for step in range(schedule.total):
        metrics = train_step(model, admm, optimizer, torch.rand(4, 3, 48, 48), step, cfg,
                             schedule, scaler)  # fmt: skip
        if schedule.update_due(step):
            admm_update(admm)
        assert math.isfinite(float(metrics["loss"]))
        # fp16: the scaler skips the steps whose scaled gradients overflowed (norm inf).
        assert precision == "fp16" or math.isfinite(float(metrics["grad_norm"]))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    if precision == "bf16":
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with pytest.raises(ConfigError, match="precision"):
        load_config(None, ["precision=fp8"])


def test_channels_last_computes_the_same_function_and_trains():
    torch.manual_seed(0)
    cfg = load_config(None, [*TINY, "channels_last=true"])
    model, admm = CAE(cfg.model).eval(), new_admm(cfg)
    batch = torch.rand(4, 3, 48, 48)
    with torch.no_grad():
        plain = model(batch)[0]
        model.to(memory_format=torch.channels_last)
        assert model(batch.contiguous(memory_format=torch.channels_last))[0].allclose(
            plain, atol=1e-5
        )  # (in training the rounding noise is drawn in the other layout: other values)
    optimizer = make_optimizer(model, cfg)
    metrics = [train_step(model, admm, optimizer, batch, s, cfg) for s in range(2)]
    assert all(math.isfinite(float(m["loss"])) for m in metrics)


def test_frozen_batchnorm_keeps_its_statistics_and_still_trains_its_scale():
    torch.manual_seed(0)
    cfg = load_config(None, [*TINY, "freeze_batchnorm=true"])
    model, admm = CAE(cfg.model), new_admm(cfg)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone(), m.weight.clone()) for m in norms]
    optimizer = make_optimizer(model, cfg)
    train_step(model, admm, optimizer, torch.rand(4, 3, 48, 48), 0, cfg)
    for m, (mean, var, weight) in zip(norms, before, strict=True):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert not torch.equal(m.weight, weight)
    cfg = load_config(None, TINY)  # the default updates them
    train_step(model, admm, make_optimizer(model, cfg), torch.rand(4, 3, 48, 48), 0, cfg)
    assert not torch.equal(norms[0].running_mean, before[0][0])


# -- the consensus step on two real ranks ------------------------------------------------------


DDP = [*TINY, "warmup_steps=1", "admm_steps=2", "finetune_steps=1", "admm_every=1"]


def _ddp_rank(rank: int, store: Path, out: Path) -> None:
    """One of two gloo ranks running the loop's pieces under DDP, each on batches of its own
    (rank r: 2 + 2 r crops): train_step, the real consensus step (admm_update with the loop's
    sum_over_ranks) and its check after every update, the hard prune. Saves each update's
    local sums, the end state and the verdict of a last check after rank 1's U drifts."""
    dist = torch.distributed
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        torch.manual_seed(0)
        cfg = load_config(None, DDP)
        model = torch.nn.parallel.DistributedDataParallel(CAE(cfg.model))
        admm, optimizer, schedule = new_admm(cfg), make_optimizer(model, cfg), Schedule(cfg)
        torch.manual_seed(1 + rank)
        record: dict = {"local": [], "loss": []}
        for step in range(schedule.total):
            if schedule.prune_at(step):
                hard_prune(model, admm)
            batch = torch.rand(2 + 2 * rank, 3, 48, 48)
            metrics = train_step(model, admm, optimizer, batch, step, cfg, schedule)
            record["loss"].append(float(metrics["loss"]))
            if schedule.update_due(step):
                record["local"].append(admm.pending())
                admm_update(admm, sum_over_ranks)
                check_consensus(admm, gather_from_ranks)
        record |= {"Z": admm.Z.clone(), "U": admm.U.clone(), "mask": model.module.mask,
                   "weights": [p.detach() for p in model.parameters()]}  # fmt: skip
        if rank == 1:
            admm.U[0, 0, 0] += 1e-6
        try:
            check_consensus(admm, gather_from_ranks)
        except ConsensusError as exc:
            record["error"] = str(exc)
        torch.save(record, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_reach_one_consensus_of_both_ranks_latents(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    torch.multiprocessing.spawn(_ddp_rank, args=(tmp_path / "store", tmp_path), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert all(math.isfinite(v) for r in (r0, r1) for v in r["loss"])
    # Both ranks hold the same Z, U, mask and (DDP) weights ...
    for key in ("Z", "U", "mask"):
        assert torch.equal(r0[key], r1[key]), key
    assert all(torch.equal(a, b) for a, b in zip(r0["weights"], r1["weights"], strict=True))
    assert r0["mask"] is not None and int(r0["mask"].sum()) == new_admm(load_config(None, DDP)).k
    # ... the updates one process makes from both ranks' latents (3 updates, 2 + 4 each) ...
    assert [c for _, c in r0["local"]] == [2, 2, 2] and [c for _, c in r1["local"]] == [4, 4, 4]

    def replay(*ranks: dict) -> ADMM:
        admm = new_admm(load_config(None, DDP))
        for parts in zip(*(r["local"] for r in ranks), strict=True):
            admm.update(sum(s for s, _ in parts), sum(c for _, c in parts))
        return admm

    both = replay(r0, r1)
    assert torch.equal(r0["Z"], both.Z) and torch.equal(r0["U"], both.U)
    # ... which is not what rank 0's latents alone give.
    alone = replay(r0)
    assert not torch.equal(r0["Z"], alone.Z) and not torch.equal(r0["U"], alone.U)
    # A rank whose U drifts is caught on every rank.
    for r in (r0, r1):
        assert "after ADMM update 3 the ranks hold different Z/U" in r["error"]


# -- ADMM really sparsifies the mean latent --------------------------------------------------


def striped_images(n: int, side: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    images = []
    for _ in range(n):
        f, phase = torch.rand(3, generator=g) * 0.5 + 0.05, torch.rand(3, generator=g) * 6
        images.append(torch.stack(
            [0.5 + 0.4 * torch.sin(xx * f[c] + yy * f[(c + 1) % 3] + phase[c]) for c in range(3)]
        ))
    return torch.stack(images)


def outside_share_after_training(rho: float, structure: str) -> float:
    torch.manual_seed(0)
    cfg = load_config(None, [
        "model.preset=tiny", "model.patch_size=32", "w_msssim=0", "w_ssim=0", "batch_size=8",
        "lr=1e-2", "warmup_steps=10", "admm_steps=80", "finetune_steps=0", "admm_every=5",
        "pruning_ratio=0.75", f"rho={rho}", f"prune_structure={structure}",
    ])
    data = striped_images(64, 32, seed=0)
    model, admm = CAE(cfg.model), new_admm(cfg)
    optimizer, schedule = make_optimizer(model, cfg), Schedule(cfg)
    g = torch.Generator().manual_seed(1)
    for step in range(schedule.total):
        batch = data[torch.randint(0, 64, (8,), generator=g)]
        train_step(model, admm, optimizer, batch, step, cfg, schedule)
        if schedule.update_due(step):
            admm_update(admm)
    with torch.no_grad():
        _, latent = model.eval()(data)
    return admm.energy_outside(latent.square().mean(dim=0))


@pytest.mark.slow  # two 90-step runs: over a minute on 2 busy cores
def test_admm_drives_the_latent_energy_into_k_channels():
    """The issue's check on a real (tiny) network: after the ADMM phase, the share of the
    latent energy E[c^2] outside the best k-channel support is well below a run without
    the penalty (rho = 0: same schedule, same projections)."""
    without = outside_share_after_training(rho=0.0, structure="channel")
    with_admm = outside_share_after_training(rho=1000.0, structure="channel")
    assert with_admm < 0.5 * without, (with_admm, without)


# -- the local trainer ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(64, 80), (56, 48), (100, 60)]):
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([np.sin(xx / (3 + i) + c) * 0.5 + 0.5 for c in range(3)], -1) * 200
        img += rng.normal(0, 10, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "too_small.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG garbage")
    return folder


def smoke_config(image_dir: Path, *overrides: str) -> TrainConfig:
    return load_config(CONFIGS / "smoke.yaml", [f"images={image_dir}", *overrides])


def test_local_training_writes_checkpoint_export_log_and_summary(image_dir, tmp_path):
    lines: list[str] = []
    summary = train(smoke_config(image_dir), tmp_path, log=lines.append)
    assert any("3 training images loaded (2 skipped)" in line for line in lines)
    assert any(line.startswith("hard prune: kept") for line in lines)
    assert set(summary["prune"]) >= {"eval_mse_before", "eval_mse_after", "train_mse_after"}
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    with (tmp_path / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [4, 8, 12, 16]
    model = load_model(tmp_path / "model.pt")
    assert int(model.mask.sum()) == summary["kept_slots"]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 16


def test_resume_after_a_crash_gives_the_same_model_as_an_uninterrupted_run(image_dir, tmp_path):
    train(smoke_config(image_dir), tmp_path / "straight", log=lambda _: None)
    crashing = smoke_config(image_dir, "fail_at_step=10", "checkpoint_every=4")
    with pytest.raises(InjectedFailure):
        train(crashing, tmp_path / "crashed", log=lambda _: None)
    assert load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")["step"] == 8
    train(crashing, tmp_path / "crashed", log=lambda _: None)  # resumes, passes step 10
    straight = load_model(tmp_path / "straight" / "model.pt")
    resumed = load_model(tmp_path / "crashed" / "model.pt")
    assert resumed.fingerprint() == straight.fingerprint()
    with (tmp_path / "crashed" / "log.csv").open() as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [4, 8, 12, 16]


def test_device_data_resumes_bit_identically(image_dir, tmp_path):
    on_device = ("data_on_device=true",)
    train(smoke_config(image_dir, *on_device), tmp_path / "straight", log=lambda _: None)
    crashing = smoke_config(image_dir, *on_device, "fail_at_step=10", "checkpoint_every=4")
    with pytest.raises(InjectedFailure):
        train(crashing, tmp_path / "crashed", log=lambda _: None)
    train(crashing, tmp_path / "crashed", log=lambda _: None)
    straight = load_model(tmp_path / "straight" / "model.pt")
    assert load_model(tmp_path / "crashed" / "model.pt").fingerprint() == straight.fingerprint()
    # Its batches are not the host loader's: the option really changed the data source.
    host = train(smoke_config(image_dir), tmp_path / "host", log=lambda _: None)
    assert load_model(tmp_path / "host" / "model.pt").fingerprint() != straight.fingerprint()
    assert math.isfinite(host["final_eval_psnr"])


@pytest.mark.slow
def test_compiled_training_saves_plain_weights(image_dir, tmp_path, monkeypatch):
    # Dynamo's "eager" backend: the same compiled module around the network, without the
    # minute of C++ code generation inductor spends on 2 cores.
    compile_module, compiled = torch.nn.Module.compile, []

    def compile_eagerly(self, **kwargs):
        compiled.append(type(self).__name__)
        compile_module(self, backend="eager", **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", compile_eagerly)
    summary = train(smoke_config(image_dir, "compile=true", "warmup_steps=2", "admm_steps=2",
                                 "finetune_steps=2", "admm_every=1", "log_every=2"),
                    tmp_path, log=lambda _: None)  # fmt: skip
    assert math.isfinite(summary["final_eval_psnr"])
    model = load_model(tmp_path / "model.pt")  # the names of an uncompiled CAE's weights
    assert int(model.mask.sum()) == summary["kept_slots"]
    assert compiled == ["CAE"]


def test_cli_trains_and_reports_bad_input(image_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli_main(["train", "--config", str(CONFIGS / "smoke.yaml"), "--images",
                     str(image_dir), "--out", str(out), "finetune_steps=1"])
    assert code == 0 and (out / "model.pt").exists()
    assert cli_main(["train", "--config", str(CONFIGS / "smoke.yaml"), "--images",
                     str(image_dir), "--out", str(out), "rho=-1"]) == 2
    assert "rho must not be negative" in capsys.readouterr().out
    assert cli_main(["train", "--config", str(CONFIGS / "smoke.yaml"), "--images",
                     str(tmp_path / "nothing"), "--out", str(out)]) == 2


def test_init_from_starts_from_the_weights_and_refuses_another_model(image_dir, tmp_path):
    lines: list[str] = []
    train(smoke_config(image_dir, "finetune_steps=0"), tmp_path / "a", log=lambda _: None)
    source = tmp_path / "a" / "model.pt"
    zero_lr = smoke_config(image_dir, f"init_from={source}", "warmup_steps=1", "admm_steps=0",
                           "finetune_steps=0", "lr=1e-30")  # fmt: skip
    train(zero_lr, tmp_path / "b", log=lines.append)
    assert f"initialised weights from {source}" in lines
    start = load_model(source).state_dict()
    after = load_model(tmp_path / "b" / "model.pt").state_dict()
    assert all(torch.allclose(after[k].float(), v.float(), atol=1e-6) for k, v in start.items()
               if "running" not in k and "num_batches" not in k)  # fmt: skip
    other = smoke_config(image_dir, f"init_from={source}", "model.latent_channels=4")
    with pytest.raises(ConfigError, match="init_from=.* holds a model of config"):
        train(other, tmp_path / "c", log=lambda _: None)
    assert cli_main(["train", "--config", str(CONFIGS / "smoke.yaml"), "--images",
                     str(image_dir), "--out", str(tmp_path / "d"), f"init_from={source}",
                     "model.latent_channels=4"]) == 2  # fmt: skip


def test_the_run_logs_every_admm_update(image_dir, tmp_path):
    lines: list[str] = []
    train(smoke_config(image_dir), tmp_path, log=lines.append)
    updates = [line for line in lines if line.startswith("ADMM update ")]
    assert len(updates) == 3  # after steps 3, 7 and 11 (admm_every 4, 8 ADMM steps)
    assert updates[0].startswith("ADMM update 1 after step 3: support of 144 slots")
    assert "churn nan" in updates[0] and "churn nan" not in updates[1]


def log_row(**values: float) -> dict[str, float]:
    return dict.fromkeys(LOG_COLUMNS, math.nan) | {"step": 20, "phase": 2.0} | values


def test_the_progress_line_leaves_out_fields_without_a_value():
    train = {"loss": 1.5, "mse": 0.01, "psnr": 20.0, "penalty": 0.0, "lr": 1e-4,
             "mask_density": 0.375, "patches_per_s": 3.25}  # fmt: skip
    line = progress_line(log_row(**train), 100)
    assert line == ("step 20/100 [finetune] loss 1.50 mse 0.01000 psnr 20.00 penalty 0.000 "
                    "lr 1.00e-04 | mask 37.5% | 3.2 patches/s")  # fmt: skip
    assert "nan" not in line
    full = log_row(**train, bpp=0.5, energy_outside_top_k=0.1, val_psnr=25.0, val_msssim=0.9,
                   val_bpp=0.4, latent_zero_fraction=0.5)  # fmt: skip
    assert progress_line(full, 100) == (
        "step 20/100 [finetune] loss 1.50 mse 0.01000 psnr 20.00 est-bpp 0.500 penalty 0.000 "
        "outside-top-k 0.100 lr 1.00e-04 | val psnr 25.00 ms-ssim 0.9000 bpp 0.400 "
        "zeros 50.0% mask 37.5% | 3.2 patches/s"
    )
    bare = progress_line(log_row(loss=2.0), 100)  # no value anywhere but the loss
    assert bare == "step 20/100 [finetune] loss 2.00"


RATE = ["model.latent_norm=none", "model.entropy_model=factorized", "rate_lambda=8",
        "pruning_ratio=0.5"]  # fmt: skip


def test_the_final_entropy_fit_moves_only_the_entropy_model(image_dir, tmp_path):
    lines: list[str] = []
    fitted = train(smoke_config(image_dir, *RATE, "entropy_fit_steps=200"), tmp_path / "fit",
                   log=lines.append)  # fmt: skip
    plain = train(smoke_config(image_dir, *RATE), tmp_path / "plain", log=lambda _: None)
    stats = fitted["entropy_fit"]
    assert "entropy_fit" not in plain
    # the fit lowers the estimate of the last batches' symbols towards their entropy
    assert stats["entropy_bits"] <= stats["bits_after"] < stats["bits_before"]
    assert stats["bits_after"] - stats["entropy_bits"] < (
        stats["bits_before"] - stats["entropy_bits"]) / 2
    # the symbols of the last (here: all 16) batches of 4 crops, 6 x 6 slots of 4 kept channels
    assert stats["symbols"] == min(16, ENTROPY_FIT_BATCHES) * 4 * 6 * 6 * 4
    assert any(line.startswith("entropy model fitted alone for 200 steps") for line in lines)
    a = load_model(tmp_path / "fit" / "model.pt").state_dict()
    b = load_model(tmp_path / "plain" / "model.pt").state_dict()
    assert a.keys() == b.keys()
    for key in a:
        same = torch.equal(a[key], b[key])
        assert same != key.startswith("entropy."), key  # the network is the same run's


def test_no_usable_images_is_a_clear_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"junk")
    with pytest.raises(TrainDataError, match="none of the 1 files"):
        train(smoke_config(tmp_path), tmp_path / "out", log=lambda _: None)
