import pytest
import torch

from cdi_beamline.config import ConfigError, FrozenModel
from cdi_beamline.device import resolve_device
from cdi_beamline.errors import CDIRuntimeError, CDIValueError
from cdi_beamline.fourier import crop_centre, embed_centre, fix_global_phase, to_detector, to_object


def test_fft_round_trip_and_parseval():
    g = torch.Generator().manual_seed(0)
    obj = torch.randn(3, 64, 48, generator=g, dtype=torch.complex64)
    det = to_detector(obj)
    torch.testing.assert_close(to_object(det), obj, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(det.abs().pow(2).sum((-2, -1)), obj.abs().pow(2).sum((-2, -1)), rtol=1e-5, atol=1e-4)


def test_centred_delta_has_flat_pattern_and_centre_is_origin():
    obj = torch.zeros(64, 64, dtype=torch.complex64)
    obj[32, 32] = 1
    torch.testing.assert_close(to_detector(obj).abs(), torch.full((64, 64), 1 / 64.0))
    # a constant object transforms into a single peak at the centre pixel
    peak = to_detector(torch.ones(64, 64, dtype=torch.complex64)).abs()
    assert peak.argmax().item() == 32 * 64 + 32


def test_embed_crop_are_inverse_and_keep_centre():
    x = torch.arange(32 * 32, dtype=torch.float32).reshape(32, 32)
    big = embed_centre(x, (64, 64))
    assert big[32, 32] == x[16, 16]
    torch.testing.assert_close(crop_centre(big, (32, 32)), x)
    with pytest.raises(CDIValueError, match="cannot embed"):
        embed_centre(big, (32, 32))


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(CDIValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(CDIRuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_fix_global_phase_is_the_amplitude_weighted_convention():
    g = torch.Generator().manual_seed(1)
    amp = torch.rand(4, 32, 32, generator=g)
    obj = torch.polar(amp, 3 * torch.randn(4, 32, 32, generator=g))
    fixed = fix_global_phase(obj)
    # only a global phase changed: the modulus of every pixel and the pattern are kept
    torch.testing.assert_close(fixed.abs(), obj.abs())
    ratio = fixed * obj.conj()
    assert torch.allclose(ratio / ratio.abs(), (ratio / ratio.abs())[:, :1, :1].expand_as(ratio), atol=1e-5)
    # the amplitude-weighted mean phase, angle(sum |o| e^{i phi}) = angle(sum o), is zero
    assert float(torch.angle(fixed.sum((-2, -1))).abs().max()) < 1e-6
    torch.testing.assert_close(fix_global_phase(fixed), fixed)  # idempotent
    # twin-consistent: the twin conj(o(-r)) of a fixed object is fixed too
    twin = torch.roll(torch.flip(fixed, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1)).conj()
    torch.testing.assert_close(fix_global_phase(twin), twin)
    # an object whose sum is zero is left alone
    zero_sum = torch.tensor([[1.0, -1.0]], dtype=torch.complex64)
    torch.testing.assert_close(fix_global_phase(zero_sum), zero_sum)


def test_frozen_model_names_the_bad_field():
    from pydantic import Field

    class Demo(FrozenModel):
        size: float = Field(1.0, gt=0)

    with pytest.raises(ConfigError, match=r"Demo.size"):
        Demo.build(size=-1)
    with pytest.raises(ConfigError, match=r"Demo.colour"):
        Demo.build(colour="red")
