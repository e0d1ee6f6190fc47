"""A gallery of simulated particles like Wu et al. (2021) Fig. 2(b) and Fig. 4 (first rows)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..config.simulation import SimulationConfig
from ._simulate import simulate_batch

__all__ = ["GALLERY_SHAPES", "plot_gallery"]

#: Named superellipsoids (a, b, c, e, n) shown by the gallery, voxels.
GALLERY_SHAPES = {
    "sphere": (10.0, 10.0, 10.0, 1.0, 1.0),
    "octahedron": (12.0, 12.0, 12.0, 2.0, 2.0),
    "rounded cube": (9.0, 9.0, 9.0, 0.3, 0.3),
    "rod": (4.0, 4.0, 13.0, 1.0, 0.4),
    "plate": (12.0, 12.0, 3.5, 0.5, 0.5),
    "ellipsoid": (12.0, 7.0, 5.0, 1.0, 1.0),
    "diamond prism": (11.0, 11.0, 10.0, 2.0, 0.4),
    "star (e = n = 2.5)": (13.0, 13.0, 13.0, 2.5, 2.5),
}


def _fixed(a, b, c, e, n, **kw) -> SimulationConfig:
    return SimulationConfig(a=(a, a), b=(b, b), c=(c, c), e=(e, e), n=(n, n), **kw)


def plot_gallery(out, *, seed: int = 0, device="cpu") -> Path:
    """Write a PNG: each named shape in 3D (unrotated), then one random orientation with
    strong phase: its pattern log10(I), amplitude and phase (cyclic colormap, support only).

    Parameters
    ----------
    out : str or Path
        PNG path (parent folders are created).
    seed : int
        Seed of the orientations and phase fields.
    device : str
        Where to simulate.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.measure import marching_cubes

    names = list(GALLERY_SHAPES)
    fig = plt.figure(figsize=(2.1 * len(names) + 0.8, 9.2), dpi=110, layout="constrained")
    row_axes: dict[int, list] = {1: [], 2: [], 3: []}
    row_images = {}
    rows = ("3D shape", "pattern log$_{10}$ I", "amplitude", "phase (rad)")
    for j, name in enumerate(names):
        bounds = GALLERY_SHAPES[name]
        still = simulate_batch(1, _fixed(*bounds, rotate=False, phase_span=(0.0, 0.0)), seed=seed, device=device,
                               keep_field=True)  # fmt: skip
        s = still.field[0].abs().cpu().numpy()  # (z, y, x)
        verts, faces, _, _ = marching_cubes(s, level=0.5)
        ax = fig.add_subplot(4, len(names), j + 1, projection="3d")
        ax.plot_trisurf(verts[:, 2], verts[:, 1], faces, verts[:, 0], cmap="viridis", lw=0, antialiased=False)
        ax.set_box_aspect((1, 1, 1))
        for setlim in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
            setlim(2, 30)
        ax.set_axis_off()
        ax.set_title(name, fontsize=10)

        live = simulate_batch(1, _fixed(*bounds), seed=seed + j, device=device).to_numpy()
        support = live["support"][0]
        panels = (
            (np.log10(np.maximum(live["modulus"][0] ** 2, 1e-6)), dict(cmap="magma", vmin=-4)),
            (live["amplitude"][0], dict(cmap="gray", vmin=0, vmax=1)),
            (np.ma.masked_where(~support, live["phase"][0]), dict(cmap="twilight", vmin=-math.pi, vmax=math.pi)),
        )
        for i, (img, style) in enumerate(panels, start=1):
            ax = fig.add_subplot(4, len(names), i * len(names) + j + 1)
            ax.set_facecolor("black")
            im = ax.imshow(img, origin="lower", **style)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(rows[i], fontsize=10)
            row_axes[i].append(ax)
            row_images[i] = im
    for i, axes in row_axes.items():
        fig.colorbar(row_images[i], ax=axes, fraction=0.015, pad=0.01)
    fig.suptitle(
        "Superellipsoid particles (eq. 2) with Gaussian-correlated phase (eq. 3, span 2$\\pi$), "
        "random 3D orientation; 64x64 pattern = |FFT| of the 32x32 projection",
        fontsize=11,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
