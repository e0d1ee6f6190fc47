# cdi-beamline IPython profile, step 0: configuration from the environment.
#
# Copy profiles/profile_cdi to your IPython directory (or run
# `ipython --profile-dir=profiles/profile_cdi`) and set, as needed:
#   CDI_TILED_URI    a Tiled server, e.g. http://tiled.beamline:8000 (API key: TILED_API_KEY)
#   CDI_DATA_DIR     data directory of the embedded Tiled server when no URI (default ~/cdi-data)
#   CDI_SOURCE       frames the simulated detectors replay: aps34idc | aps34idc-raw |
#                    synthetic | a file path (default aps34idc)
#   CDI_DEVICE       torch device of the reconstruction: auto | cpu | cuda[:n] (default auto)
#   CDI_ITERATIONS   refinement iterations per frame (default cdi_beamline.config.LIVE_ITERATIONS)
#   CDI_INIT         cnn | random (default: cnn when weights are installed, else random)
#   CDI_LIVE_PLOT    0 to switch the live amplitude/phase plot off (default on)
#   CDI_CLUSTER      reconstruct on a Dask cluster: local | local:N | tcp://host:8786
#                    (cdi_beamline.config.LiveConfig.cluster; default: in this process)
import os
from pathlib import Path

from cdi_beamline import resources

resources.passive_openmp()  # before torch is imported: idle OpenMP threads sleep (unless OMP_WAIT_POLICY is set)

from cdi_beamline.config import LIVE_ITERATIONS

CDI_TILED_URI = os.environ.get("CDI_TILED_URI") or None
CDI_DATA_DIR = Path(os.environ.get("CDI_DATA_DIR", "~/cdi-data")).expanduser()
CDI_SOURCE = os.environ.get("CDI_SOURCE", "aps34idc")
CDI_DEVICE = os.environ.get("CDI_DEVICE", "auto")
CDI_ITERATIONS = int(os.environ.get("CDI_ITERATIONS", LIVE_ITERATIONS))
CDI_INIT = os.environ.get("CDI_INIT") or None
CDI_LIVE_PLOT = os.environ.get("CDI_LIVE_PLOT", "1") != "0"
CDI_CLUSTER = os.environ.get("CDI_CLUSTER") or None
