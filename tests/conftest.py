"""Shared fixtures and markers.

Markers: ``gpu`` tests need CUDA and are skipped without it; ``system`` tests drive the real
services (RunEngine, Tiled server, Tango device server, 0MQ proxy, IPython profile) and are
marked here, not in each test: every test of a system module and every test that uses a
system fixture. ``pytest -m "not system"`` runs the fast unit tests alone. ``catalogs`` tests
run once per Tiled catalog: the embedded SQLite default and a PostgreSQL server the session
starts (``postgres``; skipped, with the reason, where PostgreSQL cannot be started).

The package's own tests read only what the repository ships (``tests/data``, the package's
data); ``shared_data`` is the optional folder of measured data beside a checkout, for the
few comparisons with files the package cannot ship.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

#: Test modules whose every test talks to a real service.
SYSTEM_MODULES = frozenset({"test_live", "test_tango", "test_profile", "test_store_outage"})
#: Fixtures that start a real service: a test using one (directly or through another
#: fixture) is a system test wherever it lives.
SYSTEM_FIXTURES = frozenset({"tiled_server", "run_engine", "RE", "tango_ctx", "postgres", "pg_catalog"})
#: The catalogs a ``catalogs`` test runs against (``tiled_server``'s parameter).
CATALOGS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"measured data not found at {SHARED_DATA}")
    return SHARED_DATA


def is_system_test(item: pytest.Item) -> bool:
    """True for a test of a system module or one that uses a system fixture."""
    module = getattr(item, "module", None)
    name = module.__name__.rsplit(".", 1)[-1] if module is not None else ""
    return name in SYSTEM_MODULES or not SYSTEM_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))


#: Fixtures of a Tiled server that a ``catalogs`` test runs once per catalog (read the
#: parameter with ``pgserver.catalog_of(request)``).
CATALOG_FIXTURES = ("tiled_server", "tiled_process")


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("catalogs"):
        for name in CATALOG_FIXTURES:
            if name in metafunc.fixturenames:
                metafunc.parametrize(name, CATALOGS, indirect=True)
                return


def pytest_collection_modifyitems(config, items):
    import torch

    system = pytest.mark.system
    for item in items:
        if is_system_test(item):
            item.add_marker(system)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu"):  # not `"gpu" in item.keywords`: a parameter id "gpu" is a keyword too
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _process_resources(monkeypatch):
    """A test that runs a command in-process (which applies :func:`cdi_beamline.resources.plan`
    to the whole process) leaves torch's threads and the applied plan as it found them."""
    import torch

    from cdi_beamline import resources

    threads = torch.get_num_threads()
    monkeypatch.setattr(resources, "_applied", resources._applied)
    yield
    torch.set_num_threads(threads)


# --- system fixtures: one real Tiled server per test session (and catalog), a fresh RunEngine per test ---


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server (``tests/pgserver.py``) for the session; skips the test,
    with the reason, where it cannot be started."""
    from pgserver import PostgresServer, Unavailable

    try:
        server = PostgresServer()
    except Unavailable as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")
    yield server
    server.stop()


@pytest.fixture()
def pg_catalog(postgres) -> str:
    """URI of a new, empty PostgreSQL database: the catalog of one data directory."""
    return postgres.database()


@pytest.fixture(scope="session")
def tiled_server(request, tmp_path_factory):
    """A real embedded Tiled server (``cdi_beamline.tiled.EmbeddedTiled``) for the session;
    its catalog is SQLite, or PostgreSQL where a ``catalogs`` test asks for it.

    Yields the server: ``.client()``, ``.uri``, ``.api_key``, ``.data_dir``,
    ``.results_dir`` (readable by the server), ``.spool_dir``, ``.catalog``.
    """
    from pgserver import catalog_of

    from cdi_beamline.tiled import EmbeddedTiled

    catalog = catalog_of(request)
    server = EmbeddedTiled(tmp_path_factory.mktemp("tiled-data"), catalog=catalog)
    yield server
    server.close()


@pytest.fixture()
def run_engine():
    """A fresh real ``bluesky.RunEngine`` (no metadata persistence), closed afterwards."""
    from bluesky import RunEngine

    RE = RunEngine({}, call_returns_result=True)
    yield RE
    RE.loop.call_soon_threadsafe(RE.loop.stop)
