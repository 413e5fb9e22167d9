"""The real broker process, real providers and callers on its real Unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from kikitest import REPO, until
from kikitest.broker_lexicons import BAD_OUTPUT, COUNT, ECHO, LEXICONS, SLOW
from libkiki.audit import read_entries
from libkiki.errors import (
    InvalidParams,
    LimitExceeded,
    PeerGone,
    PermissionDenied,
    Timeout,
    ToolError,
    UnsupportedVersion,
    ValidationError,
)
from libkiki.rpc import Methods, RequestContext, connect_unix
from libkiki.tools import ToolCall, ToolClient, ToolProvider

pytestmark = pytest.mark.integration

Broker = tuple[Path, subprocess.Popen[bytes]]
GET_INFO = "dev.kiki.service.getInfo"
MODERN = "io.modelcontextprotocol/protocolVersion"
CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
SERVER_INFO = "io.modelcontextprotocol/serverInfo"
SUBSCRIPTION = "io.modelcontextprotocol/subscriptionId"


def make_provider(
    path: Path, hang: asyncio.Event | None = None, started: asyncio.Event | None = None
) -> ToolProvider:
    provider = ToolProvider(path, lexicons=LEXICONS)

    @provider.tool(ECHO)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        if args.get("delay"):
            await asyncio.sleep(args["delay"] / 1000)
        return {"text": args["text"], "caller": call.caller}

    @provider.tool(SLOW)
    async def slow(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        if started is not None:
            started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if hang is not None:
                hang.set()  # the broker's cancellation reached us
            raise
        return {}

    @provider.tool(BAD_OUTPUT)
    async def bad(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return {"text": 42}

    @provider.tool(COUNT)
    async def count(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        for i in range(args["to"]):
            await call.progress(i + 1, args["to"])
        return {"text": str(args["to"])}

    return provider


async def test_the_status_line_counts_the_tools_as_they_come_and_go(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), ToolClient(path) as client:

        async def status() -> str:
            text = (await client.call(GET_INFO))["statusText"]
            assert isinstance(text, str)
            return text

        changed = asyncio.Event()

        async def on_change() -> None:
            changed.set()

        client.list_changed = on_change  # the status is set before the change is announced
        builtin = len(await client.list())
        assert await status() == f"serving tools.sock (bound); {builtin} tools"
        async with make_provider(path).connect():
            await changed.wait()
            changed.clear()
            assert await status() == f"serving tools.sock (bound); {builtin + 4} tools"
        await changed.wait()
        assert await status() == f"serving tools.sock (bound); {builtin} tools"


async def test_the_status_stays_draining_while_providers_leave_a_stopping_broker(
    sockdir: Path, spawn_service: Any
) -> None:
    # The tool count is the status while serving; a provider leaving during the drain once put
    # "serving …" back after STOPPING=1's "draining".
    proc, notes = spawn_service("tool-broker")
    notes.wait_for("READY")
    async with asyncio.timeout(30), make_provider(sockdir / "tools.sock").connect() as conn:
        proc.send_signal(signal.SIGTERM)
        await conn.wait_closed()  # the broker closed it: this provider has left
        assert await asyncio.to_thread(proc.wait, 20) == 0
    stopping = notes.wait_for("STOPPING")
    assert stopping["STATUS"] == "draining"
    notes.sock.settimeout(0.5)
    after = []
    with contextlib.suppress(TimeoutError):
        while True:
            after.append(notes.sock.recv(4096).decode())
    assert not [m for m in after if "STATUS=serving" in m], after


async def test_lists_builtin_and_provided_tools_with_annotations(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), ToolClient(path) as client:
        assert client.server["protocolVersion"] == "2025-11-25"
        assert client.server["capabilities"]["tools"]["listChanged"] is True
        names = {t["name"] for t in await client.list()}
        assert {
            "dev.kiki.tools.listProviders",
            "dev.kiki.tools.readAuditLog",
            "dev.kiki.service.getInfo",
        } <= names
        changed = asyncio.Event()

        async def on_change() -> None:
            changed.set()

        client.list_changed = on_change
        async with make_provider(path).connect():
            await changed.wait()
            tools = {t["name"]: t for t in await client.list()}
            echo = tools[ECHO]
            assert echo["inputSchema"]["properties"]["text"]["type"] == "string"
            assert echo["inputSchema"]["required"] == ["text"]
            assert echo["annotations"] == {"readOnlyHint": False, "destructiveHint": False}
            assert tools[COUNT]["annotations"]["destructiveHint"] is True
            info = tools["dev.kiki.service.getInfo"]
            assert info["annotations"]["readOnlyHint"] is True
            changed.clear()
        # The provider left: its tools are gone and listeners were told.
        await changed.wait()
        assert ECHO not in {t["name"] for t in await client.list()}


async def test_call_is_forwarded_with_the_callers_kernel_identity(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), make_provider(path).connect(), ToolClient(path) as client:
        result = await client.call_raw(ECHO, {"text": "hi", "caller": "forged"})
        assert result["isError"] is False
        assert result["structuredContent"]["text"] == "hi"
        caller = result["structuredContent"]["caller"]
        assert (caller["uid"], caller["pid"]) == (os.getuid(), os.getpid())
        assert orjson.loads(result["content"][0]["text"]) == result["structuredContent"]
        info = await client.call("dev.kiki.service.getInfo")
        assert info["name"] == "tool-broker"
        providers = await client.call("dev.kiki.tools.listProviders")
        served = {t["nsid"]: p for p in providers["providers"] for t in p["tools"]}
        assert served[ECHO]["caller"]["pid"] == os.getpid()
        assert served["dev.kiki.service.getInfo"]["appId"] == "kiki-tool-broker"


async def test_input_is_validated_before_the_provider_sees_it(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), make_provider(path).connect(), ToolClient(path) as client:
        with pytest.raises(ValidationError) as info:
            await client.call(ECHO, {"text": "x" * 17})
        assert str(info.value) == "input.text: must be at most 16 graphemes"
        assert info.value.jsonrpc_code == -32602
        with pytest.raises(ValidationError, match=r"^input.text: is required$"):
            await client.call(ECHO, {})


async def test_invalid_output_is_a_tool_error(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), make_provider(path).connect(), ToolClient(path) as client:
        result = await client.call_raw(BAD_OUTPUT)
        assert result["isError"] is True
        assert "output.text" in result["content"][0]["text"]
        # Not as structuredContent, which must match the tool's outputSchema (the TypeScript
        # SDK 1.x throws on an error result whose structure does not): in _meta.
        assert "structuredContent" not in result
        detail = {"path": "output.text", "rule": "must be a string"}
        assert result["_meta"] == {"dev.kiki/errorData": detail}
        with pytest.raises(ToolError, match=r"output\.text") as info:
            await client.call(BAD_OUTPUT)
        assert info.value.data == detail


@pytest.mark.parametrize(
    ("size", "rid", "error"),
    [
        # The provider's answer would be dropped by the broker's line limit, and the caller
        # would have waited for the call timeout: the provider answers an error in its place.
        (2 << 20, None, "over the line limit of 1048576 bytes"),
        # The provider's answer fits, the broker's (the output twice) would not: the caller
        # got -32005 after an audit line saying ok.
        (600_000, None, "does not fit in an answer"),
        # The output twice fits, but not with the caller's 20 000-character id as well.
        (520_000, "i" * 20_000, "does not fit in an answer"),
    ],
)
async def test_output_over_the_line_limit_is_a_tool_error_at_once(
    broker: Broker, sockdir: Path, size: int, rid: str | None, error: str
) -> None:
    path, _ = broker
    big = "org.example.test.big"
    lexicon = {
        "lexicon": 1,
        "id": big,
        "defs": {
            "main": {
                "type": "query",
                "output": {
                    "encoding": "application/json",
                    "schema": {"type": "object", "properties": {"text": {"type": "string"}}},
                },
            }
        },
    }
    provider = ToolProvider(path, lexicons=[lexicon])

    @provider.tool(big)
    async def answer(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return {"text": "x" * size}

    async with asyncio.timeout(20), provider.connect():
        if rid is None:
            async with ToolClient(path) as client:
                with pytest.raises(ToolError, match=error):
                    await client.call(big)
        else:
            request = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": big}}
            line = orjson.dumps(request) + b"\n"
            [reply] = await asyncio.to_thread(raw_exchange, path, line, 1)
            assert reply["id"] == rid
            assert reply["result"]["isError"] is True
            assert error in reply["result"]["content"][0]["text"]
    [entry] = [e for e in read_entries(sockdir / "state" / "audit.jsonl") if e["tool"] == big]
    assert (entry["outcome"], entry["code"]) == ("error", -32005)


async def test_an_overlong_tool_name_is_audited_cut_and_the_log_still_reads(
    broker: Broker,
) -> None:
    path, _ = broker
    name = "org.example." + "é" * 400
    async with asyncio.timeout(20), ToolClient(path) as client:
        with pytest.raises(InvalidParams, match="unknown tool"):
            await client.call(name)
        page = await client.call("dev.kiki.tools.readAuditLog", {"latest": True, "limit": 5})
    [entry] = [e for e in page["entries"] if e["outcome"] != "ok"]
    assert entry["tool"].endswith("…")
    assert len(entry["tool"].encode()) <= 317
    assert name.startswith(entry["tool"][:-1])


async def test_unknown_tool_is_invalid_params(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), ToolClient(path) as client:
        with pytest.raises(Exception, match=r"unknown tool: org\.example\.nope") as info:
            await client.call("org.example.nope")
        assert getattr(info.value, "jsonrpc_code", None) == -32602


async def test_an_nsid_cannot_be_registered_twice(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), make_provider(path).connect():
        second = make_provider(path)
        with pytest.raises(Exception, match=rf"already registered: .*{re.escape(ECHO)}") as info:
            async with second.connect():
                pass
        assert getattr(info.value, "jsonrpc_code", None) == -32009


async def test_hanging_provider_times_out_and_is_cancelled(broker: Broker) -> None:
    path, _ = broker
    cancelled = asyncio.Event()
    async with (
        asyncio.timeout(20),
        make_provider(path, cancelled).connect(),
        ToolClient(path) as client,
    ):
        with pytest.raises(Timeout, match=r"did not answer org\.example\.test\.slow within 2s"):
            await client.call(SLOW)
        await cancelled.wait()
        # The connection is still good afterwards.
        assert (await client.call(ECHO, {"text": "after"}))["text"] == "after"


async def test_caller_cancellation_reaches_the_provider(broker: Broker) -> None:
    path, _ = broker
    cancelled = asyncio.Event()
    async with (
        asyncio.timeout(20),
        make_provider(path, cancelled).connect(),
        ToolClient(path) as client,
    ):
        with pytest.raises(Timeout):
            await client.call(SLOW, timeout=0.3)  # our timeout: we send notifications/cancelled
        await cancelled.wait()


PROVIDER_SCRIPT = """
import asyncio, os, sys
from libkiki.tools import ToolProvider
sys.path.insert(0, {tests!r})
from kikitest.broker_lexicons import LEXICONS, ECHO
provider = ToolProvider({path!r}, lexicons=LEXICONS)

@provider.tool(ECHO)
async def echo(args, call):
    print("called", flush=True)
    await asyncio.Event().wait()

async def main():
    async with provider.connect():
        print("registered", flush=True)
        await provider.serve_forever()

asyncio.run(main())
"""


async def test_provider_dying_mid_call_fails_the_call_at_once(broker: Broker) -> None:
    path, _ = broker
    script = PROVIDER_SCRIPT.format(tests=str(REPO / "tests"), path=str(path))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(20), ToolClient(path) as client:
            assert await proc.stdout.readline() == b"registered\n"
            call = asyncio.ensure_future(client.call(ECHO, {"text": "x"}, timeout=15))
            assert await proc.stdout.readline() == b"called\n"
            proc.kill()
            with pytest.raises(PeerGone, match="disconnected during the call"):
                await call
            assert ECHO not in {t["name"] for t in await client.list()}
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_progress_is_relayed_to_the_caller(broker: Broker) -> None:
    path, _ = broker
    seen: list[float] = []

    async def on_progress(params: dict[str, Any]) -> None:
        seen.append(params["progress"])

    async with asyncio.timeout(20), make_provider(path).connect(), ToolClient(path) as client:
        assert (await client.call(COUNT, {"to": 5}, on_progress=on_progress))["text"] == "5"
    assert seen == [1, 2, 3, 4, 5]


async def test_policy_denial_is_its_own_error(sockdir: Path, spawn_service: Any) -> None:
    (sockdir / "etc").mkdir()
    (sockdir / "etc" / "tool-policy.toml").write_text(
        f'[[deny]]\nprincipals = ["uid:{os.getuid()}"]\ntools = ["dev.kiki.tools.*"]\n'
    )
    proc, notes = spawn_service("tool-broker")
    notes.wait_for("READY")
    async with asyncio.timeout(20), ToolClient(sockdir / "tools.sock") as client:
        with pytest.raises(PermissionDenied, match="denied by policy") as info:
            await client.call("dev.kiki.tools.listProviders")
        assert info.value.jsonrpc_code == -32003
        assert (await client.call("dev.kiki.service.getInfo"))["name"] == "tool-broker"
    proc.terminate()
    assert proc.wait(timeout=30) == 0


AS_NOBODY = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
calls = sys.argv[2:]
for i, name in enumerate(calls):
    call = {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": name}}
    if name == "tools/list":
        call = {"jsonrpc": "2.0", "id": i, "method": name}
    s.sendall(json.dumps(call).encode() + b"\\n")
buf = b""
while buf.count(b"\\n") < len(calls):
    chunk = s.recv(65536)
    if not chunk:
        break
    buf += chunk
sys.stdout.write(buf.decode())
"""


def test_policy_by_kernel_identity_for_a_caller_who_is_not_root(
    sockdir: Path, spawn_service: Any
) -> None:
    # Every other broker test calls as root, whom the defaults let call anything. Here the
    # caller is nobody (uid 65534, in no `kiki` group): queries are not open to it by default,
    # and an allow rule for its uid opens the one tool it names, the one tool it is shown.
    system_python = Path("/usr/bin/python3")  # readable by nobody, unlike a venv under /root
    if not system_python.exists():
        pytest.fail("needs /usr/bin/python3 to run a caller as nobody (apt install python3)")
    (sockdir / "etc").mkdir()
    (sockdir / "etc" / "tool-policy.toml").write_text(
        '[[allow]]\nprincipals = ["uid:65534"]\ntools = ["dev.kiki.service.getInfo"]\n'
    )
    proc, notes = spawn_service("tool-broker")
    notes.wait_for("READY")
    sockdir.chmod(0o755)
    (sockdir / "tools.sock").chmod(0o666)
    calls = ["dev.kiki.service.getInfo", "dev.kiki.tools.listProviders", "tools/list"]
    run = subprocess.run(
        [str(system_python), "-c", AS_NOBODY, str(sockdir / "tools.sock"), *calls],
        user=65534,
        group=65534,
        extra_groups=[],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    info, providers, listed = (orjson.loads(line) for line in run.stdout.splitlines())
    assert [t["name"] for t in listed["result"]["tools"]] == ["dev.kiki.service.getInfo"]
    assert info["result"]["structuredContent"]["name"] == "tool-broker"
    assert providers["error"]["code"] == -32003
    assert re.fullmatch(
        r"uid=65534 pid=\d+ may not call dev\.kiki\.tools\.listProviders: queries need "
        r"membership in group kiki or a grant",
        providers["error"]["message"],
    )
    entries = read_entries(sockdir / "state" / "audit.jsonl")
    assert [(e["caller"]["uid"], e["outcome"]) for e in entries[-2:]] == [
        (65534, "ok"),
        (65534, "denied"),
    ]
    proc.terminate()
    assert proc.wait(timeout=30) == 0


CONNECT_THEN_LEAVE = """
import json, os, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(b'{"jsonrpc": "2.0", "id": 0, "method": "ping"}\\n')
assert s.recv(65536).endswith(b"\\n")  # the broker has taken this connection's identity
parent = os.getpid()
if os.fork():
    os._exit(0)  # the process that connected leaves; its child keeps the socket
deadline = time.monotonic() + 20
while os.path.exists(f"/proc/{parent}") and time.monotonic() < deadline:
    time.sleep(0.01)  # until the parent is reaped, not just a zombie
call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": sys.argv[2]}}
s.sendall(json.dumps(call).encode() + b"\\n")
answer = s.recv(65536)
with open(sys.argv[3] + ".part", "wb") as f:
    f.write(answer)
os.rename(sys.argv[3] + ".part", sys.argv[3])
"""


def test_a_group_denial_outlives_the_process_that_connected(
    sockdir: Path, spawn_service: Any
) -> None:
    # The groups are the connection's, recorded at connect(): read from /proc/<pid> at the
    # first call, a caller escaped a group's denial by handing its socket to a child and
    # leaving (its pid then named nobody, or another process).
    (sockdir / "etc").mkdir()
    (sockdir / "etc" / "tool-policy.toml").write_text(
        '[[deny]]\nprincipals = ["gid:4242"]\ntools = ["dev.kiki.tools.listProviders"]\n'
    )
    proc, notes = spawn_service("tool-broker")
    notes.wait_for("READY")
    out = sockdir / "answer"
    args = [str(sockdir / "tools.sock"), "dev.kiki.tools.listProviders", str(out)]
    # Not waited for through pipes: run() reaps the process that connected as it leaves.
    run = subprocess.run(
        [sys.executable, "-c", CONNECT_THEN_LEAVE, *args],
        extra_groups=[4242],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0
    for _ in range(3000):
        if out.exists():
            break
        time.sleep(0.01)
    answer = orjson.loads(out.read_bytes())
    assert answer["error"]["code"] == -32003, answer
    assert "denied by policy" in answer["error"]["message"]
    proc.terminate()
    assert proc.wait(timeout=30) == 0


def raw_exchange(path: Path, payload: bytes, replies: int) -> list[Any]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(payload)
        buf = b""
        out: list[Any] = []
        while len(out) < replies:
            chunk = s.recv(65536)
            assert chunk, f"closed after {out}"
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                out.append(orjson.loads(line))
        return out


def test_wire_errors_where_the_spec_puts_them(broker: Broker) -> None:
    path, _ = broker
    replies = raw_exchange(
        path,
        b"{not json\n"
        b'{"jsonrpc":"1.0","id":1,"method":"ping"}\n'
        b'{"jsonrpc":"2.0","id":"s","method":"nope"}\n'
        b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"x":1}}\n'
        b'{"jsonrpc":"2.0","id":4,"method":"ping"}\n',
        5,
    )
    assert [(r["id"], r.get("error", {}).get("code")) for r in replies] == [
        (None, -32700),
        (1, -32600),
        ("s", -32601),
        (3, -32602),
        (4, None),
    ]
    assert replies[4]["result"] == {}


def test_oversized_line_then_a_good_request(broker: Broker) -> None:
    path, _ = broker
    big = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' + b"a" * (2 << 20) + b'"}}\n'
    replies = raw_exchange(path, big + b'{"jsonrpc":"2.0","id":2,"method":"ping"}\n', 2)
    assert replies[0]["error"]["code"] == -32600
    assert "exceeds the limit" in replies[0]["error"]["message"]
    assert replies[1] == {"jsonrpc": "2.0", "id": 2, "result": {}}


def test_batch_mixing_good_and_bad(broker: Broker) -> None:
    path, _ = broker
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "nope"},
        {"foo": "bar"},
        {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {"name": "dev.kiki.service.getInfo"},
        },
    ]
    (reply,) = raw_exchange(path, orjson.dumps(batch) + b"\n", 1)
    by_id = {r["id"]: r for r in reply}
    assert len(reply) == 4
    assert by_id[1]["result"] == {}
    assert by_id[2]["error"]["code"] == -32601
    assert by_id[None]["error"]["code"] == -32600
    assert by_id[3]["result"]["structuredContent"]["name"] == "tool-broker"


FIRE = "org.example.test.fire"
FIRE_LEXICON = {
    "lexicon": 1,
    "id": FIRE,
    "defs": {
        "main": {
            "type": "procedure",
            "input": {"encoding": "application/json", "schema": {"type": "object"}},
        }
    },
}


async def test_a_tool_without_output_answers_nothing_and_may_return_nothing(
    broker: Broker,
) -> None:
    # Its lexicon declares no output: anything but nothing would reach MCP clients as
    # structured content that is not an object (the official SDK refuses a list there).
    path, _ = broker
    returns: list[Any] = [None, {}, ["done", 1], "done"]
    provider = ToolProvider(path, lexicons=[FIRE_LEXICON])

    @provider.tool(FIRE)
    async def fire(args: dict[str, Any], call: ToolCall) -> Any:
        return returns.pop(0)

    async with asyncio.timeout(20), provider.connect(), ToolClient(path) as client:
        for _ in range(2):  # None, then {}
            assert await client.call_raw(FIRE) == {"content": [], "isError": False}
        for _ in range(2):
            with pytest.raises(ToolError, match="output: must be absent: the lexicon declares"):
                await client.call(FIRE)


async def test_client_disconnecting_mid_call_harms_nobody(broker: Broker) -> None:
    path, _ = broker
    cancelled, started = asyncio.Event(), asyncio.Event()
    async with asyncio.timeout(20), make_provider(path, cancelled, started).connect():
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(
                orjson.dumps(
                    {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": SLOW}}
                )
                + b"\n"
            )
            # Leave once the call is running at the provider (a call cancelled before its
            # handler starts never runs at all, and would have nothing to observe).
            await started.wait()
        await cancelled.wait()  # the broker cancelled the forwarded call when the caller left
        async with ToolClient(path) as client:
            assert (await client.call(ECHO, {"text": "still"}))["text"] == "still"


async def test_audit_log_records_every_call_and_verifies(broker: Broker, sockdir: Path) -> None:
    path, _ = broker
    async with asyncio.timeout(20), make_provider(path).connect(), ToolClient(path) as client:
        await client.call(ECHO, {"text": "a"})
        with pytest.raises(ValidationError):
            await client.call(ECHO, {"text": "b" * 40})
        result = await client.call("dev.kiki.tools.readAuditLog", {"verify": True})
    entries = result["entries"]
    assert [(e["tool"], e["outcome"]) for e in entries[-2:]] == [(ECHO, "ok"), (ECHO, "invalid")]
    assert result["problems"] == []
    assert entries[-1]["caller"]["pid"] == os.getpid()
    log = (sockdir / "state" / "audit.jsonl").read_bytes()
    assert b'"text"' not in log  # arguments are hashed, never stored


async def test_a_call_cancelled_in_the_read_that_brought_it_is_still_audited(
    broker: Broker, sockdir: Path
) -> None:
    # With a progress token the call goes through the broker's waiting path (a task); the
    # cancellation arrives in the same read, before that task ever runs.
    path, _ = broker
    log = sockdir / "state" / "audit.jsonl"
    call = {
        "jsonrpc": "2.0",
        "id": "c1",
        "method": "tools/call",
        "params": {"name": ECHO, "arguments": {"text": "x"}, "_meta": {"progressToken": 7}},
    }
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "c1"}}
    async with asyncio.timeout(20), make_provider(path).connect():
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(path))
            s.sendall(orjson.dumps(call) + b"\n" + orjson.dumps(cancel) + b"\n")
            s.sendall(orjson.dumps({"jsonrpc": "2.0", "id": 2, "method": "ping"}) + b"\n")
            reply = orjson.loads(s.makefile("rb").readline())
        assert reply == {"jsonrpc": "2.0", "result": {}, "id": 2}  # nothing for c1
        async with ToolClient(path) as client:  # a round trip after the cancelled call settled
            await client.call("dev.kiki.service.getInfo")
    outcomes = [(e["tool"], e["outcome"]) for e in read_entries(log)]
    assert (ECHO, "cancelled") in outcomes


async def test_every_call_is_in_the_audit_log_before_its_answer(
    broker: Broker, sockdir: Path
) -> None:
    # Own tools are answered as the request is read and forwarded calls from a task: either
    # way the line is written before the answer leaves, so it is there when the answer is.
    path, _ = broker
    log = sockdir / "state" / "audit.jsonl"
    async with asyncio.timeout(20), make_provider(path).connect(), ToolClient(path) as client:
        for nsid, args in [
            ("dev.kiki.service.getInfo", {}),
            (ECHO, {"text": "a"}),
            ("dev.kiki.service.getInfo", {}),
            (ECHO, {"text": "b"}),
        ]:
            await client.call(nsid, args)
            last = orjson.loads(log.read_bytes().splitlines()[-1])
            assert (last["tool"], last["outcome"]) == (nsid, "ok")
        with pytest.raises(InvalidParams):
            await client.call("org.example.nothing")
        last = orjson.loads(log.read_bytes().splitlines()[-1])
        assert (last["tool"], last["outcome"], last["code"]) == (
            "org.example.nothing",
            "invalid",
            -32602,
        )


async def test_many_clients_pipelining(broker: Broker) -> None:
    path, _ = broker

    async def client_loop() -> int:
        async with ToolClient(path) as client:
            # 50 pipelined, within the broker's default of 64 in flight per connection.
            results = await asyncio.gather(
                *(client.call("dev.kiki.service.getInfo") for _ in range(50))
            )
            return len(results)

    async with asyncio.timeout(60):
        counts = await asyncio.gather(*(client_loop() for _ in range(8)))
    assert counts == [50] * 8


@pytest.mark.parametrize("broker", [{"KIKI_TOOL_BROKER_MAX_IN_FLIGHT": "4"}], indirect=True)
async def test_calls_beyond_the_providers_in_flight_slots_wait_for_one(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), make_provider(path).connect():

        async def four(client: ToolClient, who: str) -> list[str]:
            calls = (client.call(ECHO, {"text": f"{who}{i}", "delay": 100}) for i in range(4))
            return [r["text"] for r in await asyncio.gather(*calls)]

        # Two callers, four calls each (their own limit), eight at once for a provider
        # connection with four slots: four are forwarded at once, four wait for a slot.
        async with ToolClient(path) as a, ToolClient(path) as b:
            got = await asyncio.gather(four(a, "a"), four(b, "b"))
    assert list(got) == [[f"a{i}" for i in range(4)], [f"b{i}" for i in range(4)]]


@pytest.mark.parametrize("broker", [{"KIKI_TOOL_BROKER_MAX_IN_FLIGHT": "4"}], indirect=True)
def test_initialized_notification_takes_no_slot_from_the_calls_after_it(broker: Broker) -> None:
    # What an MCP client sends after the handshake, in one write: the notification and then as
    # many calls as the broker allows in flight. The notification is done as it is read; it
    # used to hold a slot until its task ran, and the last call was refused -32005.
    path, _ = broker
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t"}}
        s.sendall(
            orjson.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello})
            + b"\n"
        )
        assert b'"result"' in s.recv(65536)
        call = {"name": "dev.kiki.service.getInfo"}
        s.sendall(
            b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n'
            + b"".join(
                orjson.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": call})
                + b"\n"
                for i in range(1, 5)
            )
        )
        buf = b""
        while buf.count(b"\n") < 4:
            chunk = s.recv(65536)
            assert chunk
            buf += chunk
    replies = [orjson.loads(line) for line in buf.splitlines()]
    assert [(r["id"], "result" in r) for r in replies] == [(i, True) for i in range(1, 5)], replies


@pytest.mark.parametrize("broker", [{"KIKI_TOOL_BROKER_MAX_CONNECTIONS": "2"}], indirect=True)
async def test_connections_over_the_limit_are_refused_and_the_rest_go_on(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), ToolClient(path) as a, ToolClient(path) as b:
        with pytest.raises(LimitExceeded, match=r"too many connections \(limit 2\)"):
            async with ToolClient(path):
                pass
        assert (await a.call(GET_INFO))["name"] == "tool-broker"
        assert (await b.call(GET_INFO))["name"] == "tool-broker"
    async with asyncio.timeout(20):  # the two left: room again, once the broker has seen it
        while True:
            try:
                async with ToolClient(path) as c:
                    assert (await c.call(GET_INFO))["name"] == "tool-broker"
                    break
            except LimitExceeded:
                await asyncio.sleep(0.02)


@pytest.mark.parametrize("broker", [{"KIKI_TOOL_BROKER_MAX_IN_FLIGHT": "8"}], indirect=True)
async def test_in_flight_limit_answers_the_offender_only(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), make_provider(path).connect():
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(path))
            calls = b"".join(
                orjson.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": i,
                        "method": "tools/call",
                        "params": {"name": ECHO, "arguments": {"text": "x", "delay": 300}},
                    }
                )
                + b"\n"
                for i in range(12)
            )
            s.sendall(calls)
            buf = b""
            replies: list[Any] = []
            while len(replies) < 12:
                chunk = s.recv(65536)
                assert chunk
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    replies.append(orjson.loads(line))
        codes = sorted(r.get("error", {}).get("code", 0) for r in replies)
        assert codes.count(-32005) == 4  # max_in_flight is 8 in this broker
        async with ToolClient(path) as client:
            assert (await client.call(ECHO, {"text": "ok"}))["text"] == "ok"


async def test_sighup_reloads_the_policy(sockdir: Path, spawn_service: Any) -> None:
    policy = sockdir / "etc" / "tool-policy.toml"
    policy.parent.mkdir()
    policy.write_text(
        f'[[deny]]\nprincipals = ["uid:{os.getuid()}"]\ntools = ["dev.kiki.tools.*"]\n'
    )
    proc, notes = spawn_service("tool-broker")
    notes.wait_for("READY")
    path = sockdir / "tools.sock"
    # One connection across the reloads: nothing the broker remembers per connection or per
    # decision outlives the policy it came from.
    async with asyncio.timeout(20), ToolClient(path) as client:
        told = asyncio.Event()

        async def on_change() -> None:
            told.set()

        client.list_changed = on_change
        with pytest.raises(PermissionDenied):
            await client.call("dev.kiki.tools.listProviders")
        assert "dev.kiki.tools.listProviders" not in {t["name"] for t in await client.list()}
        policy.write_text("")  # back to the defaults
        proc.send_signal(signal.SIGHUP)
        notes.wait_for("RELOADING")
        notes.wait_for("READY")
        await told.wait()  # what it may call, and so its list, may have changed
        assert "dev.kiki.tools.listProviders" in {t["name"] for t in await client.list()}
        assert "providers" in await client.call("dev.kiki.tools.listProviders")
        # A broken file on reload keeps the policy in force and the broker running, and the
        # status systemd shows says so.
        policy.write_text("[[deny]\n")
        proc.send_signal(signal.SIGHUP)
        notes.wait_for("RELOADING")
        ready = notes.wait_for("READY")
        assert "reload failed, kept the previous configuration: " in ready["STATUS"]
        assert str(policy) in ready["STATUS"]
        assert "providers" in await client.call("dev.kiki.tools.listProviders")
        # And a denial that comes back with a reload applies to the same connection at once.
        policy.write_text(
            f'[[deny]]\nprincipals = ["uid:{os.getuid()}"]\ntools = ["dev.kiki.tools.*"]\n'
        )
        proc.send_signal(signal.SIGHUP)
        notes.wait_for("RELOADING")
        notes.wait_for("READY")
        with pytest.raises(PermissionDenied):
            await client.call("dev.kiki.tools.listProviders")
    async with asyncio.timeout(20), ToolClient(path) as client:
        with pytest.raises(PermissionDenied):
            await client.call("dev.kiki.tools.listProviders")
    proc.terminate()
    assert proc.wait(timeout=30) == 0


def test_bad_configuration_exits_78_naming_the_field(spawn_service: Any) -> None:
    proc, _ = spawn_service("tool-broker", extra_env={"KIKI_TOOL_BROKER_CALL_TIMEOUT": "soon"})
    assert proc.wait(timeout=30) == 78
    assert b"call_timeout" in proc.stderr.read()


def test_a_malformed_policy_file_at_start_exits_78_saying_why(
    sockdir: Path, spawn_service: Any
) -> None:
    # The policy is configuration too: systemd shows status=78/CONFIG, not a generic failure.
    (sockdir / "etc").mkdir()
    policy = sockdir / "etc" / "tool-policy.toml"
    policy.write_text("[[deny]\n")
    proc, notes = spawn_service("tool-broker")
    assert proc.wait(timeout=30) == 78
    told = notes.wait_for("ERRNO", "22")  # EINVAL
    assert told["STATUS"].startswith(f"failed: {policy}: Expected ']]'")
    assert f"cannot start: {policy}: ".encode() in proc.stderr.read()


@pytest.mark.parametrize("broker", [{"KIKI_TOOL_BROKER_LIST_PAGE_SIZE": "2"}], indirect=True)
async def test_tools_list_is_paginated_by_an_opaque_cursor(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), make_provider(path).connect(), connect_unix(path) as conn:
        first = await conn.request("tools/list", {})
        assert len(first["tools"]) == 2
        names = [t["name"] for t in first["tools"]]
        cursor = first["nextCursor"]
        while cursor:
            page = await conn.request("tools/list", {"cursor": cursor})
            assert len(page["tools"]) <= 2
            names += [t["name"] for t in page["tools"]]
            cursor = page.get("nextCursor")
        assert names == sorted(names)
        assert {ECHO, COUNT, "dev.kiki.service.getInfo"} <= set(names)
        async with ToolClient(path) as client:  # the client follows the pages itself
            assert [t["name"] for t in await client.list()] == names
        for bad in ("not base64!", "", "x" * 600):
            with pytest.raises(InvalidParams) as info:
                await conn.request("tools/list", {"cursor": bad})
            assert info.value.message == "invalid cursor"


async def test_listen_stream_gets_list_changed_tagged_with_its_id(broker: Broker) -> None:
    # MCP 2026-07-28: a subscriptions/listen request is acknowledged at once, then carries
    # list_changed tagged with the request's id; cancelling it ends it without an answer.
    path, _ = broker
    sid_key = "io.modelcontextprotocol/subscriptionId"
    seen: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    methods = Methods()

    @methods.method("notifications/subscriptions/acknowledged")
    async def acknowledged(ctx: RequestContext, notifications: Any, _meta: Any = None) -> None:
        await seen.put(("ack", (notifications, ctx.meta)))

    @methods.method("notifications/tools/list_changed")
    async def changed(ctx: RequestContext) -> None:
        await seen.put(("changed", ctx.meta))

    async with asyncio.timeout(20), connect_unix(path, methods) as conn:
        meta = {MODERN: "2026-07-28", CAPABILITIES: {}}
        params = {"notifications": {"toolsListChanged": True, "promptsListChanged": True}}
        stream = asyncio.ensure_future(
            conn.request("subscriptions/listen", {**params, "_meta": meta})
        )
        kind, (honored, ack_meta) = await seen.get()
        assert kind == "ack"
        assert honored == {"toolsListChanged": True}  # prompts are not served here
        sid = ack_meta[sid_key]
        async with make_provider(path).connect():
            assert await seen.get() == ("changed", {sid_key: sid})
        assert await seen.get() == ("changed", {sid_key: sid})  # and when it left
        stream.cancel()  # sends notifications/cancelled: the broker drops the stream
        with pytest.raises(asyncio.CancelledError):
            await stream
        async with make_provider(path).connect():
            await conn.request("ping")
        assert seen.empty()


async def test_a_modern_request_names_a_version_the_broker_speaks(broker: Broker) -> None:
    # MCP 2026-07-28: each request carries its version (and the client's capabilities) in
    # _meta; a version the server does not speak is -32022 listing the ones it does.
    path, _ = broker
    meta = {"_meta": {MODERN: "2099-01-01", CAPABILITIES: {}}}
    async with asyncio.timeout(20), connect_unix(path) as conn:
        for method, params in (
            ("tools/list", meta),
            ("server/discover", meta),
            ("tools/call", {"name": GET_INFO, **meta}),
            ("ping", meta),
        ):
            with pytest.raises(UnsupportedVersion) as info:
                await conn.request(method, params)
            assert info.value.jsonrpc_code == -32022
            assert info.value.data["requested"] == "2099-01-01"
            assert "2026-07-28" in info.value.data["supported"]
            assert "2025-11-25" in info.value.data["supported"]
        with pytest.raises(InvalidParams, match="clientCapabilities is required"):
            await conn.request("tools/list", {"_meta": {MODERN: "2026-07-28"}})
        # A handshake version in _meta, or none at all, is the handshake era: no resultType.
        for legacy in ({MODERN: "2025-06-18"}, {}):
            assert "resultType" not in await conn.request("tools/list", {"_meta": legacy})
        assert await conn.request("ping") == {}


async def test_modern_results_say_who_answered(broker: Broker) -> None:
    # MCP 2026-07-28: servers SHOULD put their identity in every result's _meta (discover has
    # no serverInfo of its own any more).
    path, _ = broker
    meta = {"_meta": {MODERN: "2026-07-28", CAPABILITIES: {}}}
    async with asyncio.timeout(20), connect_unix(path) as conn:
        discovered = await conn.request("server/discover", meta)
        assert "serverInfo" not in discovered
        me = discovered["_meta"][SERVER_INFO]
        assert me["name"] == "kiki-tool-broker"
        assert await conn.request("ping", meta) == {
            "resultType": "complete",
            "_meta": {SERVER_INFO: me},
        }
        listed = await conn.request("tools/list", meta)
        assert listed["_meta"] == {SERVER_INFO: me}
        called = await conn.request("tools/call", {"name": GET_INFO, **meta})
        assert (called["resultType"], called["_meta"]) == ("complete", {SERVER_INFO: me})
        failed = await conn.request(
            "tools/call",
            {"name": "dev.kiki.tools.readAuditLog", "arguments": {"cursor": 10**9}, **meta},
        )
        assert failed["isError"] is True
        assert failed["_meta"][SERVER_INFO] == me
        assert failed["_meta"]["dev.kiki/errorData"]["error"] == "InvalidCursor"


async def test_params_a_later_mcp_revision_adds_are_ignored(broker: Broker) -> None:
    # MCP's request params are open (2025-11-25 added tools/call's `task`, 2026-07-28
    # `requestState`): a client that sends them is answered as if it had not. Kiki's own
    # methods stay strict.
    path, _ = broker
    async with asyncio.timeout(20), connect_unix(path) as conn:
        called = await conn.request(
            "tools/call", {"name": GET_INFO, "requestState": "abc", "task": {"ttl": 1000}}
        )
        assert called["isError"] is False
        assert "tools" in await conn.request("tools/list", {"foo": 1})
        assert await conn.request("ping", {"x": 1}) == {}
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {}, "extra": 1}
        assert (await conn.request("initialize", init))["protocolVersion"] == "2025-11-25"
        with pytest.raises(InvalidParams):
            await conn.request("kiki/registerTools", {"tools": [], "surprise": 1})


class LineReader:
    """A blocking client socket read a JSON line at a time (in a thread), for a client that
    stops reading on purpose."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, *messages: dict[str, Any]) -> None:
        self.sock.sendall(b"".join(orjson.dumps(m) + b"\n" for m in messages))

    def next(self, timeout: float = 10) -> Any:
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            assert chunk, "the broker closed the connection"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return orjson.loads(line)


async def test_a_listener_that_fell_behind_is_told_once_it_reads_again(broker: Broker) -> None:
    # A listen stream whose client stops reading is owed list_changed: it is told once it
    # reads again, and of later changes too. (It used to lose every later notification, with
    # no word, after one second without room.)
    path, _ = broker
    changed = "notifications/tools/list_changed"
    async with asyncio.timeout(60), ToolClient(path) as client:
        for _ in range(11):  # an audit log whose pages are big answers (~300 KiB)
            await asyncio.gather(*(client.call(GET_INFO) for _ in range(100)))
    listener = await asyncio.to_thread(LineReader, path)
    meta = {MODERN: "2026-07-28", CAPABILITIES: {}}
    listen = {"notifications": {"toolsListChanged": True}, "_meta": meta}
    listener.send({"jsonrpc": "2.0", "id": "L", "method": "subscriptions/listen", "params": listen})
    assert (await asyncio.to_thread(listener.next))["method"].endswith("/acknowledged")
    page = {"name": "dev.kiki.tools.readAuditLog", "arguments": {"latest": True, "limit": 1000}}
    listener.send(
        *({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": page} for i in range(30))
    )  # ~9 MB of answers it does not read for now
    async with asyncio.timeout(30):
        provider = make_provider(path)
        async with provider.connect():  # a change while the listener is not reading
            async with ToolClient(path) as observer:

                async def deferred() -> bool:
                    counters = (await observer.call(GET_INFO))["counters"]
                    return bool(counters.get("list_changed_deferred", 0) >= 2)

                await until(deferred, "the broker found no room for list_changed, twice")
            seen: list[Any] = []
            while sum(1 for m in seen if "id" in m) < 30:  # it reads again
                seen.append(await asyncio.to_thread(listener.next))
            while not any(m.get("method") == changed for m in seen):
                seen.append(await asyncio.to_thread(listener.next))
            told = [m for m in seen if m.get("method") == changed]
            assert told == [
                {"jsonrpc": "2.0", "method": changed, "params": {"_meta": {SUBSCRIPTION: "L"}}}
            ]
        # The provider left: a later change reaches it too.
        later = await asyncio.to_thread(listener.next)
        assert later == told[0]
    listener.sock.close()


async def test_listen_stream_ends_with_a_result_when_the_broker_stops(broker: Broker) -> None:
    path, proc = broker
    async with asyncio.timeout(20), connect_unix(path) as conn:
        params = {"notifications": {"toolsListChanged": True}}
        stream = asyncio.ensure_future(conn.request("subscriptions/listen", params))
        await conn.request("ping")  # the stream is open (requests run in order of arrival)
        proc.send_signal(signal.SIGTERM)
        result = await stream
    assert result["resultType"] == "complete"
    assert isinstance(result["_meta"]["io.modelcontextprotocol/subscriptionId"], int)
    assert await asyncio.to_thread(proc.wait, 20) == 0


async def test_a_forwarded_call_in_flight_finishes_when_the_broker_stops(broker: Broker) -> None:
    path, proc = broker
    started = asyncio.Event()
    provider = ToolProvider(path, lexicons=LEXICONS)

    @provider.tool(ECHO)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        started.set()
        await asyncio.sleep(0.3)
        return {"text": args["text"]}

    async with asyncio.timeout(20), provider.connect(), ToolClient(path) as client:
        call = asyncio.ensure_future(client.call(ECHO, {"text": "drained"}))
        await started.wait()
        proc.send_signal(signal.SIGTERM)  # the broker drains: the provider's answer gets through
        assert (await call)["text"] == "drained"
    assert await asyncio.to_thread(proc.wait, 20) == 0


@pytest.mark.parametrize(
    "broker",
    [{"KIKI_TOOL_BROKER_DRAIN_TIMEOUT": "0.5", "KIKI_TOOL_BROKER_CALL_TIMEOUT": "60"}],
    indirect=True,
)
@pytest.mark.parametrize("key", [None, "stop-key"])
async def test_a_call_longer_than_the_drain_is_cut_and_the_broker_exits(
    broker: Broker, key: str | None
) -> None:
    # The provider would answer in 60 s; the client stays connected. After drain_timeout the
    # broker shuts every connection (the call is cancelled at the provider, the client's
    # connection ends) and exits: neither the call nor the client holds it. A keyed call is
    # not kept running for a retry past the stop either.
    path, proc = broker
    hang, started = asyncio.Event(), asyncio.Event()
    async with (
        asyncio.timeout(20),
        make_provider(path, hang, started).connect(),
        ToolClient(path) as client,
    ):
        call = asyncio.ensure_future(client.call(SLOW, {}, idempotency_key=key, timeout=120))
        await started.wait()
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(PeerGone):
            await call
        await hang.wait()  # the provider was told
        assert await asyncio.to_thread(proc.wait, 20) == 0


@pytest.mark.parametrize("broker", [{"KIKI_TOOL_BROKER_MAX_LISTEN_STREAMS": "2"}], indirect=True)
async def test_listen_streams_are_capped_whatever_they_ask_for(broker: Broker) -> None:
    path, _ = broker
    async with asyncio.timeout(20), connect_unix(path) as conn:
        open_streams = [
            asyncio.ensure_future(conn.request("subscriptions/listen", {"notifications": n}))
            for n in ({}, {"promptsListChanged": True})  # nothing the broker serves, still open
        ]
        await conn.request("ping")
        with pytest.raises(LimitExceeded):
            await conn.request(
                "subscriptions/listen", {"notifications": {"toolsListChanged": True}}
            )
        for stream in open_streams:
            stream.cancel()
        await asyncio.gather(*open_streams, return_exceptions=True)
        await conn.request("ping")  # the cancellations reached the broker before this answer
        stream = asyncio.ensure_future(
            conn.request("subscriptions/listen", {"notifications": {"toolsListChanged": True}})
        )
        await conn.request("ping")
        assert not stream.done()  # admitted once the others were gone
        stream.cancel()
