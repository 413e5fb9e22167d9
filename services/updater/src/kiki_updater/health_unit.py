"""A health command in a transient unit of its own, when the updater runs as root under a
systemd system instance: ``systemd-run --wait --pipe --collect`` with a sandbox, its own
cgroup, and the app's deadline held by systemd too (``RuntimeMaxSec=``).

systemd refuses ``User=`` for a uid no user database knows (systemd issue 19781: its
``getpwuid`` must answer), and an app's uid has no passwd entry (``app_users.py``). So the unit
starts as root confined to ``CAP_SETUID CAP_SETGID`` and ``setpriv`` drops to the app's uid and
gid, clears the supplementary groups and sets no-new-privileges before the command runs: the
command itself never has a capability. The sandbox (:data:`SANDBOX`): the whole file system
read-only but the app's ``data/``, no ``/home``, a private ``/tmp`` and ``/dev``, the kernel's
tunables, modules, logs, clock and hostname out of reach, no new namespaces, no realtime, no
setuid files, ``@system-service`` system calls of the native architecture, local and IP sockets
(a check may probe its app's port), other users' processes invisible, a private keyring,
umask 0077, and at most 256 MiB and 64 tasks.

systemd before 254 expands ``$VAR`` in a transient unit's command line (``$$`` is a ``$``);
254 and later do not when told ``--expand-environment=no``. Either way the command runs with
the words the manifest gave.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shutil
import subprocess
from functools import cache
from pathlib import Path

__all__ = ["SANDBOX", "escape", "have_system_manager", "stop_unit", "unit_argv", "unit_name"]

SYSTEMD_RUN = "systemd-run"
# What systemd itself needs past the deadline to stop the unit if the updater is gone.
RUNTIME_GRACE = 5
# The escaped id's share of a unit name (at most 255 bytes with the rest around it).
ID_MAX = 160
SANDBOX: tuple[str, ...] = (
    "NoNewPrivileges=yes",
    "CapabilityBoundingSet=CAP_SETUID CAP_SETGID",
    "AmbientCapabilities=",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    "KeyringMode=private",
    "UMask=0077",
    "MemoryMax=256M",
    "TasksMax=64",
    # A check has nothing to save: stopped at once, its whole cgroup.
    "KillMode=control-group",
    "KillSignal=SIGKILL",
)
_PLAIN = re.compile(r"[A-Za-z0-9:_.]")


def escape(text: str) -> str:
    """``text`` as one part of a unit name, as ``systemd-escape`` writes it: letters, digits,
    ``:``, ``_`` and ``.`` (not leading) kept, every other byte ``\\xNN`` (``-`` too, so the
    name's own ``-`` separators stay unambiguous)."""
    out = []
    for i, byte in enumerate(text.encode()):
        char = chr(byte)
        if byte < 0x80 and _PLAIN.fullmatch(char) and not (i == 0 and char == "."):
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def unit_name(kind: str, ident: str, commit: str, token: str | None = None) -> str:
    """``kiki-health-<kind>-<id>-<commit>-<token>.service``: whose check it is and of which
    commit, unique (a random token) so that a check never meets an earlier one's unit. An id
    too long for a unit name (255 bytes at most) is cut, never inside an escape."""
    token = token or secrets.token_hex(4)
    ident = escape(ident)
    if len(ident) > ID_MAX:
        cut = ident[:ID_MAX]
        ident = cut[: cut.rfind("\\")] if "\\" in cut[-3:] else cut
    return f"kiki-health-{escape(kind)}-{ident}-{escape(commit[:12])}-{token}.service"


@cache
def _systemd_version(systemd_run: str) -> int:
    said = subprocess.run(
        [systemd_run, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout.split()
    return int(said[1]) if len(said) > 1 and said[1].isdigit() else 0


def have_system_manager(path: str) -> str | None:
    """``systemd-run`` when this process can start system units: root, under a systemd system
    instance (``/run/systemd/system``, as ``sd_booted`` checks); else None."""
    if os.geteuid() != 0 or not os.path.isdir("/run/systemd/system"):
        return None
    return shutil.which(SYSTEMD_RUN, path=path)


def unit_argv(
    systemd_run: str,
    setpriv: str,
    unit: str,
    command: tuple[str, ...],
    *,
    uid: int,
    deployment: Path,
    data: Path,
    env: dict[str, str],
    deadline: float,
    version: int | None = None,
) -> list[str]:
    """The ``systemd-run`` command line running ``command`` as ``uid`` in the unit ``unit``."""
    if version is None:
        version = _systemd_version(systemd_run)
    argv = [
        systemd_run,
        "--wait",
        "--pipe",
        "--collect",
        "--quiet",
        "--service-type=exec",
        f"--unit={unit}",
        f"--description=Kiki health check ({unit})",
        "-p",
        f"RuntimeMaxSec={math.ceil(deadline) + RUNTIME_GRACE}",
        "-p",
        f"WorkingDirectory={deployment}",
        "-p",
        f"ReadWritePaths=-{_quoted(data)}",
    ]
    for prop in SANDBOX:
        argv += ["-p", prop]
    for name, value in env.items():
        argv.append(f"--setenv={name}={value}")
    words = list(command)
    if version >= 254:
        argv.append("--expand-environment=no")
    else:
        words = [w.replace("$", "$$") for w in words]
    ids = f"{uid}"
    argv += [
        setpriv,
        f"--reuid={ids}",
        f"--regid={ids}",
        "--clear-groups",
        "--no-new-privs",
        "--",
        *words,
    ]
    return argv


def _quoted(path: Path) -> str:
    text = str(path)
    if re.fullmatch(r"[A-Za-z0-9/_.:@+-]+", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def stop_unit(unit: str, path: str) -> None:
    """Stop ``unit`` (its whole cgroup, at once: ``KillSignal=SIGKILL``) and wait for it."""
    systemctl = shutil.which("systemctl", path=path) or "systemctl"
    subprocess.run(
        [systemctl, "stop", "--", unit],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )
