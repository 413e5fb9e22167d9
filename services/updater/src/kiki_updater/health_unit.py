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

``systemd-run --wait`` exits 1 both when the check exits 1 and when systemd could not start the
unit at all; its closing summary on stderr (``Finished with result:``, which ``--quiet`` would
hide) is what tells them apart (:func:`outcome`). The unit is bound to the updater's own unit
(``BindsTo=``): when the updater's unit stops, or its process is killed, systemd stops the
check; and at start, before a pending operation is recovered, the updater stops any check a
killed predecessor left (:func:`stop_leftovers`), so that an undone commit's check never runs
beside the version put back.

systemd before 254 expands ``$VAR`` in a transient unit's command line (``$$`` is a ``$``);
254 and later do not when told ``--expand-environment=no``. Either way the command runs with
the words the manifest gave.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from libkiki.peer import app_id_from_cgroup

__all__ = [
    "SANDBOX",
    "HealthRunner",
    "Outcome",
    "escape",
    "have_system_manager",
    "outcome",
    "own_unit",
    "stop_leftovers",
    "stop_unit",
    "unit_argv",
    "unit_name",
]

log = logging.getLogger(__name__)

# Where a health command runs (the updater's ``health_runner``): "auto" (a transient unit when
# the updater is root under a systemd system instance, else a child process), "unit" (refused
# where there is none), "process" (a child of the updater's, in its cgroup and namespaces).
HealthRunner = Literal["auto", "unit", "process"]

SYSTEMD_RUN = "systemd-run"
UNIT_PREFIX = "kiki-health-"
# How long a `systemctl stop` may take: the unit is killed with SIGKILL, so this is systemd's
# own slowness; past it the updater goes on (systemd still stops it at RuntimeMaxSec=).
STOP_TIMEOUT = 30.0
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
    """``text`` as one part of a unit name: letters, digits, ``:``, ``_`` and ``.`` (not
    leading) kept, every other byte ``\\xNN`` -- ``-`` too, so the name's own ``-`` separators
    stay unambiguous, and ``/`` too (``systemd-escape`` writes ``-`` for it, as a path's
    separator: an id is no path). Every part is a valid unit name's."""
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
    return f"{UNIT_PREFIX}{escape(kind)}-{ident}-{escape(commit[:12])}-{token}.service"


_versions: dict[str, int] = {}


def _systemd_version(systemd_run: str) -> int:
    """systemd's version, 0 when it cannot be learnt (then ``$`` is doubled, which every
    version reads as one ``$``); a failure is not kept, the next check asks again."""
    if systemd_run in _versions:
        return _versions[systemd_run]
    try:
        said = subprocess.run(
            [systemd_run, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("%s --version: %s", systemd_run, exc)
        return 0
    if len(said) > 1 and said[1].isdigit():
        _versions[systemd_run] = int(said[1])
        return _versions[systemd_run]
    return 0


def have_system_manager(path: str) -> str | None:
    """``systemd-run`` when this process can start system units: root, under a systemd system
    instance (``/run/systemd/system``, as ``sd_booted`` checks); else None."""
    if os.geteuid() != 0 or not os.path.isdir("/run/systemd/system"):
        return None
    return shutil.which(SYSTEMD_RUN, path=path)


def own_unit(cgroup: str) -> tuple[str | None, bool]:
    """The system unit ``cgroup`` (the text of ``/proc/<pid>/cgroup``) is in (None elsewhere),
    and whether libkiki's peer identification takes a process there for one of Kiki's own
    services (a ``kiki-*`` system unit: ``libkiki.principals.is_kiki_service``)."""
    if not any(line.startswith("0::/system.slice/") for line in cgroup.splitlines()):
        return None, False
    app_id, unit, _ = app_id_from_cgroup(cgroup, os.getuid())
    return unit, app_id is not None and app_id.startswith("kiki-")


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
    bound_to: str | None = None,
) -> list[str]:
    """The ``systemd-run`` command line running ``command`` as ``uid`` in the unit ``unit``;
    ``bound_to``: the updater's own unit, which the check's stops with."""
    if version is None:
        version = _systemd_version(systemd_run)
    argv = [
        systemd_run,
        "--wait",
        "--pipe",
        "--collect",
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
    if bound_to is not None:
        argv += ["-p", f"BindsTo={bound_to}"]
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


def stop_unit(unit: str, path: str, timeout: float = STOP_TIMEOUT) -> None:
    """Stop ``unit`` (its whole cgroup, at once: ``KillSignal=SIGKILL``) and wait for it; a
    stop that fails or overruns ``timeout`` is logged (systemd still ends the unit at its
    ``RuntimeMaxSec=``), never raised: the check has failed either way."""
    _systemctl(path, timeout, "stop", "--", unit)


def stop_leftovers(path: str, timeout: float = STOP_TIMEOUT) -> list[str]:
    """Stop every ``kiki-health-*`` unit still loaded: checks an updater killed before their
    end left behind (``systemd-run`` died with it, the unit did not). Only where this process
    starts such units (root under a system manager); the units stopped."""
    if have_system_manager(path) is None:
        return []
    listed = _systemctl(
        path, timeout, "list-units", "--plain", "--no-legend", "--all", f"{UNIT_PREFIX}*"
    )
    units = [
        word
        for line in listed.splitlines()
        if (word := (line.split() or [""])[0]).startswith(UNIT_PREFIX) and word.endswith(".service")
    ]
    if units:
        log.warning("stopping the health checks a previous run left: %s", " ".join(units))
        _systemctl(path, timeout, "stop", "--", *units)
    return units


def _systemctl(path: str, timeout: float, *args: str) -> str:
    systemctl = shutil.which("systemctl", path=path) or "systemctl"
    try:
        ran = subprocess.run(
            [systemctl, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("systemctl %s: %s", " ".join(args), exc)
        return ""
    if ran.returncode != 0:
        log.warning("systemctl %s: %s", " ".join(args), ran.stderr.strip()[-300:])
    return ran.stdout


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``systemd-run --wait`` said on stderr, split: ``result`` (systemd's ``Result=``
    of the unit, None when it never said one: the unit did not start or was not waited for),
    ``status`` (``code=exited/status=3``, ``code=killed/status=KILL``) and the check's own
    lines."""

    result: str | None
    status: str | None
    said: tuple[str, ...]


FINISHED = "Finished with result: "
TERMINATED = "Main processes terminated with: "
RUNNING = "Running as unit: "


def outcome(stderr: str) -> Outcome:
    """Split ``systemd-run``'s stderr (the check's, piped, then systemd-run's closing summary)
    into the summary and the check's own lines. The summary is the last ``Finished with
    result:`` line and what follows it: systemd-run writes it after the unit has ended, so a
    check printing such a line itself is followed by the real one."""
    lines = stderr.splitlines()
    at = max((i for i, line in enumerate(lines) if line.startswith(FINISHED)), default=None)
    if at is None:
        return Outcome(None, None, tuple(x for x in lines if not x.startswith(RUNNING)))
    status = next((x[len(TERMINATED) :] for x in lines[at:] if x.startswith(TERMINATED)), None)
    said = tuple(x for x in lines[:at] if not x.startswith(RUNNING))
    return Outcome(lines[at][len(FINISHED) :].strip(), status, said)
