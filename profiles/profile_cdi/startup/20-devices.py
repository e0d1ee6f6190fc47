# Step 2: simulated devices replaying diffraction patterns.
#   det   one frame per trigger, in order:            RE(count([det], 10))
#   rdet  the frame at the rocking angle of `theta`:   RE(scan([rdet], theta, -0.28, 0.72, 201))
from cdi_beamline.devices import ReplayDetector, RockingMotor, make_source

cdi_source = make_source(CDI_SOURCE)
theta = RockingMotor(name="theta")
det = ReplayDetector(cdi_source, name="det")
rdet = ReplayDetector(cdi_source, name="rdet", motor=theta) if cdi_source.angles is not None else None
