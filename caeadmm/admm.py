"""ADMM on the latent code: drives all but k slots of the mean training latent to zero.

Problem: min distortion(c) subject to c_bar (the mean latent over the training data) having
at most k non-zero slots. Scaled-form ADMM with a target Z (k-sparse) and a dual U, both of
one patch's latent shape (C, P/8, P/8) and shared by all images:

- every step the loss gains `penalty(latent)`;
- every `admm_every` steps the caller takes the latent sum and count gathered by
  `accumulate` (`pending()`), all-reduces them over the workers if there are several, and
  calls `update(sum, count)`: c_bar = sum / count; Z = the k largest-magnitude entries of
  c_bar + U (the rest zeroed); U += c_bar - Z. Every worker then holds the same Z and U.

Penalty normalisation. DESIGN.md's penalty is rho/2 * mean_i ||c_i - Z + U||^2, a sum over
all C*h*w slots (8,192 for C = 32 at 128 px), which with rho = 0.1 swamped the distortion.
Here `penalty` is rho/2 times the PER-SLOT mean of the squared residual over the batch:
rho/2 * mean_i ||c_i - Z + U||^2 / (C*h*w). It is the same function with rho_spec =
rho / (C*h*w), but rho now means the same thing for any C and patch size: with rho = 1 a
residual of one quantisation step in every slot costs 0.5, against a distortion of order
100 (the paper's weights). docs/training.md has the measurements behind the default.

Deliberately unlike the authors' code (DESIGN.md): the projection keeps the top k by
MAGNITUDE (a stable sort, ties broken by the lower flat index, exactly k slots kept); c_bar
divides by the number of latents really summed; the penalty is the squared norm averaged
over the batch; Z, U and the pending sums are in state_dict for exact resume.
"""

from __future__ import annotations

import math

import torch


class ADMMError(ValueError):
    """Invalid ADMM settings or an update/mask request that cannot be served."""


class ADMM:
    """ADMM state for one model: Z, U, the support of Z, and the pending latent sums."""

    def __init__(
        self,
        latent_shape: tuple[int, ...],
        pruning_ratio: float,
        rho: float,
        device: torch.device | str = "cpu",
    ):
        self.latent_shape = tuple(int(s) for s in latent_shape)
        if not self.latent_shape or min(self.latent_shape) < 1:
            raise ADMMError(f"latent_shape must be non-empty and positive, got {latent_shape}")
        if not 0.0 <= pruning_ratio < 1.0:
            raise ADMMError(f"pruning_ratio must be in [0, 1), got {pruning_ratio}")
        if rho < 0:
            raise ADMMError(f"rho must not be negative, got {rho}")
        self.pruning_ratio = float(pruning_ratio)
        self.rho = float(rho)
        self.numel = math.prod(self.latent_shape)
        # k = (1 - ratio) * numel rounded half up (not Python's half-to-even round()).
        self.k = math.floor((1.0 - self.pruning_ratio) * self.numel + 0.5)
        if self.k < 1:
            raise ADMMError(
                f"pruning_ratio {pruning_ratio} keeps no slot of a latent of {self.numel} slots"
            )
        self.Z = torch.zeros(self.latent_shape, device=device)
        self.U = torch.zeros(self.latent_shape, device=device)
        self.support = torch.zeros(self.latent_shape, dtype=torch.bool, device=device)
        self.updates = 0  # projections done so far; the penalty is off until the first
        self._sum = torch.zeros(self.latent_shape, dtype=torch.float64, device=device)
        self._count = 0

    @property
    def device(self) -> torch.device:
        return self.Z.device

    def to(self, device: torch.device | str) -> ADMM:
        """Move all tensors to `device` (in place); returns self."""
        for name in ("Z", "U", "support", "_sum"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def penalty(self, latent: torch.Tensor) -> torch.Tensor:
        """rho/2 * per-slot mean over the batch of (c_i - Z + U)^2 (module docstring).

        Zero (with a gradient path) before the first projection, when Z and U mean nothing.
        """
        self._check_latent(latent)
        if self.updates == 0 or self.rho == 0:
            return latent.sum() * 0.0
        residual = latent - (self.Z - self.U).to(latent.dtype)
        return 0.5 * self.rho * residual.square().mean()

    def accumulate(self, latent: torch.Tensor) -> None:
        """Add a batch of latents (B, *latent_shape) to the pending sum (detached)."""
        self._check_latent(latent)
        self._sum += latent.detach().to(torch.float64).sum(dim=0)
        self._count += int(latent.shape[0])

    def pending(self) -> tuple[torch.Tensor, int]:
        """(sum of the latents accumulated since the last update (float64), their count).

        A distributed caller all-reduces both (SUM) and passes the totals to `update`.
        """
        return self._sum.clone(), self._count

    def update(self, latent_sum: torch.Tensor, count: int | torch.Tensor) -> None:
        """One Z and U step from the (global) latent sum and count; resets the accumulators."""
        count = int(count.item() if isinstance(count, torch.Tensor) else count)
        if count <= 0:
            raise ADMMError("update needs at least one accumulated latent (count was 0)")
        if tuple(latent_sum.shape) != self.latent_shape:
            raise ADMMError(
                f"latent_sum has shape {tuple(latent_sum.shape)}, expected {self.latent_shape}"
            )
        c_bar = (latent_sum.to(device=self.device, dtype=torch.float64) / count).float()
        self.Z, self.support = project_top_k(c_bar + self.U, self.k)
        self.U = self.U + c_bar - self.Z
        self.updates += 1
        self._sum.zero_()
        self._count = 0

    def mask(self) -> torch.Tensor:
        """The slots kept by the last projection: exactly k True (the support of Z).

        Equal to Z != 0 except where a kept value is exactly 0, so the pruned model always
        keeps exactly k slots.
        """
        if self.updates == 0:
            raise ADMMError("no ADMM projection has run yet, so there is no mask")
        return self.support.clone()

    def residual(self, c_bar: torch.Tensor) -> float:
        """||c_bar - Z||: how far the mean latent is from its k-sparse target (for logs)."""
        return float(torch.linalg.vector_norm(c_bar.to(self.device).float() - self.Z))

    def state_dict(self) -> dict:
        return {
            "latent_shape": list(self.latent_shape),
            "pruning_ratio": self.pruning_ratio,
            "rho": self.rho,
            "k": self.k,
            "updates": self.updates,
            "Z": self.Z.clone(),
            "U": self.U.clone(),
            "support": self.support.clone(),
            "sum": self._sum.clone(),
            "count": self._count,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`; the shape and k must match this instance's."""
        if tuple(state["latent_shape"]) != self.latent_shape or state["k"] != self.k:
            raise ADMMError(
                f"ADMM state for shape {tuple(state['latent_shape'])} with k={state['k']} "
                f"does not fit shape {self.latent_shape} with k={self.k}"
            )
        self.rho = float(state["rho"])
        self.updates = int(state["updates"])
        self.Z = state["Z"].to(self.device, torch.float32).clone()
        self.U = state["U"].to(self.device, torch.float32).clone()
        self.support = state["support"].to(self.device, torch.bool).clone()
        self._sum = state["sum"].to(self.device, torch.float64).clone()
        self._count = int(state["count"])

    def _check_latent(self, latent: torch.Tensor) -> None:
        if tuple(latent.shape[1:]) != self.latent_shape:
            raise ADMMError(
                f"latents must be (B, {', '.join(map(str, self.latent_shape))}), "
                f"got {tuple(latent.shape)}"
            )


def project_top_k(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the k entries of largest magnitude, zero the rest: (projected, kept mask).

    Ties in magnitude go to the lower flat index (a stable descending sort), so the result
    is deterministic and identical on every worker.
    """
    flat = values.reshape(-1)
    if not 0 <= k <= flat.numel():
        raise ADMMError(f"k must be in [0, {flat.numel()}], got {k}")
    order = torch.sort(flat.abs(), descending=True, stable=True).indices
    kept = torch.zeros_like(flat, dtype=torch.bool)
    kept[order[:k]] = True
    return torch.where(kept, flat, torch.zeros_like(flat)).reshape(values.shape), kept.reshape(
        values.shape
    )
