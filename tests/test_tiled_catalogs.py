"""Tiled for a facility: a PostgreSQL catalog, `serve --config`, binding beyond loopback only
with an API key, and data directories that serve their runs after a move or a copy."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from bluesky.plans import count
from helpers import engine

from cdi_beamline import cli
from cdi_beamline.callbacks import LiveSession
from cdi_beamline.config import StoreConfig
from cdi_beamline.devices import ReplayDetector, SyntheticSource
from cdi_beamline.errors import CDIRuntimeError, CDIValueError
from cdi_beamline.tiled import MIN_API_KEY_CHARS, EmbeddedTiled, connect, derived_runs, load_raw_frames, load_results

N = 4  # frames per scan


def _scan(store: StoreConfig, run_engine) -> tuple[str, str, dict[str, np.ndarray]]:
    """One scan of N synthetic frames through a live session: raw uid, derived uid, and what
    the session's server hands out of them."""
    with LiveSession(engine(2), store) as session:
        session.subscribe(run_engine)
        (raw_uid,) = run_engine(count([ReplayDetector(SyntheticSource(n=N, seed=5), name="det")], N)).run_start_uids
        assert session.finish().pending == 0
        (derived,) = derived_runs(session.client, raw_uid)
        derived_uid = derived.metadata["start"]["uid"]
        return raw_uid, derived_uid, _stored(session.client, raw_uid, derived_uid)


def _stored(client, raw_uid: str, derived_uid: str) -> dict[str, np.ndarray]:
    """What the server hands out of a run: its raw frames (the internal storage) and its
    results (the results HDF5, readable storage)."""
    frames, _, _ = load_raw_frames(client, raw_uid)
    results = load_results(client, derived_uid)
    return {"frames": frames, "amplitude": results["amplitude"], "phase": results["phase"]}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_moved_or_copied_data_directory_serves_its_runs(kind, tmp_path, run_engine, request):
    """SQLite: a copy of the directory (the original deleted) serves its runs. PostgreSQL: the
    directory moved to another path, served with the catalog it recorded."""
    catalog = request.getfixturevalue("pg_catalog") if kind == "postgresql" else None
    first = tmp_path / "beamline" / "cdi-data"
    raw_uid, derived_uid, before = _scan(StoreConfig(data_dir=first, catalog=catalog), run_engine)
    assert before["frames"].shape == (N, 64, 64) and np.isfinite(before["amplitude"]).all()

    moved = tmp_path / "archive" / "with space" / "cdi-data"
    moved.parent.mkdir(parents=True)
    if kind == "sqlite":
        shutil.copytree(first, moved)
    else:
        shutil.move(first, moved)
    shutil.rmtree(tmp_path / "beamline")  # nothing may still point there
    with EmbeddedTiled(moved) as server:  # no catalog given: the one the directory recorded
        assert server.catalog == (catalog or f"sqlite:///{moved / 'tiled' / 'catalog.db'}")
        after = _stored(server.client(), raw_uid, derived_uid)
        assert (moved / "tiled" / "location").read_text() == str(moved)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)


def test_serving_beyond_loopback_needs_a_long_enough_api_key(tmp_path, monkeypatch):
    with pytest.raises(CDIValueError, match="reachable from other hosts: give the API key"):
        EmbeddedTiled(tmp_path / "d", host="0.0.0.0")
    with pytest.raises(CDIValueError, match=f"at least {MIN_API_KEY_CHARS} letters and digits .*, got 5 characters"):
        EmbeddedTiled(tmp_path / "d", host="0.0.0.0", api_key="short")
    with pytest.raises(CDIValueError, match="letters and digits"):  # Tiled would refuse it only once started
        EmbeddedTiled(tmp_path / "d", host="0.0.0.0", api_key="a-key-with-dashes-in-it")
    monkeypatch.delenv("TILED_SINGLE_USER_API_KEY", raising=False)
    with pytest.raises(CDIValueError, match="reachable from other hosts"):
        cli.main(["-v", "serve", "--data-dir", str(tmp_path / "d"), "--host", "0.0.0.0"])
    assert not (tmp_path / "d").exists()  # refused before anything was created


def test_an_unreachable_catalog_is_one_clear_error_without_its_password(tmp_path):
    port = _closed_port()
    with pytest.raises(CDIRuntimeError, match="cannot open the Tiled catalog postgresql://cdi:\\*\\*\\*@") as exc:
        EmbeddedTiled(tmp_path / "d", catalog=f"postgresql://cdi:s3cret@127.0.0.1:{port}/nothing")
    assert "s3cret" not in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "d" / "tiled" / "catalog").exists()  # a catalog that never opened is not recorded


def test_serve_config_with_postgresql_on_every_interface(pg_catalog, postgres, tmp_path):
    """`cdi-beamline serve --config tiled.yml`: a PostgreSQL catalog, bound to 0.0.0.0 with the
    configured key; clients without it are refused; Ctrl-C stops it."""
    key = "k" * MIN_API_KEY_CHARS + "facility"
    config = tmp_path / "tiled.yml"
    config.write_text(f"data_dir: {tmp_path / 'facility'}\ncatalog: {pg_catalog}\nhost: 0.0.0.0\napi_key: {key}\n")
    env = {k: v for k, v in os.environ.items() if k != "TILED_SINGLE_USER_API_KEY"}
    server = subprocess.Popen(
        [sys.executable, "-m", "cdi_beamline.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        lines = []
        for line in server.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        out = "".join(lines)
        assert "listen   0.0.0.0:" in out and "catalog  postgresql://cdi@127.0.0.1" in out, out
        assert key not in out  # a key the operator gave is not echoed
        uri = next(ln.split()[1] for ln in lines if ln.strip().startswith("uri"))
        catalog = connect(uri=uri, api_key=key)
        assert "CatalogOfBlueskyRuns" in {s.name for s in catalog.specs}
        for wrong in (None, "w" * MIN_API_KEY_CHARS):
            with pytest.raises(CDIRuntimeError, match="needs an API key|refused the API key"):
                connect(uri=uri, api_key=wrong)
        assert _count_nodes(postgres.uri(pg_catalog.rsplit("/", 1)[1])) >= 1  # the catalog is in PostgreSQL
        assert not (tmp_path / "facility" / "tiled" / "catalog.db").exists()
        server.send_signal(signal.SIGINT)
        server.wait(60)
        assert server.returncode == 0, server.stdout.read()
    finally:
        if server.poll() is None:
            server.kill()


def _count_nodes(uri: str) -> int:
    import asyncpg

    async def count_rows() -> int:
        conn = await asyncpg.connect(uri)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM nodes"))
        finally:
            await conn.close()

    return asyncio.run(count_rows())


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
