"""caeadmm: a compressive autoencoder whose latent code is pruned by ADMM (Zhao and Liao,
arXiv:1901.07196), with the distributed system to train, run and evaluate it.

The codec core (model, ADMM, losses, codec, metrics, baselines) never imports Ray; the
distributed layer (data pipeline, Ray Train loop, Ray evaluation and batch compression)
does. See docs/architecture.md.
"""

__version__ = "0.1.0"
