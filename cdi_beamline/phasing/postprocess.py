"""What a Bragg CDI user does to a reconstruction before reading its phase as strain.

A Fourier modulus leaves the object's phase free up to a constant, a linear ramp (the
Bragg peak off the array's centre) and the twin ``conj(o(−r))``. These functions fix all
three by rule, unwrap the phase, and (3D, with a :class:`~cdi_beamline.config.BraggGeometry`)
put the result on orthogonal lab axes. They act on one object, (D, H, W) or (H, W),
numpy arrays, centred (origin at ``N // 2`` on every axis).

- :func:`phase_ramp` / :func:`remove_phase_ramp`: the ramp is the amplitude-weighted mean
  phase difference between neighbouring voxels of the support, ``angle(Σ o(r+e)·conj(o(r)))``
  per axis — the mean phase gradient without unwrapping, so wraps and the phase vortices of
  dislocations (where unwrapping fails) do not bias it; exact for a linear ramp.
- :func:`set_phase_offset`: phase 0 at the crystal's centre (the support voxel nearest the
  centre of mass of ``|o|``) or for the amplitude-weighted mean over the support.
- :func:`consistent_twin`: the same twin for repeated reconstructions, by a reference or
  by a rule (the sign of the amplitude's skewness; the phase's, for a centrosymmetric shape).
- :func:`unwrap_phase_nd`: scikit-image's unwrapping (Herráez 2002 in 2D, Abdul-Rahman
  2007 in 3D) on the support.
- :func:`postprocess`: all of the above in order, and the lab axes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from ..config.geometry import BraggGeometry
from ..errors import CDIValueError
from ..physics.geometry import bragg_vector, lab_grid, real_space_basis

__all__ = [
    "PostProcessed",
    "TWIN_MIN_SKEWNESS",
    "consistent_twin",
    "crystal_centre",
    "invert_nd",
    "phase_ramp",
    "postprocess",
    "remove_phase_ramp",
    "set_phase_offset",
    "twin_nd",
    "unwrap_phase_nd",
]

TWIN_MIN_SKEWNESS = 0.05
"""Below this |skewness| of ``|o|²`` on every axis the shape is taken as centrosymmetric and
the twin rule reads the phase instead of the amplitude."""

Offset = Literal["centre", "mean"]


def _checked(obj, support) -> tuple[np.ndarray, np.ndarray]:
    o = np.asarray(obj)
    if o.ndim not in (2, 3):
        raise CDIValueError(f"post-processing needs one (D, H, W) or (H, W) object, got shape {o.shape}")
    if not np.iscomplexobj(o):
        raise CDIValueError(f"post-processing needs a complex object, got dtype {o.dtype}")
    if not np.isfinite(o).all():
        raise CDIValueError("post-processing: the object holds NaN or inf")
    s = np.asarray(support, dtype=bool)
    if s.shape != o.shape:
        raise CDIValueError(f"support shape {s.shape} != object shape {o.shape}")
    if not (s & (np.abs(o) > 0)).any():
        raise CDIValueError("post-processing: the support holds no voxel of nonzero amplitude")
    return o, s


def invert_nd(x: np.ndarray) -> np.ndarray:
    """``x(−r)`` about the centre voxel (``N // 2``) on every axis: index ``i → (2·(N//2) − i) mod N``."""
    for axis in range(x.ndim):
        n = x.shape[axis]
        x = np.take(x, (2 * (n // 2) - np.arange(n)) % n, axis=axis)
    return x


def twin_nd(x: np.ndarray) -> np.ndarray:
    """The twin ``conj(x(−r))`` on every axis: the same Fourier modulus."""
    return np.conj(invert_nd(x))


def _index_offsets(shape: tuple[int, ...]) -> list[np.ndarray]:
    """``n − N//2`` per axis, shaped to broadcast over ``shape``."""
    return [
        (np.arange(n) - n // 2).reshape([n if a == axis else 1 for a in range(len(shape))])
        for axis, n in enumerate(shape)
    ]


def phase_ramp(obj: np.ndarray, support: np.ndarray) -> np.ndarray:
    """The linear phase ramp of ``obj`` over ``support``, (ndim,) radians per voxel:
    ``angle(Σ o(r + e_a)·conj(o(r)))`` over neighbouring pairs both in the support."""
    o, s = _checked(obj, support)
    o = np.where(s, o, 0)
    grad = []
    for axis in range(o.ndim):
        n = o.shape[axis]
        pairs = np.take(o, np.arange(1, n), axis=axis) * np.conj(np.take(o, np.arange(n - 1), axis=axis))
        grad.append(float(np.angle(pairs.sum())))
    return np.asarray(grad)


def remove_phase_ramp(obj: np.ndarray, support: np.ndarray) -> np.ndarray:
    """``obj`` times ``e^{−i g·(n − N//2)}``, ``g`` = :func:`phase_ramp`: the phase at the
    array's centre is unchanged."""
    o, _ = _checked(obj, support)
    g = phase_ramp(o, support)
    ramp = sum(gi * ni for gi, ni in zip(g, _index_offsets(o.shape)))
    return (o * np.exp(-1j * ramp)).astype(o.dtype)


def crystal_centre(obj: np.ndarray, support: np.ndarray) -> tuple[int, ...]:
    """The support voxel nearest the centre of mass of ``|obj|`` over the support (for a
    concave crystal the centre of mass may lie outside it)."""
    o, s = _checked(obj, support)
    w = np.where(s, np.abs(o), 0.0)
    idx = np.indices(o.shape).reshape(o.ndim, -1).astype(float)
    com = idx @ w.ravel() / w.sum()
    inside = np.array(np.nonzero(s))
    nearest = inside[:, np.argmin(((inside - com[:, None]) ** 2).sum(axis=0))]
    return tuple(int(i) for i in nearest)


def _reference_phase(o: np.ndarray, s: np.ndarray, at: Offset) -> float:
    if at == "centre":
        return float(np.angle(o[crystal_centre(o, s)]))
    if at == "mean":
        return float(np.angle(o[s].sum()))
    raise CDIValueError(f"phase offset at {at!r}: expected 'centre' or 'mean'")


def set_phase_offset(obj: np.ndarray, support: np.ndarray, at: Offset = "centre") -> np.ndarray:
    """``obj·e^{−iφ₀}``: phase 0 at :func:`crystal_centre` (``at="centre"``) or for the
    amplitude-weighted mean over the support, ``angle(Σ_support o) = 0`` (``at="mean"``)."""
    o, s = _checked(obj, support)
    return (o * np.exp(-1j * _reference_phase(o, s, at))).astype(o.dtype)


def _twin_score(o: np.ndarray, s: np.ndarray) -> float:
    """A number whose sign flips when ``o`` is replaced by its twin (0: undecided)."""
    o = remove_phase_ramp(o, s)
    w = np.where(s, np.abs(o) ** 2, 0.0)
    d = np.indices(o.shape).reshape(o.ndim, -1).astype(float)
    d -= d @ w.ravel()[:, None] / w.sum()
    var = (d**2) @ w.ravel() / w.sum()
    skew = (d**3) @ w.ravel() / w.sum() / np.maximum(var, 1e-12) ** 1.5
    axis = int(np.argmax(np.abs(skew)))
    if abs(skew[axis]) >= TWIN_MIN_SKEWNESS:
        return float(skew[axis])
    centre = crystal_centre(o, s)
    return float(np.angle((np.where(s, o, 0) * np.conj(o[centre])).sum()))


def _correlation_peak(a: np.ndarray, b: np.ndarray) -> float:
    """max over shifts of ``|Σ a(r − t)·conj(b(r))|`` (circular)."""
    return float(np.abs(np.fft.ifftn(np.fft.fftn(a) * np.conj(np.fft.fftn(b)))).max())


def consistent_twin(
    obj: np.ndarray, support: np.ndarray, reference: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, bool]:
    """``obj`` or its twin, whichever the rule picks, so that repeated reconstructions of the
    same data come out as the same twin.

    With ``reference`` (an earlier reconstruction of the same shape): the candidate whose
    complex cross-correlation with it peaks higher (both with their phase ramps removed).
    Without: the candidate whose ``|o|²`` over the support has a positive skewness along the
    axis where the skewness is largest in magnitude; for a centrosymmetric shape (every
    |skewness| below :data:`TWIN_MIN_SKEWNESS`) the one whose phase, ramp removed, is on
    average above its value at the crystal's centre (a strain bowl or dome tells the twins
    apart). A perfectly symmetric object with a flat phase stays as it is.

    Returns
    -------
    (object, support, twinned): the chosen object and its support (inverted with it), and
    whether the twin was taken.
    """
    o, s = _checked(obj, support)
    t, ts = twin_nd(o), invert_nd(s)
    if reference is not None:
        ref = np.asarray(reference)
        if ref.shape != o.shape:
            raise CDIValueError(f"reference shape {ref.shape} != object shape {o.shape}")
        ref_support = np.abs(ref) > 0.1 * np.abs(ref).max()
        r = remove_phase_ramp(ref, ref_support) * ref_support
        take_twin = _correlation_peak(remove_phase_ramp(t, ts) * ts, r) > _correlation_peak(
            remove_phase_ramp(o, s) * s, r
        )
    else:
        take_twin = _twin_score(o, s) < 0
    return (t, ts, True) if take_twin else (o, s, False)


def unwrap_phase_nd(phase: np.ndarray, support: np.ndarray | None = None, *, rng: int = 0) -> np.ndarray:
    """Unwrapped ``phase`` (D, H, W) or (H, W), radians, float64; 0 outside ``support``.

    :func:`skimage.restoration.unwrap_phase` on a masked array (Herráez et al. 2002 in 2D,
    Abdul-Rahman et al. 2007 in 3D): reliability-sorted paths, so noisy edges are unwrapped
    last. Parts of the support that do not touch are unwrapped independently.
    """
    from skimage.restoration import unwrap_phase

    p = np.asarray(phase, dtype=np.float64)
    if p.ndim not in (2, 3):
        raise CDIValueError(f"unwrap_phase_nd needs a 2D or 3D phase, got shape {p.shape}")
    if support is None:
        return unwrap_phase(p, rng=rng)
    m = np.asarray(support, dtype=bool)
    if m.shape != p.shape:
        raise CDIValueError(f"support shape {m.shape} != phase shape {p.shape}")
    if not m.any():
        return np.zeros_like(p)
    return np.ma.filled(unwrap_phase(np.ma.masked_array(p, mask=~m), rng=rng), 0.0)


@dataclass(frozen=True)
class PostProcessed:
    """One reconstruction, post-processed.

    amplitude : (D, H, W) or (H, W) float32, ``|o|``
    phase : same shape, float32 radians: twin chosen, ramp removed, unwrapped, 0 at the
        offset point (or of zero amplitude-weighted mean); 0 outside the support
    support : same shape, bool
    twinned : whether the twin of the input was taken
    ramp : (ndim,) radians per voxel removed, per array axis
    offset : ``"centre"`` or ``"mean"``
    voxel_vectors_nm : (3, 3) lab step (z, y, x) of one voxel per array axis (columns), with
        a geometry; else None
    q_bragg_nm : |Q| (1/nm) of the reflection, with a geometry; else None
    lab_amplitude, lab_phase : (Z, Y, X) float32 on orthogonal lab axes (z along the beam,
        y up), with a geometry; else None. ``lab_phase`` is 0 outside ``lab_support``.
    lab_support : (Z, Y, X) bool, or None
    lab_voxel_nm : edge of the cubic lab voxel (nm), or None
    """

    amplitude: np.ndarray
    phase: np.ndarray
    support: np.ndarray
    twinned: bool
    ramp: np.ndarray
    offset: Offset
    voxel_vectors_nm: np.ndarray | None = None
    q_bragg_nm: float | None = None
    lab_amplitude: np.ndarray | None = None
    lab_phase: np.ndarray | None = None
    lab_support: np.ndarray | None = None
    lab_voxel_nm: float | None = None

    @property
    def lab_displacement_nm(self) -> np.ndarray | None:
        """Displacement along Q (nm) on the lab grid, ``u_Q = −φ/|Q|`` (the phase of
        ``e^{−iQ·u}``); None without a geometry. Its sign follows the twin chosen."""
        if self.lab_phase is None or self.q_bragg_nm is None:
            return None
        return (-self.lab_phase / self.q_bragg_nm).astype(np.float32)


def postprocess(
    obj: np.ndarray,
    support: np.ndarray,
    *,
    geometry: BraggGeometry | None = None,
    offset: Offset = "centre",
    reference: np.ndarray | None = None,
    voxel_nm: float | None = None,
    rng: int = 0,
) -> PostProcessed:
    """Twin (:func:`consistent_twin`), ramp (:func:`remove_phase_ramp`), offset
    (:func:`set_phase_offset`), unwrapping (:func:`unwrap_phase_nd`), in this order; with a
    ``geometry`` (3D only) the result also on orthogonal lab axes.

    Parameters
    ----------
    obj : (D, H, W) or (H, W) complex, one reconstruction (a rocking scan's axes are
        frame, detector row, detector column)
    support : same shape, bool
    geometry : the scan's geometry, for the lab axes
    offset : where the phase is 0: ``"centre"`` of the crystal or the support ``"mean"``
    reference : an earlier reconstruction to take the same twin as (see :func:`consistent_twin`)
    voxel_nm : lab voxel edge (nm); default the shortest voxel vector
    rng : seed of the unwrapping's tie-breaks
    """
    o, s = _checked(obj, support)
    if geometry is not None and o.ndim != 3:
        raise CDIValueError(f"lab axes need a 3D object (frames, rows, columns), got shape {o.shape}")
    o, s, twinned = consistent_twin(o, s, reference)
    ramp = phase_ramp(o, s)
    o = set_phase_offset(remove_phase_ramp(o, s), s, offset)
    amplitude = np.abs(o)
    phase = unwrap_phase_nd(np.angle(o), s, rng=rng)
    if offset == "centre":
        phase -= phase[crystal_centre(o, s)]
    else:
        phase -= float((amplitude * phase)[s].sum() / amplitude[s].sum())
    phase = np.where(s, phase, 0.0)
    result = PostProcessed(
        amplitude=amplitude.astype(np.float32),
        phase=phase.astype(np.float32),
        support=s,
        twinned=twinned,
        ramp=ramp,
        offset=offset,
    )
    if geometry is None:
        return result
    grid = lab_grid(o.shape, geometry, support=s, voxel_nm=voxel_nm)
    weight = grid.resample(s.astype(np.float64))
    lab_support = weight > 0.5
    # normalised interpolation: voxels outside the support do not pull the edge's phase to 0
    lab_phase = np.where(lab_support, grid.resample(phase) / np.maximum(weight, 1e-12), 0.0)
    return replace(
        result,
        voxel_vectors_nm=real_space_basis(geometry, o.shape),
        q_bragg_nm=float(np.linalg.norm(bragg_vector(geometry))),
        lab_amplitude=grid.resample(amplitude).astype(np.float32),
        lab_phase=lab_phase.astype(np.float32),
        lab_support=lab_support,
        lab_voxel_nm=grid.voxel_nm,
    )
