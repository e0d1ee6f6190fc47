"""Configuration models (pydantic v2, frozen, ``extra="forbid"``).

Each section lives in its own module and is re-exported here, so that
``from cdi_beamline.config import SimulationConfig`` works everywhere. Every config's
``model_dump(mode="json")`` goes into derived start documents: a result can be
reproduced from Tiled alone. This package imports nothing else of ours but
:mod:`cdi_beamline.errors` (:class:`ConfigError` is a ``CDIValueError``).
"""

from ._base import ConfigError, FrozenModel, load_config, read_config_file
from .geometry import *  # noqa: F401,F403
from .geometry import __all__ as _geometry
from .live import *  # noqa: F401,F403
from .live import __all__ as _live
from .model import *  # noqa: F401,F403
from .model import __all__ as _model
from .pipeline import *  # noqa: F401,F403
from .pipeline import __all__ as _pipeline
from .preprocess import *  # noqa: F401,F403
from .preprocess import __all__ as _preprocess
from .refine import *  # noqa: F401,F403
from .refine import __all__ as _refine
from .simulation import *  # noqa: F401,F403
from .simulation import __all__ as _simulation

__all__ = [
    "ConfigError",
    "FrozenModel",
    "load_config",
    "read_config_file",
    *_simulation,
    *_refine,
    *_model,
    *_pipeline,
    *_preprocess,
    *_live,
    *_geometry,
]
