"""``cdi-beamline reconstruct``: phase one pattern or a stack from a file into OUT.h5."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "reconstruct",
        help="reconstruct amplitude + phase from diffraction pattern(s) in a file",
        description="Phase retrieval (init + ER/HIO with shrink-wrap) of one pattern (H, W) or a stack "
        "(N, H, W) read from .npy, .npz, .h5 (FILE.h5:/dataset), .tif or .edf. Writes OUT.h5 with "
        "object (complex64, centred, on the pattern's own grid and scale), amplitude, phase (radians), "
        "support, chi2 (N,), chi2_history (N, T), frame_index (N,) and the configuration + FFT "
        "convention as attributes. Bad frames are reported on stderr and skipped.",
    )
    p.add_argument("input", metavar="INPUT", help="pattern file; FILE.h5:/path or FILE.npz:key selects a dataset")
    p.add_argument("--out", required=True, metavar="OUT.h5", help="output HDF5 (overwritten)")
    p.add_argument("--quantity", choices=["intensity", "modulus"], help="what INPUT holds (default intensity)")
    p.add_argument(
        "--init",
        choices=["random", "support", "cnn", "nns"],
        help="initialisation (default cnn: the shipped weights; random for frames that are not 64x64)",
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
        help="require a real, non-negative object (forward CDI; not for Bragg CDI strain phases)",
    )
    p.add_argument("--nns-index", metavar="FILE.h5", help="HDF5 from `cdi-beamline simulate` for --init nns")
    p.add_argument("--weights", help="CNN weights name for --init cnn (default DEFAULT)")
    p.add_argument(
        "--cnn-symmetries",
        type=int,
        choices=(1, 8),
        help="--init cnn: 8 = predict under the square's 8 symmetries and keep the best fit per frame "
        "(8x the CNN's cost, lower chi²; default 1)",
    )
    p.add_argument(
        "--iterations",
        type=int,
        metavar="N",
        help="total iterations (the schedule is scaled to N); 0 = the CNN (or NNS) estimate alone",
    )
    p.add_argument("--schedule", metavar="S", help="e.g. '(HIO**130 * ER**20)**4' (left to right in time)")
    p.add_argument("--mask", metavar="FILE", help="detector mask (H, W) or (N, H, W), nonzero = measured")
    p.add_argument("--mask-zeros", action="store_true", help="also treat zero-valued pixels as unmeasured")
    p.add_argument("--config", metavar="FILE", help="ReconstructorConfig as JSON/YAML (options above override it)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:n] (default auto)")
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for torch (default torch's; 1 avoids spin-waiting on a busy machine)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random starts (default 0)")
    p.add_argument("--batch-size", type=int, help="frames refined together (default 64)")
    p.add_argument(
        "--plot", metavar="PNG", help="draw pattern, amplitude, unwrapped phase, chi² of the first good frame"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import h5py
    import numpy as np
    import torch
    from tqdm import tqdm

    from ..config import ReconstructorConfig, load_config
    from ..io import read_array, read_patterns
    from ..pipeline import Reconstructor

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)  # this process is ours: a global setting is fine
    refine_over = {"schedule": args.schedule} if args.schedule else {}
    if args.positivity:
        refine_over["positivity"] = True
    base = load_config(ReconstructorConfig, args.config) if args.config else ReconstructorConfig()
    values = base.model_dump()
    values["refine"] = {**values["refine"], **refine_over}
    overrides = {
        "quantity": args.quantity,
        "init": args.init,
        "nns_index": args.nns_index,
        "weights": args.weights,
        "cnn_symmetries": args.cnn_symmetries,
        "iterations": args.iterations,
        "batch_size": args.batch_size,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = ReconstructorConfig.build(**values)
    if config.init == "support" and not args.support:
        raise ValueError("--init support needs --support FILE")

    frames = read_patterns(args.input)
    n, H, W = frames.shape
    mask = None
    if args.mask:
        mask = np.asarray(read_array(args.mask)) != 0
        if mask.shape not in ((H, W), (n, H, W)):
            raise ValueError(f"--mask shape {mask.shape} does not match the patterns: expected {(H, W)} or {(n, H, W)}")
    if args.mask_zeros:
        measured = frames != 0
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
            raise ValueError(
                f"--support shape {support.shape} does not match the patterns: expected {(H, W)} or {(n, H, W)}"
            )

    rec = Reconstructor(config, device=args.device)
    bs = config.batch_size
    results, kept, skipped = [], [], {}
    for k, start in enumerate(
        tqdm(range(0, n, bs), desc="reconstruct", unit="batch", file=sys.stderr, disable=n <= bs)
    ):
        sl = slice(start, start + bs)
        m = None if mask is None else (mask if mask.ndim == 2 else mask[sl])
        s = None if support is None else (support if support.ndim == 2 else support[sl])
        out = rec.reconstruct(frames[sl], mask=m, support=s, seed=args.seed + k)
        for j, (status, reason) in enumerate(zip(out.status, out.reason)):
            if status != "ok":
                skipped[start + j] = reason
                print(f"frame {start + j}: skipped: {reason}", file=sys.stderr)
        good = [j for j, st in enumerate(out.status) if st == "ok"]
        kept += [start + j for j in good]
        results.append((out, good))
    if not kept:
        raise ValueError(f"no frame of {args.input} could be reconstructed ({len(skipped)} bad)")

    def cat(name):
        return np.concatenate([getattr(o, name)[g] for o, g in results])

    with h5py.File(args.out, "w") as f:
        for name in ("object", "amplitude", "phase", "support", "chi2", "chi2_history"):
            f.create_dataset(name, data=cat(name), compression="gzip" if name != "chi2" else None)
        f["frame_index"] = np.asarray(kept, dtype=np.int64)
        desc = rec.describe()
        f.attrs["config"] = json.dumps(desc["config"])
        f.attrs["description"] = json.dumps(desc)
        f.attrs["fft_convention"] = desc["fft_convention"]
        f.attrs["input"] = str(args.input)
        f.attrs["quantity"] = config.quantity
        f.attrs["init"] = json.dumps(sorted({o.init[j] for o, g in results for j in g}))
        f.attrs["skipped"] = json.dumps({str(k): v for k, v in skipped.items()})
    chi2 = cat("chi2")
    print(
        f"{args.out}: {len(kept)} of {n} frame(s) reconstructed ({rec.iterations} iterations, {rec.refine_config.schedule}); "
        f"chi² median {np.median(chi2):.4g}, max {chi2.max():.4g}" + (f"; {len(skipped)} skipped" if skipped else "")
    )
    if args.plot:
        from ..phasing import unwrap
        from ..plotting import plot_reconstruction

        out, good = next(r for r in results if r[1])
        j = good[0]
        pattern = frames[kept[0]]
        plot_reconstruction(
            args.plot,
            pattern if config.quantity == "intensity" else pattern**2,
            out.amplitude[j],
            unwrap(out.phase[j], out.support[j]),
            out.support[j],
            out.chi2_history[j],
            title=f"{args.input} frame {kept[0]}: chi² {out.chi2[j]:.3g}",
        )
        print(f"{args.plot}: written")
    return 0
