# Step 4: a live plot of the latest reconstruction (amplitude and phase).
# Results arrive in the reconstruction worker's thread; the figure is redrawn in the
# RunEngine's thread (on raw events and at the end of each run), like bluesky's own plots.
# Without a display (Agg backend) each redraw is saved to CDI_DATA_DIR/live.png.
import threading
import time

import h5py
import matplotlib
import numpy as np

if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
from urllib.parse import unquote, urlparse


class LiveResultPlot:
    """Amplitude and phase of the newest reconstructed frame, with its chi²."""

    def __init__(self, png=None, min_interval_s=0.5):
        self.png, self.min_interval_s = png, min_interval_s
        self._lock = threading.Lock()
        self._paths, self._latest, self._chi2 = {}, None, {}
        self._shown, self._drawn_at = None, 0.0
        self.fig, (self.ax_amp, self.ax_phase) = plt.subplots(1, 2, figsize=(8, 4), layout="constrained")
        self.fig.canvas.manager.set_window_title("cdi: live reconstruction") if self.fig.canvas.manager else None
        self.ax_amp.set_title("amplitude")
        self.ax_phase.set_title("phase (rad)")
        self.im_amp = self.ax_amp.imshow(np.zeros((64, 64)), cmap="gray")
        self.im_phase = self.ax_phase.imshow(np.zeros((64, 64)), cmap="twilight", vmin=-np.pi, vmax=np.pi)
        self.fig.colorbar(self.im_phase, ax=self.ax_phase, shrink=0.8)

    def __call__(self, name, doc):
        """Derived documents (worker thread): remember where the arrays are, read the newest."""
        if name == "stream_resource" and doc["data_key"] in ("amplitude", "phase"):
            self._paths[doc["uid"]] = (doc["data_key"], unquote(urlparse(doc["uri"]).path), doc["parameters"]["dataset"])
        elif name == "event_page":
            for seq, chi2, status in zip(doc["seq_num"], doc["data"]["chi2"], doc["data"]["status"]):
                self._chi2[seq] = (chi2, status)
        elif name == "stream_datum" and doc["stream_resource"] in self._paths:
            key, path, dataset = self._paths[doc["stream_resource"]]
            with h5py.File(path, "r", locking=False) as f:
                image = np.asarray(f[dataset][doc["indices"]["stop"] - 1], np.float32)
            seq = doc["seq_nums"]["stop"] - 1
            with self._lock:
                latest = self._latest if self._latest and self._latest["seq"] == seq else {"seq": seq}
                latest[key] = image
                latest["chi2"], latest["status"] = self._chi2.get(seq, (float("nan"), "?"))
                self._latest = latest

    def redraw(self, name=None, doc=None, force=False):
        """RunEngine thread: show the newest complete result (at most every min_interval_s)."""
        now = time.monotonic()
        if not force and name != "stop" and now - self._drawn_at < self.min_interval_s:
            return
        with self._lock:
            latest = self._latest
        if not latest or "amplitude" not in latest or "phase" not in latest or latest is self._shown:
            return
        self._shown, self._drawn_at = latest, now
        self.im_amp.set_data(latest["amplitude"])
        self.im_amp.set_clim(0, max(float(np.nanmax(latest["amplitude"])), 1e-12))
        self.im_phase.set_data(np.where(latest["amplitude"] > 0, latest["phase"], np.nan))
        self.fig.suptitle(f"frame seq {latest['seq']}: chi² {latest['chi2']:.4g} ({latest['status']})")
        if self.png:
            self.fig.savefig(self.png, dpi=80)
        else:
            self.fig.canvas.draw_idle()
            self.fig.canvas.flush_events()


if CDI_LIVE_PLOT:
    headless = matplotlib.get_backend().lower() == "agg"
    live_plot = LiveResultPlot(png=CDI_DATA_DIR / "live.png" if headless else None)
    _derived_listeners.append(live_plot)
    RE.subscribe(live_plot.redraw, "event")
    RE.subscribe(live_plot.redraw, "stop")
    print("cdi: live plot " + (f"saved to {live_plot.png}" if headless else "shown") + " (`live_plot`)")
print("cdi: ready -- e.g. RE(count([det], 10)); live.flush(); derived_runs(client)[-1]")
