"""Shared fixtures. Ray is started here by the tests themselves, never assumed."""

from __future__ import annotations

import os

import pytest

# Keep numba's and torch's thread pools to what CI has (2 cores).
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module (`pytestmark = pytest.mark.usefixtures(...)`): small
    models gain nothing from a second thread, and OpenMP's waiting threads make them many
    times slower on a busy 2-core machine. (Thread-count independence is tested.)"""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance shared by the tests that need one, shut down at the end.

    It declares 4 logical CPUs on a 2-core machine so that a training worker and Ray Data's
    read tasks can be scheduled side by side (see docs/architecture.md, "Ray on small machines").
    Tests that need their own cluster (multi-node simulation) must not use this fixture.
    """
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",  # never attach to a cluster something else started
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=True,
        logging_level="ERROR",
        object_store_memory=512 * 1024 * 1024,
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def no_registry(monkeypatch, tmp_path):
    """No model registry unless a test makes one, and no model the CLI cached in another
    test (`pytestmark = pytest.mark.usefixtures("no_registry")`)."""
    from caeadmm.cli.common import cached_model

    empty = tmp_path / "empty-registry.json"
    empty.write_text('{"default": null, "models": []}')
    monkeypatch.setenv("CAEADMM_REGISTRY", str(empty))
    cached_model.cache_clear()
    yield
    cached_model.cache_clear()
