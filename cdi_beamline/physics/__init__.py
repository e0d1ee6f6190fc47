"""cdi_beamline.physics"""
