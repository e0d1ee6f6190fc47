# Step 4: a live plot of the latest reconstruction (amplitude and phase).
# Results arrive in the reconstruction worker's thread; the figure is redrawn in the
# RunEngine's thread (on raw events and at the end of each run), like bluesky's own plots.
# Without a display (Agg backend) each redraw is saved to CDI_DATA_DIR/live.png.
import matplotlib

if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")

from cdi_beamline.plotting import LiveResultPlot

if CDI_LIVE_PLOT:
    headless = matplotlib.get_backend().lower() == "agg"
    live_plot = LiveResultPlot(png=CDI_DATA_DIR / "live.png" if headless else None)
    live.add_listener(live_plot.update)
    RE.subscribe(live_plot.redraw, "event")
    RE.subscribe(live_plot.redraw, "stop")
    print("cdi: live plot " + (f"saved to {live_plot.png}" if headless else "shown") + " (`live_plot`)")
print("cdi: ready -- e.g. RE(count([det], 10)); session.finish(); derived_of(client[-1])")
