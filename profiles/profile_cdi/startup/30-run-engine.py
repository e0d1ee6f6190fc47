# Step 3: the RunEngine and the live session: raw runs written to Tiled, live reconstruction
# subscribed, results flushed and the embedded server stopped when IPython exits.
from bluesky import RunEngine
from bluesky.plan_stubs import mv  # noqa: F401  (for the user)
from bluesky.plans import count, rel_scan, scan  # noqa: F401  (for the user)

from cdi_beamline import resources
from cdi_beamline.callbacks import LiveSession
from cdi_beamline.config import LiveConfig, ReconstructorConfig
from cdi_beamline.pipeline import Reconstructor


def _reconstructor() -> Reconstructor:
    """CNN start when asked for or when weights are installed, else random starts; one torch
    thread per core, each refining a slice of the batch (cdi_beamline.resources)."""
    resources.apply(resources.plan())
    config = ReconstructorConfig.build(init=CDI_INIT or "cnn", iterations=CDI_ITERATIONS)
    rec = Reconstructor(config, device=CDI_DEVICE)
    if CDI_INIT is None:
        try:
            rec.cnn()
        except Exception as exc:  # no weights installed: say so and fall back
            print(f"cdi: CNN weights unavailable ({type(exc).__name__}: {exc}); random starts")
            config = ReconstructorConfig.build(init="random", iterations=CDI_ITERATIONS)
            rec = Reconstructor(config, device=CDI_DEVICE)
    return rec


RE = RunEngine({})
session = LiveSession(
    _reconstructor(), cdi_store, LiveConfig.build(cluster=CDI_CLUSTER), mask=cdi_source.mask, close_at_exit=True
)
session.subscribe(RE)
client, live = session.client, session.callback
db = client.v1  # databroker's v1 API on the same catalog, as beamline users know it: db[-1].table()
print(f"cdi: runs are stored in Tiled at {session.uri} (`client`; `db` the databroker v1 view)")
where = f"Dask cluster {CDI_CLUSTER}" if CDI_CLUSTER else live.reconstructor.device
print(
    f"cdi: live reconstruction on {where} "
    f"({live.reconstructor.config.init} start, {CDI_ITERATIONS} iterations): `live`, `session`"
)
