"""The service runner: the systemd service contract, once, for every Kiki service.

A service is an async context manager factory ``serve(ctx)``: entering it binds (or adopts) its
listeners (``ctx.listen()``: the socket its declaration in :mod:`libkiki.constellation` names)
and starts serving, with its tasks owned by a ``TaskGroup`` inside it; leaving it stops
accepting and drains. :func:`run` does the rest::

    enter serve(ctx)            -> READY=1, STATUS=<ctx.status>
    every WATCHDOG_USEC/2       -> WATCHDOG=1
    SIGHUP                      -> RELOADING=1, ctx.reload hooks, READY=1 (STATUS= says
                                   if a hook failed and the old configuration stays)
    SIGTERM / SIGINT            -> STOPPING=1, leave serve(ctx) within drain_timeout, exit 0
                                   (never lost, however busy the loop: libkiki.signals)
    startup failure             -> ERRNO=, STATUS=, exit 1 (logged, never a traceback for
                                   expected errors such as a socket held by another instance);
                                   exit 78 (EX_CONFIG) for a ConfigError, e.g. a file that
                                   serve(ctx) reads itself

Every STATUS= line is ``ctx.status`` at that moment, and so is the ``statusText`` of
``ctx.info()`` (cut to the lexicon's 256 graphemes): what systemd shows and what the service
answers are one text.

:func:`service_main` is a service's whole ``main()``: ``--help``, ``--version``, configuration,
logging, :func:`run`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import textwrap
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import libkiki
from libkiki import constellation, signals
from libkiki.constellation import ServiceSpec
from libkiki.errors import AddressInUse, ConfigError, KikiError, NotFound
from libkiki.paths import socket_path
from libkiki.sockets import Listeners
from libkiki.systemd import Notifier, watchdog_interval

log = logging.getLogger(__name__)

EX_CONFIG = 78  # sysexits.h: a configuration error (systemd shows status=78/CONFIG)
STATUS_TEXT_MAX = 256  # graphemes of getInfo's statusText (lexicon dev.kiki.service.defs#info)


def _clip(text: str, most: int) -> str:
    """``text`` cut to at most ``most`` characters, "…" ending a cut one (no more graphemes,
    then, since a grapheme is at least one character). STATUS= itself has no such limit."""
    return text if len(text) <= most else text[: most - 1] + "…"


ReloadHook = Callable[[], Awaitable[None]]


# getInfo answers with the pid on every call; os.getpid() is a system call each time, so it is
# read once, and again in a forked child (which must never report its parent's pid).
_pid = os.getpid()


def _read_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_read_pid)


@dataclass(eq=False)
class ServiceContext:
    """What a running service knows about itself; ``info()`` is its health answer."""

    name: str
    version: str
    listeners: Listeners
    notifier: Notifier
    config: Any = None
    counters: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    reload_hooks: list[ReloadHook] = field(default_factory=list)
    # Overall state (the lexicon dev.kiki.service.defs#info): starting, ready, stopping.
    state: str = "starting"
    # What the service says it is doing, and why the last reload failed (None: it did not).
    _status: str = "starting"
    _reload_failure: str | None = None

    @property
    def status(self) -> str:
        """The STATUS= line, for people, and ``info()``'s ``statusText``: always the same text.

        It is what the service last set, and, from a failed reload until one succeeds, that the
        previous configuration is still in force. Setting it sends the new line to systemd; the
        note of a failed reload stays on it (the runner, not the service, clears it).
        """
        if self._reload_failure is None:
            return self._status
        return (
            f"{self._status}; reload failed, kept the previous configuration: "
            f"{self._reload_failure}"
        )

    @status.setter
    def status(self, text: str) -> None:
        self._status = text
        self.notifier.status(self.status)

    @property
    def spec(self) -> ServiceSpec:
        """This service's declaration in :mod:`libkiki.constellation` (by its ``name``)."""
        return constellation.spec(self.name)

    def listen(self, address: tuple[str, int] | None = None) -> socket.socket:
        """The listening socket this service's declaration names: the one the service manager
        passed under its ``FileDescriptorName=``, or else one bound by hand: its socket file in
        the runtime directory, or for a TCP service ``address`` (by default the declared one,
        which its configuration may move)."""
        spec = self.spec
        if spec.fdname is not None and spec.socket_file is not None:
            return self.listeners.unix(spec.fdname, socket_path(spec.socket_file))
        if spec.fdname is not None and spec.address is not None:
            host, port = address or spec.address
            return self.listeners.tcp(spec.fdname, host, port)
        raise NotFound(f"{spec.name} declares no listening socket in libkiki.constellation")

    def info(self) -> dict[str, Any]:
        """The health answer, shaped as the lexicon ``dev.kiki.service.defs#info``."""
        return {
            "name": self.name,
            "version": self.version,
            "pid": _pid,
            "uptimeSeconds": int(time.monotonic() - self.started),
            "status": self.state,
            "statusText": _clip(self.status, STATUS_TEXT_MAX),
            "counters": dict(self.counters),
            "activated": self.listeners.activated,
            # Read here, not at import: it is importlib.metadata's, which a start does without.
            "libkiki": libkiki.__version__,
        }


ServeFactory = Callable[[ServiceContext], AbstractAsyncContextManager[None]]


async def _watchdog(notifier: Notifier, interval: float) -> None:
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


async def _reloader(ctx: ServiceContext, requested: asyncio.Event) -> None:
    while True:
        await requested.wait()
        requested.clear()
        ctx.notifier.reloading()
        log.info("reloading")
        failed = None
        for hook in ctx.reload_hooks:
            try:
                await hook()
            except KikiError as exc:
                # A bad reload (e.g. a broken config file) keeps the service on its old state.
                failed = str(exc)
                log.error("reload failed, keeping the previous configuration: %s", exc)
            except Exception as exc:
                failed = f"{type(exc).__name__}: {exc}"
                log.exception("reload hook failed; keeping the previous configuration")
        ctx.counters["reloads"] += 1
        # systemd has no word for a failed reload: READY=1 ends it either way, and the status
        # with it (systemctl status, and getInfo's statusText) says that the previous
        # configuration is still in force, until a reload succeeds.
        ctx._reload_failure = failed
        ctx.notifier.ready(ctx.status)


async def serve_until_stopped(
    ctx: ServiceContext, serve: ServeFactory, *, drain_timeout: float = 10.0
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload_requested = asyncio.Event()
    # Not loop.add_signal_handler: a loop flooded with timer signals can drop its byte, and the
    # stop with it (see libkiki.signals).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signals.add_signal_handler(loop, sig, stop.set)
    signals.add_signal_handler(loop, signal.SIGHUP, reload_requested.set)
    try:
        service = serve(ctx)
        try:
            await service.__aenter__()
        except ConfigError as exc:
            log.error("cannot start: %s", exc)
            ctx._status = f"failed: {exc}"
            ctx.notifier.notify(STATUS=ctx.status, ERRNO=errno.EINVAL)
            return EX_CONFIG
        except AddressInUse as exc:
            log.error("cannot start: %s", exc)
            ctx._status = f"failed: {exc}"
            ctx.notifier.notify(STATUS=ctx.status, ERRNO=errno.EADDRINUSE)
            return 1
        except KikiError as exc:
            log.error("cannot start: %s", exc)
            ctx._status = f"failed: {exc}"
            ctx.notifier.notify(STATUS=ctx.status, ERRNO=errno.EINVAL)
            return 1
        try:
            if ctx._status == "starting":
                ctx._status = "ready"
            ctx.state = "ready"
            ctx.notifier.ready(ctx.status)
            log.info("%s %s ready: %s", ctx.name, ctx.version, ctx.status)
            async with asyncio.TaskGroup() as tg:
                helpers = [tg.create_task(_reloader(ctx, reload_requested))]
                if (interval := watchdog_interval()) is not None:
                    helpers.append(tg.create_task(_watchdog(ctx.notifier, interval)))
                await stop.wait()
                for task in helpers:
                    task.cancel()
        finally:
            ctx.state = "stopping"
            ctx._status, ctx._reload_failure = "draining", None
            ctx.notifier.stopping(ctx.status)
            log.info("stopping: draining for at most %.1fs", drain_timeout)
            try:
                async with asyncio.timeout(drain_timeout):
                    await service.__aexit__(None, None, None)
            except TimeoutError:
                log.warning("drain did not finish within %.1fs; exiting anyway", drain_timeout)
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signals.remove_signal_handler(loop, sig)
        ctx.listeners.close()
        ctx.notifier.close()


def run(
    name: str,
    version: str,
    serve: ServeFactory,
    *,
    config: Any = None,
    drain_timeout: float = 10.0,
) -> int:
    """Run a service to completion; returns its exit status."""
    ctx = ServiceContext(
        name=name, version=version, listeners=Listeners(), notifier=Notifier(), config=config
    )
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve_until_stopped(ctx, serve, drain_timeout=drain_timeout))
    return 0


def _where(name: str) -> str:
    """Where the service ``name`` listens, as its declaration says, for ``--help``."""
    spec = constellation.BY_NAME.get(name)
    if spec is None:
        return ""
    if spec.socket_file is not None:
        return (
            f" It listens on {socket_path(spec.socket_file)} unless systemd passes it that socket."
        )
    if spec.address is not None:
        host, port = spec.address
        return (
            f" It listens on {host}:{port} (its settings host and port) unless systemd "
            "passes it a socket."
        )
    if spec.bus_name is not None:
        return f" It owns {spec.bus_name} (its setting bus_name) on the session bus."
    return ""


def _arguments(name: str, version: str, config_model: type[Any]) -> argparse.ArgumentParser:
    """``--help`` and ``--version``, and nothing else: a service takes no arguments.

    The help says what this process would use if it started now (the paths as resolved from
    its environment), beside the rules, which are those of :mod:`libkiki.config` and
    :mod:`libkiki.paths`.
    """
    from libkiki.config import env_prefix
    from libkiki.paths import config_dir, runtime_dir, state_dir

    # Paths and variable names stay whole on their lines (they have hyphens and underscores).
    def wrap(text: str, width: int, indent: str = "") -> list[str]:
        return textwrap.wrap(
            text,
            width=width,
            initial_indent=indent,
            subsequent_indent=indent,
            break_long_words=False,
            break_on_hyphens=False,
        )

    def para(text: str, indent: str = "") -> str:
        return "\n".join(wrap(text, 79, indent))

    def rows(*items: tuple[str, str]) -> str:
        lines = []
        for key, text in items:
            body = wrap(text, 79 - 23)
            if len(key) > 19:
                lines.append(f"  {key}")
            else:
                lines.append(f"  {key:<19}  {body.pop(0)}")
            lines.extend(" " * 23 + line for line in body)
        return "\n".join(lines)

    declared = constellation.BY_NAME.get(name)
    command = declared.command if declared is not None else f"kiki-{name}"
    prefix = env_prefix(name)
    description = (
        f"The Kiki {name} service: a daemon that systemd runs with no arguments. Run by hand, "
        "it serves in the foreground until SIGTERM or SIGINT (Ctrl-C)."
    )
    description += _where(name)
    settings = ", ".join(getattr(config_model, "model_fields", {})) or "(none)"
    configuration = para(
        f"{config_dir() / f'{name}.toml'} if it exists, then environment variables "
        f"{prefix}<SETTING> (the setting's name in capitals), which win over the file. "
        "Read once, at start (SIGHUP does not read it again).",
        "  ",
    )
    environment = rows(
        ("KIKI_CONFIG_DIR", f"the directory of {name}.toml (default /etc/kiki)"),
        (f"{prefix}*", "settings, as above"),
        ("KIKI_LOG_LEVEL", "the log level, e.g. DEBUG (default INFO); the log goes to stderr"),
        (
            "KIKI_RUNTIME_DIR",
            "Kiki's sockets, unless systemd sets $RUNTIME_DIRECTORY (default "
            f"$XDG_RUNTIME_DIR/kiki, or /run/kiki for root); now {runtime_dir()}",
        ),
        (
            "KIKI_STATE_DIR",
            "Kiki's state, unless systemd sets $STATE_DIRECTORY (default "
            f"$XDG_STATE_HOME/kiki or ~/.local/state/kiki, or /var/lib/kiki for root); "
            f"now {state_dir()}",
        ),
        (
            "set by systemd",
            "LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES (socket activation), NOTIFY_SOCKET, "
            "WATCHDOG_USEC (sd_notify), JOURNAL_STREAM (log priorities for the journal)",
        ),
    )
    epilog = "\n\n".join(
        [
            f"configuration:\n{configuration}\n  settings:\n{para(settings, '    ')}",
            f"environment:\n{environment}",
            para(
                "exit status: 0 stopped (by SIGTERM or SIGINT), 1 could not start, "
                "2 bad arguments, 78 bad configuration"
            ),
        ]
    )
    parser = argparse.ArgumentParser(
        prog=command,
        description=para(description),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"{command} {version}")
    return parser


def service_main(
    name: str,
    version: str,
    config_model: type[Any],
    serve: ServeFactory,
    argv: Sequence[str] | None = None,
) -> None:
    """The whole of a service's ``main()``: arguments, logging, config, run, exit status.

    ``--help`` and ``--version`` answer and exit 0; any other argument is a usage error (exit 2)
    and starts nothing. A configuration error exits with 78 (``EX_CONFIG``), which systemd
    reports as such.
    """
    from libkiki.config import load_config
    from libkiki.logs import configure_logging

    _arguments(name, version, config_model).parse_args(argv)
    configure_logging()
    try:
        config = load_config(config_model, name)
    except KikiError as exc:
        logging.getLogger(name).error("%s", exc)
        raise SystemExit(EX_CONFIG) from None
    raise SystemExit(run(name, version, serve, config=config, drain_timeout=config.drain_timeout))
