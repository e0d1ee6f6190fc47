# Step 3: the RunEngine, raw runs written to Tiled, live reconstruction subscribed.
from bluesky import RunEngine
from bluesky.plan_stubs import mv  # noqa: F401  (for the user)
from bluesky.plans import count, rel_scan, scan  # noqa: F401  (for the user)

from cdi_beamline.callbacks import LiveReconstruction
from cdi_beamline.config import ReconstructorConfig
from cdi_beamline.pipeline import Reconstructor
from cdi_beamline.store import make_writer


def _reconstructor() -> Reconstructor:
    """CNN start when asked for or when weights are installed, else random starts."""
    init = CDI_INIT
    if init is None:
        try:
            from cdi_beamline.models import cdinet

            cdinet(weights="DEFAULT")
            init = "cnn"
        except Exception as exc:  # no weights installed: say so and fall back
            print(f"cdi: CNN weights unavailable ({type(exc).__name__}: {exc}); random starts")
            init = "random"
    return Reconstructor(ReconstructorConfig.build(init=init, iterations=CDI_ITERATIONS), device=CDI_DEVICE)


RE = RunEngine({})
raw_writer = make_writer(client, CDI_SPOOL_DIR)
derived_writer = make_writer(client, CDI_SPOOL_DIR)
RE.subscribe(raw_writer)
_derived_listeners = [derived_writer]  # the live plot adds itself here


def _emit_derived(name, doc):
    for listener in _derived_listeners:
        listener(name, doc)


live = LiveReconstruction(_reconstructor(), _emit_derived, data_dir=CDI_DATA_DIR, mask=cdi_source.mask)
RE.subscribe(live)
threading._register_atexit(live.close)  # flush results before the server stops
print(f"cdi: live reconstruction on {live.reconstructor.device} "
      f"({live.reconstructor.config.init} start, {CDI_ITERATIONS} iterations): `live`")
