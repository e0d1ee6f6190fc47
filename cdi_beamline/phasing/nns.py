"""Nearest-neighbour search over simulated moduli: the paper's baseline (Sec. 2.2).

Distance = the scale-invariant chi² of eq. 5, ``1 - cos²(q, r)`` between modulus vectors
(moduli are non-negative, so the best match maximises the cosine). Exhaustive search over
150k × 4096 costs ~1.2 GFLOP per query; instead every unit-norm modulus vector is
projected onto its ``rank`` leading principal components, candidates are the ``k``
nearest in that subspace (Euclidean, which lower-bounds the full distance between unit
vectors: a query taken from the index is at distance 0 from itself), and the candidates
are re-ranked by the exact cosine. All in batched matrix products over memory-bounded
chunks of the index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["NearestNeighbourIndex", "NeighbourMatch"]


@dataclass
class NeighbourMatch:
    """Best match per query: index (B,) int64, chi2 (B,) float32, and the reference's
    amplitude, phase (radians) and support, (B, h, w) on the index's object grid."""

    index: torch.Tensor
    chi2: torch.Tensor
    amplitude: torch.Tensor
    phase: torch.Tensor
    support: torch.Tensor


class NearestNeighbourIndex:
    """Index of reference moduli with their objects.

    Parameters
    ----------
    modulus : (N, H, W) reference moduli (sqrt of intensity)
    amplitude, phase : (N, h, w) the references' objects; support : (N, h, w) bool
    rank : principal components of the prefilter (capped by N and H·W)
    candidates : prefilter candidates re-ranked exactly per query
    chunk : index rows per matrix product (bounds memory: chunk × queries floats)
    device : where the index lives and the search runs
    """

    def __init__(
        self,
        modulus,
        amplitude,
        phase,
        support,
        *,
        rank: int = 64,
        candidates: int = 32,
        chunk: int = 32768,
        device="cpu",
        seed: int = 0,
    ):
        mod = torch.as_tensor(modulus, dtype=torch.float32)
        if mod.ndim != 3 or mod.shape[0] == 0:
            raise ValueError(f"NNS index: modulus must be (N, H, W) with N >= 1, got {tuple(mod.shape)}")
        if not torch.isfinite(mod).all() or (mod < 0).any():
            raise ValueError("NNS index: moduli must be finite and non-negative")
        N = mod.shape[0]
        self.amplitude = torch.as_tensor(amplitude, dtype=torch.float32)
        self.phase = torch.as_tensor(phase, dtype=torch.float32)
        self.support = torch.as_tensor(support).bool()
        for name, t in (("amplitude", self.amplitude), ("phase", self.phase), ("support", self.support)):
            if t.ndim != 3 or t.shape[0] != N:
                raise ValueError(f"NNS index: {name} must be (N={N}, h, w), got {tuple(t.shape)}")
        self.device = torch.device(device)
        self.pattern_shape = tuple(mod.shape[-2:])
        self.chunk = int(chunk)
        self.candidates = int(candidates)
        vec = _unit(mod.reshape(N, -1)).to(self.device)
        self.vectors = vec  # (N, D) unit norm, for the exact re-rank
        # PCA basis from (a sample of) the references.
        gen = torch.Generator().manual_seed(seed)
        sample = vec[torch.randperm(N, generator=gen)[: min(N, 4096)].to(self.device)]
        self.mean = sample.mean(0)
        r = max(1, min(rank, sample.shape[0], vec.shape[1]))
        with torch.random.fork_rng(devices=[]):  # svd_lowrank draws from the global RNG
            torch.manual_seed(seed)
            _, _, v = torch.svd_lowrank(sample - self.mean, q=min(r + 8, *sample.shape), niter=2)
        self.basis = v[:, :r].contiguous()  # (D, r) randomised PCA
        self.projected = torch.cat([(c - self.mean) @ self.basis for c in vec.split(self.chunk)])
        self.projected_sq = self.projected.square().sum(1)

    @classmethod
    def from_h5(cls, path, **kw) -> NearestNeighbourIndex:
        """Index the HDF5 written by ``cdi-beamline simulate`` (datasets modulus, amplitude,
        phase, support), read with :func:`cdi_beamline.physics.read_h5`."""
        try:
            from ..physics import read_h5
        except ImportError as exc:
            raise RuntimeError(f"NNS from HDF5 needs cdi_beamline.physics.read_h5: {exc}") from exc
        data = read_h5(path, params=False)
        missing = [k for k in ("modulus", "amplitude", "phase", "support") if k not in data]
        if missing:
            raise ValueError(f"{path}: NNS index needs datasets {missing}")
        return cls(data["modulus"], data["amplitude"], data["phase"], data["support"], **kw)

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @torch.no_grad()
    def query(self, modulus) -> NeighbourMatch:
        """Best reference for each query modulus (B, H, W) (or one (H, W))."""
        q = torch.as_tensor(modulus, dtype=torch.float32)
        if q.ndim == 2:
            q = q[None]
        if tuple(q.shape[-2:]) != self.pattern_shape or q.ndim != 3:
            raise ValueError(f"NNS query shape {tuple(q.shape)} does not match the index's {self.pattern_shape}")
        qv = _unit(q.reshape(q.shape[0], -1).to(self.device))
        qp = (qv - self.mean) @ self.basis
        k = min(self.candidates, len(self))
        best_d: torch.Tensor | None = None
        best_i = torch.empty(0, dtype=torch.long)
        for start in range(0, len(self), self.chunk):
            p = self.projected[start : start + self.chunk]
            d = self.projected_sq[start : start + self.chunk][None, :] - 2.0 * (qp @ p.T)
            dv, di = d.topk(min(k, d.shape[1]), dim=1, largest=False)
            di = di + start
            if best_d is not None:
                dv, order = torch.cat([best_d, dv], 1).topk(k, dim=1, largest=False)
                di = torch.cat([best_i, di], 1).gather(1, order)
            best_d, best_i = dv, di
        cos = torch.einsum("bd,bkd->bk", qv, self.vectors[best_i])
        j = cos.argmax(1)
        idx = best_i.gather(1, j[:, None])[:, 0]
        c = cos.gather(1, j[:, None])[:, 0]
        cpu = idx.cpu()
        return NeighbourMatch(
            index=cpu,
            chi2=(1.0 - c.square()).clamp_min(0.0).cpu(),
            amplitude=self.amplitude[cpu],
            phase=self.phase[cpu],
            support=self.support[cpu],
        )


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
