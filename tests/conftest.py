"""Shared fixtures. Data in ../shared/data is read-only and optional for the package."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"measured data not found at {SHARED_DATA}")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu"):  # not `"gpu" in item.keywords`: a parameter id "gpu" is a keyword too
            item.add_marker(skip_gpu)


# --- live pipeline fixtures (live engineer): one real Tiled server per test session ------


@pytest.fixture(scope="session")
def tiled_server(tmp_path_factory):
    """A real embedded Tiled server (``cdi_beamline.tiled.EmbeddedTiled``) for the session.

    Yields the server: ``.client()``, ``.uri``, ``.api_key``, ``.data_dir``,
    ``.results_dir`` (readable by the server), ``.spool_dir``.
    """
    from cdi_beamline.tiled import EmbeddedTiled

    server = EmbeddedTiled(tmp_path_factory.mktemp("tiled-data"))
    yield server
    server.close()


@pytest.fixture()
def run_engine():
    """A fresh real ``bluesky.RunEngine`` (no metadata persistence), closed afterwards."""
    from bluesky import RunEngine

    RE = RunEngine({}, call_returns_result=True)
    yield RE
    RE.loop.call_soon_threadsafe(RE.loop.stop)
