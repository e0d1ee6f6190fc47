"""The numba backend (fused CPU kernels, pruned DFTs) gives the torch backend's results.

HIO is chaotic: rounding differences grow over hundreds of iterations, so the two paths
are compared over a few iterations, where they must agree to float32 rounding.
"""

import importlib

import pytest
import torch

from cdi_beamline.config import RefineConfig
from cdi_beamline.phasing import InitialEstimate, refine

pytest.importorskip("numba")
K = importlib.import_module("cdi_beamline.phasing._numba_kernels")


def _moduli(H, W):
    g = torch.Generator().manual_seed(5)
    obj = torch.zeros(4, H, W, dtype=torch.complex64)
    obj[:, 12:20, 11:21] = torch.polar(torch.rand(4, 8, 10, generator=g) + 0.5, torch.rand(4, 8, 10, generator=g) * 3)
    return torch.fft.fft2(obj).abs()


@pytest.fixture(scope="module")
def moduli():
    return _moduli(32, 32)


def _both(modulus, config, **kw):
    fused = refine(modulus, seed=2, config=config.model_copy(update={"backend": "numba"}), **kw)
    plain = refine(modulus, seed=2, config=config.model_copy(update={"backend": "torch"}), **kw)
    assert (fused.backend, plain.backend) == ("numba", "torch")
    return fused, plain


@pytest.mark.parametrize("schedule", ["ER**3", "HIO(0.8)**3", "RAAR**3", "HIO**2 * ER**2"])
@pytest.mark.parametrize("positivity", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_fused_kernels_match_torch_path(moduli, schedule, positivity, masked):
    mask = (torch.rand(32, 32, generator=torch.Generator().manual_seed(1)) > 0.2) if masked else None
    # shrink-wrap at every iteration, so that the kernel's |x| is exercised too
    cfg = RefineConfig(schedule=schedule, positivity=positivity, shrinkwrap_start=1, shrinkwrap_every=1)
    fused, plain = _both(moduli, cfg, mask=mask)
    # measured over the 16 cases (2-core x86-64 CPU, 2026-12-02): object within 8.1e-7 of its
    # maximum, chi² history 3.5e-6 and final chi² 6.5e-7 relative
    scale = plain.object.abs().max()
    assert (fused.object - plain.object).abs().max() <= 2.4e-6 * scale
    assert torch.equal(fused.support, plain.support)
    assert torch.allclose(fused.chi2_history, plain.chi2_history, rtol=1e-5, atol=0)
    assert torch.allclose(fused.chi2, plain.chi2, rtol=1.95e-6, atol=0)


def test_fused_kernels_match_on_non_square_frames():
    # the CPU path keeps Fourier space transposed: H != W (one odd) catches a layout slip
    modulus = _moduli(33, 40)
    mask = torch.rand(33, 40, generator=torch.Generator().manual_seed(1)) > 0.2
    cfg = RefineConfig(schedule="HIO**3 * ER**2", shrinkwrap_start=1, shrinkwrap_every=1)
    fused, plain = _both(modulus, cfg, mask=mask)
    # measured: object 2.1e-6, chi² history 6.6e-6 relative
    assert (fused.object - plain.object).abs().max() <= 6.4e-6 * plain.object.abs().max()
    assert torch.equal(fused.support, plain.support)
    assert torch.allclose(fused.chi2_history, plain.chi2_history, rtol=2e-5, atol=0)


def test_fused_kernels_match_with_given_object(moduli):
    init = InitialEstimate(
        object=torch.randn(4, 32, 32, dtype=torch.complex64, generator=torch.Generator().manual_seed(3))
    )
    fused, plain = _both(moduli, RefineConfig(schedule="HIO**4"), init=init)
    assert (fused.object - plain.object).abs().max() <= 6.9e-6 * plain.object.abs().max()  # measured 2.3e-6


def test_kernels_refuse_non_contiguous_tensors():
    # An in-place kernel fed a copy would silently lose its result.
    F = torch.randn(2, 8, 8, dtype=torch.complex64).mT
    Mr = torch.rand(2, 8, 8)
    sums = torch.empty(2, 2, dtype=torch.float64).numpy()
    with pytest.raises(RuntimeError):
        K.project_modulus(F, Mr, None)
    with pytest.raises(RuntimeError):
        K.project_modulus_to(F.contiguous(), F, Mr, None)
    with pytest.raises(RuntimeError):
        K.advance_project(F.contiguous(), F, F.contiguous(), (1.0, 0.5, 1.5), Mr, None, None, sums)


def test_kernel_projection_values():
    g = torch.Generator().manual_seed(0)
    F = torch.randn(3, 16, 16, dtype=torch.complex64, generator=g)
    Mr = torch.rand(3, 16, 16, generator=g)
    measured = torch.rand(3, 16, 16, generator=g) > 0.3
    Ur = (~measured).float() * 0.25
    out = F.clone()
    sums = torch.empty(3, 2, dtype=torch.float64)
    K.project_modulus(out, Mr * measured, Ur)
    amp = F.abs()
    expected = F * ((Mr * measured) / amp + Ur)
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-6)
    K.chi2_sums(F, Mr * measured, measured.float(), sums.numpy())
    assert torch.allclose(sums[:, 0].float(), (amp * Mr * measured).sum((-2, -1)), rtol=1e-5)
    assert torch.allclose(sums[:, 1].float(), (amp.square() * measured).sum((-2, -1)), rtol=1e-5)
    assert torch.allclose(K.modulus(F), amp, rtol=1e-6)


def test_advance_project_values():
    # X = a E + b P + c G; E <- X - G; P <- P_M(X); the chi² sums are those of G
    g = torch.Generator().manual_seed(1)
    E, P, G = (torch.randn(2, 16, 16, dtype=torch.complex64, generator=g) for _ in range(3))
    Mr = torch.rand(2, 16, 16, generator=g)
    measured = torch.rand(2, 16, 16, generator=g) > 0.3
    Ur = (~measured).float() * 0.25
    a, b, c = 0.5, -0.7, 1.7
    X = a * E + b * P + c * G
    sums = torch.empty(2, 2, dtype=torch.float64)
    E1, P1 = E.clone(), P.clone()
    K.advance_project(E1, P1, G, (a, b, c), Mr * measured, Ur, measured.float(), sums.numpy())
    assert torch.allclose(E1, X - G, rtol=1e-5, atol=1e-5)
    assert torch.allclose(P1, X * ((Mr * measured) / X.abs() + Ur), rtol=1e-5, atol=1e-5)
    amp = G.abs()
    assert torch.allclose(sums[:, 0].float(), (amp * Mr * measured).sum((-2, -1)), rtol=1e-5)
    assert torch.allclose(sums[:, 1].float(), (amp.square() * measured).sum((-2, -1)), rtol=1e-5)


def test_pruned_loop_with_a_support_beyond_support2(moduli):
    # The pruned DFTs cover the batch's support box: here the whole frame at first (a given
    # support wider than Support 2, one frame's support empty), then Support 2 after shrink-wrap.
    S = torch.zeros(4, 32, 32, dtype=torch.bool)
    S[:3, 2:30, 1:31] = True
    cfg = RefineConfig(schedule="HIO**3 * RAAR**2 * ER**2", shrinkwrap_start=3, shrinkwrap_every=2)
    fused, plain = _both(moduli, cfg, init=InitialEstimate(support=S))
    # measured: object 2.3e-6, chi² history 4.4e-6 relative
    assert (fused.object - plain.object).abs().max() <= 6.8e-6 * plain.object.abs().max()
    assert torch.equal(fused.support, plain.support)
    assert torch.allclose(fused.chi2_history, plain.chi2_history, rtol=1.3e-5, atol=0)
