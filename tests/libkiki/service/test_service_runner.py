"""The service contract, checked on a real service process (the a11y-server).

The test plays systemd: it passes a pre-bound socket with LISTEN_FDS, listens on NOTIFY_SOCKET,
sets WATCHDOG_USEC, and sends SIGHUP and SIGTERM.
"""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from kikitest import VENV_BIN
from libkiki.a11y import wire
from libkiki.constellation import ServiceSpec, spec
from libkiki.framing import FrameDecoder, encode_frame
from libkiki.sockets import bind_unix

pytestmark = pytest.mark.integration


def ask(path: Path, message: wire.Message, timeout: float = 10.0) -> wire.Message:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(encode_frame(wire.encode(message)))
        return read_message(s)


def read_message(s: socket.socket) -> wire.Message:
    decoder = FrameDecoder()
    while data := s.recv(65536):
        for frame in decoder.feed(data):
            assert isinstance(frame, bytes)
            return wire.decode(frame)
    raise AssertionError("connection closed without a message")


def test_activated_service_lifecycle(sockdir: Path, spawn_service: Any) -> None:
    path = sockdir / "a11y.sock"
    listener = bind_unix(path)
    proc, notes = spawn_service(
        "a11y-server", listener=listener, fdname="a11y", extra_env={"WATCHDOG_USEC": "400000"}
    )
    ready = notes.wait_for("READY")
    assert "a11y.sock" in ready["STATUS"]
    info = ask(path, wire.GetInfo(9))
    assert isinstance(info, wire.Info)
    assert (info.request_id, info.name, info.pid) == (9, "a11y-server", proc.pid)
    # Watchdog pings at half of WATCHDOG_USEC: several arrive while we look.
    notes.wait_for("WATCHDOG")
    notes.wait_for("WATCHDOG")
    proc.send_signal(signal.SIGHUP)
    notes.wait_for("RELOADING")
    notes.wait_for("READY")
    proc.send_signal(signal.SIGTERM)
    notes.wait_for("STOPPING")
    assert proc.wait(timeout=20) == 0
    # The activated socket belongs to the manager: still there, still ours.
    assert path.exists()
    listener.close()


def test_second_instance_refuses_to_steal_the_socket(sockdir: Path, spawn_service: Any) -> None:
    first, notes = spawn_service("a11y-server")
    notes.wait_for("READY")
    second, notes2 = spawn_service("a11y-server")
    assert second.wait(timeout=20) == 1
    failure = notes2.wait_for("ERRNO", "98")
    assert "in use" in failure["STATUS"]
    assert b"in use by another running process" in second.stderr.read()
    # The first instance is unharmed.
    assert isinstance(ask(sockdir / "a11y.sock", wire.GetInfo(1)), wire.Info)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=20) == 0
    assert not (sockdir / "a11y.sock").exists()


def test_stale_socket_is_replaced_at_start(sockdir: Path, spawn_service: Any) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sockdir / "a11y.sock"))
    stale.close()  # bound, never listening: connecting is refused
    proc, notes = spawn_service("a11y-server")
    notes.wait_for("READY")
    assert isinstance(ask(sockdir / "a11y.sock", wire.GetInfo(1)), wire.Info)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def test_bad_input_harms_no_other_connection(sockdir: Path, spawn_service: Any) -> None:
    proc, notes = spawn_service("a11y-server", extra_env={"KIKI_A11Y_SERVER_MAX_FRAME": "4096"})
    notes.wait_for("READY")
    path = sockdir / "a11y.sock"
    bystander = socket.socket(socket.AF_UNIX)
    bystander.settimeout(10)
    bystander.connect(str(path))

    # Garbage inside a well-formed frame: a typed error, and the connection goes on.
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(encode_frame(b"\x00garbage, not a flatbuffer"))
        error = read_message(s)
        assert isinstance(error, wire.Error)
        assert error.code == -32600
        s.sendall(encode_frame(wire.encode(wire.GetInfo(2))))
        assert isinstance(read_message(s), wire.Info)

    # An oversized frame: an error, then the server closes that connection.
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(struct.pack("<I", 1 << 20) + b"x" * 100)
        error = read_message(s)
        assert isinstance(error, wire.Error)
        assert "exceeds the limit of 4096" in error.message
        assert s.recv(100) == b""

    # A peer that vanishes in the middle of a frame.
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(path))
    s.sendall(encode_frame(wire.encode(wire.GetInfo(3)))[:7])
    s.close()

    # The bystander never noticed any of it; the server counted all three (the last one once
    # it has seen the vanished peer's EOF, so poll with a deadline).
    deadline = time.monotonic() + 10
    while True:
        bystander.sendall(encode_frame(wire.encode(wire.GetInfo(4))))
        info = read_message(bystander)
        assert isinstance(info, wire.Info)
        assert info.request_id == 4
        if dict(info.counters)["protocol_errors"] == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert dict(info.counters)["protocol_errors"] == 3
    bystander.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def test_connection_limit(sockdir: Path, spawn_service: Any) -> None:
    proc, notes = spawn_service("a11y-server", extra_env={"KIKI_A11Y_SERVER_MAX_CONNECTIONS": "1"})
    notes.wait_for("READY")
    path = sockdir / "a11y.sock"
    with socket.socket(socket.AF_UNIX) as first:
        first.settimeout(10)
        first.connect(str(path))
        first.sendall(encode_frame(wire.encode(wire.GetInfo(1))))
        assert isinstance(read_message(first), wire.Info)
        with socket.socket(socket.AF_UNIX) as second:
            second.settimeout(10)
            second.connect(str(path))
            error = read_message(second)
            assert isinstance(error, wire.Error)
            assert error.code == -32005
        first.sendall(encode_frame(wire.encode(wire.GetInfo(2))))
        assert isinstance(read_message(first), wire.Info)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


SERVICES = [
    "a11y-server",
    "dbus-gateway",
    "sensor-publisher",
    "sync-relay",
    "tool-broker",
    "updater",
]


def where(declared: ServiceSpec, runtime: Path) -> str:
    if declared.socket_file is not None:
        return f"It listens on {runtime / declared.socket_file} unless"
    if declared.address is not None:
        return f"It listens on {declared.address[0]}:{declared.address[1]} (its settings"
    return f"It owns {declared.bus_name} (its setting bus_name) on the session bus."


@pytest.mark.parametrize("name", SERVICES)
def test_arguments_are_answered_never_ignored(
    name: str, sockdir: Path, service_env: dict[str, str]
) -> None:
    """``--help`` and ``--version`` answer and exit; anything else is a usage error. None of them
    starts the service (on the device that would be on the real /run/kiki and /etc/kiki)."""

    def run(*args: str) -> tuple[int, str, str]:
        proc = subprocess.Popen(
            [str(VENV_BIN / f"kiki-{name}"), *args],
            env=service_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError(
                f"kiki-{name} {' '.join(args)} did not return: it started"
            ) from None
        return proc.returncode, out, err

    assert run("--version") == (0, f"kiki-{name} {version(f'kiki-{name}')}\n", "")

    status, out, err = run("--help")
    assert (status, err) == (0, "")
    assert out.startswith(f"usage: kiki-{name} [-h] [--version]\n")
    assert f"{sockdir}/etc/{name}.toml" in out  # where it would read its configuration now
    assert where(spec(name), sockdir) in " ".join(out.split())  # where it would listen
    for variable in (
        "KIKI_CONFIG_DIR",
        f"KIKI_{name.upper().replace('-', '_')}_",
        "KIKI_LOG_LEVEL",
    ):
        assert variable in out

    for bogus in (["--bogus"], ["start"], ["--version-of-it"], ["--vers"]):
        status, out, err = run(*bogus)
        assert (status, out) == (2, "")
        assert err.startswith(f"usage: kiki-{name} ")
        assert f"kiki-{name}: error: unrecognized arguments: {bogus[0]}\n" in err

    # Nothing started: no socket, no state directory.
    assert list(sockdir.iterdir()) == []
