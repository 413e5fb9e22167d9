"""The broker's event-stream fan-out (``kiki_tool_broker.streams``), as pure state: shared
upstreams, per-subscriber sequence numbers, bounded queues that drop the oldest and say how
many, providers going and coming back, limits, audit events."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiki_tool_broker.policy import Caller
from kiki_tool_broker.streams import (
    Action,
    Audit,
    CloseUpstream,
    Ended,
    Item,
    Lost,
    Message,
    OpenUpstream,
    Readable,
    Rejected,
    Status,
    StreamFanout,
)
from kiki_tool_broker.subscribing import Subscriber
from libkiki.errors import (
    Conflict,
    InvalidParams,
    LimitExceeded,
    NotFound,
    ValidationError,
)
from libkiki.peer import PeerCred

pytestmark = pytest.mark.unit

A = "org.example.subscribeA"
B = "org.example.subscribeB"
PROVIDER = 100
OTHER_PROVIDER = 101


def only(actions: list[Action], kind: type[Any]) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def opened(actions: list[Action]) -> OpenUpstream:
    [action] = only(actions, OpenUpstream)
    assert isinstance(action, OpenUpstream)
    return action


def live_fanout(**limits: Any) -> tuple[StreamFanout, int, int]:
    """A fanout with PROVIDER serving A, client 1 subscribed to A (live); -> (fanout, sub, up)."""
    fan = StreamFanout(**limits)
    fan.declare(PROVIDER, [A])
    sub, actions = fan.subscribe(1, A, {})
    up = opened(actions).upstream
    fan.upstream_opened(up)
    fan.drain(sub.sub)  # the "live" status
    return fan, sub.sub, up


def seqs(items: list[Item]) -> list[int]:
    return [i.seq for i in items if isinstance(i, Message)]


def test_equal_params_share_one_upstream_and_other_params_get_their_own() -> None:
    fan = StreamFanout()
    assert fan.declare(PROVIDER, [A]) == []
    first, actions = fan.subscribe(1, A, {"x": 1, "y": [1, 2]})
    assert first.state == "opening"
    up = opened(actions)
    assert (up.provider, up.nsid, up.params) == (PROVIDER, A, {"x": 1, "y": [1, 2]})
    second, actions = fan.subscribe(2, A, {"y": [1, 2], "x": 1})  # same params, other order
    assert only(actions, OpenUpstream) == []
    third, actions = fan.subscribe(2, A, {"x": 2})
    assert opened(actions).upstream != up.upstream
    assert len(fan.upstreams()) == fan.upstream_count() == 2
    assert len(fan.subscriptions()) == fan.subscription_count() == 3

    fan.upstream_opened(up.upstream)
    fan.drain(first.sub)
    fan.drain(second.sub)
    fan.publish(PROVIDER, up.upstream, {"n": 1})
    fan.publish(PROVIDER, up.upstream, {"n": 2})
    for sub in (first.sub, second.sub):
        assert fan.drain(sub) == [Message(sub, 1, {"n": 1}), Message(sub, 2, {"n": 2})]
    assert fan.drain(third.sub) == []


def test_the_last_subscriber_leaving_closes_the_upstream() -> None:
    fan, sub, up = live_fanout()
    other, actions = fan.subscribe(2, A, {})
    assert other.state == "live"
    assert fan.unsubscribe(2, other.sub) == [
        Audit("unsubscribe", 2, other.sub, A, {}, "unsubscribed")
    ]
    with pytest.raises(NotFound):
        fan.unsubscribe(2, sub)  # not its subscription
    actions = fan.unsubscribe(1, sub)
    assert CloseUpstream(up, PROVIDER) in actions
    assert fan.upstreams() == {}
    assert fan.topic_count() == 0
    assert fan.subscriptions() == []
    assert fan.upstream_count() == fan.subscription_count() == 0
    assert fan.publish(PROVIDER, up, {"n": 1}) == []  # late, from before the close
    assert fan.counters["stale"] == 1


def test_a_slow_subscriber_loses_the_oldest_and_is_told_how_many() -> None:
    fan, slow, up = live_fanout(max_queue_messages=3)
    fast, _ = fan.subscribe(2, A, {})
    got_fast: list[Item] = []
    for n in range(1, 11):
        fan.publish(PROVIDER, up, {"n": n})
        got_fast += fan.drain(fast.sub)
        assert fan.stats(slow).messages <= 3
    assert seqs(got_fast) == list(range(1, 11))  # the other one is not affected
    assert fan.drain(slow) == [
        Lost(slow, 7),
        Message(slow, 8, {"n": 8}),
        Message(slow, 9, {"n": 9}),
        Message(slow, 10, {"n": 10}),
    ]
    assert fan.counters["lost"] == 7


def test_the_queues_are_bounded_in_bytes_and_a_message_over_the_bound_is_rejected() -> None:
    fan, sub, up = live_fanout(max_queue_bytes=100)
    for n in range(10):
        fan.publish(PROVIDER, up, {"n": n}, size=30)
        assert fan.stats(sub).bytes <= 100
    assert fan.counters["lost"] == 7
    fan.drain(sub)
    big = fan.publish(PROVIDER, up, {"n": 0}, size=101)
    [rejected] = only(big, Rejected)
    assert isinstance(rejected.error, LimitExceeded)
    assert rejected.error.data == {"limit": 100, "size": 101}
    assert fan.drain(sub) == []


def test_readable_is_said_once_until_the_queue_is_drained() -> None:
    fan, sub, up = live_fanout()
    assert only(fan.publish(PROVIDER, up, {"n": 1}), Readable) == [Readable(1, sub)]
    assert only(fan.publish(PROVIDER, up, {"n": 2}), Readable) == []
    fan.drain(sub)
    assert only(fan.publish(PROVIDER, up, {"n": 3}), Readable) == [Readable(1, sub)]


def test_a_message_breaking_its_lexicon_is_rejected_and_reaches_nobody() -> None:
    def validate(nsid: str, message: Any) -> None:
        assert nsid == A
        if "n" not in message:
            raise ValidationError("message", "n is required")

    fan, sub, up = live_fanout(validate=validate)
    [rejected] = fan.publish(PROVIDER, up, {"m": 1})
    assert isinstance(rejected, Rejected)
    assert (rejected.upstream, rejected.provider) == (up, PROVIDER)
    assert isinstance(rejected.error, ValidationError)
    fan.publish(PROVIDER, up, {"n": 1})
    assert fan.drain(sub) == [Message(sub, 1, {"n": 1})]  # the rejected one took no seq
    assert fan.counters["rejected"] == 1
    assert fan.publish(OTHER_PROVIDER, up, {"n": 2}) == []  # not that provider's upstream


def test_a_provider_going_away_leaves_subscribers_waiting_until_one_comes_back() -> None:
    fan, sub, up = live_fanout()
    fan.publish(PROVIDER, up, {"n": 1})
    actions = fan.provider_gone(PROVIDER)
    assert only(actions, CloseUpstream) == []  # nobody left to tell
    assert fan.drain(sub) == [
        Message(sub, 1, {"n": 1}),
        Status(sub, "waiting", "providerGone", 1),
    ]
    assert fan.upstreams() == {}
    assert fan.publish(PROVIDER, up, {"n": 2}) == []

    again = opened(fan.declare(OTHER_PROVIDER, [A]))
    assert (again.provider, again.nsid) == (OTHER_PROVIDER, A)
    assert again.upstream != up
    assert fan.drain(sub) == []  # still waiting until the provider accepts
    assert fan.upstream_opened(again.upstream) == [Readable(1, sub)]
    fan.publish(OTHER_PROVIDER, again.upstream, {"n": 3})
    assert fan.drain(sub) == [Status(sub, "live", None, 0), Message(sub, 2, {"n": 3})]


def test_a_subscriber_that_did_not_read_meanwhile_learns_of_the_interruption() -> None:
    fan, sub, _ = live_fanout()
    fan.provider_gone(PROVIDER)
    fan.upstream_opened(opened(fan.declare(PROVIDER, [A])).upstream)
    fan.provider_gone(PROVIDER)
    fan.upstream_opened(opened(fan.declare(PROVIDER, [A])).upstream)
    assert fan.drain(sub) == [Status(sub, "live", "providerGone", 2)]


def test_losses_next_to_an_interruption_make_one_gap() -> None:
    fan, sub, up = live_fanout(max_queue_messages=3)
    fan.publish(PROVIDER, up, {"n": 1})
    fan.provider_gone(PROVIDER)
    up = opened(fan.declare(PROVIDER, [A])).upstream
    fan.upstream_opened(up)
    for n in range(2, 6):
        fan.publish(PROVIDER, up, {"n": n})
    assert fan.stats(sub).items == 4  # one gap, three messages
    assert fan.drain(sub) == [
        Lost(sub, 2),
        Status(sub, "live", "providerGone", 1),
        Message(sub, 3, {"n": 3}),
        Message(sub, 4, {"n": 4}),
        Message(sub, 5, {"n": 5}),
    ]


def test_a_flapping_provider_never_grows_a_queue_nobody_reads() -> None:
    fan, sub, up = live_fanout(max_queue_messages=4)
    for n in range(500):
        fan.publish(PROVIDER, up, {"n": n})
        fan.provider_gone(PROVIDER)
        up = opened(fan.declare(PROVIDER, [A])).upstream
        fan.upstream_opened(up)
        stats = fan.stats(sub)
        assert stats.messages <= 4
        assert stats.items <= 2 * 4 + 1
    items = fan.drain(sub)
    assert sum(i.count for i in items if isinstance(i, Lost)) == 496
    assert seqs(items) == [497, 498, 499, 500]


def test_a_message_before_the_provider_answers_counts_as_accepted() -> None:
    fan = StreamFanout()
    fan.declare(PROVIDER, [A])
    sub, actions = fan.subscribe(1, A)
    up = opened(actions).upstream
    fan.publish(PROVIDER, up, {"n": 1})
    assert fan.drain(sub.sub) == [Status(sub.sub, "live", None, 0), Message(sub.sub, 1, {"n": 1})]
    assert fan.upstream_opened(up) == []


def test_declaring_is_all_or_nothing() -> None:
    fan = StreamFanout()
    fan.declare(PROVIDER, [A])
    sub, _ = fan.subscribe(1, B)
    assert sub.state == "waiting"
    with pytest.raises(Conflict) as err:
        fan.declare(OTHER_PROVIDER, [B, A])
    assert err.value.data == {"nsids": [A]}
    assert fan.upstreams() == {}  # B was not taken either
    with pytest.raises(Conflict):
        fan.declare(PROVIDER, [A])  # twice by the same provider, as tools
    assert opened(fan.declare(OTHER_PROVIDER, [B])).nsid == B


def test_withdrawing_closes_the_upstreams_and_leaves_subscribers_waiting() -> None:
    fan, sub, up = live_fanout()
    with pytest.raises(NotFound):
        fan.withdraw(OTHER_PROVIDER, [A])
    actions = fan.withdraw(PROVIDER, [A])
    assert CloseUpstream(up, PROVIDER) in actions
    assert fan.drain(sub) == [Status(sub, "waiting", "providerWithdrew", 1)]
    assert fan.subscribe(2, A)[0].state == "waiting"


def test_a_refused_upstream_ends_its_subscribers() -> None:
    fan = StreamFanout()
    fan.declare(PROVIDER, [A])
    first, actions = fan.subscribe(1, A, {"appId": "x"})
    up = opened(actions).upstream
    second, _ = fan.subscribe(2, A, {"appId": "x"})
    actions = fan.upstream_failed(up, "no such app")
    assert only(actions, CloseUpstream) == []  # it refused: nothing to close
    audits = only(actions, Audit)
    assert {(a.sub, a.reason) for a in audits} == {(first.sub, "refused"), (second.sub, "refused")}
    assert fan.drain(first.sub) == [Ended(first.sub, "refused", "no such app")]
    assert fan.subscriptions(1) == []  # forgotten once its end is drained
    assert fan.subscriptions(2) == [second.sub]  # not yet drained
    assert fan.unsubscribe(2, second.sub) == []  # its end is audited already
    assert fan.subscribe(1, A, {"appId": "x"})[1][0] == OpenUpstream(2, PROVIDER, A, {"appId": "x"})


def test_the_provider_ending_a_stream_ends_it_after_what_is_queued() -> None:
    fan, sub, up = live_fanout()
    fan.publish(PROVIDER, up, {"n": 1})
    fan.upstream_ended(up, "app quit")
    assert fan.drain(sub) == [Message(sub, 1, {"n": 1}), Ended(sub, "providerEnded", "app quit")]
    assert fan.topic_count() == 0


def test_the_broker_ending_a_subscription_is_audited_and_queued_last() -> None:
    fan, sub, up = live_fanout()
    fan.publish(PROVIDER, up, {"n": 1})
    actions = fan.end(sub, "denied")
    assert Audit("unsubscribe", 1, sub, A, {}, "denied") in actions
    assert CloseUpstream(up, PROVIDER) in actions
    assert fan.end(sub, "shutdown") == []
    assert fan.publish(PROVIDER, up, {"n": 2}) == []
    assert fan.drain(sub) == [Message(sub, 1, {"n": 1}), Ended(sub, "denied")]


def test_a_connection_closing_releases_everything_it_held() -> None:
    fan, sub, _up = live_fanout()
    other, actions = fan.subscribe(1, A, {"x": 1})
    other_up = opened(actions).upstream
    keep, _ = fan.subscribe(2, A, {})
    actions = fan.connection_closed(1)
    assert {a.sub for a in only(actions, Audit)} == {sub, other.sub}
    assert {a.reason for a in only(actions, Audit)} == {"closed"}
    assert only(actions, CloseUpstream) == [CloseUpstream(other_up, PROVIDER)]
    assert fan.subscriptions() == [keep.sub]
    assert fan.drain(sub) == []


def test_subscribe_is_audited_with_canonical_params() -> None:
    fan = StreamFanout()
    who = Subscriber(Caller(PeerCred(10, 1000, 1000)), {"uid": 1000}, None)
    sub, actions = fan.subscribe(7, A, {"b": 1, "a": 2}, caller=who)
    assert actions == [Audit("subscribe", 7, sub.sub, A, {"a": 2, "b": 1}, caller=who)]
    assert fan.connection_closed(7) == [
        Audit("unsubscribe", 7, sub.sub, A, {"a": 2, "b": 1}, "closed", who)
    ]
    with pytest.raises(InvalidParams):
        fan.subscribe(7, A, ["not", "an", "object"])  # type: ignore[arg-type]
    with pytest.raises(InvalidParams):
        fan.subscribe(7, A, {"x": object()})


def test_limits_on_subscriptions() -> None:
    fan = StreamFanout(max_subscriptions=3, max_per_connection=2)
    fan.subscribe(1, A)
    fan.subscribe(1, A)
    with pytest.raises(LimitExceeded) as err:
        fan.subscribe(1, B)
    assert err.value.data == {"limit": 2}
    fan.subscribe(2, A)
    with pytest.raises(LimitExceeded) as err:
        fan.subscribe(3, A)
    assert err.value.data == {"limit": 3}
    with pytest.raises(ValueError, match="positive"):
        StreamFanout(max_queue_messages=0)


def test_many_subscribe_unsubscribe_cycles_leave_nothing_behind() -> None:
    fan = StreamFanout()
    fan.declare(PROVIDER, [A])
    for n in range(10_000):
        sub, actions = fan.subscribe(n % 7, A, {"n": n % 3})
        up = opened(actions).upstream
        fan.publish(PROVIDER, up, {"n": n})
        assert CloseUpstream(up, PROVIDER) in fan.unsubscribe(n % 7, sub.sub)
    assert (fan.subscriptions(), fan.upstreams(), fan.topic_count()) == ([], {}, 0)
    assert all(fan.subscriptions(c) == [] for c in range(7))


# -- the property: any interleaving ------------------------------------------------------------

NSIDS = (A, B)
PARAMS: tuple[dict[str, Any], ...] = ({}, {"x": 1})
MAX_MESSAGES = 3
MAX_BYTES = 150


@dataclass
class Watch:
    """What the test knows of one subscription, independently of the fanout."""

    conn: int
    topic: tuple[str, str]
    attached: bool = True  # still offered its topic's messages
    published: int = 0  # messages published to its topic while attached
    received: int = 0
    lost: int = 0
    last_seq: int = 0
    ended: bool = False
    state: str = ""  # as it was last told: subscribe's answer, then each Status
    audits: list[str] = field(default_factory=list)


def topic_of(nsid: str, params: dict[str, Any]) -> tuple[str, str]:
    return nsid, json.dumps(params, sort_keys=True)


ops = st.one_of(
    st.tuples(st.just("subscribe"), st.integers(1, 3), st.sampled_from(NSIDS), st.integers(0, 1)),
    st.tuples(st.just("unsubscribe"), st.integers(0, 50)),
    st.tuples(
        st.just("publish"),
        st.integers(0, 50),
        st.lists(st.tuples(st.sampled_from([0, 1, 30, 90]), st.booleans()), min_size=1, max_size=8),
    ),
    st.tuples(st.just("bounce"), st.sampled_from([PROVIDER, OTHER_PROVIDER]), st.booleans()),
    st.tuples(st.just("drain"), st.integers(0, 50), st.sampled_from([None, 0, 1, 2])),
    st.tuples(st.just("gone"), st.sampled_from([PROVIDER, OTHER_PROVIDER])),
    st.tuples(
        st.just("declare"), st.sampled_from([PROVIDER, OTHER_PROVIDER]), st.sampled_from(NSIDS)
    ),
    st.tuples(st.just("ack"), st.integers(0, 50), st.booleans()),
    st.tuples(st.just("end"), st.integers(0, 50)),
    st.tuples(st.just("close"), st.integers(1, 3)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(ops, max_size=80))
def test_fan_out_property(script: list[tuple[Any, ...]]) -> None:
    def validate(nsid: str, message: Any) -> None:
        if message.get("bad"):
            raise ValidationError("message", "bad")

    fan = StreamFanout(
        validate=validate, max_queue_messages=MAX_MESSAGES, max_queue_bytes=MAX_BYTES
    )
    watched: dict[int, Watch] = {}
    served: dict[str, int] = {}

    def pick(n: int, pool: list[int]) -> int | None:
        return pool[n % len(pool)] if pool else None

    def take(items: list[Item]) -> None:
        # Whatever broke the stream between two messages is one gap in the queue (gaps next
        # to each other merge): at most one Lost, then at most one Status.
        between: list[str] = []
        for item in items:
            between = [] if isinstance(item, Message) else [*between, type(item).__name__]
            assert between in ([], ["Lost"], ["Status"], ["Lost", "Status"]) or (
                between[-1] == "Ended" and between.count("Lost") + between.count("Status") <= 2
            )
            w = watched[item.sub]
            assert not w.ended, "nothing after Ended"
            if isinstance(item, Status):
                w.state = item.state
            if isinstance(item, Message):
                assert item.seq > w.last_seq
                assert item.seq - w.last_seq - 1 == pending_lost.pop(item.sub, 0)
                w.last_seq = item.seq
                w.received += 1
            elif isinstance(item, Lost):
                assert item.count > 0
                w.lost += item.count
                pending_lost[item.sub] = pending_lost.get(item.sub, 0) + item.count
            elif isinstance(item, Ended):
                w.ended = True

    def audit(actions: list[Action]) -> None:
        for a in only(actions, Audit):
            watched[a.sub].audits.append(a.event)

    pending_lost: dict[int, int] = {}
    accepted: set[int] = set()  # upstreams the provider accepted (answered, or sent on)
    for op in script:
        kind = op[0]
        actions: list[Action] = []
        if kind == "subscribe":
            _, conn, nsid, p = op
            try:
                sub, actions = fan.subscribe(conn, nsid, PARAMS[p])
            except LimitExceeded:
                continue
            watched[sub.sub] = Watch(conn, topic_of(nsid, PARAMS[p]), state=sub.state)
        elif kind == "unsubscribe":
            sub_id = pick(op[1], fan.subscriptions())
            if sub_id is not None:
                w = watched[sub_id]
                actions = fan.unsubscribe(w.conn, sub_id)
                w.attached = False
        elif kind == "publish":
            _, n, burst = op
            ups = fan.upstreams()
            up = pick(n, sorted(ups))
            if up is not None:
                provider, nsid, params = ups[up]
                for pad, bad in burst:
                    done = fan.publish(provider, up, {"pad": "x" * pad, "bad": bad})
                    assert bool(only(done, Rejected)) == bad
                    if not bad:  # a valid message: the provider took the stream
                        accepted.add(up)
                    actions += done
                    if not bad:
                        for w in watched.values():
                            if w.attached and w.topic == topic_of(nsid, params):
                                w.published += 1
        elif kind == "bounce":  # the provider goes and comes back, its streams reopened
            _, provider, accept = op
            actions = fan.provider_gone(provider)
            mine = [n for n, p in served.items() if p == provider]
            if mine:
                actions += fan.declare(provider, mine)
            if accept:
                for open_ in only(actions, OpenUpstream):
                    actions += fan.upstream_opened(open_.upstream)
                    accepted.add(open_.upstream)
        elif kind == "drain":
            sub_id = pick(op[1], fan.subscriptions())
            if sub_id is not None:
                take(fan.drain(sub_id, op[2]))
        elif kind == "gone":
            actions = fan.provider_gone(op[1])
            served = {n: p for n, p in served.items() if p != op[1]}
        elif kind == "declare":
            _, provider, nsid = op
            if nsid in served:
                with pytest.raises(Conflict):
                    fan.declare(provider, [nsid])
            else:
                actions = fan.declare(provider, [nsid])
                served[nsid] = provider
        elif kind == "ack":
            up = pick(op[1], sorted(fan.upstreams()))
            if up is not None:
                if op[2]:
                    actions = fan.upstream_opened(up)
                    accepted.add(up)
                else:
                    nsid, params = fan.upstreams()[up][1:]
                    actions = fan.upstream_failed(up, "no")
                    for w in watched.values():
                        if w.topic == topic_of(nsid, params):
                            w.attached = False
        elif kind == "end":
            sub_id = pick(op[1], fan.subscriptions())
            if sub_id is not None:
                actions = fan.end(sub_id, "denied")
                watched[sub_id].attached = False
        elif kind == "close":
            actions = fan.connection_closed(op[1])
            for w in watched.values():
                if w.conn == op[1]:
                    w.attached = False
        audit(actions)

        # Bounded queues, always.
        for sub_id in fan.subscriptions():
            stats = fan.stats(sub_id)
            assert stats.messages <= MAX_MESSAGES
            assert stats.bytes <= MAX_BYTES
            assert stats.items <= 2 * MAX_MESSAGES + 2
        # One upstream per topic with subscribers whose NSID is served, and no other.
        live_topics = {w.topic for w in watched.values() if w.attached and w.topic[0] in served}
        ups = fan.upstreams()
        assert sorted(topic_of(n, p) for _, n, p in ups.values()) == sorted(live_topics)
        assert all(served[n] == prov for prov, n, _ in ups.values())

    for sub_id in fan.subscriptions():
        take(fan.drain(sub_id))
    for sub_id, w in watched.items():
        assert w.received + w.lost <= w.published
        if w.attached or w.ended:  # not thrown away by unsubscribe or a close
            assert w.received + w.lost == w.published
            assert pending_lost.get(sub_id, 0) == 0, "a loss is always followed by a message"
        assert w.audits == (["subscribe"] if w.attached else ["subscribe", "unsubscribe"])
    # Each subscriber was told the state its topic is in.
    for up_id, (_, nsid, params) in fan.upstreams().items():
        for w in watched.values():
            if w.attached and w.topic == topic_of(nsid, params):
                assert w.state in (("live",) if up_id in accepted else ("opening", "waiting"))
    for w in watched.values():
        if w.attached and w.topic[0] not in served:
            assert w.state == "waiting"
