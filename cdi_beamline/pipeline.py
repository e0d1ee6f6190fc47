"""One reconstruction engine for every door: the CLI, the Bluesky callback, Tango, benchmarks.

``Reconstructor.reconstruct(frames)`` validates each frame (:func:`validate_frame`, from
:mod:`cdi_beamline.frames`, the one place that decides whether a frame is usable), starts the good ones
(CNN, random, given support or nearest neighbour), refines them in batches on the
device and returns a numpy :class:`ReconstructionBatch` with one row per input frame,
bad frames included (status ``"bad"`` and a specific reason) — it never raises for a
bad frame, so a live scan keeps running. Each reconstructed frame is then judged by
``config.quality`` (:func:`assess`): ``ok``, ``not_converged`` or ``low_signal``, with a reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import __version__, resources
from .config import ReconstructorConfig, RefineConfig
from .device import resolve_device
from .errors import CDIRuntimeError, CDIValueError
from .fourier import (
    FFT_CONVENTION,
    bin_pattern,
    binning_ramp,
    crop_centre,
    embed_centre,
    fix_global_phase,
    fourier_modulus,
    fourier_upsample,
)
from .frames import MAX_SIZE, MIN_SIZE, validate_frame
from .phasing import (
    InitialEstimate,
    NearestNeighbourIndex,
    RefineResult,
    chi2,
    random_initial_object,
    refine,
    square_support,
)

__all__ = ["MIN_SIZE", "MAX_SIZE", "Reconstructor", "ReconstructionBatch", "assess", "validate_frame"]


@dataclass
class ReconstructionBatch:
    """Results, numpy, one row per input frame (bad frames: zeros, NaN chi²).

    object : (B, H, W) complex64, centred, on the data's modulus scale, global phase
        fixed by :func:`cdi_beamline.fourier.fix_global_phase` (amplitude-weighted mean phase 0)
    amplitude, phase : (B, H, W) float32, ``|object|`` and its angle (radians, wrapped)
    support : (B, H, W) bool
    start_amplitude, start_phase : (B, H, W) float32, the initial estimate (the CNN's or the
        nearest neighbour's) before refinement, on the data's scale, global phase fixed like
        the object's; NaN for random and given-support starts
    chi2 : (B,) float64, eq. 5 (scale invariant) of ``|to_detector(object)|`` vs the data
    chi2_history : (B, T) float32, per iteration (the chi² of the iterate entering it)
    scale : (B,) float64, the object's normalisation: sqrt(Σ measured intensity); refinement
        runs on ``modulus / scale`` and multiplies the object by it on return
    status : one of :data:`cdi_beamline.results.STATUSES` per frame (``ok``, ``low_signal``,
        ``not_converged``, ``bad``);  reason : "" or why the frame is not ``ok``
    init : how each good frame was started (e.g. ``"cnn (DEFAULT, binned 2x2)"``,
        ``"random (cnn seeds frames whose sides are multiples of 64 ...)"``)
    """

    object: np.ndarray
    amplitude: np.ndarray
    phase: np.ndarray
    support: np.ndarray
    start_amplitude: np.ndarray
    start_phase: np.ndarray
    chi2: np.ndarray
    chi2_history: np.ndarray
    scale: np.ndarray
    status: list[str] = field(default_factory=list)
    reason: list[str] = field(default_factory=list)
    init: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.status)


class Reconstructor:
    """Frames in, complex objects out: initialisation + batched refinement on one device.

    Parameters
    ----------
    config : ReconstructorConfig (default: CNN start, the paper's 600-iteration schedule).
        It is validated again here, so that what runs — ``config.refine``, exactly — is what
        :meth:`provenance` records, even for a config assembled without validation.
    device : "auto" | "cpu" | "cuda[:n]"
    """

    def __init__(self, config: ReconstructorConfig | None = None, device: Any = "auto"):
        self.config = ReconstructorConfig.build(**(config or ReconstructorConfig()).model_dump())
        self.device = resolve_device(device)
        self._net: Any = None
        self._nns: NearestNeighbourIndex | None = None

    # ------------------------------------------------------------------ public
    def reconstruct(
        self,
        frames: np.ndarray | Sequence[np.ndarray],
        *,
        mask: np.ndarray | None = None,
        seed: int | None = None,
        support: np.ndarray | None = None,
    ) -> ReconstructionBatch:
        """Reconstruct frames (B, H, W), a list of B frames (H, W), or one frame (H, W).

        Good frames are refined ``config.batch_size`` at a time.

        Parameters
        ----------
        frames : intensities (or moduli, per ``config.quantity``), centred patterns
        mask : (H, W) or (B, H, W), True/nonzero = measured pixel
        seed : seed of the random starts (None = 0); chunk k uses ``seed + k``
        support : (H, W) or (B, H, W) real-space support for ``init="support"``

        Raises
        ------
        CDIValueError
            only for problems of the whole call (frames not 2-D/3-D, mask or support of
            the wrong shape, ``init="support"`` without a support); bad frames are
            reported in the result instead.
        """
        stack = _as_stack(frames)
        B = len(stack)
        alone = [validate_frame(f, saturation=self.config.saturation) for f in stack]
        # The batch's shape: that of the first frame that is good on its own.
        first = next((np.shape(f) for f, r in zip(stack, alone) if r is None), None)
        reasons = [r or validate_frame(f, first) for f, r in zip(stack, alone)]
        H, W = first or (0, 0)
        if self.config.init == "support" and support is None:
            raise CDIValueError("init='support' needs a support: pass support=(H, W) or (B, H, W) array")
        mask_t = _per_frame("mask", mask, B, (H, W)) if first else None
        support_t = _per_frame("support", support, B, (H, W)) if first else None
        for name, t in (("mask", mask_t), ("support", support_t)):
            if t is not None:
                empty = ~t.flatten(1).any(1)
                reasons = [
                    r or (f"{name} of this frame is empty (all False)" if e else None)
                    for r, e in zip(reasons, empty.tolist())
                ]
        good = [i for i, r in enumerate(reasons) if r is None]

        T = self.config.iterations or 0
        out = ReconstructionBatch(
            object=np.zeros((B, H, W), np.complex64),
            amplitude=np.zeros((B, H, W), np.float32),
            phase=np.zeros((B, H, W), np.float32),
            support=np.zeros((B, H, W), bool),
            start_amplitude=np.full((B, H, W), np.nan, np.float32),
            start_phase=np.full((B, H, W), np.nan, np.float32),
            chi2=np.full(B, np.nan),
            chi2_history=np.full((B, T), np.nan, np.float32),
            scale=np.full(B, np.nan),
            status=["ok" if r is None else "bad" for r in reasons],
            reason=[r or "" for r in reasons],
            init=["" for _ in range(B)],
        )
        bs = self.config.batch_size
        for k, start in enumerate(range(0, len(good), bs)):
            idx = good[start : start + bs]
            rows = stack[idx] if isinstance(stack, np.ndarray) else np.stack([np.asarray(stack[i]) for i in idx])
            data = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
            modulus = (data.sqrt() if self.config.quantity == "intensity" else data).to(self.device)
            m = None if mask_t is None else mask_t[idx].to(self.device)
            s = None if support_t is None else support_t[idx].to(self.device)
            init, how = self._initial_estimate(modulus, s, m)
            measured = modulus if m is None else modulus * m
            out.scale[idx] = measured.double().square().sum((-2, -1)).sqrt().cpu().numpy()
            if init is not None and init.object is not None:  # the object refinement starts from
                inside = init.object if init.support is None else init.object * init.support
                estimate = fix_global_phase(_on_data_scale(inside, modulus, m))
                out.start_amplitude[idx] = estimate.abs().cpu().numpy()
                out.start_phase[idx] = estimate.angle().cpu().numpy()
            if T == 0:
                if init is None or init.object is None:  # e.g. cnn on a frame whose sides are not multiples of 64
                    for i in idx:
                        out.status[i] = "bad"
                        out.reason[i] = f"iterations=0 needs a {self.config.init} estimate; got {how}"
                    continue
                obj, support_k = init.object, init.support
                chi2_k = chi2(fourier_modulus(obj), modulus, m)
                history_k = torch.empty((len(idx), 0))
            else:
                # cnn/nns fell back to random phases: a random start's schedule
                unseeded = init is None and self.config.init in ("cnn", "nns")
                schedule = (unseeded and self.config.random_refine) or self.config.refine
                res = self._refine(modulus, m, init, schedule, (0 if seed is None else int(seed)) + k)
                obj, support_k, chi2_k, history_k = res.object, res.support, res.chi2, res.chi2_history
            obj = fix_global_phase(obj)
            out.object[idx] = obj.cpu().numpy()
            out.amplitude[idx] = obj.abs().cpu().numpy()
            out.phase[idx] = obj.angle().cpu().numpy()
            out.support[idx] = support_k.cpu().numpy()
            out.chi2[idx] = chi2_k.double().cpu().numpy()
            out.chi2_history[idx] = history_k.cpu().numpy()
            for j, i in enumerate(idx):
                out.init[i] = how if isinstance(how, str) else how[j]
            peak = measured.square().flatten(1).amax(1).cpu().numpy()  # intensity of the brightest measured pixel
            for j, i in enumerate(idx):
                out.status[i], out.reason[i] = assess(self.config, float(out.chi2[i]), out.support[i], float(peak[j]))
        return out

    def workers(self, config: RefineConfig | None = None) -> int:
        """Slices a batch is refined in at once: :func:`cdi_beamline.resources.current`'s workers
        on the CPU, 1 on CUDA and for the ``"compiled"`` backend (one graph, one thread)."""
        backend = (config or self.config.refine).backend
        if self.device.type != "cpu" or backend == "compiled":
            return 1
        return resources.current().workers

    def _refine(
        self,
        modulus: torch.Tensor,
        mask: torch.Tensor | None,
        init: InitialEstimate | None,
        config: RefineConfig,
        seed: int,
    ) -> RefineResult:
        """:func:`refine` of a (B, H, W) batch split into :meth:`workers` slices (of at least
        :data:`cdi_beamline.resources.MIN_SLICE` frames) run in parallel threads
        (:func:`cdi_beamline.resources.split_batch`), merged in order.

        Random phases are drawn here for the whole batch (``seed``, on the CPU, as :func:`refine`
        draws them) and given as the start, so that a frame's start, and so its result, does
        not depend on how many workers share the batch.
        """
        B, H, W = modulus.shape
        obj = None if init is None else init.object
        support = None if init is None else init.support
        if obj is None:
            inside = support if support is not None else square_support((H, W), config.init_support_size)
            obj = random_initial_object(inside.cpu().expand(B, H, W), torch.Generator().manual_seed(seed))
            obj = obj.to(modulus.device)

        def part(s: slice) -> RefineResult:
            sub = InitialEstimate(object=obj[s], support=None if support is None else support[s])
            return refine(modulus[s], mask=None if mask is None else mask[s], init=sub, config=config, seed=seed)

        parts = resources.split_batch(part, B, self.workers(config), resources.MIN_SLICE)
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        return RefineResult(
            **{
                name: torch.cat([getattr(p, name) for p in parts])
                for name in ("object", "support", "chi2", "chi2_history", "best_iteration")
            },
            schedule=first.schedule,
            backend=first.backend,
        )

    def provenance(self) -> dict[str, Any]:
        """What produced the results, JSON-able, for derived start documents and OUT.h5.

        ``config`` is the validated :class:`ReconstructorConfig` dump: ``config.refine`` is
        the schedule and shrink-wrap that ran (``config.random_refine`` for frames a cnn or nns
        start fell back to random phases on), ``config.iterations`` their count, and
        ``Reconstructor(ReconstructorConfig.build(**provenance()["config"]))`` runs the same.
        """
        info: dict[str, Any] = {
            "engine": "cdi_beamline.pipeline.Reconstructor",
            "config": self.config.model_dump(mode="json"),
            "device": str(self.device),
            "fft_convention": FFT_CONVENTION,
            "software": {"cdi_beamline": __version__, "torch": torch.__version__, "numpy": np.__version__},
            "resources": {**resources.current().record(), "workers": self.workers()},
        }
        if self.config.init == "cnn":
            net = self.cnn()
            info["weights"] = {"name": self.config.weights, "id": net.weights_id, "sha256": net.weights_sha256}
        return info

    def cnn(self):
        """The CNN of ``config.weights`` on this device, loaded once (eval mode).

        Raises
        ------
        CDIRuntimeError
            the CNN's dependencies or shipped weights are missing;
        CDIValueError
            ``config.weights`` names neither shipped weights nor a training output.
        """
        if self._net is None:
            try:
                from .models import cdinet
            except ImportError as exc:
                raise CDIRuntimeError(f"init='cnn' needs cdi_beamline.models, which cannot be imported: {exc}") from exc
            self._net = cdinet(weights=self.config.weights).to(self.device).eval()
        return self._net

    # ----------------------------------------------------------------- helpers
    def _initial_estimate(self, modulus: torch.Tensor, support: torch.Tensor | None, mask: torch.Tensor | None):
        """(InitialEstimate or None, how: one string, or one per frame)."""
        init = self.config.init
        H, W = modulus.shape[-2:]
        if init == "random":
            return None, "random"
        if init == "support":
            return InitialEstimate(support=support), "support"
        if init == "cnn":
            S = self.cnn().config.input_size
            if H % S or W % S:
                return None, f"random (cnn seeds frames whose sides are multiples of its input {S}, got {H}x{W})"
            if (H, W) != (S, S) and self.config.cnn_large_frames == "random":
                return None, f"random (cnn_large_frames='random' for frames larger than {S}x{S}, got {H}x{W})"
            return self._cnn_estimate(modulus, mask)
        index = self._index()
        if (H, W) != index.pattern_shape:
            return (
                None,
                f"random (nns index holds {index.pattern_shape[0]}x{index.pattern_shape[1]} patterns, got {H}x{W})",
            )
        match = index.query(modulus)
        obj = torch.polar(match.amplitude, match.phase) * match.support
        return (
            InitialEstimate(
                object=embed_centre(obj, (H, W)).to(self.device),
                support=embed_centre(match.support, (H, W)).to(self.device),
            ),
            "nns",
        )

    def _cnn_split(self, modulus: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The CNN's :func:`initial_estimate` of (B, S, S) moduli, (object, support), the batch
        split over :meth:`workers` threads as the refinement's is (64 frames: 0.23 s on one
        thread, 0.12 s on two, 2-core x86-64 CPU, 2026-12-03), merged in order."""
        from .models import initial_estimate

        net, sym = self.cnn(), self.config.cnn_symmetries

        def part(s: slice) -> tuple[torch.Tensor, torch.Tensor]:
            est = initial_estimate(net, modulus[s], symmetries=sym)
            return est.object, est.support

        parts = resources.split_batch(part, len(modulus), self.workers())
        return torch.cat([o for o, _ in parts]), torch.cat([m for _, m in parts])

    def _cnn_estimate(self, modulus: torch.Tensor, mask: torch.Tensor | None):
        """The CNN's start for (B, H, W) moduli, H and W multiples of its input S (64).

        S x S: the CNN's object and support. Larger, by ``config.cnn_large_frames``, with
        k = H/S (and W/S):

        - ``"binned"``: the pattern binned k x k (:func:`bin_pattern`, mask-aware). The
          real-space pixel stays and the field of view shrinks k times, so the CNN's S x S
          object is the centre of the (H, W) grid (its blocks' ramp undone,
          :func:`binning_ramp`). Right for a pattern oversampled at least 2k times;
        - ``"central"``: its central S x S (the low q, unmeasured pixels 0): same field of
          view, pixels k times larger, so the CNN's object and support are Fourier-interpolated
          onto the (H, W) grid (:func:`fourier_upsample`). Right for any pattern oversampled
          twice, but the seed holds only the low-q detail;
        - ``"fit"``: both, and per frame the start whose modulus fits the (H, W) data better
          (chi², over measured pixels).

        Returns (InitialEstimate, one ``init`` string per frame, or one for all).
        """
        net = self.cnn()
        sym = self.config.cnn_symmetries
        name = f"{self.config.weights}{', best of 8 symmetries' if sym > 1 else ''}"
        H, W = modulus.shape[-2:]
        S = net.config.input_size
        if (H, W) == (S, S):
            obj, support = self._cnn_split(modulus)
            return InitialEstimate(object=obj, support=support), f"cnn ({name})"
        ky, kx = H // S, W // S
        way = self.config.cnn_large_frames
        starts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if way in ("binned", "fit"):
            obj, support = self._cnn_split(bin_pattern(modulus.square(), (ky, kx), mask).sqrt())
            ramp = binning_ramp((H, W), (ky, kx)).to(modulus.device)
            starts[f"binned {ky}x{kx}"] = (embed_centre(obj, (H, W)) * ramp, embed_centre(support, (H, W)))
        if way in ("central", "fit"):
            measured = modulus if mask is None else modulus * mask
            obj, support = self._cnn_split(crop_centre(measured, (S, S)))
            starts[f"central {S}x{S} upsampled {ky}x{kx}"] = (
                fourier_upsample(obj, (H, W)).to(torch.complex64),
                fourier_upsample(support.to(torch.complex64), (H, W)).real > 0.5,
            )
        names = list(starts)
        if len(names) == 1:
            obj, support = starts[names[0]]
            how: str | list[str] = f"cnn ({name}, {names[0]})"
        else:
            (o0, s0), (o1, s1) = starts.values()
            first = chi2(fourier_modulus(o0 * s0), modulus, mask) <= chi2(fourier_modulus(o1 * s1), modulus, mask)
            pick = first[:, None, None]
            obj, support = torch.where(pick, o0, o1), torch.where(pick, s0, s1)
            how = [f"cnn ({name}, {names[0] if f else names[1]})" for f in first.tolist()]
        scale = (modulus.square().sum((-2, -1)) / (obj * support).abs().square().sum((-2, -1)).clamp_min(1e-30)).sqrt()
        return InitialEstimate(object=(obj * scale[:, None, None]).to(torch.complex64), support=support), how

    def _index(self) -> NearestNeighbourIndex:
        if self._nns is None:
            self._nns = NearestNeighbourIndex.from_h5(self.config.nns_index, device=self.device)
        return self._nns


def assess(config: ReconstructorConfig, chi2: float, support: np.ndarray, peak: float) -> tuple[str, str]:
    """Status and reason of one reconstructed frame under ``config.quality``.

    Parameters
    ----------
    config : the configuration that reconstructed it
    chi2 : its chi² (NaN fails the chi² check)
    support : (H, W) bool, its final support
    peak : intensity (counts) of its brightest measured pixel

    Returns
    -------
    ("ok", "") or ("not_converged" | "low_signal", the measured values against their thresholds)
    """
    q = config.quality
    why = []
    if q.max_chi2 is not None and not chi2 <= q.max_chi2:
        why.append(f"chi² {chi2:.3g} > {q.max_chi2:g} (quality.max_chi2)")
    if q.max_support_fill is not None and config.refine.shrinkwrap and config.iterations:
        bound = square_support(support.shape, config.refine.support2_size).numpy()
        fill = float((support & bound).sum() / bound.sum())
        if fill >= q.max_support_fill:
            why.append(f"support fills {fill:.1%} of Support 2 (>= {q.max_support_fill:.1%}, quality.max_support_fill)")
    if not why:
        return "ok", ""
    if q.min_peak_counts is not None and peak < q.min_peak_counts:
        why.insert(0, f"peak {peak:.3g} counts < {q.min_peak_counts:g} (quality.min_peak_counts): too few photons")
        return "low_signal", "; ".join(why)
    return "not_converged", "; ".join(why)


def _on_data_scale(obj: torch.Tensor, modulus: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, H, W) objects times the factor that best fits their Fourier modulus to ``modulus``
    over measured pixels (what refinement does to a given start)."""
    a = fourier_modulus(obj).double()
    w = 1.0 if mask is None else mask.double()
    s = (a * modulus.double() * w).sum((-2, -1)) / (a.square() * w).sum((-2, -1)).clamp_min(1e-300)
    return obj * s.to(torch.float32)[:, None, None]


def _as_stack(frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray | Sequence[np.ndarray]:
    """Frames as a (B, H, W) array, or the list as given (its frames may differ in shape)."""
    if isinstance(frames, (list, tuple)):
        return frames
    arr = np.asarray(frames)
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3:
        return arr
    raise CDIValueError(f"frames must be one pattern (H, W) or a stack (B, H, W), got shape {arr.shape}")


def _per_frame(name: str, value: np.ndarray | None, B: int, shape: tuple[int, int]) -> torch.Tensor | None:
    """``value`` (H, W) or (B, H, W) as a (B, H, W) bool tensor (nonzero = True)."""
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.shape == tuple(shape):
        arr = np.broadcast_to(arr, (B, *shape))
    if arr.shape != (B, *shape):
        raise CDIValueError(
            f"{name} shape {arr.shape} does not match the frames: expected {tuple(shape)} or {(B, *shape)}"
        )
    if np.iscomplexobj(arr) or not np.isfinite(arr).all():
        raise CDIValueError(
            f"{name} must be real and finite (True/nonzero = {'measured' if name == 'mask' else 'inside'})"
        )
    return torch.from_numpy(np.ascontiguousarray(arr != 0))
