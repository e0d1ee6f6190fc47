"""The forward model and training-data generator of Wu et al. (2021).

``simulate_batch`` draws superellipsoid particles (eq. 2) with Gaussian-correlated phase
(eq. 3), rotates them uniformly in 3D, projects the complex field along the beam and
returns the centred 64x64 Fourier modulus with the 32x32 amplitude/phase/support targets.
:mod:`.geometry` puts a rocking scan's 3D object on orthogonal lab axes (Bragg CDI).
``write_h5`` / ``read_h5`` are the HDF5 layout of ``cdi-beamline simulate``.
"""

from ._h5 import H5Writer, read_h5, read_h5_metadata, write_h5
from ._simulate import (
    SimulatedBatch,
    bounding_radius,
    chunk_size,
    detector_mask,
    iter_batches,
    random_rotations,
    simulate_batch,
)
from .geometry import (
    LAB_AXES,
    LabGrid,
    Orthogonalised,
    bragg_vector,
    lab_grid,
    orthogonalise,
    q_space_basis,
    real_space_basis,
    wavelength_nm,
)

__all__ = [
    "SimulatedBatch",
    "simulate_batch",
    "iter_batches",
    "random_rotations",
    "bounding_radius",
    "detector_mask",
    "chunk_size",
    "write_h5",
    "read_h5",
    "read_h5_metadata",
    "H5Writer",
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
