"""cdi_beamline.models"""
