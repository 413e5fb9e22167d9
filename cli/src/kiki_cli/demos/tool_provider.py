"""The demo provider `kiki up` starts: two small tools on the broker, so a fresh constellation
has something to call (``dev.kiki.demo.echo``, ``dev.kiki.demo.now``).

Run it by itself with ``python -m kiki_cli.demos.tool_provider [--socket PATH]``; it exits 1
when the broker goes away (``kiki up`` then starts it again once the broker is ready).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from libkiki.errors import KikiError, PeerGone
from libkiki.tools import ToolCall, ToolProvider

log = logging.getLogger(__name__)


def provider(path: Path | None = None) -> ToolProvider:
    demo = ToolProvider(path)

    @demo.tool("dev.kiki.demo.echo")
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return {"text": args["text"], "caller": call.caller}

    @demo.tool("dev.kiki.demo.now")
    async def now(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return {"time": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")}

    return demo


async def serve(path: Path | None) -> None:
    demo = provider(path)
    async with demo.connect():
        log.info("demo tools registered: %s", ", ".join(demo.nsids))
        await demo.serve_forever()
    # Our tools left with the connection: that is a failure to whoever supervises us (kiki up
    # starts us again), not a clean end.
    raise PeerGone("the broker closed the connection; the demo tools are gone with it")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m kiki_cli.demos.tool_provider", description=__doc__
    )
    parser.add_argument("--socket", type=Path, help="the broker's socket")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    try:
        asyncio.run(serve(args.socket))
    except KikiError as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
