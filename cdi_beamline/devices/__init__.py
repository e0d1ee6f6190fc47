"""cdi_beamline.devices"""
