# Step 1: where runs go. A Tiled server by URI, or the embedded one under CDI_DATA_DIR
# (started in step 3 by the LiveSession). Queries for the user: derived_of(client[-1]) (the
# reconstructions of the latest scan, kept in the catalog's `processed` container), load_results.
from cdi_beamline.config import StoreConfig
from cdi_beamline.tiled import derived_of, derived_runs, load_raw_frames, load_results, processed  # noqa: F401

cdi_store = StoreConfig.build(data_dir=CDI_DATA_DIR, uri=CDI_TILED_URI, api_key=os.environ.get("TILED_API_KEY"))
