"""The CNN of Wu et al. (2021), Fig. 1: one encoder, an amplitude decoder and a phase decoder."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import CDIValueError

__all__ = ["CDINet", "normalise_modulus"]


def normalise_modulus(modulus: torch.Tensor, floor: float) -> torch.Tensor:
    """The network's input scaling, invariant to the overall photon scale.

    ``x = log1p(m / max(m) / floor) / log1p(1 / floor)`` per pattern: dividing by the
    per-pattern maximum removes the photon scale, the logarithm compresses the decades
    between the central peak and the fringes (``floor`` is where it turns linear), and
    the result lies in [0, 1].

    Parameters
    ----------
    modulus : Tensor (B, H, W), >= 0
    floor : float in (0, 1)

    Returns
    -------
    Tensor (B, H, W) float32 in [0, 1]
    """
    m = modulus.float().clamp_min(0)
    peak = m.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.log1p(m / peak / floor) / math.log1p(1.0 / floor)


class _Block(nn.Sequential):
    """3×3 conv + LReLU + BN, then 3×1 conv + 1×3 conv + LReLU + BN."""

    def __init__(self, c_in: int, c_out: int, slope: float):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.LeakyReLU(slope, inplace=True),
            nn.BatchNorm2d(c_out),
            nn.Conv2d(c_out, c_out, (3, 1), padding=(1, 0)),
            nn.Conv2d(c_out, c_out, (1, 3), padding=(0, 1)),
            nn.LeakyReLU(slope, inplace=True),
            nn.BatchNorm2d(c_out),
        )


class _Decoder(nn.Sequential):
    """Upsample (nearest) + block, ``depth - 1`` times, then a 3×3 conv to one channel."""

    def __init__(self, c_in: int, depth: int, slope: float):
        layers: list[nn.Module] = []
        c = c_in
        for _ in range(depth - 1):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _Block(c, c // 2, slope)]
            c //= 2
        layers.append(nn.Conv2d(c, 1, 3, padding=1))
        super().__init__(*layers)


class CDINet(nn.Module):
    """Modulus (B, 64, 64) -> amplitude and phase (B, 32, 32) in one pass.

    The input is normalised inside :meth:`forward` (:func:`normalise_modulus`, parameters
    in ``config``), so callers pass the raw modulus √I at any photon scale.

    Parameters
    ----------
    config : ModelConfig, optional
        Widths, depth, activations and input normalisation (defaults: the paper-size net).

    Attributes
    ----------
    weights_id, weights_sha256 : str or None
        Provenance of loaded weights (set by :func:`cdi_beamline.models.cdinet`; None for a
        random init).
    """

    weights_id: str | None = None
    weights_sha256: str | None = None

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = cfg = config or ModelConfig()
        widths = [cfg.base_channels * 2**k for k in range(cfg.depth + 1)]
        enc: list[nn.Module] = [_Block(1, widths[0], cfg.negative_slope)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            enc += [nn.MaxPool2d(2), _Block(c_in, c_out, cfg.negative_slope)]
        self.encoder = nn.Sequential(*enc)
        half = widths[-1] // 2
        self.amplitude_decoder = _Decoder(half, cfg.depth, cfg.negative_slope)
        self.phase_decoder = _Decoder(half, cfg.depth, cfg.negative_slope)
        last = self.amplitude_decoder[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.constant_(last.bias, cfg.amplitude_bias_init)
        # NHWC convolutions: ~1.5x (training) to 2x (batched inference) faster on the CPU,
        # and the layout tensor cores want; .to(device) and load_state_dict keep it.
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it

    def forward(self, modulus: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict amplitude and phase.

        Parameters
        ----------
        modulus : Tensor (B, S, S), S = ``config.input_size``; √I, any scale.

        Returns
        -------
        amplitude : Tensor (B, S/2, S/2), >= 0
        phase : Tensor (B, S/2, S/2), radians (not wrapped)
        """
        s = self.config.input_size
        if modulus.ndim != 3 or modulus.shape[-2:] != (s, s):
            raise CDIValueError(f"CDINet expects a modulus of shape (B, {s}, {s}), got {tuple(modulus.shape)}")
        x = normalise_modulus(modulus, self.config.input_floor).unsqueeze(1)
        z = self.encoder(x)
        za, zp = z.chunk(2, dim=1)
        amp = torch.relu(self.amplitude_decoder(za)).squeeze(1)
        phase = self.phase_decoder(zp).squeeze(1)
        if self.config.phase_activation == "relu":
            phase = torch.relu(phase)
        return amp, phase

    def num_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
