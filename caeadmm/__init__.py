"""caeadmm: a compressive autoencoder whose latent code is pruned by ADMM (Zhao and Liao,
arXiv:1901.07196), with the distributed system to train, run and evaluate it.

The core (model, ADMM, losses, codec, metrics, baselines, CLI) never imports Ray; the Ray
layer, `caeadmm.distributed` (session start-up, shard preparation and reading, Ray Train,
evaluation fan-out, batch compression), does. See docs/architecture.md.
"""

__version__ = "0.1.0"
