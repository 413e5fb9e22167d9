"""The core's decisions for idempotency keys and delegated calls, without sockets: a keyed call
is admitted with its cache entry, a duplicate joins it or is answered as a replay, a cancelled
one is forgotten; a delegate's call is decided for the remote person and forwarded with it."""

from __future__ import annotations

from typing import Any

import pytest

from kiki_tool_broker.calls import Admitted, Answer, Joining
from kiki_tool_broker.config import BrokerConfig
from kiki_tool_broker.core import BrokerCore
from kiki_tool_broker.policy import Policy, Rule
from kiki_tool_broker.schemas import Catalog
from kikitest.broker_lexicons import ECHO, LEXICONS
from libkiki.errors import InvalidParams, PermissionDenied, Unavailable
from libkiki.peer import PeerCred
from libkiki.principals import Principals, globs
from libkiki.tools import CALLER_META, IDEMPOTENCY_KEY_META, ON_BEHALF_OF_META

pytestmark = pytest.mark.unit

BROKER = PeerCred(pid=1, uid=999, gid=999, app_id="kiki-tool-broker")
PROVIDER = PeerCred(pid=7, uid=1000, gid=1000, app_id="org.example.provider")
CALLER = PeerCred(pid=42, uid=1000, gid=1000)  # the provider's user: allowed by default
RELAY = PeerCred(pid=50, uid=1001, gid=1001)
REPLY = {"structuredContent": {"text": "hi"}, "isError": False}
POLICY = Policy(
    allow=(Rule(Principals.parse(["remote:alice"]), globs([ECHO]), True),),
    provide=(Rule(Principals.parse(["uid:1000"]), globs(["org.example.*"]), True),),
    delegate=(Principals.parse(["uid:1001"]),),
)


@pytest.fixture
def core() -> BrokerCore:
    core = BrokerCore(BrokerConfig(), Catalog.load(), POLICY, own=BROKER)
    core.register(core.provider(PROVIDER), [ECHO], LEXICONS)
    return core


def keyed(
    core: BrokerCore, key: str, text: str = "hi", who: PeerCred = CALLER, **meta: Any
) -> Answer | Admitted | Joining:
    return core.calls.call(
        core.identify(who),
        ECHO,
        {"text": text},
        1,
        None,
        12.5,
        {IDEMPOTENCY_KEY_META: key, **meta},
    )


def test_a_finished_keyed_call_is_replayed_without_its_tool(core: BrokerCore) -> None:
    first = keyed(core, "k")
    assert isinstance(first, Admitted)
    assert first.token is not None
    answer = core.calls.settle(first, REPLY, None)
    assert core.calls.release(first, answer, 13.0) is None  # nobody joined
    again = keyed(core, "k")
    assert isinstance(again, Answer)
    assert (again.outcome, again.counter, again.result) == ("replay", "calls_replay", answer.result)
    other = keyed(core, "k", text="bye")
    assert isinstance(other, Answer)
    assert isinstance(other.error, InvalidParams)
    assert other.error.data["rule"] == "idempotencyKey"
    # Another caller has its own keys.
    assert isinstance(keyed(core, "k", who=PeerCred(pid=9, uid=0, gid=0)), Admitted)


def test_a_duplicate_of_a_running_call_joins_and_gets_its_answer(core: BrokerCore) -> None:
    first = keyed(core, "k")
    joining = keyed(core, "k")
    assert isinstance(first, Admitted)
    assert isinstance(joining, Joining)
    answer = core.calls.settle(first, REPLY, None)
    given = core.calls.release(first, answer, 13.0)
    assert given is answer
    joined = core.calls.joined(joining, given)
    assert (joined.outcome, joined.result, joined.caller) == (
        "replay",
        answer.result,
        answer.caller,
    )


def test_a_cancelled_call_is_forgotten_and_its_duplicates_told_to_retry(core: BrokerCore) -> None:
    first = keyed(core, "k")
    joining = keyed(core, "k")
    assert isinstance(first, Admitted)
    assert isinstance(joining, Joining)
    given = core.calls.release(first, None, 13.0)
    assert given is not None
    joined = core.calls.joined(joining, given)
    assert isinstance(joined.error, Unavailable)
    assert joined.outcome == "cancelled"
    assert isinstance(keyed(core, "k"), Admitted)  # the retry runs


def test_a_delegates_call_is_decided_for_the_person_and_forwarded_with_it(
    core: BrokerCore,
) -> None:
    alice = {"subject": "alice", "session": "s"}
    call = core.calls.call(
        core.identify(RELAY), ECHO, {"text": "x"}, 1, None, 1.0, {ON_BEHALF_OF_META: alice}
    )
    assert isinstance(call, Admitted)
    assert call.params is not None
    assert call.params["_meta"][ON_BEHALF_OF_META] == alice
    assert call.params["_meta"][CALLER_META]["uid"] == 1001
    assert core.calls.settle(call, REPLY, None).on_behalf_of == alice
    bob = core.calls.call(
        core.identify(RELAY),
        ECHO,
        {"text": "x"},
        1,
        None,
        1.0,
        {ON_BEHALF_OF_META: {"subject": "bob"}},
    )
    assert isinstance(bob, Answer)
    assert isinstance(bob.error, PermissionDenied)
    assert bob.on_behalf_of == {"subject": "bob"}
    # The provider's own user may call ECHO for itself, not claim to be someone else.
    claim = core.calls.call(
        core.identify(CALLER), ECHO, {"text": "x"}, 1, None, 1.0, {ON_BEHALF_OF_META: alice}
    )
    assert isinstance(claim, Answer)
    assert isinstance(claim.error, PermissionDenied)
    assert claim.error.data == {"rule": "onBehalfOf"}
    assert (claim.outcome, claim.on_behalf_of) == ("denied", None)
