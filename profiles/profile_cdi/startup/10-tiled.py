# Step 1: where runs go. A Tiled server by URI, or the embedded one under CDI_DATA_DIR.
import threading

from cdi_beamline.store import EmbeddedTiled, connect, derived_runs, load_results

if CDI_TILED_URI:
    tiled_server = None
    client = connect(uri=CDI_TILED_URI, api_key=os.environ.get("TILED_API_KEY"))
    CDI_RESULTS_DIR = CDI_DATA_DIR / "results"  # must be readable by that server
    CDI_SPOOL_DIR = CDI_DATA_DIR / "spool"
else:
    tiled_server = EmbeddedTiled(CDI_DATA_DIR)
    # The server runs in non-daemon threads, and Python joins those *before* atexit
    # handlers run: stop it from threading's own exit hooks (LIFO: registered first, runs last).
    threading._register_atexit(tiled_server.close)
    client = tiled_server.client()
    CDI_RESULTS_DIR, CDI_SPOOL_DIR = tiled_server.results_dir, tiled_server.spool_dir
print(f"cdi: runs are stored in Tiled at {CDI_TILED_URI or tiled_server.uri} (`client`)")
