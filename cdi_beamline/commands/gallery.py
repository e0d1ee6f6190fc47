"""``cdi-beamline gallery``: a PNG of simulated shapes, patterns, amplitudes and phases."""

from __future__ import annotations

import argparse

from ..errors import CDIValueError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "gallery",
        help="PNG gallery of simulated particles (like Wu et al. 2021 Fig. 2b and Fig. 4)",
        description="Renders named superellipsoids (sphere, octahedron, rounded cube, rod, plate, ...) in 3D, "
        "then for each a random orientation with strong phase: its pattern (log10 I), amplitude and phase.",
    )
    p.add_argument("--out", default="docs/img/gallery.png", metavar="FILE.png", help="output PNG (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of orientations and phases (>= 0; default 0)")
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda[:n] (default cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..physics.gallery import plot_gallery

    if args.seed < 0:
        raise CDIValueError(f"--seed must be >= 0, got {args.seed}")
    print(f"wrote {plot_gallery(args.out, seed=args.seed, device=args.device)}")
    return 0
