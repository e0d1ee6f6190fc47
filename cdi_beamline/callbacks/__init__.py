"""cdi_beamline.callbacks"""
