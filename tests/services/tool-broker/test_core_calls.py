"""The broker's decisions on a tools/call, without sockets: refused at once, or admitted for
its tool to answer; then settled from the tool's reply. Each answer with its audit line."""

from __future__ import annotations

from typing import Any

import pytest

from kiki_tool_broker.calls import Admitted, Answer, Joining
from kiki_tool_broker.config import BrokerConfig
from kiki_tool_broker.core import BrokerCore
from kiki_tool_broker.policy import Policy, Rule
from kiki_tool_broker.schemas import Catalog
from kiki_tool_broker.tools import GET_INFO_TOOL, LIST_PROVIDERS
from kikitest.broker_lexicons import BAD_OUTPUT, COUNT, ECHO, LEXICONS, procedure
from libkiki.errors import (
    InvalidParams,
    LimitExceeded,
    NotFound,
    PeerGone,
    PermissionDenied,
    Timeout,
    error_for_code,
)
from libkiki.peer import PeerCred
from libkiki.principals import Principals, globs
from libkiki.tools import CALLER_META, ERROR_DATA_META

pytestmark = pytest.mark.unit

BROKER = PeerCred(pid=1, uid=999, gid=999, app_id="kiki-tool-broker")
PROVIDER = PeerCred(pid=7, uid=1000, gid=1000, app_id="org.example.provider")
CALLER = PeerCred(pid=42, uid=1000, gid=1000, groups=frozenset({27, 4}), app_user=1000)
STRANGER = PeerCred(pid=43, uid=1001, gid=1001)
STARTED = 12.5  # the server's clock when the call came in: carried into the audit line
BIG = "org.example.test.big"  # any text out
BIG_LEXICON = procedure(BIG, {}, {"text": {"type": "string"}}, [])
# The test tools' provider may provide them.
POLICY = Policy(provide=(Rule(Principals.parse(["uid:1000"]), globs(["org.example.*"]), True),))


def make_core(**config: Any) -> BrokerCore:
    catalog = Catalog.load()
    core = BrokerCore(BrokerConfig(**config), catalog, POLICY, own=BROKER)
    core.register_own([GET_INFO_TOOL, LIST_PROVIDERS])
    provider = core.provider(PROVIDER)
    core.register(provider, [ECHO, COUNT, BAD_OUTPUT, BIG], [*LEXICONS, BIG_LEXICON])
    return core


@pytest.fixture
def core() -> BrokerCore:
    return make_core(call_timeout=2)


def call(
    core: BrokerCore,
    name: object,
    arguments: object = None,
    who: PeerCred = CALLER,
    rid: int | str = 1,
    modern: dict[str, Any] | None = None,
) -> Answer | Admitted:
    step = core.calls.call(core.identify(who), name, arguments, rid, modern, STARTED)
    assert not isinstance(step, Joining)  # only a call with an idempotency key joins
    return step


def admitted(core: BrokerCore, name: str, arguments: object = None, **kw: Any) -> Admitted:
    step = call(core, name, arguments, **kw)
    assert isinstance(step, Admitted), step
    return step


def refused(core: BrokerCore, name: object, arguments: object = None, **kw: Any) -> Answer:
    step = call(core, name, arguments, **kw)
    assert isinstance(step, Answer), step
    assert step.result is None
    return step


# -- admission ---------------------------------------------------------------------------------


def test_a_call_for_a_provider_is_forwarded_with_the_callers_kernel_identity(
    core: BrokerCore,
) -> None:
    step = admitted(core, ECHO, {"text": "hi"})
    assert step.tool.provider.cred == PROVIDER
    caller = step.params["_meta"][CALLER_META] if step.params else None
    assert step.params == {
        "name": ECHO,
        "arguments": {"text": "hi"},
        "_meta": {CALLER_META: caller},
    }
    # What the provider needs to match principals as the broker does: groups, whose app it is.
    assert caller == {"uid": 1000, "gid": 1000, "pid": 42, "groups": [4, 27], "appUser": 1000}
    assert step.caller == {"uid": 1000, "gid": 1000, "pid": 42}  # the audit's view
    assert step.started == STARTED


def test_a_call_of_the_brokers_own_tool_is_run_by_the_broker(core: BrokerCore) -> None:
    step = admitted(core, GET_INFO_TOOL, who=BROKER)
    assert step.params is None
    assert step.arguments == {}  # no arguments: an empty object


def test_the_room_for_the_output_leaves_out_the_callers_id(core: BrokerCore) -> None:
    line = core.config.max_line
    assert admitted(core, ECHO, {"text": "x"}, rid=7).room == line - 24
    assert admitted(core, ECHO, {"text": "x"}, rid="abc").room == line - len('"abc"')


@pytest.mark.parametrize(
    ("name", "arguments", "error", "message", "provider"),
    [
        (None, {}, InvalidParams, "name must be a string", False),
        ("org.example.none", {}, InvalidParams, "unknown tool: org.example.none", False),
        (ECHO, ["hi"], InvalidParams, "arguments must be an object", True),
        (ECHO, {"text": "x" * 17}, InvalidParams, "input.text: must be at most 16", True),
        (ECHO, {}, InvalidParams, "input.text: is required", True),
    ],
)
def test_a_refused_call_is_answered_at_once_with_its_audit_line(
    core: BrokerCore,
    name: object,
    arguments: object,
    error: type[Exception],
    message: str,
    provider: bool,
) -> None:
    answer = refused(core, name, arguments)
    assert isinstance(answer.error, error)
    assert message in str(answer.error)
    record = answer
    assert (record.outcome, record.code, record.counter) == ("invalid", -32602, "calls_invalid")
    assert record.tool == str(name)
    assert record.arguments == arguments
    assert record.caller == {"uid": 1000, "gid": 1000, "pid": 42}
    # Who was to answer, once the tool is known.
    assert (record.provider is not None) is provider
    assert record.started == STARTED


def test_a_caller_the_policy_refuses_is_denied_and_named(core: BrokerCore) -> None:
    answer = refused(core, ECHO, {"text": "hi"}, who=STRANGER)
    assert isinstance(answer.error, PermissionDenied)
    assert str(answer.error).startswith(f"uid=1001 pid=43 may not call {ECHO}: procedures need")
    assert (answer.outcome, answer.code) == ("denied", -32003)
    assert answer.provider is not None
    assert answer.provider["identity"] == "app:org.example.provider"


# -- settling a provider's reply ---------------------------------------------------------------


def test_a_providers_output_is_checked_and_answered_twice(core: BrokerCore) -> None:
    step = admitted(core, ECHO, {"text": "hi"})
    answer = core.calls.settle(step, {"structuredContent": {"text": "hi"}, "isError": False}, None)
    assert answer.error is None
    assert answer.result == {
        "content": [{"type": "text", "text": '{"text":"hi"}'}],
        "structuredContent": {"text": "hi"},
        "isError": False,
    }
    record = answer
    assert (record.outcome, record.code, record.tool) == ("ok", None, ECHO)
    assert record.provider == step.tool.provider.view
    assert record.arguments == {"text": "hi"}


def test_a_modern_call_is_answered_with_the_result_meta(core: BrokerCore) -> None:
    modern = {"io.modelcontextprotocol/serverInfo": {"name": "kiki-tool-broker"}}
    step = admitted(core, ECHO, {"text": "hi"}, modern=modern)
    answer = core.calls.settle(step, {"structuredContent": {"text": "hi"}}, None)
    assert answer.result is not None
    assert answer.result["_meta"] == modern
    assert answer.result["resultType"] == "complete"


@pytest.mark.parametrize(
    ("reply", "text", "code", "data"),
    [
        ("nonsense", "answered org.example.test.echo with a malformed result", -32603, None),
        ({"isError": True}, "org.example.test.echo failed", None, None),
        (
            {
                "isError": True,
                "content": [{"type": "text", "text": "no"}],
                "_meta": {ERROR_DATA_META: {"why": 1}},
            },
            "no",
            None,
            {"why": 1},
        ),
        # An MCP server's own failure detail, where it put it.
        ({"isError": True, "structuredContent": {"why": 2}}, "failed", None, {"why": 2}),
        ({"structuredContent": {"text": 5}}, "output broke its lexicon", -32602, "path"),
    ],
)
def test_a_failed_or_malformed_reply_is_a_tool_error(
    core: BrokerCore, reply: Any, text: str, code: int | None, data: Any
) -> None:
    answer = core.calls.settle(admitted(core, ECHO, {"text": "hi"}), reply, None)
    assert answer.error is None
    result = answer.result
    assert result is not None
    assert result["isError"] is True
    assert "structuredContent" not in result  # MCP: it would have to match the outputSchema
    assert text in result["content"][0]["text"]
    got = result.get("_meta", {}).get(ERROR_DATA_META)
    if data == "path":
        assert got["path"] == "output.text"
    else:
        assert got == data
    assert (answer.outcome, answer.code) == ("error", code)


def test_an_output_that_does_not_fit_an_answer_is_a_tool_error() -> None:
    small = make_core(max_line=8192)
    step = admitted(small, BIG)
    fits = small.calls.settle(step, {"structuredContent": {"text": "x" * 1000}}, None)
    assert fits.outcome == "ok"
    answer = small.calls.settle(step, {"structuredContent": {"text": "x" * 3000}}, None)
    assert answer.result is not None
    assert answer.result["isError"] is True
    assert answer.result["_meta"][ERROR_DATA_META] == {"size": 3011, "room": 8192 - 24}
    assert (answer.outcome, answer.code) == ("error", LimitExceeded.jsonrpc_code)


def test_the_brokers_own_timer_and_the_provider_leaving_are_the_calls_errors(
    core: BrokerCore,
) -> None:
    step = admitted(core, ECHO, {"text": "hi"})
    late = core.calls.settle(step, None, Timeout("no answer in time"))
    assert isinstance(late.error, Timeout)
    assert str(late.error) == (
        "org.example.provider did not answer org.example.test.echo within 2s; "
        "the call was cancelled"
    )
    assert (late.outcome, late.code, late.counter) == (
        "timeout",
        -32006,
        "calls_timeout",
    )
    gone = core.calls.settle(step, None, PeerGone("the peer left"))
    assert isinstance(gone.error, PeerGone)
    assert "org.example.provider, which provides org.example.test.echo" in str(gone.error)
    assert (gone.outcome, gone.code) == ("provider-gone", -32011)


@pytest.mark.parametrize("code", [-32006, -32011, -32003])
def test_an_error_the_provider_answers_is_its_tool_error(core: BrokerCore, code: int) -> None:
    # A provider whose own downstream call timed out answers -32006: that is its tool's
    # failure, not the broker's timer running out on the provider (nor the provider leaving).
    step = admitted(core, ECHO, {"text": "hi"})
    answer = core.calls.settle(step, None, error_for_code(code, "the media daemon did not answer"))
    assert answer.error is None
    assert answer.result is not None
    assert answer.result["isError"] is True
    assert answer.result["content"][0]["text"] == "the media daemon did not answer"
    assert (answer.outcome, answer.code) == ("error", code)


def test_anything_else_a_call_ends_in_is_an_internal_error(core: BrokerCore) -> None:
    bug = RuntimeError("a bug")
    answer = core.calls.settle(admitted(core, ECHO, {"text": "hi"}), None, bug)
    assert answer.error is bug
    assert (answer.outcome, answer.code) == ("internal-error", -32603)
    assert answer.counter == "calls_internal-error"


def test_a_cancelled_call_is_audited_with_nobody_to_answer(core: BrokerCore) -> None:
    step = admitted(core, ECHO, {"text": "hi"})
    record = core.calls.cancelled(step)
    assert (record.outcome, record.code, record.tool) == ("cancelled", None, ECHO)
    assert record.provider == step.tool.provider.view


# -- settling the broker's own tools -----------------------------------------------------------


def test_what_an_own_tool_could_not_find_is_a_tool_error(core: BrokerCore) -> None:
    step = admitted(core, LIST_PROVIDERS, who=BROKER)
    answer = core.calls.settle(step, None, NotFound("no such page", data={"page": 3}))
    assert answer.result is not None
    assert answer.result["isError"] is True
    assert answer.result["_meta"][ERROR_DATA_META] == {"page": 3}
    assert (answer.outcome, answer.code) == ("error", NotFound.jsonrpc_code)


def test_anything_else_an_own_tool_raises_is_the_calls_error(core: BrokerCore) -> None:
    step = admitted(core, LIST_PROVIDERS, who=BROKER)
    busy = LimitExceeded("being verified")
    answer = core.calls.settle(step, None, busy)
    assert answer.error is busy
    assert (answer.outcome, answer.code) == ("error", -32005)


def test_an_own_tools_output_is_checked_as_a_providers_is(core: BrokerCore) -> None:
    step = admitted(core, LIST_PROVIDERS, who=BROKER)
    ok = core.calls.settle(step, {"providers": []}, None)
    assert ok.result is not None
    assert ok.result["structuredContent"] == {"providers": []}
    assert ok.outcome == "ok"
    broken = core.calls.settle(step, {"providers": 1}, None)
    assert broken.result is not None
    assert broken.result["isError"] is True
    assert broken.outcome == "error"
