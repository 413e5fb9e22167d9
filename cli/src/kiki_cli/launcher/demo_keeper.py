"""The demo processes ``kiki up`` starts once their service is ready, and keeps running.

Each is run like a unit with ``Restart=always`` that ``Requires=`` its service: whatever ended
it (the demo provider exits 1 when a restarting broker drops its connection), it is started
again after the back-off, once the service is ready again. The AT-SPI bridge is the exception:
``Restart=on-failure`` (it exits 0 when the session has no accessibility bus), and only where
``kiki up`` runs in the user's own session (its session bus, not a private one).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kiki_cli.launcher.process import die_with_parent, end_process, first_set, pipe_lines
from libkiki.backoff import RestartBackoff


@dataclass(frozen=True, slots=True)
class Demo:
    service: str  # what it needs, ready, before it starts
    module: str  # run as `python -m module --socket <the service's socket>`
    label: str  # its log lines are shown under this name
    started: str  # said once, when it first starts
    # Restart=always (True) or Restart=on-failure (False: an exit 0 means nothing to do).
    restart_always: bool = True
    # Only with the user's own session bus (not a private one kiki up started): it serves
    # the desktop session's apps, which a private bus has none of.
    needs_user_session: bool = False


DEMOS = (
    Demo(
        "tool-broker",
        "kiki_cli.demos.tool_provider",
        "demo",
        "started the demo provider (dev.kiki.demo.echo, dev.kiki.demo.now)",
    ),
    Demo(
        "a11y-server",
        "kiki_cli.demos.a11y_app",
        "a11y-demo",
        "started the demo app (its tree: kiki a11y dump)",
    ),
    Demo(
        "a11y-server",
        "kiki_a11y_server.atspi.main",
        "atspi-bridge",
        "started the AT-SPI bridge (the session's accessible apps: kiki a11y dump)",
        restart_always=False,
        needs_user_session=True,
    ),
)


class DemoKeeper:
    def __init__(
        self,
        runtime_dir: Path,
        stop: asyncio.Event,
        say: Callable[[str], None],
        backoff: Callable[[], RestartBackoff],
        stop_timeout: float,
    ) -> None:
        self._runtime_dir = runtime_dir
        self._stop = stop
        self._say = say
        self._backoff = backoff
        self._stop_timeout = stop_timeout
        self.processes: list[asyncio.subprocess.Process] = []

    async def start(
        self, tg: asyncio.TaskGroup, demo: Demo, address: str, ready: asyncio.Event
    ) -> None:
        """Start ``demo`` now (its service is ready) and keep it running in ``tg``; ``ready``
        is the service's readiness, cleared while it restarts."""
        process = await self._spawn(tg, demo, address)
        self._say(demo.started)
        tg.create_task(self._keep(tg, demo, address, ready, process))

    async def stop_all(self) -> None:
        for process in list(self.processes):
            if await end_process(process, self._stop_timeout):
                self._say(f"a demo did not stop in {self._stop_timeout:.0f}s; killed it")

    async def _spawn(
        self, tg: asyncio.TaskGroup, demo: Demo, address: str
    ) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            demo.module,
            "--socket",
            address,
            env=dict(os.environ, KIKI_RUNTIME_DIR=str(self._runtime_dir)),
            stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        self.processes.append(process)
        assert process.stderr is not None
        tg.create_task(pipe_lines(demo.label, process.stderr))
        return process

    async def _keep(
        self,
        tg: asyncio.TaskGroup,
        demo: Demo,
        address: str,
        ready: asyncio.Event,
        process: asyncio.subprocess.Process,
    ) -> None:
        backoff = self._backoff()
        while True:
            backoff.started()
            backoff.ready(time.monotonic())  # no readiness protocol: ready once started
            code = await self._exit(process)
            self.processes.remove(process)
            if code is None:
                return
            if code == 0 and not demo.restart_always:
                self._say(f"{demo.label} exited with status 0: nothing to do, not restarted")
                return
            delay = backoff.exited(time.monotonic())
            self._say(
                f"{demo.label} exited with status {code}; restarting in {delay:.1f}s "
                f"once {demo.service} is ready"
            )
            await first_set(self._stop, within=delay)
            await first_set(ready, self._stop)
            if self._stop.is_set():
                return
            process = await self._spawn(tg, demo, address)

    async def _exit(self, process: asyncio.subprocess.Process) -> int | None:
        """Its exit status; or, when ``kiki up`` stops first, ``None`` once it is stopped."""
        exited = asyncio.ensure_future(process.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            exited.cancel()
            raise
        finally:
            stop.cancel()
        if not self._stop.is_set():
            return await exited
        await end_process(process, self._stop_timeout)
        await exited
        return None
