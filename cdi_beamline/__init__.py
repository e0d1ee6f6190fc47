"""cdi_beamline: live coherent diffraction imaging reconstruction for Bluesky beamlines."""

__version__ = "0.1.0"
