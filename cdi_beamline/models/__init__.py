"""The CNN of Wu et al. (2021): network, loss, training, shipped weights.

``cdinet(weights="DEFAULT")`` returns the shipped model (eval mode, CPU; ``.to(device)``
after); :func:`predict` gives amplitude and phase, :func:`initial_estimate` the seed of
iterative refinement (object + support on the pattern's grid).
"""

from .inference import SUPPORT_THRESHOLD, initial_estimate, predict
from .loss import cdi_loss, twin_aware_loss
from .network import CDINet
from .weights import CDINetWeights, cdinet

__all__ = [
    "CDINet",
    "cdinet",
    "CDINetWeights",
    "predict",
    "initial_estimate",
    "SUPPORT_THRESHOLD",
    "cdi_loss",
    "twin_aware_loss",
]
