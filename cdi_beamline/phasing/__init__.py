"""Phase retrieval: projections and algorithms (ER, HIO, RAAR), shrink-wrap, schedules,
chi², alignment of solutions, nearest-neighbour search and phase unwrapping; post-processing
of one (3D Bragg) reconstruction: phase ramp and offset, twin, unwrapping, lab axes.

All arrays are centred (see :mod:`cdi_beamline.fourier`), shaped (B, *spatial): the number
of spatial axes follows the data, (H, W) for 2-D patterns, (D, H, W) for 3-D ones.
"""

from ..config.schedule import ER, HIO, RAAR, Schedule, Step, parse_schedule
from .align import AlignedPair, align, invert, twin, unwrap
from .multistart import MultiStartResult, multistart
from .nns import NearestNeighbourIndex, NeighbourMatch
from .postprocess import (
    PostProcessed,
    consistent_twin,
    crystal_centre,
    phase_ramp,
    postprocess,
    remove_phase_ramp,
    set_phase_offset,
    unwrap_phase_nd,
)
from .refine import InitialEstimate, RefineResult, chi2, random_initial_object, refine, square_support

__all__ = [
    "AlignedPair",
    "NearestNeighbourIndex",
    "NeighbourMatch",
    "align",
    "invert",
    "twin",
    "unwrap",
    "ER",
    "HIO",
    "RAAR",
    "InitialEstimate",
    "MultiStartResult",
    "RefineResult",
    "Schedule",
    "Step",
    "chi2",
    "multistart",
    "parse_schedule",
    "random_initial_object",
    "refine",
    "square_support",
    "PostProcessed",
    "consistent_twin",
    "crystal_centre",
    "phase_ramp",
    "postprocess",
    "remove_phase_ramp",
    "set_phase_offset",
    "unwrap_phase_nd",
]
