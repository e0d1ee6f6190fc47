"""From the detector-conjugate grid of a rocking scan to orthogonal lab coordinates.

A rocking scan samples reciprocal space on a sheared grid: array axis 0 is the frame (the
sample turned by ``rocking_step_deg``), axes 1 and 2 the detector rows and columns. The
3D object phased from it lives on the conjugate grid, so its voxels are sheared too. With
``B`` the (3, 3) matrix whose columns are the q steps of one frame, one row and one column
(:func:`q_space_basis`), the DFT's ``q·r = 2π Σ m_a n_a / N_a`` gives the voxel vectors
(the columns of ``A``)::

    A = 2π (Bᵀ)⁻¹ diag(1/N₀, 1/N₁, 1/N₂)        r(n) = A (n − N//2)

:func:`orthogonalise` resamples an array onto a regular lab grid (cubic voxels) by
trilinear interpolation. Lab vectors are written ``(z, y, x)``, the order of the resampled
array's axes: ``z`` along the beam, ``y`` up, ``x = y × z`` (docs/phasing.md,
"3D post-processing", has the sketch). The scattering amplitude is taken as
``∫ρ(r) e^{−i q·r} dr`` with ``q = k_f − k_i``, the sign of the package's forward FFT.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..config.geometry import BraggGeometry
from ..errors import CDIValueError

__all__ = [
    "LAB_AXES",
    "LabGrid",
    "Orthogonalised",
    "bragg_vector",
    "lab_grid",
    "orthogonalise",
    "q_space_basis",
    "real_space_basis",
    "wavelength_nm",
]

LAB_AXES = ("z", "y", "x")
"""Component order of every lab vector here and axis order of every resampled array."""

_ZYX = [2, 1, 0]  # (x, y, z) -> (z, y, x)


def wavelength_nm(energy_kev: float) -> float:
    """X-ray wavelength (nm) of a photon energy (keV)."""
    return 1.23984198 / energy_kev


def _rotation_xyz(axis: str, angle_rad: float) -> np.ndarray:
    """Right-handed rotation by ``angle_rad`` about lab axis ``x`` or ``y``, (3, 3) in (x, y, z)."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _detector_xyz(geometry: BraggGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors (x, y, z) of the exit beam, the detector's row step and column step."""
    arm = _rotation_xyz("y", math.radians(geometry.delta_deg)) @ _rotation_xyz("x", -math.radians(geometry.gamma_deg))
    return arm @ np.array([0.0, 0.0, 1.0]), arm @ np.array([0.0, -1.0, 0.0]), arm @ np.array([-1.0, 0.0, 0.0])


def bragg_vector(geometry: BraggGeometry) -> np.ndarray:
    """``Q = k_f − k_i`` at the detector's centre pixel, (3,) in (z, y, x), 1/nm."""
    k = 2 * math.pi / wavelength_nm(geometry.energy_kev)
    exit_beam, _, _ = _detector_xyz(geometry)
    return (k * (exit_beam - np.array([0.0, 0.0, 1.0])))[_ZYX]


def q_space_basis(geometry: BraggGeometry) -> np.ndarray:
    """q steps of the rocking-scan grid, (3, 3) 1/nm: column 0 one frame, 1 one detector row,
    2 one detector column; rows the (z, y, x) components, in the sample's frame at the
    scan's reference angle.

    A pixel step moves ``k_f`` by ``k·pitch/distance`` along the detector axis; turning the
    sample by ``+dθ`` about ``a`` shows the detector the sample-frame q rotated by ``−dθ``,
    so a frame steps q by ``−dθ (a × Q)``.

    Raises
    ------
    CDIValueError
        the three steps are (nearly) coplanar: the rocking adds no third dimension, e.g.
        rocking about ``x`` with the detector in the horizontal plane.
    """
    k = 2 * math.pi / wavelength_nm(geometry.energy_kev)
    exit_beam, row, col = _detector_xyz(geometry)
    q = k * (exit_beam - np.array([0.0, 0.0, 1.0]))
    axis = np.array([1.0, 0.0, 0.0]) if geometry.rocking_axis == "x" else np.array([0.0, 1.0, 0.0])
    d_frame = -math.radians(geometry.rocking_step_deg) * np.cross(axis, q)
    d_row = k * geometry.pixel_size_m[0] / geometry.distance_m * row
    d_col = k * geometry.pixel_size_m[1] / geometry.distance_m * col
    basis = np.stack([d_frame, d_row, d_col], axis=1)[_ZYX]
    lengths = np.linalg.norm(basis, axis=0)
    volume = abs(np.linalg.det(basis)) / float(np.prod(lengths))
    if volume < 1e-3:
        raise CDIValueError(
            f"rocking about {geometry.rocking_axis} with delta {geometry.delta_deg}°, gamma {geometry.gamma_deg}° "
            f"moves q (almost) within the detector plane (|sin| of its angle to it {volume:.1e}): "
            "the scan has no third dimension to orthogonalise"
        )
    return basis


def real_space_basis(geometry: BraggGeometry, shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel vectors of the object phased from a (D, H, W) rocking scan, (3, 3) nm: column
    ``a`` is the lab step (z, y, x) of one voxel along array axis ``a``,
    ``A = 2π (Bᵀ)⁻¹ diag(1/N)`` with ``B`` = :func:`q_space_basis`."""
    if len(shape) != 3:
        raise CDIValueError(f"the detector-conjugate grid is 3D (frames, rows, columns), got shape {shape}")
    return 2 * math.pi * np.linalg.inv(q_space_basis(geometry).T) / np.asarray(shape, dtype=float)


class LabGrid(NamedTuple):
    """A regular lab grid and where each of its voxels falls in the detector-conjugate array.

    coords : (3, Z, Y, X) float, fractional (frame, row, column) index of every lab voxel
    voxel_nm : edge of the cubic lab voxel (nm); voxel ``(iz, iy, ix)`` sits at
        ``voxel_nm · ((iz, iy, ix) − shape // 2)`` from the conjugate array's centre voxel
    """

    coords: np.ndarray
    voxel_nm: float

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) of the lab grid."""
        z, y, x = self.coords.shape[1:]
        return z, y, x

    def resample(self, array: np.ndarray, order: int = 1) -> np.ndarray:
        """``array`` (D, H, W) (real or complex) on the lab grid (Z, Y, X); 0 outside it.
        Complex arrays are interpolated by real and imaginary part, bool and integer arrays
        come back float64; ``order`` is the spline order of
        :func:`scipy.ndimage.map_coordinates` (1 = trilinear)."""
        from scipy.ndimage import map_coordinates

        def one(real: np.ndarray) -> np.ndarray:
            return map_coordinates(real, self.coords, order=order, mode="constant", cval=0.0, prefilter=order > 1)

        a = np.asarray(array)
        if np.iscomplexobj(a):
            return (one(a.real) + 1j * one(a.imag)).astype(np.result_type(a.dtype, np.complex64))
        return one(a if a.dtype.kind == "f" else a.astype(np.float64))


def lab_grid(
    shape: tuple[int, int, int],
    geometry: BraggGeometry,
    *,
    support: np.ndarray | None = None,
    voxel_nm: float | None = None,
) -> LabGrid:
    """The regular lab grid that holds the (D, H, W) detector-conjugate array's ``support``
    (default: the whole array) with its voxels' extent and one lab voxel of margin, centred
    on the array's centre voxel.

    Parameters
    ----------
    shape : (D, H, W) of the phased array: frames, detector rows, detector columns
    geometry : the scan's :class:`BraggGeometry`
    support : (D, H, W) bool, the voxels the grid must cover
    voxel_nm : edge of the cubic lab voxel (nm); default the shortest voxel vector of
        :func:`real_space_basis` (no direction is sampled more coarsely than it was)
    """
    basis = real_space_basis(geometry, shape)
    centre = np.asarray(shape) // 2
    if voxel_nm is None:
        voxel_nm = float(np.linalg.norm(basis, axis=0).min())
    if not voxel_nm > 0:
        raise CDIValueError(f"voxel_nm must be positive, got {voxel_nm}")
    if support is None:
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1)
    else:
        if support.shape != tuple(shape):
            raise CDIValueError(f"support shape {support.shape} != array shape {tuple(shape)}")
        corners = np.array(np.nonzero(support))
        if corners.size == 0:
            raise CDIValueError("the support is empty: nothing to put on lab axes")
    half = np.abs(basis @ (corners - centre[:, None])).max(axis=1) + np.abs(basis).sum(axis=1) / 2 + voxel_nm
    lab_shape = 2 * np.ceil(half / voxel_nm).astype(int) + 1
    axes = [voxel_nm * (np.arange(n) - n // 2) for n in lab_shape]
    r = np.array(np.meshgrid(*axes, indexing="ij")).reshape(3, -1)
    coords = np.linalg.inv(basis) @ r + centre[:, None]
    return LabGrid(coords.reshape(3, *lab_shape), float(voxel_nm))


class Orthogonalised(NamedTuple):
    """An array on the regular lab grid: ``array`` (Z, Y, X), cubic voxels of ``voxel_nm``."""

    array: np.ndarray
    voxel_nm: float


def orthogonalise(
    obj: np.ndarray,
    geometry: BraggGeometry,
    *,
    support: np.ndarray | None = None,
    voxel_nm: float | None = None,
) -> Orthogonalised:
    """``obj`` (D, H, W) on the detector-conjugate grid, trilinearly resampled onto regular
    lab axes (z, y, x) that cover ``support`` (default the whole array); see :func:`lab_grid`."""
    a = np.asarray(obj)
    if a.ndim != 3:
        raise CDIValueError(f"orthogonalise needs a (D, H, W) array, got shape {a.shape}")
    grid = lab_grid(a.shape, geometry, support=support, voxel_nm=voxel_nm)
    return Orthogonalised(grid.resample(a), grid.voxel_nm)
