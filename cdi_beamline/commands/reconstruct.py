"""``cdi-beamline reconstruct``: phase one pattern or a stack from a file into OUT.h5."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CDIValueError

if TYPE_CHECKING:
    import numpy as np


def add_parser(subparsers) -> None:
    from ..config import PreprocessConfig, ReconstructorConfig, RefineConfig

    # Option defaults are the config models' (None here = not given = the model's default).
    default = {name: f.default for name, f in ReconstructorConfig.model_fields.items()}
    schedule = RefineConfig.model_fields["schedule"].default
    pre_default = {name: f.default for name, f in PreprocessConfig.model_fields.items()}
    p = subparsers.add_parser(
        "reconstruct",
        help="reconstruct amplitude + phase from diffraction pattern(s) in a file",
        description="Phase retrieval (init + ER/HIO with shrink-wrap) of one pattern (H, W) or a stack "
        "(N, H, W) read from .npy, .npz, .h5 (FILE.h5:/dataset), .tif, .edf or .cxi (its detector data with its "
        "mask; --ndim 3: one 3D pattern (D, H, W)). Writes OUT.cxi as CXI 1.6 (docs/interfaces.md), or OUT.h5 with "
        "object (complex64, centred, on the pattern's own grid and scale), amplitude, phase (radians), "
        "support, chi2 (N,), chi2_history (N, T), frame_index (N,), modulus (N, h, w: the measured modulus "
        "that was phased, on the grid of object), roi (y0, x0, h, w), binning, and the provenance (the "
        "validated configuration that ran, software, FFT convention, the preprocessing record) as attributes. "
        "Raw counts can be preprocessed first (--dark, --flat, --mask, --threshold, --roi, --bin). Bad frames "
        "are reported on stderr and skipped.",
    )
    p.add_argument("input", metavar="INPUT", help="pattern file; FILE.h5:/path or FILE.npz:key selects a dataset")
    p.add_argument(
        "--out",
        required=True,
        metavar="OUT.h5",
        help="output HDF5, or CXI 1.6 when it ends in .cxi (overwritten; its folder must exist)",
    )
    p.add_argument(
        "--quantity", choices=["intensity", "modulus"], help=f"what INPUT holds (default {default['quantity']})"
    )
    p.add_argument(
        "--init",
        choices=["random", "support", "cnn", "nns"],
        help=f"initialisation (default {default['init']}; cnn: the shipped weights, random for frames that are "
        "not 64x64 unless --cnn-large-frames)",
    )
    p.add_argument("--support", metavar="FILE", help="real-space support (H, W) for --init support (nonzero = inside)")
    p.add_argument(
        "--support-grow",
        type=int,
        default=0,
        metavar="PX",
        help="dilate the --support by PX pixels first (a loose support for shrink-wrap)",
    )
    p.add_argument(
        "--positivity",
        action="store_true",
        default=None,
        help="require a real, non-negative object (forward CDI; not for Bragg CDI strain phases)",
    )
    p.add_argument("--nns-index", metavar="FILE.h5", help="HDF5 from `cdi-beamline simulate` for --init nns")
    p.add_argument("--weights", help=f"CNN weights name for --init cnn (default {default['weights']})")
    p.add_argument(
        "--cnn-symmetries",
        type=int,
        choices=(1, 8),
        help="--init cnn: 8 = predict under the square's 8 symmetries and keep the best fit per frame "
        f"(8x the CNN's cost, lower chi²; default {default['cnn_symmetries']})",
    )
    p.add_argument(
        "--cnn-large-frames",
        choices=("random", "fit", "binned", "central"),
        help="--init cnn on frames larger than 64x64 (sides multiples of 64): the binned pattern's object, the "
        "central 64x64's upsampled, the better fit of the two per frame, or random phases "
        f"(default {default['cnn_large_frames']}; docs/phasing.md)",
    )
    p.add_argument(
        "--iterations",
        type=int,
        metavar="N",
        help="total iterations (the schedule and the shrink-wrap start are scaled to N; default: the "
        "schedule's own); 0 = the CNN (or NNS) estimate alone",
    )
    p.add_argument("--schedule", metavar="S", help=f"left to right in time (default {schedule!r})")
    p.add_argument(
        "--mask",
        metavar="FILE",
        help="detector mask (H, W) (or (N, H, W) without preprocessing), nonzero = measured; a CXI mask "
        "(.cxi, entry_1/instrument_1/detector_1/mask) marks bad pixels nonzero and is read so. A CXI INPUT's own "
        "mask is always applied: a pixel is measured if both masks say so",
    )
    p.add_argument("--mask-zeros", action="store_true", help="also treat zero-valued pixels as unmeasured")
    pre = p.add_argument_group(
        "preprocessing of raw counts (any of these turns it on; the order is dark, flat, mask, threshold, "
        "ROI, binning, square root)"
    )
    pre.add_argument("--dark", metavar="FILE", help="dark image (H, W), subtracted (clipped at 0)")
    pre.add_argument(
        "--flat", metavar="FILE", help="flat field / whitefield (H, W), divided out (normalised to mean 1)"
    )
    pre.add_argument(
        "--mask-nonzero",
        choices=["measured", "bad"],
        help="what a nonzero --mask pixel means (default: bad for CXI masks, measured otherwise)",
    )
    pre.add_argument("--threshold", type=float, metavar="COUNTS", help="counts below this become 0")
    pre.add_argument(
        "--roi",
        metavar="auto|Y0,X0,H,W",
        help="region of interest: auto (a --roi-size square on the Bragg peak) or y0,x0,h,w in pixels",
    )
    pre.add_argument(
        "--roi-size", type=int, metavar="PX", help=f"side of --roi auto (default {pre_default['roi_size']})"
    )
    pre.add_argument(
        "--bin", type=int, metavar="N", help=f"sum NxN pixels after the ROI crop (default {pre_default['binning']})"
    )
    pre.add_argument(
        "--min-peak",
        type=float,
        metavar="COUNTS",
        help=f"frames with no 2x2 block of at least COUNTS per pixel in the ROI are skipped as no peak (default {pre_default['min_peak']:g})",
    )
    p.add_argument(
        "--ndim",
        type=int,
        choices=(2, 3),
        default=2,
        help="2 (default): INPUT is one pattern or a stack of 2D patterns; 3: INPUT (D, H, W) is one 3D pattern "
        "(e.g. a rocking scan's frames, preprocessed with one ROI), phased as a volume from random starts: "
        "object (1, D, H, W), support, chi2, chi2_starts, kept, spread_amplitude, spread_phase",
    )
    p.add_argument(
        "--starts",
        type=int,
        metavar="N",
        help="--ndim 3: random starts refined as one batch (default: cdi_beamline.phasing.multistart's)",
    )
    p.add_argument(
        "--keep",
        type=int,
        metavar="K",
        help="--ndim 3: the K starts of lowest chi² aligned and averaged (default: multistart's)",
    )
    p.add_argument("--config", metavar="FILE", help="ReconstructorConfig as JSON/YAML (options above override it)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:n] (default auto)")
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads, the batch refined in one piece (default: one thread per core, the batch split "
        "across the cores; OMP_NUM_THREADS, when set, counts as given; docs/phasing.md)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random starts (default 0)")
    p.add_argument("--batch-size", type=int, help=f"frames refined together (default {default['batch_size']})")
    p.add_argument(
        "--plot", metavar="PNG", help="draw pattern, amplitude, unwrapped phase, chi² of the first good frame"
    )
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """The ReconstructorConfig of ``--config`` FILE and the options given, validated once."""
    from ..config import ReconstructorConfig, read_config_file

    values = read_config_file(args.config) if args.config else {}
    refine = {"schedule": args.schedule, "positivity": args.positivity}
    if any(v is not None for v in refine.values()):
        base = values.get("refine") or {}
        if not isinstance(base, dict):
            raise CDIValueError(f"{args.config}: refine must be a mapping of RefineConfig fields")
        values["refine"] = {**base, **{k: v for k, v in refine.items() if v is not None}}
    init = args.init
    if args.ndim == 3:
        if init not in (None, "random"):
            raise CDIValueError(f"--ndim 3 phases from random starts: --init {init} is for 2D patterns")
        init = "random"
    options = {
        "quantity": args.quantity,
        "init": init,
        "nns_index": args.nns_index,
        "weights": args.weights,
        "cnn_symmetries": args.cnn_symmetries,
        "cnn_large_frames": args.cnn_large_frames,
        "iterations": args.iterations,
        "batch_size": args.batch_size,
    }
    values.update({k: v for k, v in options.items() if v is not None})
    return ReconstructorConfig.build(**values)


def build_preprocess_config(args: argparse.Namespace):
    """The PreprocessConfig of the preprocessing options, or None when none is given."""
    from ..config import PreprocessConfig

    roi: str | list[int] | None = args.roi
    if args.roi is not None and args.roi != "auto":
        parts = args.roi.split(",")
        if len(parts) != 4 or not all(p.strip().lstrip("-").isdigit() for p in parts):
            raise CDIValueError(f"--roi must be auto or Y0,X0,H,W (four integers), got {args.roi!r}")
        roi = [int(p) for p in parts]
    options = {
        "dark": args.dark,
        "flat": args.flat,
        "mask_nonzero": args.mask_nonzero,
        "threshold": args.threshold,
        "roi": roi,
        "roi_size": args.roi_size,
        "binning": args.bin,
        "min_peak": args.min_peak,
    }
    given = {k: v for k, v in options.items() if v is not None}
    if not given:
        return None
    if args.ndim == 3 and args.min_peak is None:
        given["min_peak"] = 0.0  # the faint slices of a 3D pattern are data, not frames without a peak
    return PreprocessConfig.build(mask=args.mask, **given)


def run(args: argparse.Namespace) -> int:
    from .. import resources
    from ..io import split_dataset_path

    if args.threads is not None and args.threads < 1:
        raise CDIValueError(f"--threads must be >= 1, got {args.threads}")
    resources.apply(resources.plan(threads=args.threads))  # this process is ours: a global setting is fine
    out_path = Path(args.out).resolve()
    inputs = [args.input, args.mask, args.support, args.dark, args.flat]
    if any(spec and split_dataset_path(spec)[0].resolve() == out_path for spec in inputs):
        raise CDIValueError(f"--out {args.out} is one of the inputs: it would be overwritten; choose another file")
    _check_writable("--out", args.out)
    if args.plot:
        _check_writable("--plot", args.plot)
    partial = out_path.with_name(f".{out_path.name}.partial")  # renamed over --out once complete: no half-written file
    try:
        return _reconstruct(args, out_path, partial)
    finally:
        partial.unlink(missing_ok=True)


def _check_writable(option: str, given: str) -> None:
    """Fail now, before the compute, if file ``given`` cannot be written: a folder, a missing or
    read-only folder (a temporary file is created there and removed)."""
    import tempfile

    path = Path(given).resolve()
    if path.is_dir():
        raise CDIValueError(f"{option} {given} is a folder; give a file name")
    if not path.parent.is_dir():
        raise CDIValueError(f"{option} {given}: the folder {path.parent} does not exist")
    try:
        tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as exc:
        raise CDIValueError(f"{option} {given}: cannot write in {path.parent}: {exc.strerror or exc}") from exc


def _read_input(spec: str) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """INPUT's array, and, for a whole CXI file, its detector mask (True = measured) and geometry."""
    from ..cxi import read_cxi
    from ..io import read_array, split_dataset_path

    path, dataset = split_dataset_path(spec)
    if path.suffix.lower() != ".cxi" or dataset is not None:
        return read_array(spec), None, {}
    source = read_cxi(path)
    if source.data is None:
        raise CDIValueError(f"{spec} holds no detector data (entry_1/instrument_1/detector_1/data)")
    return source.data, source.mask, source.geometry


def _reconstruct(args: argparse.Namespace, out_path: Path, partial: Path) -> int:
    """Read, preprocess, reconstruct, write ``partial`` and rename it to ``out_path`` (checked by :func:`run`)."""
    import h5py
    import numpy as np

    from ..config import ReconstructorConfig
    from ..cxi import write_cxi
    from ..io import as_patterns, read_array, read_mask
    from ..pipeline import Reconstructor
    from ..preprocess import Preprocessor
    from ..results import RECONSTRUCTED

    config = build_config(args)
    if config.init == "support" and not args.support:
        raise CDIValueError("--init support needs --support FILE")
    if args.ndim == 2 and (args.starts is not None or args.keep is not None):
        raise CDIValueError("--starts and --keep belong with --ndim 3 (a 2D stack phases each pattern once)")
    if args.ndim == 3 and (args.support or args.plot):
        raise CDIValueError(f"--ndim 3: {'--support' if args.support else '--plot'} is for 2D patterns")
    pre_config = build_preprocess_config(args)
    if pre_config is not None and config.quantity != "intensity":
        raise CDIValueError(
            "preprocessing (--dark, --flat, --roi, ...) works on counts: INPUT must be --quantity intensity"
        )

    raw, file_mask, geometry = _read_input(args.input)
    if args.ndim == 3 and np.ndim(raw) != 3:
        raise CDIValueError(f"--ndim 3 needs one 3D pattern (D, H, W) in {args.input}, got shape {np.shape(raw)}")
    frames = as_patterns(raw, args.input)
    n, H, W = frames.shape
    input_quantity = config.quantity  # the engine's becomes "modulus" when preprocessing gives it the modulus
    flagged = [""] * n
    roi: tuple[int, int, int, int] | None = (0, 0, H, W)
    binning = 1
    if pre_config is None:
        masks = {"INPUT's CXI mask": file_mask, "--mask": read_mask(args.mask) if args.mask else None}
        for what, given in masks.items():
            if given is not None and given.shape not in ((H, W), (n, H, W)):
                raise CDIValueError(
                    f"{what} shape {given.shape} does not match the patterns: expected {(H, W)} or {(n, H, W)}"
                )
        present = [m for m in masks.values() if m is not None]
        mask = np.logical_and.reduce(np.broadcast_arrays(*present)) if present else None  # measured if all say so
        phased = frames
    else:
        preprocessor = Preprocessor(pre_config, shape=(H, W), mask=file_mask)
        pre = preprocessor.apply(frames)
        roi, binning = preprocessor.roi, pre_config.binning  # roi None: every frame flagged, nothing written
        phased, mask, flagged = pre.modulus, pre.mask, pre.reason
        config = ReconstructorConfig.build(**{**config.model_dump(), "quantity": "modulus"})
        H, W = phased.shape[1:]
    if args.mask_zeros:
        measured = phased != 0
        mask = measured if mask is None else mask & measured
    if args.ndim == 3:
        bad = {i: why for i, why in enumerate(flagged) if why}
        if bad:
            i, why = next(iter(bad.items()))
            raise CDIValueError(f"--ndim 3: {len(bad)} frame(s) of the volume refused, frame {i}: {why}")
        values = np.asarray(phased, np.float32)
        invalid = ~np.isfinite(values) | (values < 0)
        wrong = invalid if mask is None else invalid & np.broadcast_to(mask, invalid.shape)
        if wrong.any():
            raise CDIValueError(
                f"--ndim 3: {int(wrong.sum())} measured voxel(s) of the pattern are NaN, inf or negative"
            )
        values[invalid] = 0  # unmeasured
        modulus = values if config.quantity == "modulus" else np.sqrt(values)
        record = preprocessor.record() if pre_config is not None else None
        volume, provenance = _phase_volume(args, config, modulus, mask)
        _write_volume(
            args,
            partial,
            volume,
            provenance,
            modulus,
            mask,
            _binned(geometry, binning),
            roi,
            binning,
            record,
            input_quantity,
        )
        os.replace(partial, out_path)
        print(
            f"{args.out}: 3D pattern {'x'.join(map(str, modulus.shape))} reconstructed ({config.iterations} "
            f"iterations, {volume.schedule}; best {len(volume.kept)} of {len(volume.chi2_starts)} starts averaged); "
            f"chi² {volume.chi2:.4g} (starts {float(volume.chi2_starts.min()):.4g} to "
            f"{float(volume.chi2_starts.max()):.4g}); spread amplitude {volume.spread_amplitude:.3g}, "
            f"phase {volume.spread_phase:.3g} rad"
        )
        return 0
    support = None
    if args.support:
        support = np.asarray(read_array(args.support)) != 0
        if args.support_grow > 0:
            from scipy import ndimage

            grow = ndimage.generate_binary_structure(support.ndim, 1)
            if support.ndim == 3:
                grow[0] = grow[2] = False  # grow each frame's support in-plane only
            support = ndimage.binary_dilation(support, structure=grow, iterations=args.support_grow)
        if support.shape not in ((H, W), (n, H, W)):
            raise CDIValueError(
                f"--support shape {support.shape} does not match the patterns: expected {(H, W)} or {(n, H, W)}"
            )

    rec = Reconstructor(config, device=args.device)
    out = rec.reconstruct(phased, mask=mask, support=support, seed=args.seed)  # batched by config.batch_size
    # frames with a reconstruction are written, flagged ones (low_signal, not_converged) too
    kept = [i for i, st in enumerate(out.status) if st in RECONSTRUCTED and not flagged[i]]
    skipped = {i: flagged[i] or r for i, (st, r) in enumerate(zip(out.status, out.reason)) if i not in kept}
    for i, reason in skipped.items():
        print(f"frame {i}: skipped: {reason}", file=sys.stderr)
    if not kept:
        raise CDIValueError(f"no frame of {args.input} could be reconstructed ({len(skipped)} bad, reasons above)")

    modulus = (phased[kept] if config.quantity == "modulus" else np.sqrt(phased[kept])).astype(np.float32)
    provenance = rec.provenance()
    if _is_cxi(out_path):
        write_cxi(
            partial,
            data=modulus**2,
            mask=None if mask is None else (mask if mask.ndim == 2 else mask[kept]),
            object=out.object[kept],
            support=out.support[kept],
            chi2=out.chi2[kept],
            ndim=2,
            frame_index=np.asarray(kept),
            geometry=_binned(geometry, binning),
            process={"configuration": provenance},
        )
    else:
        with h5py.File(partial, "w") as f:
            for name in ("object", "amplitude", "phase", "support", "chi2", "chi2_history"):
                f.create_dataset(name, data=getattr(out, name)[kept], compression="gzip" if name != "chi2" else None)
            f["frame_index"] = np.asarray(kept, dtype=np.int64)
            f.create_dataset("modulus", data=modulus, compression="gzip")
            f["roi"] = np.asarray(roi, dtype=np.int64)
            f["binning"] = np.int64(binning)
            if pre_config is not None:
                f.attrs["preprocess"] = json.dumps(preprocessor.record())
            for name in ("status", "reason"):  # UTF-8 (a reason may say chi²)
                f.create_dataset(name, data=[getattr(out, name)[i] for i in kept], dtype=h5py.string_dtype())
            f.attrs["config"] = json.dumps(provenance["config"])
            f.attrs["provenance"] = json.dumps(provenance)
            f.attrs["fft_convention"] = provenance["fft_convention"]
            f.attrs["input"] = str(args.input)
            f.attrs["quantity"] = input_quantity
            f.attrs["init"] = json.dumps(sorted({out.init[i] for i in kept}))
            f.attrs["skipped"] = json.dumps({str(k): v for k, v in skipped.items()})
    os.replace(partial, out_path)
    chi2 = out.chi2[kept]
    print(
        f"{args.out}: {len(kept)} of {n} frame(s) reconstructed ({config.iterations} iterations, "
        f"{config.refine.schedule}); "
        f"chi² median {np.median(chi2):.4g}, max {chi2.max():.4g}" + (f"; {len(skipped)} skipped" if skipped else "")
    )
    if args.plot:
        from ..phasing import unwrap
        from ..plotting import plot_reconstruction

        j = kept[0]
        pattern = phased[j].astype(np.float32)  # integer counts: no overflow in pattern**2
        plot_reconstruction(
            args.plot,
            pattern if config.quantity == "intensity" else pattern**2,
            out.amplitude[j],
            unwrap(out.phase[j], out.support[j]),
            out.support[j],
            out.chi2_history[j],
            title=f"{args.input} frame {j}: chi² {out.chi2[j]:.3g}",
        )
        print(f"{args.plot}: written")
    return 0


def _is_cxi(path: Path) -> bool:
    return path.suffix.lower() == ".cxi"


def _binned(geometry: dict, binning: int) -> dict:
    """``geometry`` of the phased grid: binning multiplies the pixel size."""
    import numpy as np

    if binning == 1 or geometry.get("pixel_size_m") is None:
        return geometry
    return {**geometry, "pixel_size_m": tuple(float(s) * binning for s in np.broadcast_to(geometry["pixel_size_m"], 2))}


def _phase_volume(args: argparse.Namespace, config, modulus: np.ndarray, mask: np.ndarray | None):
    """One 3D pattern ``modulus`` (D, H, W), finite and non-negative, through
    :func:`cdi_beamline.phasing.multistart` -> (MultiStartResult, provenance)."""
    import numpy as np
    import torch

    from ..fourier import FFT_CONVENTION_3D
    from ..phasing import multistart
    from ..pipeline import Reconstructor

    measured = None if mask is None else np.broadcast_to(mask, modulus.shape)
    if not modulus.any():
        raise CDIValueError("--ndim 3: the pattern holds no signal (all zeros)")
    rec = Reconstructor(config, device=args.device)  # the device, and the provenance of the configuration
    chosen = {k: v for k in ("starts", "keep") if (v := getattr(args, k)) is not None}
    result = multistart(
        torch.from_numpy(modulus).to(rec.device),
        mask=None if measured is None else torch.from_numpy(np.ascontiguousarray(measured)).to(rec.device),
        config=config.refine,
        seed=args.seed,
        **chosen,
    )
    provenance = rec.provenance()
    provenance.update(
        engine="cdi_beamline.phasing.multistart",
        multistart={"starts": len(result.chi2_starts), "keep": len(result.kept), "seed": args.seed},
        backend=result.backend,
        fft_convention=FFT_CONVENTION_3D,
    )
    return result, provenance


def _write_volume(
    args: argparse.Namespace,
    path: Path,
    volume,
    provenance: dict,
    modulus: np.ndarray,
    mask: np.ndarray | None,
    geometry: dict,
    roi: tuple[int, int, int, int] | None,
    binning: int,
    preprocess: dict | None,
    quantity: str,
) -> None:
    """A 3D reconstruction to ``path``: CXI (one volume) or OUT.h5 (a stack of one: object (1, D, H, W));
    ``quantity``: what INPUT held."""
    import h5py
    import numpy as np

    from ..cxi import write_cxi

    obj = volume.object.cpu().numpy()
    support = volume.support.cpu().numpy()
    spread = {
        "chi2_starts": volume.chi2_starts.numpy(),
        "kept": volume.kept.numpy(),
        "spread_amplitude": np.float64(volume.spread_amplitude),
        "spread_phase": np.float64(volume.spread_phase),
    }
    if _is_cxi(Path(args.out)):
        write_cxi(
            path,
            data=modulus**2,
            mask=mask,
            object=obj,
            support=support,
            chi2=volume.chi2,
            ndim=3,
            geometry=geometry,
            process={"configuration": provenance},
            results=spread,
        )
        return
    with h5py.File(path, "w") as f:
        f.create_dataset("object", data=obj[None], compression="gzip")
        f.create_dataset("amplitude", data=np.abs(obj)[None], compression="gzip")
        f.create_dataset("phase", data=np.angle(obj)[None].astype(np.float32), compression="gzip")
        f.create_dataset("support", data=support[None], compression="gzip")
        f["chi2"] = np.asarray([volume.chi2], np.float64)
        for name, value in spread.items():
            f[name] = np.asarray(value)[None]
        f.create_dataset("modulus", data=modulus[None], compression="gzip")
        f["roi"] = np.asarray(roi, dtype=np.int64)
        f["binning"] = np.int64(binning)
        if preprocess is not None:
            f.attrs["preprocess"] = json.dumps(preprocess)
        f.attrs["config"] = json.dumps(provenance["config"])
        f.attrs["provenance"] = json.dumps(provenance)
        f.attrs["fft_convention"] = provenance["fft_convention"]
        f.attrs["input"] = str(args.input)
        f.attrs["quantity"] = quantity
        f.attrs["ndim"] = 3
