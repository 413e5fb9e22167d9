"""Paths, sd_notify, socket activation variables, peer identity, config."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from libkiki import paths
from libkiki.config import ServiceConfig, load_config
from libkiki.errors import KikiError
from libkiki.peer import SO_PEERPIDFD, app_id_from_cgroup, peer_cred
from libkiki.systemd import Notifier, listen_fds, watchdog_interval

pytestmark = pytest.mark.integration


def test_runtime_dir_precedence() -> None:
    env = {"RUNTIME_DIRECTORY": "/run/kiki:/run/other", "KIKI_RUNTIME_DIR": "/tmp/x"}
    assert paths.runtime_dir(env) == Path("/run/kiki")
    assert paths.runtime_dir({"KIKI_RUNTIME_DIR": "/tmp/x"}) == Path("/tmp/x")
    assert paths.state_dir({"STATE_DIRECTORY": "/var/lib/kiki/tool-broker"}) == Path(
        "/var/lib/kiki/tool-broker"
    )
    assert paths.socket_path("tool-broker", {"KIKI_RUNTIME_DIR": "/r"}) == Path("/r/tools.sock")
    assert paths.socket_path("a11y.sock", {"KIKI_RUNTIME_DIR": "/r"}) == Path("/r/a11y.sock")


def test_runtime_dir_default_for_root_or_user() -> None:
    expected = Path("/run/kiki") if os.geteuid() == 0 else Path("/xdg/kiki")
    assert paths.runtime_dir({"XDG_RUNTIME_DIR": "/xdg"}) == expected


def test_notifier_sends_datagrams(tmp_path: Path) -> None:
    path = tmp_path / "n"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(5)
    n = Notifier(str(path))
    assert n.ready("serving")
    assert server.recv(4096) == b"READY=1\nSTATUS=serving"
    assert n.watchdog()
    assert server.recv(4096) == b"WATCHDOG=1"
    assert n.stopping()
    assert server.recv(4096) == b"STOPPING=1"
    assert n.errno(98)
    assert server.recv(4096) == b"ERRNO=98"
    n.close()
    server.close()


def test_notifier_abstract_address_and_disabled() -> None:
    name = f"kiki-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(5)
    assert Notifier("@" + name).status("hi")
    assert server.recv(100) == b"STATUS=hi"
    server.close()
    assert not Notifier("").ready()


def test_notifier_survives_a_vanished_manager(tmp_path: Path) -> None:
    assert not Notifier(str(tmp_path / "gone")).ready()


def test_listen_fds_only_for_this_pid() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    assert listen_fds(env) == []
    a, b = socket.socketpair()
    # Put a real socket at fd 3 for the duration of the test.
    saved = os.dup(3) if _fd_open(3) else None
    os.dup2(a.fileno(), 3)
    try:
        env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "tools"}
        fds = listen_fds(env)
        assert [(f.fd, f.name) for f in fds] == [(3, "tools")]
        assert "LISTEN_FDS" not in env
        assert not os.get_inheritable(3)
    finally:
        if saved is not None:
            os.dup2(saved, 3)
            os.close(saved)
        else:
            os.close(3)
        a.close()
        b.close()


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_watchdog_interval() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}) is None


USER_APPS = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/"


@pytest.mark.parametrize(
    ("cgroup", "app", "unit", "app_user"),
    [
        (
            "0::/system.slice/kiki-tool-broker.service\n",
            "kiki-tool-broker",
            "kiki-tool-broker.service",
            None,
        ),
        (
            "0::/system.slice/system-kiki\\x2dprobe.slice/kiki-probe@1.service\n",
            "kiki-probe",
            "kiki-probe@1.service",
            None,
        ),
        (
            f"{USER_APPS}app-org.gnome.Terminal.service\n",
            "org.gnome.Terminal",
            "app-org.gnome.Terminal.service",
            1000,
        ),
        (
            f"{USER_APPS}app-gnome-org.mozilla.firefox-4711.scope\n",
            "org.mozilla.firefox",
            "app-gnome-org.mozilla.firefox-4711.scope",
            1000,
        ),
        ("0::/system.slice/ssh.service\n", None, "ssh.service", None),
        ("12:pids:/\n0::/\n", None, None, None),
        ("", None, None, None),
        # What a delegated service makes below itself does not rename it.
        (
            "0::/system.slice/runner.service/app-org.example.Music-1.scope\n",
            None,
            "runner.service",
            None,
        ),
        # Another user's manager, a login session, a container: no app id.
        (
            "0::/user.slice/user-1001.slice/user@1001.service/app.slice/app-org.example.X.scope\n",
            None,
            "app-org.example.X.scope",
            None,
        ),
        ("0::/user.slice/user-1000.slice/session-2.scope\n", None, "session-2.scope", None),
        ("0::/machine.slice/app-org.example.X.scope\n", None, "app-org.example.X.scope", None),
        ("0::/user.slice/user-1000.slice/user@1000.service\n", None, "user@1000.service", None),
    ],
)
def test_app_id_from_cgroup(
    cgroup: str, app: str | None, unit: str | None, app_user: int | None
) -> None:
    assert app_id_from_cgroup(cgroup, 1000) == (app, unit, app_user)


def test_peer_cred_of_a_real_socket() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        cred = peer_cred(a)
        assert (cred.pid, cred.uid, cred.gid) == (os.getpid(), os.getuid(), os.getgid())
        assert cred.groups == set(os.getgroups())
    finally:
        a.close()
        b.close()


CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
print("connected", flush=True)
sys.stdin.readline()  # until told to go
"""


def connected_peer(path: str, groups: list[int] | None = None) -> subprocess.Popen[bytes]:
    """A process that has connected to ``path`` (in ``groups``) and stays until sent a line."""
    peer = subprocess.Popen(
        [sys.executable, "-c", CONNECT, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        extra_groups=groups,
    )
    assert peer.stdout is not None
    assert peer.stdout.readline() == b"connected\n"
    return peer


def test_peer_groups_are_those_at_connect_and_a_peer_gone_is_refused(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.fail("needs root, to give the peer supplementary groups")
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        peer = connected_peer(path, [4242, 4343])
        conn, _ = listener.accept()
        with conn:
            cred = peer_cred(conn)
            assert (cred.pid, cred.groups) == (peer.pid, frozenset({4242, 4343}))
        peer.communicate(b"go\n", timeout=30)
        # A peer that has exited before it is identified: its pid may already name another
        # process, whose /proc would be read as the peer's, so it is refused.
        peer = connected_peer(path)
        peer.communicate(b"go\n", timeout=30)
        conn, _ = listener.accept()
        with conn, pytest.raises(ProcessLookupError):
            peer_cred(conn)


def test_config_from_toml_and_env(tmp_path: Path) -> None:
    (tmp_path / "tool-broker.toml").write_text("max_connections = 7\nmax_line = 4096\n")
    env = {"KIKI_CONFIG_DIR": str(tmp_path), "KIKI_TOOL_BROKER_MAX_LINE": "8192"}
    config = load_config(ServiceConfig, "tool-broker", env)
    assert (config.max_connections, config.max_line) == (7, 8192)


def test_config_errors_name_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "updater.toml").write_text("max_connections = 0\nbogus = 1\n")
    with pytest.raises(KikiError, match=r"updater\.toml.*max_connections.*bogus"):
        load_config(ServiceConfig, "updater", {"KIKI_CONFIG_DIR": str(tmp_path)})
    (tmp_path / "updater.toml").write_text("max_connections = [")
    with pytest.raises(KikiError, match=r"updater\.toml"):
        load_config(ServiceConfig, "updater", {"KIKI_CONFIG_DIR": str(tmp_path)})


def test_state_dir_for_a_user_without_a_home(monkeypatch: pytest.MonkeyPatch) -> None:
    # A DynamicUser= in a container may have neither $HOME nor a passwd entry.
    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(os, "geteuid", lambda: 61234)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert paths.state_dir({}) == Path("/tmp/kiki-state-61234/kiki")
    assert paths.state_dir({"XDG_STATE_HOME": "/xdg"}) == Path("/xdg/kiki")


def test_notifier_never_blocks_on_a_manager_that_does_not_read(tmp_path: Path) -> None:
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "notify"))
    try:
        notifier = Notifier(str(tmp_path / "notify"))
        # The manager's queue fills (a few hundred datagrams); the rest are dropped, not waited on.
        sent = [notifier.status(f"step {i}") for i in range(5000)]
        assert sent[0] is True
        assert sent[-1] is False
        assert manager.recv(4096) == b"STATUS=step 0"
    finally:
        manager.close()


def test_a_peer_of_another_user_is_identified_by_a_service_user() -> None:
    # A service runs as its own user (DynamicUser=), and its callers' processes are not its to
    # signal: asking whether one is alive gets EPERM, which means alive.
    if os.getuid() != 0:
        pytest.fail("needs root, to run the identifying side as another user")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the service's side, as nobody; the peer (this test, as root) stays alive
        try:
            os.setgid(65534)
            os.setuid(65534)
            cred = peer_cred(b)
            ok = cred.uid == 0 and cred.pid == os.getppid()
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    try:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        a.close()
        b.close()


def test_a_peer_in_more_groups_than_getsockopt_holds_is_identified(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.fail("needs root, to give the peer supplementary groups")
    groups = list(range(50_000, 51_000))  # SO_PEERGROUPS into Python's buffer holds 256
    with socket.socket(socket.AF_UNIX) as listener:
        path = str(tmp_path / "s")
        listener.bind(path)
        listener.listen()
        peer = connected_peer(path, groups)
        conn, _ = listener.accept()
        with conn:
            assert peer_cred(conn).groups == set(groups)
        peer.communicate(b"go\n", timeout=30)


def test_out_of_descriptors_for_the_app_id_is_an_error_not_no_app_id(tmp_path: Path) -> None:
    # Without a descriptor to read the peer's cgroup, its app id would be missing, and a deny
    # rule for it would not apply: an error (which identify() waits out) instead.
    import resource

    fake_proc = tmp_path / "proc"
    (fake_proc / str(os.getpid())).mkdir(parents=True)
    (fake_proc / str(os.getpid()) / "cgroup").write_text("0::/system.slice/kiki-probe.service\n")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_cred(a, fake_proc).app_id == "kiki-probe"
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        fillers: list[int] = []
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 4096), hard))
            with contextlib.suppress(OSError):
                while True:
                    fillers.append(os.dup(0))
            os.close(fillers.pop())  # one left: the pidfd's
            with pytest.raises(OSError, match="Too many open files") as caught:
                peer_cred(a, fake_proc)
            assert caught.value.errno == errno.EMFILE
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class _Linux65(socket.socket):
    """A socket as Linux 6.5-6.8 answers SO_PEERPIDFD for a peer already reaped: EINVAL."""

    def getsockopt(self, level: int, option: int, *args: int) -> Any:
        if level == socket.SOL_SOCKET and option == SO_PEERPIDFD:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return super().getsockopt(level, option, *args)


def test_einval_for_the_peers_pidfd_means_gone_not_an_old_kernel() -> None:
    # Falling back to pidfd_open(pid) there would identify whoever has the pid now.
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b, _Linux65(fileno=os.dup(a.fileno())) as old, pytest.raises(ProcessLookupError):
        peer_cred(old)
