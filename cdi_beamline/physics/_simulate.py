"""The paper's pattern generator: superellipsoid shape, Gaussian-correlated phase, random
3D orientation, projection along the beam and the centred Fourier modulus.

Axes of 3D tensors are (batch, z, y, x) with z along the beam; lengths are in object
voxels. The pattern is the central (q_z = 0) slice of the 3D Fourier transform of the
complex field, computed as the 2D transform of its projection along z (Fourier-slice
theorem); see docs/simulator.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from dataclasses import field as dataclass_field
from typing import Any

import numpy as np
import torch

from ..config.simulation import OBJECT_SIZE, PATTERN_SIZE, DetectorConfig, SimulationConfig
from ..device import resolve_device
from ..errors import CDIValueError
from ..fourier import embed_centre, fourier_modulus

__all__ = [
    "SimulatedBatch",
    "simulate_batch",
    "iter_batches",
    "random_rotations",
    "bounding_radius",
    "detector_mask",
    "chunk_size",
]

#: The phase field's spectrum is dropped where the kernel's transform is below this fraction
#: of its peak (see _Grid).
KERNEL_CUTOFF = 1e-6

#: Names of the per-pattern scalar parameters, in the order they are drawn.
SCALAR_PARAMS = ("a", "b", "c", "e", "n", "Lx", "Ly", "Lz", "phase_span")


@dataclass
class SimulatedBatch:
    """N simulated patterns and their ground truth, torch tensors on one device.

    Attributes
    ----------
    modulus : (N, 64, 64) float32
        sqrt(I), centred. Without detector effects exactly
        ``fourier_modulus(embed_centre(amplitude * exp(1j * phase), (64, 64)))``.
    amplitude : (N, 32, 32) float32
        Projected amplitude, maximum 1, zero outside the support.
    phase : (N, 32, 32) float32
        Projected phase in radians, (-pi, pi], zero outside the support. Global phase
        convention: the object's sum (the q = 0 pixel) is real and positive.
    support : (N, 32, 32) bool
    mask : (N, 64, 64) bool or None
        True where the pixel is measured; None when no pixel is masked.
    params : dict of str to Tensor
        Per-pattern generator parameters: ``a, b, c, e, n, Lx, Ly, Lz, phase_span, fit_scale``
        (N,) and ``rotation`` (N, 3, 3), which maps particle to lab (detector) coordinates.
    field : (N, nz, 32, 32) complex64 or None
        The 3D complex field s * exp(i phi) before projection (only with ``keep_field``).
    """

    modulus: torch.Tensor
    amplitude: torch.Tensor
    phase: torch.Tensor
    support: torch.Tensor
    mask: torch.Tensor | None = None
    params: dict[str, torch.Tensor] = dataclass_field(default_factory=dict)
    field: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.modulus.shape[0]

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Arrays keyed as in the HDF5 file: ``modulus, ..., mask``, ``params/<name>``."""
        out = {
            f.name: getattr(self, f.name).detach().cpu().numpy()
            for f in fields(self)
            if f.name not in ("params", "field") and getattr(self, f.name) is not None
        }
        out.update({f"params/{k}": v.detach().cpu().numpy() for k, v in self.params.items()})
        return out

    @classmethod
    def cat(cls, batches: list[SimulatedBatch]) -> SimulatedBatch:
        """Concatenate batches along N."""
        if len(batches) == 1:
            return batches[0]

        def join(name):
            parts = [getattr(b, name) for b in batches]
            return None if parts[0] is None else torch.cat(parts)

        return cls(
            modulus=join("modulus"),
            amplitude=join("amplitude"),
            phase=join("phase"),
            support=join("support"),
            mask=join("mask"),
            params={k: torch.cat([b.params[k] for b in batches]) for k in batches[0].params},
            field=join("field"),
        )


def simulate_batch(
    n: int,
    config: SimulationConfig | None = None,
    *,
    seed: int = 0,
    device="auto",
    keep_field: bool = False,
) -> SimulatedBatch:
    """Simulate ``n`` diffraction patterns of random particles (the paper's generator).

    Parameters
    ----------
    n : int
        Number of patterns, >= 1.
    config : SimulationConfig, optional
        Shape, phase and detector parameters; defaults to ``SimulationConfig()``.
    seed : int
        Non-negative seed. The same (seed, config, device) gives identical output.
    device : str or torch.device
        ``"auto" | "cpu" | "cuda[:k]"``.
    keep_field : bool
        Also return the 3D complex field (memory: n * nz * 32 * 32 * 8 bytes).

    Returns
    -------
    SimulatedBatch
        Tensors on ``device``: modulus (n, 64, 64), amplitude/phase/support (n, 32, 32).
    """
    return SimulatedBatch.cat(list(iter_batches(n, config, seed=seed, device=device, keep_field=keep_field)))


def iter_batches(
    n: int,
    config: SimulationConfig | None = None,
    *,
    seed: int = 0,
    device="auto",
    keep_field: bool = False,
) -> Iterator[SimulatedBatch]:
    """Yield the patterns of ``simulate_batch(n, ...)`` in chunks of ``config.chunk_size``.

    Arguments are checked at once (not at the first chunk)."""
    config = SimulationConfig() if config is None else config
    if not isinstance(config, SimulationConfig):
        raise TypeError(f"config must be a SimulationConfig, got {type(config).__name__}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise CDIValueError(f"n: the number of patterns must be an integer >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CDIValueError(f"seed must be a non-negative integer, got {seed!r}")
    dev = resolve_device(device)
    return _chunks(int(n), config, int(seed), dev, keep_field)


def _chunks(n: int, config: SimulationConfig, seed: int, dev: torch.device, keep_field: bool):
    grid = _Grid(config, dev)
    chunk = chunk_size(config, dev)
    for k, start in enumerate(range(0, n, chunk)):
        gen = torch.Generator(device=dev).manual_seed(_chunk_seed(seed, k))
        yield _simulate_chunk(min(chunk, n - start), chunk, config, grid, gen, keep_field)


def chunk_size(config: SimulationConfig, device) -> int:
    """Patterns per chunk: ``config.chunk_size``, or 32 on the CPU and 4096 on CUDA when None."""
    if config.chunk_size is not None:
        return config.chunk_size
    return 4096 if resolve_device(device).type == "cuda" else 32


def _chunk_seed(seed: int, chunk: int) -> int:
    # Independent, well-mixed streams per chunk (SeedSequence), 63 bits for torch.
    words = np.random.SeedSequence([seed, chunk]).generate_state(2, dtype=np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1]))


class _Grid:
    """The voxels that can hold a particle and the frequencies of the phase field.

    Particles are shrunk to ``max_radius``, so only voxels within ``max_radius`` plus the
    edge-smoothing tail (3 sigma) of the centre are evaluated: a flat list of ``M`` voxels
    (about 45% of the (nz, 32, 32) box).
    """

    def __init__(self, config: SimulationConfig, device: torch.device):
        s, nz = OBJECT_SIZE, config.nz
        self.shape3d = (nz, s, s)
        self.dz = s / nz
        f32: dict[str, Any] = {"dtype": torch.float32, "device": device}
        xy = torch.arange(s, **f32) - s // 2
        z = (torch.arange(nz, **f32) - nz // 2) * self.dz
        zz, yy, xx = torch.meshgrid(z, xy, xy, indexing="ij")
        r = (xx**2 + yy**2 + zz**2).sqrt().flatten()
        #: Flat indices (M,) into the (nz, 32, 32) box of the evaluated voxels.
        self.index = torch.nonzero(r <= config.max_radius + 3 * config.edge_sigma + 1e-3).squeeze(1)
        #: Lab coordinates (3, M), rows x, y, z.
        self.xyz = torch.stack([xx.flatten(), yy.flatten(), zz.flatten()])[:, self.index]
        # Lab radius, kept away from 0 so that the centre voxel counts as deep inside.
        self.r = r[self.index].clamp_min(1e-3).unsqueeze(0)
        # Angular frequencies (rad/voxel) of the half spectrum (x//2+1, z, y) of the phase
        # field. The kernel's transform exp(-q^T C q / 2) is below KERNEL_CUTOFF of its peak
        # wherever L_min^2 |q|^2 > 2 ln(1/KERNEL_CUTOFF) (C's eigenvalues are the L^2), so
        # noise is drawn only inside that ball and the rest of the spectrum stays zero.
        qx, qz, qy = torch.meshgrid(
            2 * math.pi * torch.fft.rfftfreq(s, **f32),
            2 * math.pi * torch.fft.fftfreq(nz, d=self.dz, **f32),
            2 * math.pi * torch.fft.fftfreq(s, **f32),
            indexing="ij",
        )
        self.half_shape = qx.shape
        q2 = (qx**2 + qy**2 + qz**2).flatten()
        l_min = min(config.Lx[0], config.Ly[0], config.Lz[0])
        #: Flat indices (K,) of the kept frequencies and their (qx, qy, qz), (3, K).
        self.spectrum_index = torch.nonzero(q2 * l_min**2 <= 2 * math.log(1 / KERNEL_CUTOFF)).squeeze(1)
        self.q = torch.stack([qx.flatten(), qy.flatten(), qz.flatten()])[:, self.spectrum_index]
        self.mask = detector_mask(config.detector, device)


def random_rotations(n: int, generator: torch.Generator, device) -> torch.Tensor:
    """Rotation matrices (n, 3, 3) uniform on SO(3), from normalised Gaussian quaternions."""
    q = torch.randn(n, 4, generator=generator, device=device)
    q = q / q.norm(dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
        ],
        dim=1,
    ).view(n, 3, 3)  # fmt: skip


def bounding_radius(a, b, c, e, n):
    """Upper bound of the distance from the centre to any point of the superellipsoid.

    A superellipse ``|u/a|^(2/k) + |v/b|^(2/k) <= 1`` lies within radius
    ``min(hypot(a, b), max(a, b) * 2^((1-k)/2))`` for k < 1 and ``max(a, b)`` for k >= 1;
    eq. 2 nests two of them: (a, b, e) in the x-y plane, then (that, c, n).
    """

    def superellipse(p, q, k):
        corner = torch.where(k < 1, torch.pow(2.0, (1 - k) / 2), torch.ones_like(k))
        return torch.minimum(torch.hypot(p, q), torch.maximum(p, q) * corner)

    return superellipse(superellipse(a, b, e), c, n)


def detector_mask(detector: DetectorConfig, device) -> torch.Tensor | None:
    """Measured pixels (64, 64) bool (True = measured), or None when nothing is masked."""
    if not detector.masked:
        return None
    idx = torch.arange(PATTERN_SIZE, device=device, dtype=torch.float32) - PATTERN_SIZE // 2
    mask = (idx.view(-1, 1) ** 2 + idx.view(1, -1) ** 2) >= detector.beamstop_radius**2
    mask[list(detector.gap_rows), :] = False
    mask[:, list(detector.gap_cols)] = False
    return mask


def _sample_params(
    n: int, draws: int, config: SimulationConfig, gen: torch.Generator, device
) -> dict[str, torch.Tensor]:
    lo = torch.tensor([getattr(config, k)[0] for k in SCALAR_PARAMS], device=device)
    hi = torch.tensor([getattr(config, k)[1] for k in SCALAR_PARAMS], device=device)
    u = torch.rand(draws, len(SCALAR_PARAMS), generator=gen, device=device)[:n]
    p = dict(zip(SCALAR_PARAMS, (lo + (hi - lo) * u).unbind(1)))
    rotation = random_rotations(draws, gen, device)[:n]
    if not config.rotate:
        rotation = torch.eye(3, device=device).expand(n, 3, 3).clone()
    # Shrink particles whose bounding sphere would leave the grid (any orientation fits).
    fit = (config.max_radius / bounding_radius(p["a"], p["b"], p["c"], p["e"], p["n"])).clamp(max=1.0)
    for k in ("a", "b", "c"):
        p[k] = p[k] * fit
    p["fit_scale"] = fit
    p["rotation"] = rotation
    return p


def _shape(p: dict[str, torch.Tensor], config: SimulationConfig, grid: _Grid) -> torch.Tensor:
    """Smoothed superellipsoid s in [0, 1] on the grid's voxel list, (n, M)."""
    n = p["a"].shape[0]
    # Particle coordinates scaled by the bounds: (u, v, w) = diag(1/a, 1/b, 1/c) R^T r_lab.
    m = p["rotation"].transpose(1, 2) / torch.stack([p["a"], p["b"], p["c"]], 1).unsqueeze(2)
    u, v, w = (m.reshape(3 * n, 3) @ grid.xyz).view(n, 3, -1).unbind(1)
    e, nn = p["e"].unsqueeze(1), p["n"].unsqueeze(1)
    # Eq. 2: F = (|u|^(2/e) + |v|^(2/e))^(e/n) + |w|^(2/n), in place (one buffer per axis).
    f = u.abs_().pow_(2 / e).add_(v.abs_().pow_(2 / e)).pow_(e / nn).add_(w.abs_().pow_(2 / nn))
    if config.edge_sigma == 0:
        return (f <= 1).to(torch.float32)
    # rho = F^(n/2) is homogeneous of degree 1 in r: the surface point on the ray through r
    # is r / rho, so d = r (1 - 1/rho) is the signed distance along the ray (> 0 outside).
    d = f.pow_(-nn / 2).mul_(grid.r).neg_().add_(grid.r)
    # A step blurred by a Gaussian of width edge_sigma along the ray.
    return d.mul_(1 / (math.sqrt(2) * config.edge_sigma)).erfc_().mul_(0.5)


def _phase_field(p: dict[str, torch.Tensor], grid: _Grid, gen: torch.Generator, draws: int) -> torch.Tensor:
    """Eq. 3: white noise convolved with the rotated anisotropic Gaussian, (n, nz, 32, 32)."""
    n = p["a"].shape[0]
    R = p["rotation"]
    lam = torch.stack([p["Lx"], p["Ly"], p["Lz"]], 1) ** 2
    # Lab covariance of the kernel's Fourier transform exp(-q^T C q / 2), C = R diag(L^2) R^T.
    C = (R * lam.unsqueeze(1)) @ R.transpose(1, 2)
    quad = ((C.reshape(3 * n, 3) @ grid.q).view(n, 3, -1) * grid.q).sum(1)
    noise = torch.randn((draws, quad.shape[1]), generator=gen, device=quad.device, dtype=torch.complex64)[:n]
    # Clamping the exponent keeps exp() out of the (slow, irrelevant) denormal range.
    kept = noise.mul_(torch.exp(quad.clamp_(max=100.0).mul_(-0.5)))
    spectrum = torch.zeros(n, math.prod(grid.half_shape), dtype=torch.complex64, device=quad.device)
    spectrum = spectrum.index_copy_(1, grid.spectrum_index, kept).view(n, *grid.half_shape)
    # irfftn treats the half spectrum as Hermitian: a real Gaussian field with this spectrum.
    # With the halved x axis first the CPU transform is ~1/3 faster; its output is already
    # (z, y, x) in memory, so the permutation back is free.
    nz, s = grid.shape3d[:2]
    return torch.fft.irfftn(spectrum, s=(nz, s, s), dim=(2, 3, 1)).permute(0, 2, 3, 1)


def _simulate_chunk(
    n: int, draws: int, config: SimulationConfig, grid: _Grid, gen: torch.Generator, keep_field: bool
) -> SimulatedBatch:
    """The first ``n`` patterns of a chunk of ``draws``: random numbers are drawn for the whole
    chunk, so a data set's first k patterns do not depend on how many follow."""
    dev = grid.r.device
    p = _sample_params(n, draws, config, gen, dev)
    s = _shape(p, config, grid)
    phi = _phase_field(p, grid, gen, draws).reshape(n, -1).index_select(1, grid.index)
    # Scale the phase inside the particle (s > 1/2) to [-span/2, span/2].
    inside = s > 0.5
    lo = torch.where(inside, phi, math.inf).amin(dim=1, keepdim=True)
    hi = torch.where(inside, phi, -math.inf).amax(dim=1, keepdim=True)
    span = p["phase_span"].unsqueeze(1)
    phi = phi.sub_((lo + hi) / 2).mul_(span / (hi - lo).clamp_min(1e-12))
    # Projection along the beam of s * exp(i phi): the q_z = 0 slice of its 3D transform.
    # (Scattered into the dense box and summed over z: deterministic on CUDA, unlike index_add_.)
    field3d = torch.zeros(n, math.prod(grid.shape3d), dtype=torch.complex64, device=dev)
    field3d = field3d.index_copy_(1, grid.index, torch.polar(s, phi)).view(n, *grid.shape3d)
    projection = field3d.sum(1).view(n, -1)
    re, im = projection.real, projection.imag
    amp = torch.hypot(re, im)
    scale = amp.amax(dim=1, keepdim=True).clamp_min(1e-30)
    support = amp > config.support_threshold * scale
    re, im = torch.where(support, re, 0.0), torch.where(support, im, 0.0)
    # Global phase convention: the object's sum (the q = 0 pixel) is real and positive.
    tr, ti = re.sum(1, keepdim=True), im.sum(1, keepdim=True)
    norm = torch.hypot(tr, ti)
    cr = torch.where(norm > 0, tr / norm, 1.0)
    ci = torch.where(norm > 0, -ti / norm, 0.0)
    re, im = re * cr - im * ci, re * ci + im * cr
    shape2d = (n, OBJECT_SIZE, OBJECT_SIZE)
    amp = torch.where(support, amp / scale, 0.0).view(shape2d)
    phase = torch.where(support, torch.atan2(im, re), 0.0).view(shape2d)
    support = support.view(shape2d)
    modulus = fourier_modulus(embed_centre(torch.polar(amp, phase), (PATTERN_SIZE, PATTERN_SIZE)))
    modulus = _detect(modulus, config.detector, grid.mask, gen)
    mask = None if grid.mask is None else grid.mask.expand(n, PATTERN_SIZE, PATTERN_SIZE).clone()
    return SimulatedBatch(
        modulus=modulus,
        amplitude=amp,
        phase=phase,
        support=support,
        mask=mask,
        params=p,
        field=field3d if keep_field else None,
    )


def _detect(
    modulus: torch.Tensor, detector: DetectorConfig, mask: torch.Tensor | None, gen: torch.Generator
) -> torch.Tensor:
    """Photon counting (Poisson), saturation and unmeasured pixels, applied to sqrt(I)."""
    if detector.photons is not None:
        intensity = modulus**2
        rate = intensity * (detector.photons / intensity.sum((1, 2), keepdim=True))
        counts = torch.poisson(rate, generator=gen)
        if detector.saturation is not None:
            counts = counts.clamp(max=detector.saturation)
        modulus = counts.sqrt()
    if mask is not None:
        modulus = modulus * mask
    return modulus
