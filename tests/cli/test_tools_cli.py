"""`kiki tools` against the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from kiki_tool_broker.audit import AuditLog
from kikitest import VENV_BIN, kiki, until
from kikitest.broker_lexicons import ECHO, LEXICONS
from libkiki.audit import read_entries
from libkiki.tools import ToolCall, ToolClient, ToolProvider

pytestmark = pytest.mark.integration


def edit_entry(audit: Path, index: int, key: str, value: Any) -> None:
    """Change one field of the audit log's line ``index`` in place, as an intruder would."""
    lines = audit.read_bytes().splitlines()
    entry = orjson.loads(lines[index])
    entry[key] = value
    lines[index] = orjson.dumps(entry)
    audit.write_bytes(b"\n".join(lines) + b"\n")


def echo_provider(path: Path) -> ToolProvider:
    provider = ToolProvider(path, lexicons=LEXICONS)

    @provider.tool(ECHO)
    async def echo(args: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        return {"text": args["text"]}

    return provider


async def akiki(*args: str) -> tuple[int, str, str]:
    """`kiki` run without blocking the loop (a provider in this process must keep serving)."""
    proc = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "kiki"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_list_call_and_log(broker: tuple[Path, Any], sockdir: Path) -> None:
    path, _ = broker
    sock = ["tools", "--socket", str(path)]
    listed = kiki(*sock, "list")
    assert listed.returncode == 0, listed.stderr
    assert "dev.kiki.service.getInfo" in listed.stdout
    assert "query" in listed.stdout
    # Each tool with who provides it, by its kernel identity (the broker itself, here).
    (info_line,) = [x for x in listed.stdout.splitlines() if "service.getInfo" in x]
    assert f"app:kiki-tool-broker pid {broker[1].pid}" in info_line
    as_json = json.loads(kiki(*sock, "list", "--json").stdout)
    assert any(t["name"] == "dev.kiki.tools.readAuditLog" for t in as_json)
    # The event streams served now follow the tools, kind "stream", with their provider.
    (audit_line,) = [x for x in listed.stdout.splitlines() if "subscribeAudit" in x]
    assert audit_line.split()[1:4] == ["stream", "app:kiki-tool-broker", "pid"]
    assert not any("subscribeAudit" in t["name"] for t in as_json)  # tools only, as before
    streams = kiki(*sock, "streams", "--json")
    assert streams.returncode == 0, streams.stderr
    by_nsid = {s["nsid"]: s for s in json.loads(streams.stdout)}
    assert by_nsid["dev.kiki.tools.subscribeProviders"]["provider"]["pid"] == broker[1].pid
    assert "dev.kiki.tools.subscribeAudit" in kiki(*sock, "streams").stdout

    info = kiki(*sock, "call", "dev.kiki.service.getInfo")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["name"] == "tool-broker"
    paged = kiki(*sock, "call", "dev.kiki.tools.readAuditLog", "limit=1", "verify=true")
    assert paged.returncode == 0, paged.stderr
    assert len(json.loads(paged.stdout)["entries"]) == 1
    from_stdin = kiki(
        *sock, "call", "dev.kiki.tools.readAuditLog", "--json", "-", stdin='{"limit": 2}'
    )
    assert from_stdin.returncode == 0, from_stdin.stderr

    bad = kiki(*sock, "call", "dev.kiki.tools.readAuditLog", "limit=0")
    assert bad.returncode == 1
    assert "input.limit: must be at least 1" in bad.stderr
    unknown = kiki(*sock, "call", "org.example.none")
    assert unknown.returncode == 1
    assert "unknown tool: org.example.none" in unknown.stderr
    malformed = kiki(*sock, "call", "dev.kiki.service.getInfo", "--json", "[1]")
    assert malformed.returncode == 2
    assert "--json must be a JSON object" in malformed.stderr

    log = kiki(*sock, "log", "--verify")
    assert log.returncode == 0, log.stderr
    assert "dev.kiki.service.getInfo ok" in log.stdout
    assert "chain intact" in log.stderr
    # The newest entries, oldest first: read backwards from the end of the log.
    everything = [json.loads(x)["seq"] for x in kiki(*sock, "log", "--json").stdout.splitlines()]
    assert everything == list(range(1, len(everything) + 1))
    last_two = kiki(*sock, "log", "--json", "--limit", "2").stdout.splitlines()
    # (reading the log is a call too: the first read's own line is now the newest)
    assert [json.loads(x)["seq"] for x in last_two] == [everything[-1], everything[-1] + 1]
    # A limit over the log's length shows it all (it once showed limit - length entries).
    count = everything[-1] + 2  # the two reads above are in it too
    beyond = kiki(*sock, "log", "--json", "--limit", str(count + count // 2)).stdout
    assert [json.loads(x)["seq"] for x in beyond.splitlines()] == list(range(1, count + 1))

    # Offline verification of the file spots an edited line.
    audit = sockdir / "state" / "audit.jsonl"
    edit_entry(audit, 0, "outcome", "denied")
    tampered = kiki("tools", "log", "--file", str(audit), "--verify")
    assert tampered.returncode == 1
    assert "line 1: hash mismatch: the entry was edited" in tampered.stderr


def test_broker_not_running(sockdir: Path) -> None:
    result = kiki("tools", "--socket", str(sockdir / "tools.sock"), "list")
    assert result.returncode == 1
    assert "cannot connect to" in result.stderr
    bridge = kiki("mcp", "--socket", str(sockdir / "tools.sock"), stdin="")
    assert bridge.returncode == 1
    assert "cannot reach the tool broker" in bridge.stderr


async def test_call_types_key_value_pairs_by_the_input_schema(broker: tuple[Path, Any]) -> None:
    path, _ = broker
    call = ("tools", "--socket", str(path), "call")
    async with asyncio.timeout(30), echo_provider(path).connect():
        # `text` is a string in the schema: "1" stays "1"; `delay` is an integer.
        code, out, err = await akiki(*call, ECHO, "text=1", "delay=0")
        assert code == 0, err
        assert json.loads(out)["text"] == "1"
        code, out, err = await akiki(*call, ECHO, "text=true")
        assert code == 0, err
        assert json.loads(out)["text"] == "true"
        code, _, err = await akiki(*call, ECHO, "text=x", "delay=soon")
        assert code == 2
        assert "argument 'delay' must be an integer (the tool's input schema), not 'soon'" in err
        code, _, err = await akiki(*call, ECHO, "text=x", "delay=1.5")
        assert code == 2
        assert "argument 'delay' must be an integer" in err
    # A tool the broker does not list: values are read as JSON when they parse, as before.
    code, _, err = await akiki(*call, ECHO, "text=1")
    assert code == 1
    assert f"unknown tool: {ECHO}" in err


def test_call_refuses_malformed_pairs_before_connecting(sockdir: Path) -> None:
    # No broker is running: these are usage errors (status 2), found before any connection.
    call = ("tools", "--socket", str(sockdir / "tools.sock"), "call", "dev.kiki.service.getInfo")
    for args, message in [
        (["text=a", "text=b"], "argument 'text' is given more than once"),
        (["text"], "'text' is not key=value"),
        (["=a"], "'=a' is not key=value"),
        (["a=1", "--json", "{}"], "give the arguments as --json or as key=value pairs, not both"),
    ]:
        result = kiki(*call, *args)
        assert result.returncode == 2, args
        assert result.stderr == f"kiki tools: {message}\n"


def test_list_help_says_it_lists_what_you_may_call() -> None:
    result = kiki("tools", "list", "--help")
    assert result.returncode == 0
    assert "policy lets you" in " ".join(result.stdout.split())
    assert "the tools you may call" in kiki("tools", "--help").stdout


async def test_log_follow_prints_new_calls(broker: tuple[Path, Any], sockdir: Path) -> None:
    path, _ = broker
    audit = sockdir / "state" / "audit.jsonl"
    began = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "kiki"),
        *("tools", "--socket", str(path), "log", "--follow", "--json", "--limit", "0"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None

    def following() -> bool:
        # Its first read of the log is audited once done: from then on it only follows.
        return any(
            e["tool"] == "dev.kiki.tools.readAuditLog" and e["caller"]["pid"] == proc.pid
            for e in read_entries(audit)
        )

    try:
        async with asyncio.timeout(30):
            while not following():  # noqa: ASYNC110 -- written by the broker, another process
                await asyncio.sleep(0.05)
            async with ToolClient(path) as client:
                await client.call("dev.kiki.service.getInfo")
            shown = []
            while True:
                line = await proc.stdout.readline()
                assert line, "kiki tools log --follow stopped"
                entry = orjson.loads(line)
                shown.append(entry)
                if entry["tool"] == "dev.kiki.service.getInfo":
                    break
            # Its own polls are audited, not shown: what it prints is other callers' calls.
            assert [e["tool"] for e in shown] == ["dev.kiki.service.getInfo"]
            assert entry["outcome"] == "ok"
            assert entry["caller"]["pid"] == os.getpid()
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0
        # It follows the broker's audit stream, reading the log once before; when it has to
        # poll (an older broker), each poll is itself a call, so the page it gets is never
        # empty: the follower once took that for "more to read" and polled thousands of times
        # a second, filling the audit log. Either way its own reads stay few (a bound on a
        # rate, with a margin of 5).
        polls = sum(
            e["tool"] == "dev.kiki.tools.readAuditLog" and e["caller"]["pid"] == proc.pid
            for e in read_entries(audit)
        )
        assert polls <= 5 * (time.monotonic() - began + 1), polls
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_log_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    # A chain check ends with a verdict, following never ends: --verify printed nothing under
    # --follow, and exited 0 on Ctrl-C however broken the chain was.
    for where in ((), ("--file", str(tmp_path / "audit.jsonl"))):
        both = kiki("tools", "log", *where, "--follow", "--verify")
        assert (both.returncode, both.stderr.strip()) == (
            2,
            "kiki tools: --verify cannot go with --follow",
        )
    negative = kiki("tools", "log", "--limit", "-3")
    assert negative.returncode == 2
    assert "must be a whole number, 0 or more: '-3'" in negative.stderr
    directory = kiki("tools", "log", "--file", str(tmp_path))
    assert (directory.returncode, directory.stderr.strip()) == (
        1,
        f"kiki tools: {tmp_path}: is a directory",
    )
    missing = kiki("tools", "log", "--file", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"kiki tools: {tmp_path / 'nope.jsonl'}: does not exist"


async def test_log_file_follow_reads_the_file_through_a_rotation(tmp_path: Path) -> None:
    # Following the file costs no audit lines (no broker is asked), and goes on from the new
    # file when the old one is moved away (the README's way to rotate the log).
    log = AuditLog(tmp_path)
    view = {"uid": 1000, "gid": 1000, "pid": 7}

    def call(tool: str) -> None:
        log.append(caller=view, tool=tool, outcome="ok", code=None, duration_us=1, arguments={})

    for n in range(3):
        call(f"org.example.before-{n}")
    proc = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "kiki"),
        *("tools", "log", "--file", str(log.path), "--follow", "--json", "--limit", "5"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    out = proc.stdout

    async def next_tool() -> str:
        line = await out.readline()
        assert line, "kiki tools log --file --follow stopped"
        tool = orjson.loads(line)["tool"]
        assert isinstance(tool, str)
        return tool

    try:
        async with asyncio.timeout(30):
            for n in range(3):  # the newest 5 of 3: all of them, then new ones
                assert await next_tool() == f"org.example.before-{n}"
            call("org.example.first")
            assert await next_tool() == "org.example.first"
            # It has read all there is, and waits before it looks again.
            await until(lambda: read_to_the_end(proc.pid, log.path), "the follower at the end")
            call("org.example.just-before-the-move")  # then moved at once: not read yet
            log.close()
            log.path.rename(tmp_path / "audit.jsonl.1")
            log.head_path.rename(tmp_path / "audit.head.1")
            log = AuditLog(tmp_path)
            call("org.example.after-rotation")
            assert await next_tool() == "org.example.just-before-the-move"
            assert await next_tool() == "org.example.after-rotation"
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0
    finally:
        log.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def read_to_the_end(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open with its offset at the file's end."""
    size = path.stat().st_size
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if fd.resolve() == path.resolve():
                info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
                if int(info.split()[1]) == size:
                    return True
    return False


def test_log_verify_asks_the_running_broker(broker: tuple[Path, Any], sockdir: Path) -> None:
    path, _ = broker
    sock = ("tools", "--socket", str(path))
    for _ in range(3):
        assert kiki(*sock, "call", "dev.kiki.service.getInfo").returncode == 0
    audit = sockdir / "state" / "audit.jsonl"
    edit_entry(audit, 1, "tool", "org.example.other")
    tampered = kiki(*sock, "log", "--verify")
    assert tampered.returncode == 1
    assert "audit log: line 2: hash mismatch: the entry was edited" in tampered.stderr
    assert "chain intact" not in tampered.stderr
