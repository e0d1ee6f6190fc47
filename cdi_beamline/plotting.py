"""Every figure the package draws.

Figures are drawn on a :class:`matplotlib.figure.Figure` (no pyplot, no backend switch, no
global state) and written to a file; the callers compute what is drawn. This module imports
only numpy, matplotlib and the layers below it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.figure import Figure

__all__ = [
    "GalleryColumn",
    "plot_gallery",
    "plot_chi2_histograms",
    "plot_nns_comparison",
    "plot_refinement_curves",
    "plot_measured_frame",
    "plot_reconstruction",
]


def _save(fig: Figure, out: str | Path, dpi: int) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


def _no_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


# --- simulation, evaluation, reconstruction ------------------------------------------------


class GalleryColumn(NamedTuple):
    """One shape of the gallery: its 3D surface and one simulated orientation.

    Attributes
    ----------
    name : str
        Title of the column.
    verts : (V, 3) float
        Surface vertices (z, y, x) of the unrotated particle, voxels.
    faces : (F, 3) int
        Triangles of the surface.
    intensity : (H, W) float
        Diffraction pattern ``|F|²`` of the rotated particle.
    amplitude, phase : (h, w) float
        Projected object (phase in radians).
    support : (h, w) bool
        Where the object is.
    """

    name: str
    verts: np.ndarray
    faces: np.ndarray
    intensity: np.ndarray
    amplitude: np.ndarray
    phase: np.ndarray
    support: np.ndarray


def plot_gallery(columns: Sequence[GalleryColumn], out: str | Path, *, title: str = "") -> Path:
    """Rows: the 3D shape, the pattern (log10 I), the amplitude and the phase (cyclic
    colormap, support only); one column per shape. Returns the PNG's path."""
    n = len(columns)
    fig = Figure(figsize=(2.1 * n + 0.8, 9.2), dpi=110, layout="constrained")
    row_labels = ("3D shape", "pattern log$_{10}$ I", "amplitude", "phase (rad)")
    row_axes: dict[int, list] = {1: [], 2: [], 3: []}
    row_images = {}
    for j, col in enumerate(columns):
        ax = fig.add_subplot(4, n, j + 1, projection="3d")
        v = col.verts
        ax.plot_trisurf(v[:, 2], v[:, 1], col.faces, v[:, 0], cmap="viridis", lw=0, antialiased=False)
        ax.set_box_aspect((1, 1, 1))
        for setlim in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
            setlim(2, 30)
        ax.set_axis_off()
        ax.set_title(col.name, fontsize=10)
        panels: tuple[tuple[np.ndarray, dict[str, Any]], ...] = (
            (np.log10(np.maximum(col.intensity, 1e-6)), dict(cmap="magma", vmin=-4)),
            (col.amplitude, dict(cmap="gray", vmin=0, vmax=1)),
            (np.ma.masked_where(~col.support, col.phase), dict(cmap="twilight", vmin=-math.pi, vmax=math.pi)),
        )
        for i, (img, style) in enumerate(panels, start=1):
            ax = fig.add_subplot(4, n, i * n + j + 1)
            ax.set_facecolor("black")
            row_images[i] = ax.imshow(img, origin="lower", **style)
            _no_ticks(ax)
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=10)
            row_axes[i].append(ax)
    for i, axes in row_axes.items():
        fig.colorbar(row_images[i], ax=axes, fraction=0.015, pad=0.01)
    fig.suptitle(title, fontsize=11)
    return _save(fig, out, dpi=110)


def plot_chi2_histograms(
    values: Mapping[str, np.ndarray],
    fits: Mapping[str, tuple[np.ndarray, np.ndarray]],
    labels: Mapping[str, str],
    reference: Mapping[str, float],
    out: str | Path,
    *,
    title: str = "",
) -> Path:
    """One histogram per χ² kind (e.g. modulus, amplitude, phase) with its fitted density
    and a reference mean (the paper's, dashed).

    Parameters
    ----------
    values : {kind: (N,) χ²}
    fits : {kind: (x, density)} the fitted curve, e.g. a Gamma pdf
    labels : {kind: legend text of the fit}
    reference : {kind: mean to mark}
    """
    fig = Figure(figsize=(13, 3.6), layout="tight")
    axes = fig.subplots(1, len(values))
    for ax, (kind, v) in zip(np.atleast_1d(axes), values.items()):
        hi = np.quantile(v, 0.99)
        ax.hist(v, bins=60, range=(0, hi), density=True, color="#7aa6c2", label=f"CNN, n={len(v)}")
        x, density = fits[kind]
        ax.plot(x, density, "k-", lw=1.5, label=labels[kind])
        ax.axvline(reference[kind], color="crimson", ls="--", label=f"paper mean {reference[kind]}")
        ax.set_xlabel(f"χ² {kind}")
        ax.legend(fontsize=8)
    np.atleast_1d(axes)[0].set_ylabel("density")
    fig.suptitle(title)
    return _save(fig, out, dpi=110)


def plot_nns_comparison(cnn_chi2: np.ndarray, nns_chi2: np.ndarray, index_size: int, out: str | Path) -> Path:
    """Histograms of the modulus χ² of the CNN and of nearest-neighbour search, (N,) each."""
    fig = Figure(figsize=(6, 3.8), layout="tight")
    ax = fig.subplots()
    hi = float(np.quantile(np.concatenate([cnn_chi2, nns_chi2]), 0.99))
    ax.hist(cnn_chi2, bins=60, range=(0, hi), alpha=0.7, label=f"CNN (mean {cnn_chi2.mean():.4f})")
    ax.hist(nns_chi2, bins=60, range=(0, hi), alpha=0.7, label=f"NNS over {index_size} (mean {nns_chi2.mean():.4f})")
    ax.set_xlabel("χ² modulus")
    ax.set_ylabel("patterns")
    ax.set_title("CNN vs nearest-neighbour search (paper: 0.02 vs 0.08)")
    ax.legend()
    return _save(fig, out, dpi=110)


def plot_refinement_curves(histories: Mapping[str, np.ndarray], out: str | Path, *, title: str = "") -> Path:
    """χ² against iteration, one curve per start: the geometric mean over runs with a band
    of ±1 sd of log10 χ² (χ² spans decades).

    Parameters
    ----------
    histories : {start: (runs, T) χ² per iteration}
    """
    fig = Figure(figsize=(6.4, 4.2), layout="tight")
    ax = fig.subplots()
    for (name, hist), colour in zip(histories.items(), ("tab:blue", "tab:green", "tab:orange", "tab:red")):
        it = np.arange(hist.shape[1])
        logs = np.log10(np.clip(hist, 1e-12, None))
        mean, sd = logs.mean(0), logs.std(0)
        ax.plot(it, 10**mean, color=colour, label=name)
        ax.fill_between(it, 10 ** (mean - sd), 10 ** (mean + sd), color=colour, alpha=0.18)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("χ² (geometric mean, ±1 sd of log χ²)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, out, dpi=110)


def plot_measured_frame(
    intensity: np.ndarray,
    cnn_amplitude: np.ndarray,
    cnn_phase: np.ndarray,
    cnn_support: np.ndarray,
    start_support: np.ndarray,
    refined_amplitude: np.ndarray,
    refined_phase: np.ndarray,
    refined_support: np.ndarray,
    chi2_cnn: float,
    chi2_refined: float,
    out: str | Path,
    *,
    title: str = "",
    crop: slice = slice(16, 48),
) -> Path:
    """Six panels of a measured frame: pattern (log10 I), the CNN's amplitude and phase (in
    its support), the refinement's starting support, the refined amplitude and unwrapped
    phase (zoomed by ``crop``).

    Parameters
    ----------
    intensity : (H, W)
    cnn_amplitude, cnn_phase, cnn_support : (h, w) the CNN's output and where its amplitude
        is above the support threshold
    start_support : (H, W) bool, the support the refinement started from
    refined_amplitude, refined_phase, refined_support : (H, W) after refinement; the phase
        unwrapped by the caller
    """
    fig = Figure(figsize=(17, 3.2), layout="tight")
    axes = fig.subplots(1, 6)
    axes[0].imshow(np.log10(np.clip(intensity, 1, None)), cmap="magma")
    axes[0].set_title("measured (log10 I)")
    axes[1].imshow(cnn_amplitude, cmap="gray")
    axes[1].set_title(f"CNN amplitude (χ² {chi2_cnn:.3f})")
    axes[2].imshow(np.where(cnn_support, cnn_phase, np.nan), cmap="twilight", vmin=-np.pi, vmax=np.pi)
    axes[2].set_title("CNN phase (in its support)")
    axes[3].imshow(start_support, cmap="gray")
    axes[3].set_title("CNN support")
    axes[4].imshow(refined_amplitude[crop, crop], cmap="gray")
    axes[4].set_title(f"refined amplitude (χ² {chi2_refined:.4f})")
    axes[5].imshow(np.where(refined_support, refined_phase, np.nan)[crop, crop], cmap="viridis")
    axes[5].set_title("refined phase (unwrapped)")
    for ax in axes:
        _no_ticks(ax)
    fig.suptitle(title)
    return _save(fig, out, dpi=110)


def plot_reconstruction(
    out: str | Path,
    intensity: np.ndarray,
    amplitude: np.ndarray,
    phase: np.ndarray,
    support: np.ndarray,
    history: np.ndarray,
    *,
    title: str = "",
) -> Path:
    """Four panels: the pattern (log10 I), the amplitude and the phase on the support
    (zoomed on the support's bounding box), χ² (eq. 5) against iteration.

    Parameters
    ----------
    intensity : (H, W) the measured pattern
    amplitude, phase : (H, W) the reconstruction; the phase unwrapped by the caller
    support : (H, W) bool
    history : (T,) χ² per iteration
    """
    phase = np.where(support, phase - (phase[support].mean() if support.any() else 0), np.nan)
    fig = Figure(figsize=(16, 4), layout="tight")
    ax = fig.subplots(1, 4)
    floor = intensity[intensity > 0].min() if (intensity > 0).any() else 1
    im = ax[0].imshow(np.log10(np.maximum(intensity, floor)), cmap="magma")
    ax[0].set_title("pattern, log10 intensity")
    fig.colorbar(im, ax=ax[0], shrink=0.8)
    # Real space: zoom on the support's bounding box (with a margin), in frame pixels.
    if support.any():
        rows, cols = np.nonzero(support)
    else:
        rows, cols = np.array([0, amplitude.shape[0] - 1]), np.array([0, amplitude.shape[1] - 1])
    pad = max(4, int(np.ptp(rows) + np.ptp(cols)) // 8)
    r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, amplitude.shape[0])
    c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, amplitude.shape[1])
    extent = (c0 - 0.5, c1 - 0.5, r1 - 0.5, r0 - 0.5)
    im = ax[1].imshow(amplitude[r0:r1, c0:c1], cmap="gray", extent=extent)
    ax[1].set_title("amplitude")
    fig.colorbar(im, ax=ax[1], shrink=0.8)
    im = ax[2].imshow(phase[r0:r1, c0:c1], cmap="twilight_shifted", extent=extent)
    ax[2].set_title("phase on the support (unwrapped, rad)")
    fig.colorbar(im, ax=ax[2], shrink=0.8)
    ax[3].semilogy(np.arange(1, len(history) + 1), np.maximum(history, 1e-12))
    ax[3].set_xlabel("iteration")
    ax[3].set_ylabel("chi²")
    ax[3].set_title("chi² (eq. 5)")
    fig.suptitle(title)
    return _save(fig, out, dpi=100)
