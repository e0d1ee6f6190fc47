"""A gallery of simulated particles like Wu et al. (2021) Fig. 2(b) and Fig. 4 (first rows)."""

from __future__ import annotations

from pathlib import Path

from ..config.simulation import SimulationConfig
from ..plotting import GalleryColumn
from ..plotting import plot_gallery as draw_gallery
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
    from skimage.measure import marching_cubes

    columns = []
    for j, (name, bounds) in enumerate(GALLERY_SHAPES.items()):
        still = simulate_batch(1, _fixed(*bounds, rotate=False, phase_span=(0.0, 0.0)), seed=seed, device=device,
                               keep_field=True)  # fmt: skip
        assert still.field is not None  # keep_field=True
        verts, faces, _, _ = marching_cubes(still.field[0].abs().cpu().numpy(), level=0.5)  # (z, y, x)
        live = simulate_batch(1, _fixed(*bounds), seed=seed + j, device=device).to_numpy()
        columns.append(
            GalleryColumn(
                name=name,
                verts=verts,
                faces=faces,
                intensity=live["modulus"][0] ** 2,
                amplitude=live["amplitude"][0],
                phase=live["phase"][0],
                support=live["support"][0],
            )
        )
    title = (
        "Superellipsoid particles (eq. 2) with Gaussian-correlated phase (eq. 3, span 2$\\pi$), "
        "random 3D orientation; 64x64 pattern = |FFT| of the 32x32 projection"
    )
    return draw_gallery(columns, out, title=title)
