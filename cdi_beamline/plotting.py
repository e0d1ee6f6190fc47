"""Every figure the package draws.

numpy and matplotlib only (matplotlib imported when a figure is drawn); the data come in as
arrays or as the columns of :mod:`cdi_beamline.results`. Functions that need the phasing
maths (phase unwrapping) take it as an argument, since this module sits below it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .results import ResultRows

__all__ = ["LiveResultPlot", "plot_scan_overview"]


# --- live results ---


def plot_scan_overview(
    res: Mapping[str, Any],
    path: str | Path,
    n: int = 8,
    unwrap: Callable[..., np.ndarray] | None = None,
) -> bool:
    """Amplitude (top) and phase in the support (bottom) of ``n`` good frames spread evenly
    over a derived run (a rocking scan then shows its weak tails and its peak).

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

    Returns
    -------
    bool
        False (and nothing written) when no frame was reconstructed ``ok``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = np.flatnonzero(np.asarray(res["status"]) == "ok")
    if good.size == 0:
        return False
    good = good[np.unique(np.linspace(0, good.size - 1, min(n, good.size)).round().astype(int))]
    fig, axes = plt.subplots(2, len(good), figsize=(2.2 * len(good), 4.6), squeeze=False)
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
        axes[0, col].set_title(f"seq {res['raw_seq_num'][i]}\nchi² {res['chi2'][i]:.3g}", fontsize=8)
        im = axes[1, col].imshow(phase[r0:r1, c0:c1], cmap="twilight_shifted")
        fig.colorbar(im, ax=axes[1, col], fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("amplitude")
    axes[1, 0].set_ylabel(f"phase (rad{', unwrapped' if unwrap else ''})\nwhere amplitude > 10 %")
    fig.suptitle(f"live reconstructions across the scan ({len(res['status'])} frames)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


class LiveResultPlot:
    """Amplitude and phase of the newest reconstructed frame, with its chi².

    :meth:`update` is a rows listener (``LiveReconstruction.add_listener``): it runs in the
    worker's thread and only keeps the newest ``ok`` row. :meth:`redraw` draws it in the
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
        """Keep the newest ``ok`` row of a batch of results (worker thread)."""
        ok = np.flatnonzero(rows.status == "ok")
        if ok.size == 0:
            return
        i = int(ok[-1])
        latest = {
            "seq": int(rows.raw_seq_num[i]),
            "amplitude": rows.amplitude[i],
            "phase": rows.phase[i],
            "chi2": float(rows.chi2[i]),
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
        self.fig.suptitle(f"frame seq {latest['seq']}: chi² {latest['chi2']:.4g}")
        if self.png:
            self.fig.savefig(self.png, dpi=80)
        else:
            self.fig.canvas.draw_idle()
            self.fig.canvas.flush_events()
