"""What a client reads from the broker comes in the order it was caused: the real broker
process, raw JSON-RPC peers on its socket, every line a client reads kept in order.

* A provider that writes a ``kiki/emit`` and then its answer to a ``tools/call`` (in one write,
  so that the broker reads both at once): a client that subscribes to the stream and made the
  call reads the event, then the answer.
* A ``kiki/subscribe`` handled while another request of the connection still runs (a
  ``subscriptions/listen``): its answer, which names the subscription, comes before any
  notification of that subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from kikitest.broker_fixtures import RawPeer
from kikitest.broker_lexicons import ECHO, LEXICONS, TICKS, TICKS_LEXICON

pytestmark = pytest.mark.integration

Broker = tuple[Path, Any]
SUBSCRIBE_AUDIT = "dev.kiki.tools.subscribeAudit"
BOUND = 20.0


class Lines:
    """A client that keeps every line it reads, in order (answers and notifications alike)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while line := await self.reader.readline():
            self.lines.put_nowait(orjson.loads(line))

    def request(self, rid: int, method: str, params: dict[str, Any]) -> None:
        message = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}
        self.writer.write(orjson.dumps(message) + b"\n")

    async def next(self) -> dict[str, Any]:
        return await self.lines.get()

    async def answer(self, rid: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The notifications read before the answer to ``rid``, and that answer."""
        before: list[dict[str, Any]] = []
        while True:
            message = await self.next()
            if message.get("id") == rid and "method" not in message:
                assert "result" in message, message
                return before, message
            before.append(message)

    async def close(self) -> None:
        self._task.cancel()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def lines(path: Path) -> AsyncIterator[Lines]:
    client = Lines(*await asyncio.open_unix_connection(str(path)))
    try:
        yield client
    finally:
        await client.close()


async def test_an_event_the_provider_wrote_before_its_answer_is_read_before_it(
    broker: Broker,
) -> None:
    path, _ = broker
    async with asyncio.timeout(BOUND), await RawPeer.open(path) as prov, lines(path) as client:
        params = {"tools": [ECHO], "subscriptions": [TICKS], "lexicons": [TICKS_LEXICON, *LEXICONS]}
        await prov.request("kiki/registerTools", params)
        client.request(1, "kiki/subscribe", {"nsid": TICKS, "params": {}})
        _, answer = await client.answer(1)
        sub = answer["result"]["subscription"]
        rid, method, opened = await prov.requests.get()
        assert method == "kiki/openStream"
        prov.answer(rid)
        live = await client.next()
        assert live["method"] == "kiki/streamStatus"
        assert live["params"]["state"] == "live"
        for n in range(20):
            client.request(2 + n, "tools/call", {"name": ECHO, "arguments": {"text": f"t{n}"}})
            rid, method, _ = await prov.requests.get()
            assert method == "tools/call"
            emit = {"stream": opened["stream"], "message": {"n": n}}
            text = f"t{n}"
            result = {
                "content": [{"type": "text", "text": text}],
                "structuredContent": {"text": text},
            }
            prov.writer.write(
                orjson.dumps({"jsonrpc": "2.0", "method": "kiki/emit", "params": emit})
                + b"\n"
                + orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": result})
                + b"\n"
            )
            event = await client.next()
            assert event.get("method") == "kiki/event", (n, event)
            assert event["params"]["subscription"] == sub
            assert event["params"]["message"] == {"n": n}
            called = await client.next()
            assert called.get("id") == 2 + n, (n, called)
            assert called["result"]["structuredContent"] == {"text": text}


async def test_a_subscribe_answered_by_a_task_is_answered_before_its_first_notification(
    broker: Broker,
) -> None:
    path, _ = broker
    async with asyncio.timeout(BOUND), lines(path) as client:
        # A request that stays running: what the connection reads after it runs in tasks.
        client.request(1, "subscriptions/listen", {"notifications": {}})
        ack = await client.next()
        assert ack["method"] == "notifications/subscriptions/acknowledged"
        named: set[int] = set()
        for rid in range(2, 7):
            # Each subscribe is audited, so it queues notifications for its own subscription
            # (its live status, the audit line of the subscribe) and for those before it.
            client.request(rid, "kiki/subscribe", {"nsid": SUBSCRIBE_AUDIT})
            before, answer = await client.answer(rid)
            new = answer["result"]["subscription"]
            early = [m for m in before if m["params"].get("subscription") not in named]
            assert early == [], (new, early)
            named.add(new)
            # The new subscription hears of its own subscribe after its answer.
            while True:
                message = await client.next()
                if message["params"].get("subscription") == new:
                    break
            assert message["method"] in ("kiki/streamStatus", "kiki/event"), message
