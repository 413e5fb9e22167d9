"""Registration at the broker -- lexicons' ownership and lifetime, the limits on
what one provider connection may register, unregistering, and the schemas ``tools/list`` shows.
"""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from kiki_tool_broker.schemas import Catalog
from kikitest import REPO
from kikitest.broker_lexicons import COUNT, ECHO, LEXICONS, procedure
from libkiki.errors import Conflict, InvalidParams, KikiError, NotFound
from libkiki.rpc import Connection, connect_unix
from libkiki.tools import ToolCall, ToolClient, ToolProvider

pytestmark = pytest.mark.integration

Broker = tuple[Path, subprocess.Popen[bytes]]
GET_INFO = "dev.kiki.service.getInfo"
BUILTIN = {GET_INFO, "dev.kiki.tools.listProviders", "dev.kiki.tools.readAuditLog"}


def tool_doc(nsid: str, description: str = "", **extra_defs: Any) -> dict[str, Any]:
    """A procedure ``{text} -> {text}`` named ``nsid``, plus any extra definitions."""
    text: dict[str, Any] = {"type": "string"}
    doc = procedure(nsid, {"text": text}, {"text": dict(text)}, ["text"], description)
    doc["defs"].update(extra_defs)
    return doc


def defs_doc(nsid: str, description: str = "") -> dict[str, Any]:
    """A document of shared definitions only: ``#word`` is a short string."""
    word: dict[str, Any] = {"type": "string", "maxLength": 8}
    if description:
        word["description"] = description
    return {"lexicon": 1, "id": nsid, "defs": {"word": word}}


def user_doc(nsid: str, shared: str) -> dict[str, Any]:
    """A tool whose input and output both use ``shared#word``, a document it does not send."""
    word = {"type": "ref", "ref": f"{shared}#word"}
    return procedure(nsid, {"text": word}, {"text": dict(word)}, ["text"])


@asynccontextmanager
async def provider_conn(path: Path) -> AsyncIterator[Connection]:
    """A bare connection: what it registers is owned by it until it closes."""
    async with connect_unix(path) as conn:
        yield conn


async def register(
    conn: Connection, tools: Any, lexicons: Any = None, *, raw: bool = False
) -> dict[str, Any]:
    params: dict[str, Any] = {"tools": tools}
    if lexicons is not None or raw:
        params["lexicons"] = lexicons
    result: dict[str, Any] = await conn.request("kiki/registerTools", params)
    return result


async def provider_count(client: ToolClient) -> int:
    providers = await client.call("dev.kiki.tools.listProviders")
    return sum(1 for p in providers["providers"] if p.get("appId") != "kiki-tool-broker")


async def settle_providers(client: ToolClient, count: int) -> None:
    """Wait until the broker has seen connections come and go: ``count`` providers remain."""
    for _ in range(1000):
        if await provider_count(client) == count:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"the broker still has {await provider_count(client)} providers, not {count}")


class Watcher:
    """A ToolClient that counts the ``list_changed`` notifications it gets."""

    def __init__(self, client: ToolClient) -> None:
        self.client = client
        self.changes = 0
        self.event = asyncio.Event()
        client.list_changed = self._changed

    async def _changed(self) -> None:
        self.changes += 1
        self.event.set()

    async def next_change(self) -> None:
        await self.event.wait()
        self.event.clear()

    async def names(self) -> set[str]:
        return {t["name"] for t in await self.client.list()}


# -- lexicons: owned by the connections that sent them -----------------------------------------


async def test_a_changed_lexicon_is_accepted_once_its_provider_left(broker: Broker) -> None:
    # An app that restarts with an upgraded lexicon: the broker used to refuse it (-32009)
    # until the broker itself restarted.
    path, _ = broker
    nsid = "org.example.up.tool"
    async with asyncio.timeout(20), ToolClient(path) as client:
        async with provider_conn(path) as conn:
            await register(conn, [nsid], [tool_doc(nsid, "v1")])
        await settle_providers(client, 0)
        async with provider_conn(path) as conn:
            assert await register(conn, [nsid], [tool_doc(nsid, "v2")]) == {"registered": [nsid]}
            tools = {t["name"]: t for t in await client.list()}
            assert tools[nsid]["description"] == "v2"


async def test_a_failed_registration_leaves_no_lexicon_behind(broker: Broker) -> None:
    path, _ = broker
    good, bad = "org.example.partial.good", "org.example.partial.bad"
    broken = {"lexicon": 1, "id": bad, "defs": {"main": {"type": "bogus"}}}
    async with asyncio.timeout(20), provider_conn(path) as conn:
        with pytest.raises(InvalidParams, match="bogus"):
            await register(conn, [good], [tool_doc(good), broken])
        # An unknown tool fails the request after its lexicons were read: none is kept either.
        with pytest.raises(InvalidParams, match=r"org\.example\.partial\.none"):
            await register(conn, ["org.example.partial.none"], [tool_doc(good, "again")])
        # Same connection, same NSID, different content: nothing of the failures is in the way.
        assert await register(conn, [good], [tool_doc(good, "changed")]) == {"registered": [good]}


async def test_identical_lexicons_are_shared_until_their_last_sender_leaves(
    broker: Broker,
) -> None:
    path, _ = broker
    nsid = "org.example.shared.tool"
    async with asyncio.timeout(20), ToolClient(path) as client:
        async with provider_conn(path) as a, provider_conn(path) as b:
            await register(a, [nsid], [tool_doc(nsid, "v1")])
            await register(b, [], [tool_doc(nsid, "v1")])  # the same content: shared
            with pytest.raises(Conflict, match="already registered with different content"):
                await register(b, [], [tool_doc(nsid, "v2")])
            await a.close()
            await settle_providers(client, 1)
            async with provider_conn(path) as c:  # b still holds v1
                with pytest.raises(Conflict, match="already registered with different content"):
                    await register(c, [nsid], [tool_doc(nsid, "v2")])
                await register(c, [nsid], [tool_doc(nsid, "v1")])  # and v1 is still usable
        await settle_providers(client, 0)
        async with provider_conn(path) as d:
            assert await register(d, [nsid], [tool_doc(nsid, "v2")]) == {"registered": [nsid]}


async def test_a_lexicon_another_providers_tool_needs_outlives_its_sender(broker: Broker) -> None:
    # a sends shared definitions; b's tool uses them without sending them. When a leaves, b's
    # tool still validates against them; once b's tool is gone too, they are dropped.
    path, _ = broker
    shared, user = "org.example.need.defs", "org.example.need.user"
    provider = ToolProvider(path, lexicons=[user_doc(user, shared)])

    @provider.tool(user)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return {"text": args["text"]}

    async with asyncio.timeout(20), ToolClient(path) as client:
        async with provider_conn(path) as a:
            await register(a, [], [defs_doc(shared)])
            async with provider.connect():
                await a.close()
                await settle_providers(client, 1)
                assert (await client.call(user, {"text": "short"}))["text"] == "short"
                with pytest.raises(KikiError, match=r"input\.text"):
                    await client.call(user, {"text": "much too long"})
                async with provider_conn(path) as c:
                    with pytest.raises(Conflict, match="different content"):
                        await register(c, [], [defs_doc(shared, "changed")])
        await settle_providers(client, 0)
        async with provider_conn(path) as c:
            await register(c, [], [defs_doc(shared, "changed")])


async def test_installed_lexicons_are_never_replaced_nor_dropped(broker: Broker) -> None:
    path, _ = broker
    installed = (REPO / "schemas/lexicons/dev/kiki/service").glob("*.json")
    docs = {p.stem: orjson.loads(p.read_bytes()) for p in installed}
    changed = copy.deepcopy(docs["getInfo"])
    changed["defs"]["main"]["description"] = "Something else."
    async with asyncio.timeout(20), ToolClient(path) as client:
        async with provider_conn(path) as conn:
            with pytest.raises(Conflict, match=r"dev\.kiki\.service\.getInfo"):
                await register(conn, [], [changed])
            await register(conn, [], list(docs.values()))  # identical copies are fine
        await settle_providers(client, 0)
        # The copies' sender left: the installed documents are still there, unchanged.
        assert (await client.call(GET_INFO))["name"] == "tool-broker"
        tools = {t["name"]: t for t in await client.list()}
        assert tools[GET_INFO]["description"] != "Something else."
        async with provider_conn(path) as conn:
            with pytest.raises(Conflict, match=r"dev\.kiki\.service\.getInfo"):
                await register(conn, [], [changed])


async def test_lexicons_per_connection_are_capped_and_freed_on_disconnect(broker: Broker) -> None:
    path, _ = broker
    many = [defs_doc(f"org.example.cap.d{i}") for i in range(1000)]
    more = [defs_doc(f"org.example.cap.e{i}") for i in range(100)]
    async with asyncio.timeout(60), ToolClient(path) as client:
        async with provider_conn(path) as conn:
            await register(conn, [], many)
            with pytest.raises(InvalidParams, match="at most 1024 lexicon documents") as info:
                await register(conn, [], more)
            assert info.value.data == {"limit": 1024}
            await register(conn, [], many)  # already its own: counted once
        await settle_providers(client, 0)
        async with provider_conn(path) as conn:
            await register(conn, [], more)  # the first connection's documents are gone


def test_catalog_drops_a_providers_lexicons_when_it_leaves() -> None:
    catalog = Catalog.load()
    installed = len(catalog.registry)
    for owner in (1, 2, 3):
        catalog.add_documents([tool_doc(f"org.example.leak.t{owner}")], owner=owner)
    assert len(catalog.registry) == installed + 3
    for owner in (1, 2, 3):
        catalog.drop_owner(owner)
    assert len(catalog.registry) == installed
    assert GET_INFO in catalog.registry


# -- the request's params ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"tools": 5}, "tools must be a list of NSIDs"),
        ({"tools": "abc"}, "tools must be a list of NSIDs"),
        ({"tools": [1]}, "tools must be a list of NSIDs"),
        ({"tools": [], "lexicons": 5}, "lexicons must be a list of lexicon documents"),
        ({"tools": [], "lexicons": {"id": "x"}}, "lexicons must be a list of lexicon documents"),
        ({"tools": [], "lexicons": ["x"]}, "must be a JSON object"),
    ],
)
async def test_register_params_are_checked(
    broker: Broker, params: dict[str, Any], message: str
) -> None:
    path, _ = broker
    async with asyncio.timeout(20), provider_conn(path) as conn:
        with pytest.raises(InvalidParams, match=message):
            await conn.request("kiki/registerTools", params)


@pytest.mark.parametrize(
    "params", [{"tools": 5}, {"tools": "abc"}, {"tools": ["ok", None]}, {"tools": {"a": 1}}]
)
async def test_unregister_params_are_checked(broker: Broker, params: dict[str, Any]) -> None:
    path, _ = broker
    nsid = "org.example.unreg.a"
    async with asyncio.timeout(20), provider_conn(path) as conn, ToolClient(path) as client:
        await register(conn, [nsid], [tool_doc(nsid)])
        with pytest.raises(InvalidParams, match="tools must be a list of NSIDs"):
            await conn.request("kiki/unregisterTools", params)
        assert nsid in {t["name"] for t in await client.list()}


# -- unregistering -----------------------------------------------------------------------------


async def test_unregister_removes_the_tools_and_announces_it(broker: Broker) -> None:
    path, _ = broker
    a, b = "org.example.unreg.a", "org.example.unreg.b"
    async with asyncio.timeout(20), ToolClient(path) as client:
        watcher = Watcher(client)
        async with provider_conn(path) as conn:
            await register(conn, [a, b], [tool_doc(a), tool_doc(b)])
            await watcher.next_change()
            assert await conn.request("kiki/unregisterTools", {"tools": [a]}) == {
                "unregistered": [a]
            }
            await watcher.next_change()
            names = await watcher.names()
            assert a not in names
            assert b in names


async def test_unregistering_nothing_announces_nothing(broker: Broker) -> None:
    path, _ = broker
    a = "org.example.unreg.a"
    async with asyncio.timeout(20), ToolClient(path) as client:
        watcher = Watcher(client)
        async with provider_conn(path) as conn:
            await register(conn, [a], [tool_doc(a)])
            await watcher.next_change()
            assert await conn.request("kiki/unregisterTools", {"tools": []}) == {"unregistered": []}
            await register(conn, [])  # registering nothing: the same
            await conn.request("ping")
            await client.connection.request("ping")
            assert not watcher.event.is_set()


async def test_unregister_with_a_duplicate_removes_once_and_announces(broker: Broker) -> None:
    path, _ = broker
    b = "org.example.unreg.b"
    async with asyncio.timeout(20), ToolClient(path) as client:
        watcher = Watcher(client)
        async with provider_conn(path) as conn:
            await register(conn, [b], [tool_doc(b)])
            await watcher.next_change()
            result = await conn.request("kiki/unregisterTools", {"tools": [b, b]})
            assert result == {"unregistered": [b]}
            await watcher.next_change()
            assert b not in await watcher.names()
            # Registering it again works: nothing of it was left behind.
            assert await register(conn, [b, b]) == {"registered": [b]}


async def test_unregistering_someone_elses_tool_changes_nothing(broker: Broker) -> None:
    path, _ = broker
    mine, theirs = "org.example.own.mine", "org.example.own.theirs"
    async with (
        asyncio.timeout(20),
        ToolClient(path) as client,
        provider_conn(path) as a,
        provider_conn(path) as b,
    ):
        await register(a, [theirs], [tool_doc(theirs)])
        await register(b, [mine], [tool_doc(mine)])
        for tools, named in [
            ([theirs], theirs),
            ([mine, theirs], theirs),
            ([mine, "org.example.own.nobody"], "org.example.own.nobody"),
            ([GET_INFO], GET_INFO),
        ]:
            with pytest.raises(NotFound, match="not registered by this provider") as info:
                await b.request("kiki/unregisterTools", {"tools": tools})
            assert named in info.value.message
        assert {mine, theirs} <= {t["name"] for t in await client.list()}


# -- limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "broker", [{"KIKI_TOOL_BROKER_MAX_TOOLS_PER_PROVIDER": "2"}], indirect=True
)
async def test_max_tools_per_provider(broker: Broker) -> None:
    path, _ = broker
    one, two, three = (f"org.example.max.t{i}" for i in range(3))
    docs = [tool_doc(n) for n in (one, two, three)]
    async with asyncio.timeout(20), provider_conn(path) as conn, ToolClient(path) as client:
        with pytest.raises(InvalidParams, match="at most 2 tools"):
            await register(conn, [one, two, three], docs)
        await register(conn, [one], docs)
        with pytest.raises(InvalidParams, match="at most 2 tools"):
            await register(conn, [two, three])
        names = {t["name"] for t in await client.list()}
        assert one in names
        assert not {two, three} & names
        await register(conn, [two])
        await conn.request("kiki/unregisterTools", {"tools": [one]})
        await register(conn, [three])  # room again
        names = {t["name"] for t in await client.list()}
        assert {two, three} <= names
        assert one not in names


# -- what tools/list shows ---------------------------------------------------------------------


async def test_tools_list_shows_the_output_schema(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), provider_conn(path) as conn, ToolClient(path) as client:
        await register(conn, [ECHO], LEXICONS)
        tools = {t["name"]: t for t in await client.list()}
        output = tools[ECHO]["outputSchema"]
        assert output["type"] == "object"
        assert output["required"] == ["text"]
        assert output["properties"]["text"]["type"] == "string"
        assert "outputSchema" in tools[GET_INFO]
        # A grapheme limit has no JSON Schema keyword: it is shown as an annotation.
        text = tools[ECHO]["inputSchema"]["properties"]["text"]
        assert text == {"type": "string", "x-lexicon-maxGraphemes": 16}


async def test_each_schema_carries_only_the_defs_it_uses(broker: Broker) -> None:
    path, _ = broker
    nsid = "org.example.defs.tool"
    doc = tool_doc(
        nsid,
        inner={"type": "object", "properties": {"n": {"type": "integer"}}},
        inPart={
            "type": "object",
            "properties": {"inner": {"type": "ref", "ref": "#inner"}},
        },
        outPart={"type": "object", "properties": {"s": {"type": "string"}}},
    )
    doc["defs"]["main"]["input"]["schema"]["properties"]["part"] = {"type": "ref", "ref": "#inPart"}
    doc["defs"]["main"]["output"]["schema"]["properties"]["part"] = {
        "type": "ref",
        "ref": "#outPart",
    }
    async with asyncio.timeout(20), provider_conn(path) as conn, ToolClient(path) as client:
        await register(conn, [nsid], [doc])
        tools = {t["name"]: t for t in await client.list()}
        tool = tools[nsid]
        assert set(tool["inputSchema"]["$defs"]) == {f"{nsid}.inPart", f"{nsid}.inner"}
        assert set(tool["outputSchema"]["$defs"]) == {f"{nsid}.outPart"}
        # getInfo takes nothing and answers dev.kiki.service.defs#info: only its output says so.
        info = tools[GET_INFO]
        assert "$defs" not in info["inputSchema"]
        assert "dev.kiki.service.defs.info" in info["outputSchema"]["$defs"]


# -- callers and providers ---------------------------------------------------------------------


async def test_a_forged_caller_in_meta_never_reaches_the_provider(broker: Broker) -> None:
    path, _ = broker
    seen: list[dict[str, Any]] = []
    provider = ToolProvider(path, lexicons=LEXICONS)

    @provider.tool(ECHO)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        seen.append(call.caller)
        return {"text": args["text"]}

    forged = {"uid": 0, "gid": 0, "pid": 1, "appId": "org.example.root"}
    async with asyncio.timeout(20), provider.connect(), connect_unix(path) as conn:
        params = {"name": ECHO, "arguments": {"text": "hi"}, "_meta": {"dev.kiki/caller": forged}}
        result = await conn.request("tools/call", params)
        assert result["structuredContent"] == {"text": "hi"}
    (caller,) = seen
    assert (caller["uid"], caller["gid"], caller["pid"]) == (os.getuid(), os.getgid(), os.getpid())
    assert caller.get("appId") != "org.example.root"


async def test_two_providers_each_serve_their_own_and_leave_alone(broker: Broker) -> None:
    path, _ = broker
    first = ToolProvider(path, lexicons=LEXICONS)
    second = ToolProvider(path, lexicons=LEXICONS)

    @first.tool(ECHO)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return {"text": "first:" + args["text"]}

    @second.tool(COUNT)
    async def count(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return {"text": f"second:{args['to']}"}

    async with asyncio.timeout(20), ToolClient(path) as client:
        watcher = Watcher(client)
        async with second.connect():
            async with first.connect():
                assert (await client.call(ECHO, {"text": "a"}))["text"] == "first:a"
                assert (await client.call(COUNT, {"to": 3}))["text"] == "second:3"
                providers = await client.call("dev.kiki.tools.listProviders")
                served = {t["nsid"]: p["id"] for p in providers["providers"] for t in p["tools"]}
                assert served[ECHO] != served[COUNT]
                watcher.event.clear()
            await watcher.next_change()
            names = await watcher.names()
            assert ECHO not in names
            assert COUNT in names
            assert (await client.call(COUNT, {"to": 2}))["text"] == "second:2"
        await watcher.next_change()
        assert not {ECHO, COUNT} & await watcher.names()
        assert await watcher.names() >= BUILTIN
