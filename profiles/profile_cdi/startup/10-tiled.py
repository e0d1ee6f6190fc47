# Step 1: where runs go. A Tiled server by URI, or the embedded one under CDI_DATA_DIR
# (started in step 3 by the LiveSession). Queries for the user: derived_runs, load_results.
from cdi_beamline.config import StoreConfig
from cdi_beamline.tiled import derived_runs, load_raw_frames, load_results  # noqa: F401  (for the user)

cdi_store = StoreConfig.build(data_dir=CDI_DATA_DIR, uri=CDI_TILED_URI, api_key=os.environ.get("TILED_API_KEY"))
