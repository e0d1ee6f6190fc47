"""The 0MQ proxy as docs/live.md runs it: bound to the loopback interface, JSON on the wire,
and, across hosts, CURVE keys that keep a subscriber without them from reading anything."""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq.auth
from bluesky.callbacks.zmq import Publisher

from cdi_beamline import cli
from cdi_beamline.commands.worker import make_dispatcher
from cdi_beamline.errors import CDIValueError
from cdi_beamline.tiled import encode_document

pytestmark = pytest.mark.system  # a real 0MQ proxy process

PROXY = str(Path(sys.executable).with_name("bluesky-0MQ-proxy"))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _listening(port: int) -> set[str]:
    """Local addresses (IPv4 hex as in /proc/net/tcp, e.g. 0100007F) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def _proxy(*options: str) -> subprocess.Popen:
    return subprocess.Popen([PROXY, *options], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _worker_args(address: str, **curve) -> argparse.Namespace:
    return argparse.Namespace(
        zmq=address, prefix="", curve_secret=curve.get("secret"), curve_server_public=curve.get("server")
    )


def _receive(dispatcher, publisher, seconds: float) -> list[tuple[str, dict]]:
    """Publish a start document every 0.1 s (0MQ's slow joiner) until the dispatcher got one
    or ``seconds`` passed; what the dispatcher received."""
    got: list[tuple[str, dict]] = []
    dispatcher.subscribe(lambda name, doc: got.append((name, doc)))

    def serve():
        try:
            dispatcher.start()
        except RuntimeError:  # "Event loop stopped before Future completed": stopped below
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + seconds
    while not got and time.monotonic() < deadline:
        publisher("start", {"uid": "r1", "time": 0.0, "scan_id": 7})
        time.sleep(0.1)
    dispatcher.loop.call_soon_threadsafe(dispatcher.loop.stop)
    thread.join(10)
    return got


def test_documented_proxy_binds_the_loopback_interface_only():
    p_in, p_out = _free_ports(2)
    proxy = _proxy("--in-address", f"127.0.0.1:{p_in}", "--out-address", f"127.0.0.1:{p_out}")
    try:
        deadline = time.monotonic() + 60
        while not (_listening(p_in) and _listening(p_out)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _listening(p_in) == _listening(p_out) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0
        publisher = Publisher(f"127.0.0.1:{p_in}", serializer=encode_document)
        got = _receive(make_dispatcher(_worker_args(f"127.0.0.1:{p_out}")), publisher, 30)
        assert got and got[0] == ("start", {"uid": "r1", "time": 0.0, "scan_id": 7})
    finally:
        proxy.terminate()
        proxy.wait(10)


def test_curve_keys_let_the_worker_in_and_keep_others_out(tmp_path):
    keys, clients = tmp_path / "keys", tmp_path / "clients"
    keys.mkdir()
    clients.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(keys, "proxy")
    worker_public, worker_secret = zmq.auth.create_certificates(keys, "worker")
    shutil.copy(worker_public, clients)  # the proxy admits the clients whose public keys it holds
    p_in, p_out = _free_ports(2)
    proxy = _proxy(
        "--in-address",
        f"127.0.0.1:{p_in}",
        "--out-address",
        f"127.0.0.1:{p_out}",
        "--out-curve-secret",
        server_secret,
        "--out-curve-client-keys",
        str(clients),
    )
    try:
        publisher = Publisher(f"127.0.0.1:{p_in}", serializer=encode_document)
        keyed = make_dispatcher(_worker_args(f"127.0.0.1:{p_out}", secret=worker_secret, server=server_public))
        got = _receive(keyed, publisher, 60)
        assert got and got[0][0] == "start"
        stranger = make_dispatcher(_worker_args(f"127.0.0.1:{p_out}"))
        assert _receive(stranger, publisher, 3) == []
    finally:
        proxy.terminate()
        proxy.wait(10)


def test_worker_curve_options_are_checked(tmp_path):
    key = tmp_path / "worker.key_secret"
    key.write_text("")
    with pytest.raises(CDIValueError, match="CURVE needs both --curve-secret and --curve-server-public"):
        make_dispatcher(_worker_args("127.0.0.1:1", secret=str(key)))
    with pytest.raises(CDIValueError, match="no such key file: .*proxy.key"):
        make_dispatcher(_worker_args("127.0.0.1:1", secret=str(key), server=str(tmp_path / "proxy.key")))
    args = cli.build_parser().parse_args(
        ["worker", "--zmq", "h:1", "--curve-secret", "s", "--curve-server-public", "p"]
    )
    assert (args.curve_secret, args.curve_server_public) == ("s", "p")
