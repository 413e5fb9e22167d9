"""The health gate: after the swap, the app's declared check must pass within its deadline, else
``operations.py`` puts the previous commit back.

The manifest declares it (``kiki-app.json``)::

    "health": {"tool": "org.example.player.ping", "arguments": {}, "deadlineSeconds": 30}
    "health": {"command": ["bin/health", "--quick"], "deadlineSeconds": 10}

A tool must answer (not an error) through the broker; it is asked again every half second until
it does or the deadline passes, since an app just swapped may take a while to register. A
command runs in the new deployment (``cwd``; a relative first word is a path in it) with
``KIKI_APP_DATA`` set to the app's ``data/``, and must exit 0 within the deadline. An app that
declares nothing passes.

The command is the app's code: an updater running as root runs it as the app's own
unprivileged uid (:mod:`kiki_updater.app_users`; its gid the same, no supplementary groups),
which owns the app's ``data/`` (the whole tree of an imported agent's: ``agents.py``), with no
new privileges (``setpriv --no-new-privs``: a setuid program cannot give root back); an updater
that is not root runs it as itself. The change of uid happens in the child after its ``chdir``
into the deployment, and a relative command is resolved from there; the uid reaches ``data/``
by its absolute path through the store's root, ``<kind>/`` and the app's home, which the store
makes 0711 whatever the umask (searchable, not listable: ``Store.make_home``). Its
environment is a minimal one (not the updater's), its stdout is discarded and only the last
4 KiB of its stderr kept (the unit's memory is capped: an app must not be able to fill it), and
on its deadline its whole process group is killed.

Where it runs: an updater running as root under a systemd system instance (``/run/systemd/system``
and ``systemd-run``) runs it in a transient unit of its own, sandboxed, in its own cgroup
(:mod:`kiki_updater.health_unit`); elsewhere (a developer's run, a container without systemd)
in a child of the updater's, in its cgroup and namespaces. The gate returns which
(:class:`Ran`), logs it, and a failure says it. An updater running as root in a ``kiki-*``
system unit never runs an app's command as a child: in its cgroup the child would be taken for
Kiki's own service by every peer that identifies it (``libkiki.peer``), whatever its uid.
systemd failing to start the check's unit is no verdict on the app: :class:`Unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiki_updater.health_unit import HealthRunner
from kiki_updater.publish import MANIFEST_FILE
from libkiki.errors import KikiError, LexiconError, Unavailable, ValidationError

__all__ = [
    "HealthGate",
    "HealthRunner",
    "HealthSpec",
    "Ran",
    "Unhealthy",
    "run_command",
    "run_in_unit",
]

log = logging.getLogger(__name__)

MAX_DEADLINE = 600.0
RETRY = 0.5
STDERR_TAIL = 4096
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What a check and systemd-run run with (never the updater's environment).
BASE_ENV = {"PATH": PATH, "LANG": "C.UTF-8"}
OWN_CGROUP = Path("/proc/self/cgroup")


class Unhealthy(KikiError):
    """The health check failed; the message says how."""


@dataclass(frozen=True, slots=True)
class Ran:
    """How a check ran: ``unit`` (a transient unit, named), ``process`` (a child of the
    updater's) or ``tool`` (asked through the broker); the uid a command ran as (None: the
    updater's own)."""

    how: str
    uid: int | None = None
    unit: str | None = None
    tool: str | None = None

    def __str__(self) -> str:
        who = f" as uid {self.uid}" if self.uid is not None else ""
        if self.how == "unit":
            return f"the transient unit {self.unit}{who}"
        return f"the tool {self.tool}" if self.how == "tool" else f"a child process{who}"

    def view(self) -> dict[str, Any]:
        """``dev.kiki.update.defs#healthCheck``."""
        out: dict[str, Any] = {"ran": self.how}
        for key, value in (("uid", self.uid), ("unit", self.unit), ("tool", self.tool)):
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True, slots=True)
class HealthSpec:
    deadline: float
    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    command: tuple[str, ...] = ()

    @classmethod
    def of(cls, manifest: dict[str, Any]) -> HealthSpec | None:
        raw = manifest.get("health")
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise ValidationError("manifest.health", "must be an object")
        deadline = raw.get("deadlineSeconds", 30)
        if not isinstance(deadline, int | float) or not 0 < deadline <= MAX_DEADLINE:
            raise ValidationError("manifest.health.deadlineSeconds", f"0 < it <= {MAX_DEADLINE}")
        tool, command = raw.get("tool"), raw.get("command")
        if (tool is None) == (command is None):
            raise ValidationError("manifest.health", "needs exactly one of tool and command")
        if tool is not None:
            arguments = raw.get("arguments", {})
            if not isinstance(tool, str) or not isinstance(arguments, dict):
                raise ValidationError("manifest.health.tool", "an NSID (and object arguments)")
            return cls(float(deadline), tool=tool, arguments=arguments)
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(w, str) and w for w in command)
        ):
            raise ValidationError("manifest.health.command", "a non-empty list of strings")
        return cls(float(deadline), command=tuple(command))


@dataclass
class HealthGate:
    """The check ``Operations`` runs; ``broker_socket`` is where tool checks are asked;
    ``runner`` where a command runs: ``auto`` (a transient unit when the updater can start
    one, else a child process), ``unit`` or ``process``; ``path``: where ``systemd-run``,
    ``systemctl`` and ``setpriv`` are looked up; ``own_cgroup``: the updater's
    ``/proc/self/cgroup``."""

    broker_socket: Path | None = None
    runner: HealthRunner = "auto"
    path: str = PATH
    own_cgroup: Path = OWN_CGROUP

    def __call__(self, kind: str, ident: str, deployment: Path) -> dict[str, Any] | None:
        """Run the deployment's declared check: how it ran (``Ran.view()``), None when it
        declares none; :class:`Unhealthy` when it fails."""
        from kiki_updater.publish import MANIFEST_MAX
        from libkiki.lexicon.files import read_json_file

        path = deployment / MANIFEST_FILE
        try:
            # read as root: never through a symlink a commit carries, nor from a FIFO or a
            # device, and bounded (the deployment is root's: nothing swaps it in between)
            if path.is_symlink():
                raise Unhealthy(f"no readable {MANIFEST_FILE}: it is a symlink")
            manifest = read_json_file(path, MANIFEST_MAX)
        except LexiconError as exc:
            raise Unhealthy(f"no readable {MANIFEST_FILE}: {exc}") from None
        spec = HealthSpec.of(manifest) if isinstance(manifest, dict) else None
        if spec is None:
            return None
        if not spec.command:
            asyncio.run(ask_tool(spec, self.broker_socket))
            return Ran("tool", tool=spec.tool).view()
        uid = None
        if os.geteuid() == 0:
            from kiki_updater.app_users import AppUsers

            # <root>/<kind>/<id>/deploy/<commit>: the store's layout
            uid = AppUsers(deployment.parents[3]).uid(kind, ident)
        data = deployment.parent.parent / "data"
        ran = self._run(spec, kind, ident, deployment, data, uid)
        log.info("the health check of %s %s ran in %s: passed", kind, ident, ran)
        return ran.view()

    def _run(
        self, spec: HealthSpec, kind: str, ident: str, deployment: Path, data: Path, uid: int | None
    ) -> Ran:
        from kiki_updater.health_unit import have_system_manager, own_unit, unit_name

        systemd_run = None
        if self.runner != "process" and uid is not None:
            systemd_run = have_system_manager(self.path)
        try:
            cgroup = self.own_cgroup.read_text()
        except OSError:
            cgroup = ""
        mine, kiki_service = own_unit(cgroup)
        if systemd_run is None:
            if self.runner == "unit":
                why = (
                    "the updater is not root"
                    if uid is None
                    else "there is no system manager"
                    if not os.path.isdir("/run/systemd/system")
                    else f"no systemd-run on {self.path}"
                )
                raise Unhealthy(f"the check cannot run in a unit of its own: {why}")
            if uid is not None and kiki_service:
                raise Unavailable(
                    f"the check of {kind} {ident} is not run as a child process: in the "
                    f"updater's cgroup ({mine}) its peers would take it for Kiki's own service; "
                    'set health_runner to "auto" or "unit"',
                    data={"error": "Unavailable"},
                )
            ran = Ran("process", uid=uid)
            _said(ran, kind, ident, run_command, spec, deployment, data, uid=uid, path=self.path)
            return ran
        assert uid is not None
        unit = unit_name(kind, ident, deployment.name)
        ran = Ran("unit", uid=uid, unit=unit)
        _said(
            ran,
            kind,
            ident,
            run_in_unit,
            spec,
            deployment,
            data,
            uid=uid,
            unit=unit,
            systemd_run=systemd_run,
            path=self.path,
            bound_to=mine,
        )
        return ran


def _said(ran: Ran, kind: str, ident: str, run: Any, *args: Any, **kw: Any) -> None:
    """``run(*args, **kw)``; a failure logged and reported with where the check ran."""
    try:
        run(*args, **kw)
    except Unhealthy as exc:
        log.warning("the health check of %s %s ran in %s: %s", kind, ident, ran, exc)
        where = f"in unit {ran.unit}" if ran.unit else "in a child process"
        raise Unhealthy(f"{exc} ({where})", data={"health": ran.view()}) from None


def _own_data(data: Path, uid: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        if os.lstat(data).st_uid != uid:
            os.chown(data, uid, uid, follow_symlinks=False)


def _setpriv(path: str) -> str:
    setpriv = shutil.which("setpriv", path=path)
    if setpriv is None:  # never run it as root for want of a way not to
        raise Unhealthy("setpriv (util-linux) is missing: the check cannot drop root")
    return setpriv


def _env(data: Path) -> dict[str, str]:
    return {**BASE_ENV, "KIKI_APP_DATA": str(data)}


def run_command(
    spec: HealthSpec, deployment: Path, data: Path, *, uid: int | None = None, path: str = PATH
) -> None:
    """Run the check in ``deployment``, a child of this process; with ``uid``, as that uid (and
    gid), which is made the owner of ``data`` first, with no new privileges."""
    # A relative command ("bin/health") stays relative: it is resolved in the child's cwd,
    # the deployment, which it enters before giving up root.
    argv = list(spec.command)
    as_user: dict[str, Any] = {}
    if uid is not None:
        setpriv = _setpriv(path)
        _own_data(data, uid)
        argv = [setpriv, "--no-new-privs", "--", *argv]
        as_user = {"user": uid, "group": uid, "extra_groups": []}
    code, said = _wait(spec, argv, cwd=deployment, env=_env(data), **as_user)
    if code != 0:
        raise Unhealthy(f"{spec.command[0]} exited {code}{_last(said.splitlines())}")


def run_in_unit(
    spec: HealthSpec,
    deployment: Path,
    data: Path,
    *,
    uid: int,
    unit: str,
    systemd_run: str,
    path: str = PATH,
    version: int | None = None,
    bound_to: str | None = None,
) -> None:
    """Run the check in the transient unit ``unit`` (:mod:`kiki_updater.health_unit`) as
    ``uid``, which is made the owner of ``data`` first. At the deadline, or if this thread is
    interrupted, the unit is stopped (its whole cgroup); systemd stops it on its own when
    ``bound_to`` (the updater's unit) stops, and a little later (``RuntimeMaxSec=``) in any
    case. :class:`Unavailable` when systemd did not run it (no verdict on the app)."""
    from kiki_updater.health_unit import outcome, stop_unit, unit_argv

    setpriv = _setpriv(path)
    _own_data(data, uid)
    argv = unit_argv(
        systemd_run,
        setpriv,
        unit,
        spec.command,
        uid=uid,
        deployment=deployment,
        data=data,
        env=_env(data),
        deadline=spec.deadline,
        version=version,
        bound_to=bound_to,
    )
    code, stderr = _wait(
        spec, argv, cwd=Path("/"), env=BASE_ENV, stop=lambda: stop_unit(unit, path)
    )
    ended = outcome(stderr)
    if ended.result is None:
        # systemd-run said nothing of the unit's end: it never started, or was not waited for
        if code == 0:
            return
        raise Unavailable(
            f"could not start the check's unit {unit}{_last(ended.said) or f': exit {code}'}",
            data={"error": "Unavailable"},
        )
    if code == 0 and ended.result == "success":
        return
    raise Unhealthy(f"{spec.command[0]} {_how(ended.status, ended.result)}{_last(ended.said)}")


def _how(status: str | None, result: str) -> str:
    """systemd-run's ``code=exited/status=3`` as ``exited 3``, ``code=killed/status=KILL`` as
    ``was killed (KILL)``; else systemd's result (``timeout``, ``oom-kill``, ...)."""
    code, _, value = (status or "").removeprefix("code=").partition("/status=")
    if code == "exited" and result in ("success", "exit-code"):
        return f"exited {value}"
    if code in ("killed", "dumped"):
        return f"was {code} ({value}; {result})"
    return f"ended: {result}"


def _last(said: Any) -> str:
    lines = [line for line in said if line.strip()]
    return f": {lines[-1].strip()[:200]}" if lines else ""


def _wait(
    spec: HealthSpec,
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    stop: Any = None,
    **as_user: Any,
) -> tuple[int, str]:
    """Run ``argv`` to its end within the check's deadline: its exit status and its stderr's
    tail; at the deadline (or on any interruption) ``stop()`` first, then its process group
    killed."""
    try:
        proc = subprocess.Popen(
            argv,
            **as_user,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: killed whole at the deadline
        )
    except OSError as exc:
        raise Unhealthy(f"{spec.command[0]} cannot run: {exc.strerror or exc}") from None
    tail = bytearray()
    reader = threading.Thread(target=_keep_tail, args=(proc, tail), daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=spec.deadline)
    except subprocess.TimeoutExpired:
        _give_up(proc, stop)
        raise Unhealthy(f"{spec.command[0]} did not end within {spec.deadline:g} s") from None
    except BaseException:
        _give_up(proc, stop)
        raise
    finally:
        # a child it left behind may hold stderr open: what was read so far is enough
        reader.join(timeout=1.0)
    return code, bytes(tail).decode(errors="replace")


def _give_up(proc: subprocess.Popen[bytes], stop: Any) -> None:
    try:
        if stop is not None:
            stop()
    finally:
        _kill_group(proc)


def _keep_tail(proc: subprocess.Popen[bytes], tail: bytearray) -> None:
    """Read ``proc``'s stderr to its end, keeping its last :data:`STDERR_TAIL` bytes."""
    assert proc.stderr is not None
    with proc.stderr as stream:
        while chunk := os.read(stream.fileno(), 1 << 16):
            tail += chunk
            del tail[:-STDERR_TAIL]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


async def ask_tool(spec: HealthSpec, broker: Path | None) -> None:
    from libkiki.tools import ToolClient  # only a tool check needs the MCP client

    if spec.tool is None:
        return
    end = time.monotonic() + spec.deadline
    last: str = "no answer"
    while (left := end - time.monotonic()) > 0:
        try:
            async with asyncio.timeout(left):
                async with ToolClient(broker, timeout=left) as client:
                    await client.call(spec.tool, spec.arguments)
            return
        except (KikiError, OSError, TimeoutError) as exc:
            last = str(exc) or type(exc).__name__
        await asyncio.sleep(min(RETRY, max(0.0, end - time.monotonic())))
    raise Unhealthy(f"{spec.tool} did not answer within {spec.deadline:g} s ({last})")
