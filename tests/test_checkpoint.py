"""Checkpoints: exact round trip, inference loading, export, atomic writes, bad files."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from caeadmm.admm import admm_update, hard_prune
from caeadmm.checkpoint import (
    CheckpointError,
    export_model,
    load_checkpoint,
    load_model,
    newest_complete_checkpoint,
    restore_training_state,
    save_checkpoint,
)
from caeadmm.config import ModelConfig, load_config
from caeadmm.model import CAE
from caeadmm.train_loop import Schedule, make_optimizer, new_admm, train_step

SMOKE = ["model.preset=tiny", "batch_size=2", "warmup_steps=1", "admm_steps=2",
         "finetune_steps=1", "admm_every=1", "pruning_ratio=0.5", "w_msssim=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model after warm-up, ADMM updates and the hard prune, plus its checkpoint."""
    tmp_path = tmp_path_factory.mktemp("trained")
    torch.manual_seed(0)
    cfg = load_config(None, SMOKE)
    model, admm = CAE(cfg.model), new_admm(cfg)
    optimizer, schedule = make_optimizer(model, cfg), Schedule(cfg)
    batch = torch.rand(2, 3, 48, 48)
    for step in range(schedule.total):
        if schedule.prune_at(step):
            hard_prune(model, admm)
        train_step(model, admm, optimizer, batch, step, cfg, schedule)
        if schedule.update_due(step):
            admm_update(admm)
    admm.accumulate(torch.randn(3, *admm.latent_shape))  # pending sums are state too
    path = save_checkpoint(
        tmp_path / "ckpt.pt", model=model, admm=admm, optimizer=optimizer, step=4, config=cfg,
        extra={"note": "hi"},
    )
    return cfg, model, admm, optimizer, path


def test_round_trip_restores_z_u_mask_step_optimizer_and_outputs_exactly(trained):
    cfg, model, admm, optimizer, path = trained
    assert model.mask is not None and admm.updates == 3
    ckpt = load_checkpoint(path)
    assert ckpt["extra"] == {"note": "hi"}
    assert load_config(None, SMOKE).to_dict() == ckpt["config"]

    model2, admm2 = CAE(cfg.model), new_admm(cfg)
    optimizer2 = make_optimizer(model2, cfg)
    assert restore_training_state(ckpt, model=model2, admm=admm2, optimizer=optimizer2) == 4
    assert torch.equal(admm2.Z, admm.Z) and torch.equal(admm2.U, admm.U)
    assert torch.equal(admm2.mask(), admm.mask())
    assert torch.equal(admm2.pending()[0], admm.pending()[0])
    assert torch.equal(model2.mask, model.mask)
    assert model2.fingerprint() == model.fingerprint()
    state, state2 = optimizer.state_dict()["state"], optimizer2.state_dict()["state"]
    assert all(torch.equal(state[i]["exp_avg"], state2[i]["exp_avg"]) for i in state)
    x = torch.rand(2, 3, 48, 48)
    model.eval()
    model2.eval()
    with torch.no_grad():
        assert torch.equal(model(x)[0], model2(x)[0])
    assert torch.equal(model.encode(x), model2.encode(x))


def test_rng_states_are_restored(trained, tmp_path):
    _, model, admm, optimizer, _ = trained
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    path = save_checkpoint(tmp_path / "rng.pt", model=model, admm=admm, optimizer=optimizer,
                           step=0, config=load_config(None, SMOKE))
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_training_state(load_checkpoint(path), model=model)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_load_model_and_export_give_the_same_masked_eval_model(trained, tmp_path):
    _, model, _, _, path = trained
    loaded = load_model(path)
    assert not loaded.training and torch.equal(loaded.mask, model.mask)
    assert loaded.fingerprint() == model.fingerprint()
    exported = export_model(path, tmp_path / "model.pt")
    assert exported.stat().st_size < path.stat().st_size  # no optimizer state
    assert load_model(exported).fingerprint() == model.fingerprint()
    with pytest.raises(CheckpointError, match="no training state"):
        restore_training_state(load_checkpoint(exported), model=CAE(model.config))


def test_small_preset_checkpoint_ships_under_10_mb_with_float32_weights(tmp_path):
    cfg = load_config(None, ["model.preset=small"])
    model = CAE(cfg.model).double()  # stored as float32 whatever the training dtype
    optimizer = make_optimizer(model, cfg)
    path = save_checkpoint(tmp_path / "c.pt", model=model, admm=new_admm(cfg),
                           optimizer=optimizer, step=0, config=cfg)
    assert path.stat().st_size < 10 * 2**20
    weights = load_checkpoint(path)["model"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in weights.values())


def test_writes_are_atomic_and_leave_no_temporary_files(trained, tmp_path):
    _, model, admm, optimizer, original = trained
    path = tmp_path / "ckpt.pt"
    path.write_bytes(original.read_bytes())
    before = path.read_bytes()

    class Boom:
        def state_dict(self):
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        save_checkpoint(path, model=model, admm=admm, optimizer=Boom(), step=9,
                        config=load_config(None, SMOKE))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_bad_files_raise_checkpoint_error(trained, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a caeadmm model or checkpoint"):
        load_model(tmp_path / "junk.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a caeadmm"):
        load_checkpoint(tmp_path / "other.pt")
    path = trained[-1]
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError):
        load_model(truncated)


def test_restoring_into_a_model_of_another_config_is_refused(trained):
    path = trained[-1]
    other = CAE(ModelConfig.from_preset("tiny", latent_channels=4))
    with pytest.raises(CheckpointError, match="differs"):
        restore_training_state(load_checkpoint(path), model=other)


def test_newest_complete_checkpoint_skips_a_torn_one(trained, tmp_path):
    cfg, model, admm, optimizer, _ = trained
    for step in (12, 16, 20):
        save_checkpoint(tmp_path / f"checkpoint_{step:07d}" / "checkpoint.pt", model=model,
                        admm=admm, optimizer=optimizer, step=step, config=cfg)
    torn = tmp_path / "checkpoint_0000020" / "checkpoint.pt"
    torn.write_bytes(torn.read_bytes()[:100])  # a job stopped while writing it
    (tmp_path / "log.csv").write_text("step\n")
    assert newest_complete_checkpoint(tmp_path)["step"] == 16
    assert newest_complete_checkpoint(tmp_path / "nothing-here") is None
