"""How the broker settles a forwarded call, in process: the audit line, then the answer."""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from kiki_tool_broker.audit import AuditLog
from kiki_tool_broker.policy import Policy
from kiki_tool_broker.registry import Provider, Tool
from kiki_tool_broker.schemas import Catalog
from kiki_tool_broker.server import Broker, BrokerConfig
from kikitest.broker_lexicons import ECHO, LEXICONS
from libkiki.audit import read_entries
from libkiki.errors import PeerGone, Timeout, error_for_code
from libkiki.peer import PeerCred
from libkiki.service import ServiceContext

pytestmark = pytest.mark.unit

VIEW = {"uid": 1000, "gid": 1000, "pid": 42}


def full_disk(directory: Path) -> AuditLog:
    """An audit log whose writes fail as on a full disk: its file is /dev/full."""
    audit = AuditLog(directory)
    os.close(audit._fd)
    audit._fd = os.open("/dev/full", os.O_WRONLY)
    return audit


def broker_and_tool(audit: AuditLog) -> tuple[Broker, Tool]:
    catalog = Catalog.load()
    ctx = cast(ServiceContext, SimpleNamespace(counters=Counter(), version="0"))
    broker = Broker(ctx, BrokerConfig(), catalog, Policy(), audit)
    provider = Provider("org.example.provider", PeerCred(pid=7, uid=1000, gid=1000))
    catalog.add_documents(LEXICONS, owner=provider.id)
    return broker, broker._tool(ECHO, provider)


async def settle(audit: AuditLog, outcome: Any) -> asyncio.Future[dict[str, Any]]:
    """Settle a forwarded ECHO call whose provider side ended in ``outcome`` (a reply, an
    exception, or None for cancelled); return the caller's answer."""
    broker, tool = broker_and_tool(audit)
    loop = asyncio.get_running_loop()
    sent: asyncio.Future[Any] = loop.create_future()
    if outcome is None:
        sent.cancel()
    elif isinstance(outcome, BaseException):
        sent.set_exception(outcome)
    else:
        sent.set_result(outcome)
    answer: asyncio.Future[dict[str, Any]] = loop.create_future()
    schema = broker.catalog.tool(ECHO)
    settle = functools.partial(broker._settle, tool, schema, None, 1 << 20)
    broker._call_done(answer, tool.nsid, settle, {"text": "x"}, VIEW, time.monotonic(), sent)
    return answer


async def test_the_answer_follows_its_audit_line(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path)
    answer = await settle(audit, {"structuredContent": {"text": "x"}, "isError": False})
    assert answer.result()["structuredContent"] == {"text": "x"}
    gone = await settle(audit, PeerGone("the peer left"))
    with pytest.raises(PeerGone, match=r"org\.example\.provider, which provides"):
        gone.result()
    cancelled = await settle(audit, None)
    assert not cancelled.done()  # nobody is waiting for it: the caller cancelled or left
    outcomes = [e["outcome"] for e in read_entries(audit.path)]
    assert outcomes == ["ok", "provider-gone", "cancelled"]


async def test_a_timeout_or_gone_peer_the_provider_reports_is_its_tool_error(
    tmp_path: Path,
) -> None:
    # A provider whose own downstream call timed out answers -32006: that is its tool's
    # failure, not the broker's timer running out on the provider (nor the provider leaving).
    audit = AuditLog(tmp_path)
    for code, message in ((-32006, "the media daemon did not answer"), (-32011, "it left")):
        answer = await settle(audit, error_for_code(code, message))
        result = answer.result()
        assert result["isError"] is True
        assert result["content"][0]["text"] == message
    mine = await settle(audit, Timeout("no answer in time"))  # this end's own timer
    with pytest.raises(Timeout, match=r"did not answer org\.example\.test\.echo within"):
        mine.result()
    outcomes = [(e["outcome"], e.get("code")) for e in read_entries(audit.path)]
    assert outcomes == [("error", -32006), ("error", -32011), ("timeout", -32006)]


@pytest.mark.parametrize(
    "outcome", [{"structuredContent": {"text": "x"}}, PeerGone("the peer left")]
)
async def test_an_audit_line_that_cannot_be_written_still_answers_the_caller(
    tmp_path: Path, outcome: Any
) -> None:
    audit = full_disk(tmp_path)
    answer = await settle(audit, outcome)
    with pytest.raises(OSError, match="No space left"):  # answered -32603, and logged
        answer.result()
    audit.close()
