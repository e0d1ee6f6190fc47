"""cdi_beamline.phasing"""
