"""ADMM on the latent code: every image's latent keeps one shared support of k channels.

Scaled-form ADMM with a target Z and a dual U of one latent's shape, shared by all images
and all workers (docs/method.md explains the method and its departures from the paper):

- every step the loss gains `penalty(latent)`: rho/2 times the per-entry mean of
  (c_i + U)^2 over the pruned entries (zero on the kept ones);
- every `admm_every` steps the caller takes `pending()` (the sum of the latents, of their
  squares, and the count), all-reduces it over the workers if there are several, and calls
  `update(sums, count)`: the support S = the k channels (or slots) of largest energy
  E[(c + U)^2], Z = (c_bar + U) on S and 0 elsewhere, U += c_bar - Z. Every worker then
  holds the same Z, U and S;
- `mask()` is the support as the boolean mask the hard prune freezes into the model.

Ties are broken by the lower index, so exactly k entries are kept, identically everywhere.
Z, U, S and the pending sums are in `state_dict`.

The training loop's side of it: `admm_update` is that consensus step (all-reduce, update,
diagnostics), `check_consensus` the debug check that every rank ends with the same Z and U,
`hard_prune` freezes the support into the model. The collectives are passed in
(caeadmm.train_loop.sum_over_ranks, gather_from_ranks: torch.distributed when there are
several ranks), so that one process, a test's process group and a real run all run this code.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from caeadmm.model import unwrap
from caeadmm.validation import validate

STRUCTURES = ("channel", "slot")
# all_reduce(t): t summed over the ranks of a process group (in place or not: the result is
# what counts); gather(t): every rank's t, in rank order.
AllReduce = Callable[[torch.Tensor], torch.Tensor]
Gather = Callable[[torch.Tensor], list[torch.Tensor]]


class ADMMError(ValueError):
    """Invalid ADMM settings or an update/mask request that cannot be served."""


class ConsensusError(RuntimeError):
    """Ranks hold different Z or U after an ADMM update (debug check)."""


class ADMM:
    """ADMM state for one model: Z, U, the support, and the pending latent sums."""

    def __init__(
        self,
        latent_shape: tuple[int, ...],
        pruning_ratio: float,
        rho: float,
        device: torch.device | str = "cpu",
        structure: str = "channel",
    ):
        self.latent_shape = tuple(int(s) for s in latent_shape)
        if not self.latent_shape or min(self.latent_shape) < 1:
            raise ADMMError(f"latent_shape must be non-empty and positive, got {latent_shape}")
        if not 0.0 <= pruning_ratio < 1.0:
            raise ADMMError(f"pruning_ratio must be in [0, 1), got {pruning_ratio}")
        if rho < 0:
            raise ADMMError(f"rho must not be negative, got {rho}")
        if structure not in STRUCTURES:
            raise ADMMError(f"structure must be one of {STRUCTURES}, got {structure!r}")
        self.pruning_ratio = float(pruning_ratio)
        self.rho = float(rho)
        self.structure = structure
        self.numel = math.prod(self.latent_shape)
        # The support is made of whole groups: single slots, or channels of numel / C slots.
        self.group_size = 1 if structure == "slot" else self.numel // self.latent_shape[0]
        groups = self.numel // self.group_size
        # Groups kept: (1 - ratio) * groups rounded half up (not Python's half-to-even round()).
        self.k_groups = math.floor((1.0 - self.pruning_ratio) * groups + 0.5)
        self.k = self.k_groups * self.group_size
        if self.k < 1:
            raise ADMMError(
                f"pruning_ratio {pruning_ratio} keeps no {structure} of a latent of shape "
                f"{self.latent_shape} ({groups} {structure}s)"
            )
        self.Z = torch.zeros(self.latent_shape, device=device)
        self.U = torch.zeros(self.latent_shape, device=device)
        self.support = torch.zeros(self.latent_shape, dtype=torch.bool, device=device)
        self.updates = 0  # projections done so far; the penalty is off until the first
        # Pending sums since the last update: [sum of latents, sum of squared latents].
        self._sums = torch.zeros((2, *self.latent_shape), dtype=torch.float64, device=device)
        self._count = 0

    @property
    def device(self) -> torch.device:
        return self.Z.device

    def to(self, device: torch.device | str) -> ADMM:
        """Move all tensors to `device` (in place); returns self."""
        for name in ("Z", "U", "support", "_sums"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def penalty(self, latent: torch.Tensor) -> torch.Tensor:
        """rho/2 * per-slot mean over the batch of (c_i - Z_i + U)^2, which is (c_i + U)^2
        on the pruned slots and 0 on the kept ones (module docstring).

        Zero (with a gradient path) before the first projection, when Z and U mean nothing.
        """
        self._check_latent(latent)
        if self.updates == 0 or self.rho == 0:
            return latent.sum() * 0.0
        pruned = (~self.support).to(latent.dtype)
        residual = (latent + self.U.to(latent.dtype)) * pruned
        return 0.5 * self.rho * residual.square().mean()

    def accumulate(self, latent: torch.Tensor) -> None:
        """Add a batch of latents (B, *latent_shape) to the pending sums (detached)."""
        self._check_latent(latent)
        latent = latent.detach().to(torch.float64)
        self._sums[0] += latent.sum(dim=0)
        self._sums[1] += latent.square().sum(dim=0)
        self._count += int(latent.shape[0])

    def pending(self) -> tuple[torch.Tensor, int]:
        """(sums since the last update, float64 of shape (2, *latent_shape): the sum of the
        latents and of their squares; the number of latents summed).

        A distributed caller all-reduces both (SUM) and passes the totals to `update`.
        """
        return self._sums.clone(), self._count

    def update(self, sums: torch.Tensor, count: int | torch.Tensor) -> None:
        """One support, Z and U step from the (global) sums and count; resets the sums."""
        count = int(count.item() if isinstance(count, torch.Tensor) else count)
        if count <= 0:
            raise ADMMError("update needs at least one accumulated latent (count was 0)")
        if tuple(sums.shape) != (2, *self.latent_shape):
            raise ADMMError(
                f"sums have shape {tuple(sums.shape)}, expected {(2, *self.latent_shape)}"
            )
        mean, second = sums.to(device=self.device, dtype=torch.float64) / count
        u = self.U.double()
        energy = second + 2 * u * mean + u.square()  # E[(c + U)^2] per slot
        self.support = self.select(energy)
        c_bar = mean.float()
        self.Z = torch.where(self.support, c_bar + self.U, torch.zeros_like(c_bar))
        self.U = self.U + c_bar - self.Z
        self.updates += 1
        self._sums.zero_()
        self._count = 0

    def select(self, energy: torch.Tensor) -> torch.Tensor:
        """The support of exactly k slots: the k_groups groups of largest total energy."""
        magnitude = energy.clamp_min(0).sqrt()
        if self.structure == "slot":
            return project_top_k(magnitude, self.k)[1]
        return project_top_k_channels(magnitude, self.k_groups)[1]

    def energy_outside(self, second_moment: torch.Tensor) -> float:
        """Share of the latent energy E[c^2] outside the best support of k slots: what a
        hard prune now would drop (0: the latents already meet the constraint)."""
        energy = second_moment.to(self.device).double()
        total = float(energy.sum())
        if total <= 0:
            return 0.0
        return 1.0 - float(energy[self.select(energy)].sum()) / total

    def mask(self) -> torch.Tensor:
        """The slots kept by the last projection: exactly k True (the support)."""
        if self.updates == 0:
            raise ADMMError("no ADMM projection has run yet, so there is no mask")
        return self.support.clone()

    def residual(self, c_bar: torch.Tensor) -> float:
        """||c_bar - Z||: how far the mean latent is from its k-sparse target (for logs)."""
        return float(torch.linalg.vector_norm(c_bar.to(self.device).float() - self.Z))

    def state_dict(self) -> dict:
        return {
            "latent_shape": list(self.latent_shape),
            "structure": self.structure,
            "pruning_ratio": self.pruning_ratio,
            "rho": self.rho,
            "k": self.k,
            "updates": self.updates,
            "Z": self.Z.clone(),
            "U": self.U.clone(),
            "support": self.support.clone(),
            "sums": self._sums.clone(),
            "count": self._count,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`; the shape, structure and k must match this instance's."""
        structure = state.get("structure")
        if (
            tuple(state["latent_shape"]) != self.latent_shape
            or state["k"] != self.k
            or structure != self.structure
            or "sums" not in state
        ):
            raise ADMMError(
                f"ADMM state for shape {tuple(state['latent_shape'])} with k={state['k']} "
                f"({structure}) does not fit shape {self.latent_shape} with k={self.k} "
                f"({self.structure})"
            )
        self.rho = float(state["rho"])
        self.updates = int(state["updates"])
        self.Z = state["Z"].to(self.device, torch.float32).clone()
        self.U = state["U"].to(self.device, torch.float32).clone()
        self.support = state["support"].to(self.device, torch.bool).clone()
        self._sums = state["sums"].to(self.device, torch.float64).clone()
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


def project_top_k_channels(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the k channels (first dimension) of largest energy (sum of squares) whole, zero
    the rest: (projected, kept mask). Ties go to the lower channel index, as in project_top_k.
    """
    if not 0 <= k <= values.shape[0]:
        raise ADMMError(f"k must be in [0, {values.shape[0]}] channels, got {k}")
    energy = values.reshape(values.shape[0], -1).double().square().sum(dim=1)
    order = torch.sort(energy, descending=True, stable=True).indices
    kept_channels = torch.zeros(values.shape[0], dtype=torch.bool, device=values.device)
    kept_channels[order[:k]] = True
    kept = kept_channels.reshape(-1, *([1] * (values.dim() - 1))).expand(values.shape).clone()
    return torch.where(kept, values, torch.zeros_like(values)), kept


# ---------------------------------------------------------------------------------------------
# The training loop's side: the consensus step over the ranks, its check, the hard prune


def admm_update(admm: ADMM, all_reduce: AllReduce | None = None) -> dict[str, float]:
    """One ADMM update from the latents of all ranks; returns its diagnostics (the run log's
    admm_residual, energy_outside_top_k, support_churn).

    The latent sums and counts each rank gathered since the last update are summed over the
    ranks by `all_reduce` (None: this process's alone); every rank then runs the same
    deterministic `admm.update` on the same totals, so all hold the same Z and U.
    """
    sums, local_count = admm.pending()
    count = torch.tensor([local_count], dtype=torch.float64, device=sums.device)
    if all_reduce is not None:
        sums, count = all_reduce(sums), all_reduce(count)
    total = int(count.item())
    stats = {
        "admm_residual": admm.residual(sums[0] / max(total, 1)),
        "energy_outside_top_k": admm.energy_outside(sums[1] / max(total, 1)),
    }
    before = admm.support.clone() if admm.updates else None
    admm.update(sums, total)
    # Share of the kept slots that changed: near 0 once the ADMM support has settled.
    changed = (admm.support & ~before).sum() / admm.k if before is not None else math.nan
    stats["support_churn"] = float(changed)
    return stats


def check_consensus(admm: ADMM, gather: Gather | None = None) -> str:
    """Raise ConsensusError unless every rank (`gather`: each rank's tensor; None: this
    process alone) holds bit-identical Z and U; returns the checksum they share (hex)."""
    words = _checksum(admm.Z, admm.U)
    if gather is not None:
        mine = torch.tensor(words, dtype=torch.int64, device=admm.device)
        sums = [tuple(int(v) for v in g.tolist()) for g in gather(mine)]
        if len(set(sums)) != 1:
            raise ConsensusError(
                f"after ADMM update {admm.updates} the ranks hold different Z/U (checksums by "
                f"rank: {sums})"
            )
    return f"{words[0]:016x}"


def _checksum(*tensors: torch.Tensor) -> list[int]:
    """Two int64 words of sha256 over the tensors' bytes (non-negative, so they fit)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    digest = h.digest()
    return [int.from_bytes(digest[i : i + 8], "little") >> 1 for i in (0, 8)]


def hard_prune(
    model: nn.Module,
    admm: ADMM,
    val: torch.Tensor | None = None,
    recent_mse: Iterable[torch.Tensor] = (),
) -> dict[str, float]:
    """Freeze the ADMM support as the model's mask (the start of the fine-tune) and measure
    the jump: inference MSE and PSNR of `val` with the same weights just before and just
    after (NaN without `val`), and the mean training MSE of `recent_mse`."""
    net = unwrap(model)
    recent = list(recent_mse)
    before = validate(net, val)
    net.set_mask(admm.mask())
    after = validate(net, val)
    return {
        "eval_mse_before": before["mse"],
        "eval_mse_after": after["mse"],
        "eval_psnr_before": before["psnr"],
        "eval_psnr_after": after["psnr"],
        "train_mse_before": float(torch.stack(recent).mean()) if recent else math.nan,
    }
