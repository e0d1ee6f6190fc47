"""Every figure the package draws.

Figures are drawn on a :class:`matplotlib.figure.Figure` (no pyplot, no backend switch, no
global state) and written to a file; the callers compute what is drawn. The data come in as
arrays or as the columns of :mod:`cdi_beamline.results`; functions that need the phasing
maths (phase unwrapping) take it as an argument, since this module sits below it. This
module imports only numpy, matplotlib and the layers below it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.figure import Figure

from .results import RAW_SEQ_NUM, RECONSTRUCTED, ResultRows, format_counts, status_counts

__all__ = [
    "GalleryColumn",
    "plot_gallery",
    "plot_chi2_histograms",
    "plot_nns_comparison",
    "plot_refinement_curves",
    "plot_measured_frame",
    "plot_reconstruction",
    "LiveResultPlot",
    "plot_scan_overview",
    "plot_start_curves",
    "plot_start_images",
    "plot_loss_curves",
    "plot_predictions",
    "orthogonal_slices",
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


# --- live results ---


def plot_scan_overview(
    res: Mapping[str, Any],
    path: str | Path,
    n: int = 8,
    unwrap: Callable[..., np.ndarray] | None = None,
    volume: Mapping[str, Any] | None = None,
) -> bool:
    """Amplitude (top) and phase in the support (bottom) of ``n`` reconstructed frames spread
    evenly over a derived run (a rocking scan then shows its weak tails and its peak), each
    titled with its status, the figure with the run's frame count per status; below them,
    with ``volume``, three orthogonal slices of the scan's 3D reconstruction
    (:func:`orthogonal_slices`).

    Parameters
    ----------
    res : mapping
        The columns of a derived run (:func:`cdi_beamline.tiled.load_results`).
    path : path
        PNG written here.
    n : int
        Frames shown.
    unwrap : callable(phase (H, W), mask=(H, W) bool) -> (H, W), optional
        Phase unwrapping (``cdi_beamline.phasing.unwrap``); None shows the wrapped phase.
    volume : mapping, optional
        A 3D run (:func:`cdi_beamline.tiled.load_volume`): ``amplitude``, ``phase``,
        ``support`` (D, H, W), ``chi2``; ignored when it holds no arrays (phasing failed).

    Returns
    -------
    bool
        False (and nothing written) when no frame holds a reconstruction.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = np.flatnonzero(np.isin(np.asarray(res["status"]), RECONSTRUCTED))
    if good.size == 0:
        return False
    good = good[np.unique(np.linspace(0, good.size - 1, min(n, good.size)).round().astype(int))]
    width = 2.2 * len(good)
    if volume is None or "amplitude" not in volume:
        fig = plt.figure(figsize=(width, 4.6))
        frames: Any = fig
    else:
        fig = plt.figure(figsize=(max(width, 11.0), 4.6 + 6.4), layout="constrained")
        parts: Any = fig.subfigures(2, 1, height_ratios=[4.6, 6.4])
        frames, slices = parts[0], parts[1]
        d, h, w = volume["amplitude"].shape
        orthogonal_slices(
            volume["amplitude"] * np.exp(1j * volume["phase"]),
            volume["support"],
            title=f"3D reconstruction of the rocking scan ({d}x{h}x{w}, chi² {volume['chi2']:.3g}): "
            "slices through the crystal's centre",
            axis_names=("frame", "row", "column"),
            axes=slices.subplots(2, 3, squeeze=False),
        )
    axes = frames.subplots(2, len(good), squeeze=False)
    for col, i in enumerate(good):
        amp = res["amplitude"][i]
        # phase is meaningful where the object is: support and amplitude above 10 % of its peak
        sup = res["support"][i] & (amp > 0.1 * amp.max())
        rows, cols = np.nonzero(sup) if sup.any() else np.nonzero(np.ones_like(sup))
        pad = 3
        r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, amp.shape[0])
        c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, amp.shape[1])
        phase = res["phase"][i]
        if unwrap is not None:
            phase = unwrap(phase, mask=sup if sup.any() else None)
        phase = np.where(sup, phase, np.nan)
        axes[0, col].imshow(amp[r0:r1, c0:c1], cmap="gray")
        axes[0, col].set_title(f"seq {res[RAW_SEQ_NUM][i]}: {res['status'][i]}\nchi² {res['chi2'][i]:.3g}", fontsize=8)
        im = axes[1, col].imshow(phase[r0:r1, c0:c1], cmap="twilight_shifted")
        frames.colorbar(im, ax=axes[1, col], fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("amplitude")
    axes[1, 0].set_ylabel(f"phase (rad{', unwrapped' if unwrap else ''})\nwhere amplitude > 10 %")
    frames.suptitle(
        f"live reconstructions across the scan: {len(res['status'])} frames, "
        f"{format_counts(status_counts(res['status']))}",
        fontsize=10,
    )
    if frames is fig:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


class LiveResultPlot:
    """Amplitude and phase of the newest reconstructed frame, with its status and chi².

    :meth:`update` is a rows listener (``LiveReconstruction.add_listener``): it runs in the
    worker's thread and only keeps the newest row that holds a reconstruction (any status of
    :data:`~cdi_beamline.results.RECONSTRUCTED`: flagged frames are shown, and say so). :meth:`redraw` draws it in the
    caller's thread (subscribe it to the RunEngine's ``event`` and ``stop``, like bluesky's
    own plots), at most every ``min_interval_s``; with ``png`` the figure is saved there
    instead of shown (no display).
    """

    def __init__(self, png: str | Path | None = None, min_interval_s: float = 0.5):
        import matplotlib.pyplot as plt

        self.png, self.min_interval_s = png, min_interval_s
        self._lock = threading.Lock()
        self._latest: dict[str, Any] | None = None
        self._shown: dict[str, Any] | None = None
        self._drawn_at = 0.0
        self.fig, (self.ax_amp, self.ax_phase) = plt.subplots(1, 2, figsize=(8, 4), layout="constrained")
        if self.fig.canvas.manager is not None:
            self.fig.canvas.manager.set_window_title("cdi: live reconstruction")
        self.ax_amp.set_title("amplitude")
        self.ax_phase.set_title("phase (rad)")
        self.im_amp = self.ax_amp.imshow(np.zeros((64, 64)), cmap="gray")
        self.im_phase = self.ax_phase.imshow(np.zeros((64, 64)), cmap="twilight", vmin=-np.pi, vmax=np.pi)
        self.fig.colorbar(self.im_phase, ax=self.ax_phase, shrink=0.8)

    def update(self, raw_uid: str, rows: ResultRows) -> None:
        """Keep the newest reconstructed row of a batch of results (worker thread)."""
        ok = np.flatnonzero(np.isin(rows.status, RECONSTRUCTED))
        if ok.size == 0:
            return
        i = int(ok[-1])
        latest = {
            "seq": int(rows.raw_seq_num[i]),
            "amplitude": rows.amplitude[i],
            "phase": rows.phase[i],
            "chi2": float(rows.chi2[i]),
            "status": str(rows.status[i]),
        }
        with self._lock:
            self._latest = latest

    def redraw(self, name: str | None = None, doc: dict | None = None, force: bool = False) -> None:
        """Show the newest result (at most every ``min_interval_s``, always on ``stop``)."""
        now = time.monotonic()
        if not force and name != "stop" and now - self._drawn_at < self.min_interval_s:
            return
        with self._lock:
            latest = self._latest
        if latest is None or latest is self._shown:
            return
        self._shown, self._drawn_at = latest, now
        self.im_amp.set_data(latest["amplitude"])
        self.im_amp.set_clim(0, max(float(np.nanmax(latest["amplitude"])), 1e-12))
        self.im_phase.set_data(np.where(latest["amplitude"] > 0, latest["phase"], np.nan))
        self.fig.suptitle(f"frame seq {latest['seq']} ({latest['status']}): chi² {latest['chi2']:.4g}")
        if self.png:
            self.fig.savefig(self.png, dpi=80)
        else:
            self.fig.canvas.draw_idle()
            self.fig.canvas.flush_events()


# --- starts of refinement (Wu et al. 2021, Figs. 5f and 6) ----------------------------------


def plot_start_curves(curves: Mapping[str, np.ndarray], out: str | Path, *, title: str = "") -> Path:
    """χ² against iteration per start: the median over runs with the 10–90 % band (log scale).

    Parameters
    ----------
    curves : {start: (runs, T + 1) χ² of the object after 0 … T iterations}
    """
    fig = Figure(figsize=(6.8, 4.4), layout="tight")
    ax = fig.subplots()
    for (name, c), colour in zip(curves.items(), ("tab:blue", "tab:green", "tab:orange", "tab:red")):
        it = np.arange(c.shape[1])
        c = np.clip(c, 1e-12, None)
        lo, med, hi = np.quantile(c, [0.1, 0.5, 0.9], axis=0)
        ax.plot(it, med, color=colour, label=f"{name} ({len(c)} runs)")
        ax.fill_between(it, lo, hi, color=colour, alpha=0.15, linewidth=0)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("χ² (median, 10–90 % band)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, out, dpi=110)


def plot_start_images(
    images: Mapping[str, Sequence[np.ndarray]], shots: Sequence[int], out: str | Path, *, title: str = ""
) -> Path:
    """Amplitude (top of each pair of rows) and phase of one object per start and iteration count.

    Parameters
    ----------
    images : {start: [(H, W) complex object after shots[k] iterations]}, centred
    shots : the iteration counts, one column each
    """
    names = list(images)
    fig = Figure(figsize=(1.5 * len(shots) + 1.2, 2.9 * len(names)), layout="constrained")
    axes = fig.subplots(2 * len(names), len(shots), squeeze=False)
    for r, name in enumerate(names):
        for c, (obj, n) in enumerate(zip(images[name], shots)):
            amp = np.abs(obj)
            h, w = obj.shape
            crop = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))
            a_ax, p_ax = axes[2 * r, c], axes[2 * r + 1, c]
            a_ax.imshow(amp[crop], cmap="gray")
            phase = np.where(amp > 0.1 * max(amp.max(), 1e-30), np.angle(obj), np.nan)
            p_ax.imshow(phase[crop], cmap="twilight", vmin=-np.pi, vmax=np.pi)
            _no_ticks(a_ax)
            _no_ticks(p_ax)
            if r == 0:
                a_ax.set_title(f"{n} it", fontsize=9)
            if c == 0:
                a_ax.set_ylabel(f"{name}\namplitude", fontsize=7)
                p_ax.set_ylabel("phase", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, out, dpi=100)


# --- the paper's Figs. 3a and 4 ------------------------------------------------------------


def plot_loss_curves(
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    out: str | Path,
    *,
    title: str = "",
) -> Path:
    """Training and validation loss against epoch (the paper's Fig. 3a).

    Parameters
    ----------
    train : (epochs (N,), loss (N,)) the training loss as logged (one batch each)
    validation : (epochs (M,), loss (M,)) the loss on the fixed validation set
    """
    fig = Figure(figsize=(6.4, 4.2), layout="tight")
    ax = fig.subplots()
    ax.plot(*train, color="tab:blue", lw=1, alpha=0.8, label="training (logged batches)")
    ax.plot(*validation, "o-", color="tab:red", ms=3, label="validation")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, out, dpi=110)


def plot_predictions(
    intensity: np.ndarray,
    true_amplitude: np.ndarray,
    amplitude: np.ndarray,
    true_phase: np.ndarray,
    phase: np.ndarray,
    out: str | Path,
    *,
    chi2: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """CNN prediction against the truth for a few patterns (the paper's Fig. 4).

    Rows: (a) the pattern log10 I, (b) true and (c) predicted amplitude, (d) true and
    (e) predicted phase (radians, shown where the amplitude is above 10 % of its maximum).

    Parameters
    ----------
    intensity : (K, H, W) diffraction intensity
    true_amplitude, amplitude, true_phase, phase : (K, h, w), the prediction aligned onto
        the truth (translation, twin, global phase)
    chi2 : (K,) optional per-pattern modulus χ² written above each column
    """
    k = len(intensity)
    fig = Figure(figsize=(1.9 * k + 1.2, 9.6), layout="constrained")
    axes = np.asarray(fig.subplots(5, k, squeeze=False))
    rows = ("(a) log10 I", "(b) true amplitude", "(c) CNN amplitude", "(d) true phase", "(e) CNN phase")
    for j in range(k):
        shown = [
            (np.log10(np.clip(intensity[j], 1e-12, None)), "viridis", None),
            (true_amplitude[j], "gray", (0.0, 1.0)),
            (amplitude[j], "gray", (0.0, 1.0)),
            (
                np.where(true_amplitude[j] > 0.1 * true_amplitude[j].max(), true_phase[j], np.nan),
                "hsv",
                (-math.pi, math.pi),
            ),
            (np.where(amplitude[j] > 0.1 * amplitude[j].max(), phase[j], np.nan), "hsv", (-math.pi, math.pi)),
        ]
        for i, (img, cmap, clim) in enumerate(shown):
            ax = axes[i, j]
            lo, hi = clim if clim else (np.nanmin(img), np.nanmax(img))
            im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi)
            _no_ticks(ax)
            if j == 0:
                ax.set_ylabel(rows[i], fontsize=9)
            if j == k - 1 and i > 0:
                fig.colorbar(im, ax=axes[i, :], fraction=0.02, pad=0.01)
        if chi2 is not None:
            axes[0, j].set_title(f"χ² modulus {chi2[j]:.3f}", fontsize=9)
    fig.suptitle(title, fontsize=11)
    return _save(fig, out, dpi=100)


# --- 3D Bragg CDI ---------------------------------------------------------------------------


def orthogonal_slices(
    obj: np.ndarray,
    support: np.ndarray | None = None,
    *,
    title: str = "",
    axis_names: Sequence[str] = ("axis 0", "axis 1", "axis 2"),
    voxel_nm: float | None = None,
    axes: np.ndarray | None = None,
) -> Figure:
    """Amplitude (top row) and phase (bottom row, cyclic colormap, in the support) of a 3D
    object on three orthogonal slices through the centre of mass of its amplitude, each
    zoomed on the support with a margin; one colour bar per row.

    Parameters
    ----------
    obj : (D, H, W) complex; for an unwrapped phase pass ``amplitude·e^{i·phase}``
    support : (D, H, W) bool; default ``|obj| > 0.1 max|obj|``
    axis_names : names of the three array axes, e.g. ``("z", "y", "x")`` on lab axes
    voxel_nm : voxel edge (nm) of a cubic grid: axes in nm instead of voxels
    axes : (2, 3) matplotlib Axes to draw into; default a new Figure

    Returns
    -------
    Figure
        The figure drawn on (the caller saves it).
    """
    o = np.asarray(obj)
    if o.ndim != 3:
        raise ValueError(f"orthogonal_slices needs a (D, H, W) object, got shape {o.shape}")
    amp = np.abs(o)
    sup = amp > 0.1 * amp.max() if support is None else np.asarray(support, dtype=bool)
    if not sup.any():
        sup = np.ones(o.shape, dtype=bool)
    w = np.where(sup, amp, 0.0) if (amp * sup).any() else sup.astype(float)
    centre = [int(round(float((np.indices(o.shape)[a] * w).sum() / w.sum()))) for a in range(3)]
    if axes is None:
        fig = Figure(figsize=(11, 6.4), layout="constrained")
        axes = np.asarray(fig.subplots(2, 3, squeeze=False))
    else:
        axes = np.asarray(axes).reshape(2, 3)
        fig = axes[0, 0].figure
    nz = np.nonzero(sup)
    lo = [max(int(i.min()) - 3, 0) for i in nz]
    hi = [min(int(i.max()) + 4, n) for i, n in zip(nz, o.shape)]
    scale = voxel_nm if voxel_nm is not None else 1.0
    unit = "nm" if voxel_nm is not None else "voxel"
    images = []
    for cut in range(3):
        shown = [a for a in range(3) if a != cut]
        index: list[Any] = [slice(lo[a], hi[a]) for a in range(3)]
        index[cut] = centre[cut]
        sl = tuple(index)
        r, c = shown
        extent = (
            (lo[c] - 0.5 - o.shape[c] // 2) * scale,
            (hi[c] - 0.5 - o.shape[c] // 2) * scale,
            (hi[r] - 0.5 - o.shape[r] // 2) * scale,
            (lo[r] - 0.5 - o.shape[r] // 2) * scale,
        )
        a_ax, p_ax = axes[0, cut], axes[1, cut]
        images.append(a_ax.imshow(amp[sl], cmap="gray", vmin=0, vmax=float(amp.max()) or 1.0, extent=extent))
        p_ax.set_facecolor("black")
        phase = np.ma.masked_where(~sup[sl], np.angle(o[sl]))
        images.append(p_ax.imshow(phase, cmap="twilight", vmin=-math.pi, vmax=math.pi, extent=extent))
        a_ax.set_title(f"{axis_names[cut]} = {(centre[cut] - o.shape[cut] // 2) * scale:g} {unit}", fontsize=9)
        for ax in (a_ax, p_ax):
            ax.set_xlabel(f"{axis_names[c]} ({unit})", fontsize=8)
            ax.set_ylabel(f"{axis_names[r]} ({unit})", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.colorbar(images[0], ax=list(axes[0]), fraction=0.02, pad=0.01, label="amplitude")
    fig.colorbar(images[1], ax=list(axes[1]), fraction=0.02, pad=0.01, label="phase (rad)")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
