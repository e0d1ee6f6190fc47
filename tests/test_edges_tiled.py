"""The embedded Tiled server under concurrent and hostile-but-fair use: processes started
together on a fresh data directory, a second ``serve`` of a served directory, the API key
kept out of the logs, wrong keys and unreachable servers told in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cdi_beamline import cli
from cdi_beamline.tiled import EmbeddedTiled, serving

pytestmark = pytest.mark.system  # each test starts real Tiled servers

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

#: One process's first use of a fresh data directory: start an embedded server, open (and
#: so create) the runs catalog, write a container there. Started at the same instant by argv[2].
FIRST_USE = """
import sys, time
from cdi_beamline.tiled import EmbeddedTiled
data_dir, at, name = sys.argv[1], float(sys.argv[2]), sys.argv[3]
time.sleep(max(0.0, at - time.time()))
with EmbeddedTiled(data_dir) as server:
    server.client().create_container(name)
    print("ok", flush=True)
"""


def _spawn(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def test_three_processes_on_a_fresh_data_directory_all_start(tmp_path):
    data_dir = tmp_path / "fresh"
    at = time.time() + 8.0  # both interpreters have imported tiled by then
    procs = [_spawn("-c", FIRST_USE, str(data_dir), str(at), name) for name in ("a", "b", "c")]
    outputs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]
        assert "already exists" not in err
    with EmbeddedTiled(data_dir) as server:
        assert {"a", "b", "c"} <= set(server.client())


def _serve(data_dir: Path) -> tuple[subprocess.Popen, list[str]]:
    """``cdi-beamline serve`` in a subprocess, once it says it is ready: (process, lines)."""
    proc = _spawn("-m", "cdi_beamline.cli", "serve", "--data-dir", str(data_dir))
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Ctrl-C"):
            return proc, lines
    raise AssertionError(f"serve did not start: {''.join(lines)} {proc.stderr.read() if proc.stderr else ''}")


def test_a_served_directory_is_refused_and_its_server_json_kept(tmp_path):
    data_dir = tmp_path / "served"
    first, _ = _serve(data_dir)
    try:
        server_json = data_dir / "tiled" / "server.json"
        record = json.loads(server_json.read_text())
        assert record["pid"] == first.pid
        second = _spawn("-m", "cdi_beamline.cli", "serve", "--data-dir", str(data_dir))
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2
        (line,) = err.strip().splitlines()
        assert f"already served by process {first.pid} at {record['uri']}" in line, line
        # an embedded server of another process on the same directory (a `demo`) starts,
        # but neither overwrites nor, when it stops, deletes the first's server.json
        embedded = _spawn("-c", FIRST_USE, str(data_dir), "0", "c")
        out, err = embedded.communicate(timeout=120)
        assert embedded.returncode == 0, err[-2000:]
        assert json.loads(server_json.read_text()) == record
        assert serving(data_dir) is not None and serving(data_dir)[0] == record["uri"]  # type: ignore[index]
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 0 and not server_json.exists()


def test_the_api_key_stays_out_of_the_logs(tmp_path):
    with EmbeddedTiled(tmp_path / "logs") as server:
        key = server.api_key
        # the browse URL `serve` prints: Tiled moves the key into a cookie and redirects
        r = httpx.get(f"{server.uri}/?api_key={key}", trust_env=False)
        assert r.status_code < 500
        httpx.get(f"{server.uri}/api/v1/metadata/?api_key={key}", trust_env=False).raise_for_status()
        logs = [server.tiled_dir / "access.log", server.tiled_dir / "error.log"]
        deadline = time.monotonic() + 10
        while "api_key=[redacted]" not in logs[0].read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert logs[0].read_text().count("api_key=[redacted]") >= 2
        for log in logs:
            assert key not in log.read_text(), log
            assert log.stat().st_mode & 0o077 == 0, oct(log.stat().st_mode)  # owner only
        assert (server.tiled_dir / "api_key").stat().st_mode & 0o077 == 0


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


def test_wrong_api_key_and_unreachable_server_are_one_line_errors(tiled_server, capsys):
    assert cli.main(["results", "--uri", tiled_server.uri, "--api-key", "not-the-key"]) == 2
    line = _error_line(capsys)
    assert f"the Tiled server at {tiled_server.uri} refused the API key" in line, line
    assert "not-the-key" not in line
    with EmbeddedTiled(Path(tiled_server.data_dir).parent / "gone") as gone:
        uri = gone.uri
    for command in (["results"], ["reprocess", "0123abcd"]):
        assert cli.main([*command, "--uri", uri, "--api-key", tiled_server.api_key]) == 2
        line = _error_line(capsys)
        assert line.startswith(f"cdi-beamline {command[0]}: error: cannot reach the Tiled server at {uri}"), line
