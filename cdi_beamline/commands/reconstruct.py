"""``cdi-beamline reconstruct``: phase one pattern or a stack from a file into OUT.h5."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import CDIValueError


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
        "(N, H, W) read from .npy, .npz, .h5 (FILE.h5:/dataset), .tif or .edf. Writes OUT.h5 with "
        "object (complex64, centred, on the pattern's own grid and scale), amplitude, phase (radians), "
        "support, chi2 (N,), chi2_history (N, T), frame_index (N,), modulus (N, h, w: the measured modulus "
        "that was phased, on the grid of object), roi (y0, x0, h, w), binning, and the provenance (the "
        "validated configuration that ran, software, FFT convention, the preprocessing record) as attributes. "
        "Raw counts can be preprocessed first (--dark, --flat, --mask, --threshold, --roi, --bin). Bad frames "
        "are reported on stderr and skipped.",
    )
    p.add_argument("input", metavar="INPUT", help="pattern file; FILE.h5:/path or FILE.npz:key selects a dataset")
    p.add_argument("--out", required=True, metavar="OUT.h5", help="output HDF5 (overwritten; its folder must exist)")
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
        "(.cxi, entry_1/instrument_1/detector_1/mask) marks bad pixels nonzero and is read so",
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
    options = {
        "quantity": args.quantity,
        "init": args.init,
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


def _reconstruct(args: argparse.Namespace, out_path: Path, partial: Path) -> int:
    """Read, preprocess, reconstruct, write ``partial`` and rename it to ``out_path`` (checked by :func:`run`)."""
    import h5py
    import numpy as np

    from ..config import ReconstructorConfig
    from ..io import read_array, read_mask, read_patterns
    from ..pipeline import Reconstructor
    from ..preprocess import Preprocessor
    from ..results import RECONSTRUCTED

    config = build_config(args)
    if config.init == "support" and not args.support:
        raise CDIValueError("--init support needs --support FILE")
    pre_config = build_preprocess_config(args)
    if pre_config is not None and config.quantity != "intensity":
        raise CDIValueError(
            "preprocessing (--dark, --flat, --roi, ...) works on counts: INPUT must be --quantity intensity"
        )

    frames = read_patterns(args.input)
    n, H, W = frames.shape
    input_quantity = config.quantity  # the engine's becomes "modulus" when preprocessing gives it the modulus
    flagged = [""] * n
    roi: tuple[int, int, int, int] | None = (0, 0, H, W)
    binning = 1
    if pre_config is None:
        mask = None
        if args.mask:
            mask = read_mask(args.mask)
            if mask.shape not in ((H, W), (n, H, W)):
                raise CDIValueError(
                    f"--mask shape {mask.shape} does not match the patterns: expected {(H, W)} or {(n, H, W)}"
                )
        phased = frames
    else:
        preprocessor = Preprocessor(pre_config, shape=(H, W))
        pre = preprocessor.apply(frames)
        roi, binning = preprocessor.roi, pre_config.binning  # roi None: every frame flagged, nothing written
        phased, mask, flagged = pre.modulus, pre.mask, pre.reason
        config = ReconstructorConfig.build(**{**config.model_dump(), "quantity": "modulus"})
        H, W = phased.shape[1:]
    if args.mask_zeros:
        measured = phased != 0
        mask = measured if mask is None else mask & measured
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

    with h5py.File(partial, "w") as f:
        for name in ("object", "amplitude", "phase", "support", "chi2", "chi2_history"):
            f.create_dataset(name, data=getattr(out, name)[kept], compression="gzip" if name != "chi2" else None)
        f["frame_index"] = np.asarray(kept, dtype=np.int64)
        modulus = phased[kept] if config.quantity == "modulus" else np.sqrt(phased[kept])
        f.create_dataset("modulus", data=modulus.astype(np.float32), compression="gzip")
        f["roi"] = np.asarray(roi, dtype=np.int64)
        f["binning"] = np.int64(binning)
        if pre_config is not None:
            f.attrs["preprocess"] = json.dumps(preprocessor.record())
        for name in ("status", "reason"):  # UTF-8 (a reason may say chi²)
            f.create_dataset(name, data=[getattr(out, name)[i] for i in kept], dtype=h5py.string_dtype())
        provenance = rec.provenance()
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
