"""The providers' side of the streams tested at its seam: the core's fan-out and a provider on a
real socket, no broker process. An upstream opened (``kiki/openStream`` with a capability),
fed (``kiki/emit``), closed when its last subscriber leaves; one cancelled before its provider
answered is cancelled at the provider and closed; emits under an unknown stream are stale."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

from kiki_tool_broker.config import BrokerConfig
from kiki_tool_broker.core import BrokerCore
from kiki_tool_broker.policy import Policy
from kiki_tool_broker.schemas import Catalog
from kiki_tool_broker.streams import Action, CloseUpstream, Message, OpenUpstream, Status
from kiki_tool_broker.upstreams import Upstreams
from kikitest import until
from kikitest.broker_fixtures import RawPeer
from kikitest.broker_lexicons import TICKS, TICKS_LEXICON
from libkiki.peer import PeerCred
from libkiki.rpc import connect_unix

pytestmark = pytest.mark.integration

CLIENT = 7


class Side:
    """The core, its fan-out and the upstreams, with the actions they hand back kept."""

    def __init__(self) -> None:
        self.core = BrokerCore(BrokerConfig(call_timeout=5), Catalog.load(), Policy())
        self.fanout = self.core.streams
        self.counters: Counter[str] = Counter()
        self.carried: list[Action] = []
        self.upstreams = Upstreams(self.core, self.carry, self.counters)

    def carry(self, actions: Iterable[Action]) -> None:
        for action in actions:
            self.carried.append(action)
            if isinstance(action, OpenUpstream):
                self.upstreams.open(action)
            elif isinstance(action, CloseUpstream):
                self.upstreams.close(action)


@pytest.fixture
async def provider_peer(sockdir: Path) -> AsyncIterator[tuple[Side, RawPeer]]:
    """A provider of TICKS: a raw peer on the far end of a libkiki connection the core holds."""
    path = sockdir / "provider.sock"
    accepted: asyncio.Future[RawPeer] = asyncio.get_running_loop().create_future()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(RawPeer(reader, writer))

    side = Side()
    async with (
        await asyncio.start_unix_server(accept, str(path)),
        connect_unix(path) as conn,
    ):
        peer = await asyncio.wait_for(accepted, 10)
        cred = PeerCred(os.getpid(), os.getuid(), os.getgid())
        provider = side.core.provider(cred, conn)
        done = side.core.register_all(provider, [], [TICKS_LEXICON], subscriptions=[TICKS])
        side.carry(done.actions)
        async with peer:
            yield side, peer


def subscribe(side: Side, room: str) -> int:
    subscriber = side.core.subscriptions.subscriber(side.core.identify(PeerCred(1, 0, 0)))
    subscribed, actions = side.core.subscriptions.subscribe(
        subscriber, CLIENT, TICKS, {"room": room}
    )
    side.carry(actions)
    return subscribed.sub


async def test_an_upstream_is_opened_fed_and_closed(provider_peer: tuple[Side, Any]) -> None:
    side, peer = provider_peer
    sub = subscribe(side, "a")
    async with asyncio.timeout(10):
        rid, method, params = await peer.requests.get()
        assert (method, params["nsid"], params["params"]) == (
            "kiki/openStream",
            TICKS,
            {"room": "a"},
        )
        token = params["stream"]
        assert token not in side.fanout.upstreams()  # a capability, not the fan-out's id
        peer.answer(rid)
        # Once the answer is read, the subscription is told it is live.
        await until(lambda: any(isinstance(a, Status) for a in side.fanout.drain(sub)), "live")
        side.upstreams.emit({"stream": token, "message": {"n": 1}})
        side.upstreams.emit({"stream": token + 1, "message": {"n": 2}})  # nobody's stream
        assert side.fanout.drain(sub) == [Message(sub, 1, {"n": 1})]
        assert side.counters["stream_stale_tokens"] == 1
        side.carry(side.fanout.unsubscribe(CLIENT, sub))
        assert await peer.note("kiki/closeStream") == {"stream": token}
        side.upstreams.emit({"stream": token, "message": {"n": 3}})  # closed: stale now
        assert side.counters["stream_stale_tokens"] == 2


async def test_an_upstream_cancelled_before_its_answer_is_cancelled_and_closed(
    provider_peer: tuple[Side, Any],
) -> None:
    side, peer = provider_peer
    sub = subscribe(side, "b")
    async with asyncio.timeout(10):
        rid, _, params = await peer.requests.get()
        side.carry(side.fanout.unsubscribe(CLIENT, sub))  # before the provider answered
        told = sorted([await peer.notes.get(), await peer.notes.get()], key=lambda n: n[0])
        assert told == [
            ("kiki/closeStream", {"stream": params["stream"]}),
            ("notifications/cancelled", {"requestId": rid, "reason": "cancelled"}),
        ]
        assert side.upstreams.opening == {}
        assert side.upstreams.tokens == {}
