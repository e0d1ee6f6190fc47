"""The embedded Tiled server: the data-directory layout, one API key per process, restarts."""

import pytest

from cdi_beamline.errors import CDIValueError
from cdi_beamline.tiled import DataDir, EmbeddedTiled, connect, serving


def test_second_embedded_server_in_process_keeps_the_first_usable(tiled_server, tmp_path):
    first = tiled_server.client()
    with EmbeddedTiled(tmp_path / "second") as second:
        assert second.api_key == tiled_server.api_key
        assert "CatalogOfBlueskyRuns" in {s.name for s in second.client().specs}
        # the session server still answers its own (new) clients after another started
        assert len(tiled_server.client()) == len(first)
    # and after the second server stopped, and restarted on its own port
    port = tiled_server.port
    tiled_server.stop()
    assert serving(tiled_server.data_dir) is None  # server.json removed
    tiled_server.start()
    assert tiled_server.port == port and len(tiled_server.client()) == len(first)


def test_data_dir_layout_and_serving(tiled_server):
    dirs = DataDir.of(tiled_server.data_dir)
    assert (dirs.tiled, dirs.results, dirs.spool) == (
        tiled_server.tiled_dir,
        tiled_server.results_dir,
        tiled_server.spool_dir,
    )
    assert (dirs.tiled / "catalog.db").exists() and (dirs.tiled / "api_key").read_text() == tiled_server.api_key
    assert serving(tiled_server.data_dir) == (tiled_server.uri, tiled_server.api_key)
    catalog = connect(data_dir=tiled_server.data_dir)  # reuses the running server
    assert str(catalog.context.api_uri).startswith(tiled_server.uri)
    via_uri = connect(uri=tiled_server.uri, api_key=tiled_server.api_key)  # root uri -> the runs catalog
    assert "CatalogOfBlueskyRuns" in {s.name for s in via_uri.specs}


def test_connect_refuses_what_it_cannot_reach(tmp_path):
    with pytest.raises(CDIValueError, match="uri or a data_dir"):
        connect()
    with pytest.raises(CDIValueError, match="no Tiled catalog"):
        connect(data_dir=tmp_path / "empty")


def test_a_process_exits_when_its_data_directory_was_deleted(tmp_path):
    """The embedded server is stopped at exit even when its data directory is gone by then
    (a test's tmp folder, a user's rm -r): its thread must not keep the process alive."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import shutil
        from cdi_beamline.tiled import EmbeddedTiled, close_at_exit
        server = EmbeddedTiled({str(tmp_path / "data")!r})
        close_at_exit(server.close)
        shutil.rmtree({str(tmp_path / "data")!r})
        print("started and deleted", flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "started and deleted" in done.stdout and "Traceback" not in done.stderr


def test_reopening_a_current_catalog_skips_tiled_s_init_subprocess(tmp_path, monkeypatch):
    """A catalog.db stamped with the revision this Tiled needs opens without `tiled catalog
    init` (a second Python process); one stamped otherwise still goes through Tiled's check."""
    import sqlite3
    import subprocess

    from cdi_beamline.tiled._server import _sqlite_catalog_current

    with EmbeddedTiled(tmp_path / "d") as server:  # new: Tiled's init creates and stamps it
        catalog = server.catalog
        assert server.client() is not None
    assert _sqlite_catalog_current(catalog)
    launched = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: launched.append(a) or pytest.fail("init subprocess"))
    with EmbeddedTiled(tmp_path / "d") as server:
        assert "CatalogOfBlueskyRuns" in {s.name for s in server.client().specs}
    assert launched == []
    db = tmp_path / "d" / "tiled" / "catalog.db"
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = 'an-older-revision'")
    assert not _sqlite_catalog_current(catalog)
    assert not _sqlite_catalog_current(f"sqlite:///{tmp_path / 'none.db'}")
    assert not _sqlite_catalog_current("postgresql://cdi@127.0.0.1:5432/catalog")


def test_concurrent_table_writers_all_succeed(tmp_path):
    """Three clients creating tables and appending rows at once (as the raw and derived writers
    do): every row arrives and no request fails or hangs (Tiled's one shared DuckDB connection
    broke under this before requests touching it were serialised)."""
    import threading
    import time

    import pyarrow as pa
    import tiled.client

    errors: list[str] = []
    with EmbeddedTiled(tmp_path / "d") as server:

        def writer(k: int) -> None:
            try:
                client = tiled.client.from_uri(server.uri, api_key=server.api_key)
                for j in range(15):
                    table = client.create_appendable_table(pa.schema([("x", pa.int64())]), key=f"t{k}_{j}")
                    for i in range(4):
                        table.append_partition(0, pa.table({"x": [i]}))
                    assert table.read()["x"].tolist() == [0, 1, 2, 3]
            except Exception as exc:  # noqa: BLE001 - collected, asserted below
                errors.append(f"writer {k}: {exc!r}")

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 180
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "a writer hung"
    assert errors == []
