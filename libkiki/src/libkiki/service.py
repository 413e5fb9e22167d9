"""The service runner: the systemd service contract, once, for every Kiki service.

A service is an async context manager factory ``serve(ctx)``: entering it binds (or adopts) its
listeners and starts serving, with its tasks owned by a ``TaskGroup`` inside it; leaving it stops
accepting and drains. :func:`run` does the rest::

    enter serve(ctx)            -> READY=1, STATUS=<ctx.status>
    every WATCHDOG_USEC/2       -> WATCHDOG=1
    SIGHUP                      -> RELOADING=1, ctx.reload hooks, READY=1 (STATUS= says
                                   if a hook failed and the old configuration stays)
    SIGTERM / SIGINT            -> STOPPING=1, leave serve(ctx) within drain_timeout, exit 0
    startup failure             -> ERRNO=, STATUS=, exit 1 (logged, never a traceback for
                                   expected errors such as a socket held by another instance)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from libkiki import __version__ as libkiki_version
from libkiki.errors import AddressInUse, KikiError
from libkiki.sockets import Listeners
from libkiki.systemd import Notifier, watchdog_interval

log = logging.getLogger(__name__)

ReloadHook = Callable[[], Awaitable[None]]


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
    _status: str = "starting"

    @property
    def status(self) -> str:
        """The STATUS= line: what the service is doing, for people."""
        return self._status

    @status.setter
    def status(self, text: str) -> None:
        self._status = text
        self.notifier.status(text)

    def info(self) -> dict[str, Any]:
        """The health answer, shaped as the lexicon ``dev.kiki.service.defs#info``."""
        return {
            "name": self.name,
            "version": self.version,
            "pid": os.getpid(),
            "uptimeSeconds": int(time.monotonic() - self.started),
            "status": self.state,
            "statusText": self._status,
            "counters": dict(self.counters),
            "activated": self.listeners.activated,
            "libkiki": libkiki_version,
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
        # systemd has no word for a failed reload: READY=1 ends it either way, and the STATUS
        # with it (systemctl status) says that the previous configuration is still in force.
        ctx.notifier.ready(
            ctx.status
            if failed is None
            else f"{ctx.status}; reload failed, kept the previous configuration: {failed}"
        )


async def serve_until_stopped(
    ctx: ServiceContext, serve: ServeFactory, *, drain_timeout: float = 10.0
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
    try:
        service = serve(ctx)
        try:
            await service.__aenter__()
        except AddressInUse as exc:
            log.error("cannot start: %s", exc)
            ctx.notifier.notify(STATUS=f"failed: {exc}", ERRNO=errno.EADDRINUSE)
            return 1
        except KikiError as exc:
            log.error("cannot start: %s", exc)
            ctx.notifier.notify(STATUS=f"failed: {exc}", ERRNO=errno.EINVAL)
            return 1
        try:
            if ctx.status == "starting":
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
            ctx.notifier.stopping("draining")
            log.info("stopping: draining for at most %.1fs", drain_timeout)
            try:
                async with asyncio.timeout(drain_timeout):
                    await service.__aexit__(None, None, None)
            except TimeoutError:
                log.warning("drain did not finish within %.1fs; exiting anyway", drain_timeout)
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
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


def service_main(name: str, version: str, config_model: type[Any], serve: ServeFactory) -> None:
    """The whole of a service's ``main()``: logging, config, run, exit status.

    A configuration error exits with 78 (``EX_CONFIG``), which systemd reports as such.
    """
    from libkiki.config import load_config
    from libkiki.logs import configure_logging

    configure_logging()
    try:
        config = load_config(config_model, name)
    except KikiError as exc:
        logging.getLogger(name).error("%s", exc)
        raise SystemExit(78) from None
    raise SystemExit(run(name, version, serve, config=config, drain_timeout=config.drain_timeout))
