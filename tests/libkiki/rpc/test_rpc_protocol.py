"""The sans-I/O JSON-RPC core, driven without an event loop or sockets."""

from __future__ import annotations

from typing import Any

import jsonrpcserver
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kikitest.rpc_peers import note, req
from libkiki.errors import (
    FrameTooLarge,
    InvalidRequest,
    LimitExceeded,
    PermissionDenied,
    ProtocolError,
    WireError,
)
from libkiki.framing import LineDecoder, Oversized
from libkiki.rpc.messages import (
    Call,
    CancelRequested,
    Dropped,
    Event,
    Incoming,
    ProgressReceived,
    ResponseReceived,
    Send,
    UnmatchedResponse,
    error_line,
    validate_request,
)
from libkiki.rpc.methods import Methods
from libkiki.rpc.protocol import RpcCore

pytestmark = pytest.mark.unit


def line(obj: Any) -> bytes:
    return orjson.dumps(obj)


def sent(events: list[Event]) -> list[Any]:
    """Every Send in ``events``, each line parsed."""
    out: list[Any] = []
    for event in events:
        if isinstance(event, Send):
            assert event.data.endswith(b"\n")
            out.extend(orjson.loads(chunk) for chunk in event.data.splitlines())
    return out


def incoming(events: list[Event]) -> list[Incoming]:
    return [e for e in events if isinstance(e, Incoming)]


def ok(id: Any, result: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "result": result, "id": id}


# -- incoming: single messages ---------------------------------------------------------------


@pytest.mark.parametrize("rid", [1, "abc", 0, -5, 1.5, None])
def test_request_becomes_incoming_and_its_response_echoes_the_id(rid: Any) -> None:
    core = RpcCore()
    events = core.receive(line(req("add", rid, [1, 2])))
    [ev] = events
    assert isinstance(ev, Incoming)
    assert (ev.id, ev.method, ev.notification) == (rid, "add", False)
    assert ev.message["params"] == [1, 2]
    data = core.complete(ev.slot, ok(rid, 3))
    assert data is not None
    assert orjson.loads(data) == ok(rid, 3)
    assert core.in_flight == 1  # until the answer is written
    core.release(ev.slot)
    assert core.in_flight == 0


def test_notification_is_run_but_never_answered() -> None:
    core = RpcCore()
    [ev] = core.receive(line(note("log", {"x": 1})))
    assert isinstance(ev, Incoming)
    assert ev.notification
    assert core.complete(ev.slot, ok(None, "ignored")) is None
    assert core.complete(ev.slot, ok(None, "twice")) is None
    core.release(ev.slot)
    assert core.in_flight == 0


@pytest.mark.parametrize("garbage", [b"{", b"nope", b"\xff\xfe", b'{"a":1}}', b"[1,", b"1e400"])
def test_garbage_is_a_parse_error_with_null_id(garbage: bytes) -> None:
    [error] = sent(RpcCore().receive(garbage))
    assert error == {
        "jsonrpc": "2.0",
        "error": {"code": -32700, "message": "Parse error"},
        "id": None,
    }


def test_blank_lines_are_ignored() -> None:
    assert RpcCore().receive(b"") == []
    assert RpcCore().receive(b"  \t") == []


def test_oversized_line_answers_frame_too_large_with_null_id() -> None:
    [error] = sent(RpcCore().receive(Oversized(FrameTooLarge(2000, 1024))))
    assert error["id"] is None
    assert error["error"]["code"] == -32600
    assert error["error"]["message"] == "frame of 2000 bytes exceeds the limit of 1024 bytes"
    assert error["error"]["data"] == {"size": 2000, "limit": 1024}


@pytest.mark.parametrize(
    ("message", "expected_id"),
    [
        ({"jsonrpc": "1.0", "method": "x", "id": 7}, 7),
        ({"method": "x", "id": "s"}, "s"),
        ({"jsonrpc": "2.0", "method": 5, "id": 1}, 1),
        ({"jsonrpc": "2.0", "method": "x", "id": True}, None),
        ({"jsonrpc": "2.0", "method": "x", "id": [1]}, None),
        ({"jsonrpc": "2.0", "method": "x", "id": {}}, None),
        ({"jsonrpc": "2.0", "method": "x", "params": "bar", "id": 3}, 3),
        ({"jsonrpc": "2.0", "method": "x", "params": 1}, None),
        ({"jsonrpc": "2.0", "method": 1, "params": "bar"}, None),
        ({"foo": "bar"}, None),
        ({"jsonrpc": "2.0", "id": 4}, None),
        (1, None),
        ("a string", None),
        (None, None),
        (True, None),
    ],
)
def test_invalid_requests_are_answered_with_32600(message: Any, expected_id: Any) -> None:
    core = RpcCore()
    [error] = sent(core.receive(line(message)))
    assert error["error"]["code"] == -32600
    assert error["error"]["message"] == "Invalid Request"
    assert error["id"] == expected_id
    assert core.in_flight == 0


def test_meta_is_taken_out_of_named_params_with_its_progress_token() -> None:
    message = req("tools/call", 9, {"name": "t", "_meta": {"progressToken": "tok"}})
    [ev] = RpcCore().receive(line(message))
    assert isinstance(ev, Incoming)
    assert ev.message["params"] == {"name": "t"}
    assert ev.meta == {"progressToken": "tok"}
    assert ev.progress_token == "tok"


def test_a_bad_progress_token_is_ignored() -> None:
    [ev] = RpcCore().receive(line(req("x", 1, {"_meta": {"progressToken": [1]}})))
    assert isinstance(ev, Incoming)
    assert ev.progress_token is None


# -- batches ---------------------------------------------------------------------------------


def test_empty_batch_is_one_invalid_request_not_an_array() -> None:
    [error] = sent(RpcCore().receive(b"[]"))
    assert isinstance(error, dict)
    assert error["error"]["code"] == -32600
    assert error["id"] is None


def test_batch_of_invalid_entries_is_an_array_of_errors() -> None:
    [errors] = sent(RpcCore().receive(b"[1,2,3]"))
    assert isinstance(errors, list)
    assert [e["error"]["code"] for e in errors] == [-32600] * 3
    assert all(e["id"] is None for e in errors)


def test_batch_mixing_good_and_bad_waits_for_every_request_then_sends_one_array() -> None:
    core = RpcCore()
    events = core.receive(
        line([req("add", 1, [1, 2]), note("log"), {"foo": "bar"}, req("sub", "two", [5, 3])])
    )
    assert sent(events) == []  # the invalid entry waits for the requests of its batch
    add, log, sub = incoming(events)
    assert log.notification
    assert core.complete(add.slot, ok(1, 3)) is None
    assert core.complete(log.slot, None) is None
    data = core.complete(sub.slot, ok("two", 2))
    assert data is not None
    responses = orjson.loads(data)
    assert len(responses) == 3
    by_id = {r["id"]: r for r in responses if r["id"] is not None}
    assert by_id[1]["result"] == 3
    assert by_id["two"]["result"] == 2
    [invalid] = [r for r in responses if r["id"] is None]
    assert invalid["error"]["code"] == -32600


def test_batch_of_only_notifications_produces_nothing() -> None:
    core = RpcCore()
    events = core.receive(line([note("a"), note("b")]))
    assert sent(events) == []
    for ev in incoming(events):
        assert core.complete(ev.slot, None) is None


def test_cancelled_batch_entry_is_left_out_and_a_fully_cancelled_batch_sends_nothing() -> None:
    core = RpcCore()
    a, b = incoming(core.receive(line([req("x", 1), req("y", 2)])))
    core.receive(line(note("notifications/cancelled", {"requestId": 1})))
    assert core.complete(a.slot, ok(1)) is None
    data = core.complete(b.slot, ok(2, "y"))
    assert data is not None
    assert orjson.loads(data) == [ok(2, "y")]

    a, b = incoming(core.receive(line([req("x", 3), req("y", 4)])))
    assert core.complete(a.slot, None) is None
    assert core.complete(b.slot, None) is None


# -- limits, duplicates, draining, cancellation --------------------------------------------


def test_in_flight_limit_refuses_requests_and_drops_notifications() -> None:
    core = RpcCore(max_in_flight=2)
    first = incoming(core.receive(line(req("a", 1))))[0]
    incoming(core.receive(line(req("a", 2))))
    [error] = sent(core.receive(line(req("a", 3))))
    assert error["error"]["code"] == -32005
    assert error["error"]["data"] == {"limit": 2}
    assert error["id"] == 3
    core.complete(first.slot, ok(1))
    assert sent(core.receive(line(req("a", 4))))[0]["error"]["code"] == -32005  # not yet written
    core.release(first.slot)
    assert incoming(core.receive(line(req("a", 5))))


def test_notifications_and_requests_have_limits_of_their_own() -> None:
    # A peer cannot see its notifications finish: they must not cost its requests a slot.
    core = RpcCore(max_in_flight=2)
    notes = [incoming(core.receive(line(note("n"))))[0] for _ in range(2)]
    [dropped] = core.receive(line(note("n")))
    assert isinstance(dropped, Dropped)
    assert "2 notifications in flight" in dropped.reason
    calls = [incoming(core.receive(line(req("a", i))))[0] for i in (1, 2)]
    [error] = sent(core.receive(line(req("a", 3))))
    assert error["error"]["code"] == -32005
    assert "requests in flight" in error["error"]["message"]
    assert core.in_flight == 4
    for ev in notes:
        core.complete(ev.slot, None)
        core.release(ev.slot)
    assert sent(core.receive(line(req("a", 4))))[0]["error"]["code"] == -32005  # still 2 calls
    assert incoming(core.receive(line(note("n"))))
    core.release(calls[0].slot)
    assert incoming(core.receive(line(req("a", 5))))


def test_an_answer_over_the_line_limit_is_replaced_by_an_error_alone_or_in_a_batch() -> None:
    core = RpcCore(max_line=300)
    [one] = incoming(core.receive(line(req("a", 1))))
    data = core.complete(one.slot, ok(1, "x" * 400))
    assert data is not None
    error = orjson.loads(data)
    assert (error["id"], error["error"]["code"]) == (1, -32005)
    assert error["error"]["data"]["limit"] == 300
    # Each answer of the batch fits, all three together do not: the largest give way.
    core.max_line = 600
    events = incoming(core.receive(line([req("a", 2), req("a", 3), req("a", 4)])))
    sizes: dict[Any, int] = {2: 300, 3: 40, 4: 250}
    answers = [core.complete(ev.slot, ok(ev.id, "y" * sizes[ev.id])) for ev in events]
    assert answers[:2] == [None, None]
    assert answers[2] is not None
    assert len(answers[2]) - 1 <= 600
    by_id = {a["id"]: a for a in orjson.loads(answers[2])}
    assert by_id[2]["error"]["code"] == -32005  # the largest
    assert by_id[3]["result"] == "y" * 40
    assert by_id[4]["result"] == "y" * 250


def test_a_batch_longer_than_could_ever_run_is_refused_whole() -> None:
    # 201 bytes of [1,1,...] would otherwise draw 100 error objects (several KiB).
    core = RpcCore(max_in_flight=50)
    [error] = sent(core.receive(b"[" + b",".join([b"1"] * 101) + b"]"))
    assert (error["id"], error["error"]["code"]) == (None, -32005)
    assert error["error"]["data"] == {"limit": 100}
    [answers] = sent(core.receive(b"[" + b",".join([b"1"] * 100) + b"]"))
    assert len(answers) == 100
    assert core.in_flight == 0
    # Requests in a batch refused whole are each answered, so that the peer can tell which.
    batch = [req("a", i) for i in range(100)] + [note("n"), 1]
    [refused] = sent(core.receive(line(batch)))
    assert [(a["id"], a["error"]["code"]) for a in refused] == [(i, -32005) for i in range(100)]
    assert core.in_flight == 0


def test_a_refused_batch_whose_errors_would_not_fit_is_one_error_saying_why() -> None:
    core = RpcCore(max_in_flight=2, max_line=1000)
    [error] = sent(core.receive(line([req("a", i) for i in range(40)])))
    assert (error["id"], error["error"]["code"]) == (None, -32005)
    assert error["error"]["message"] == "a batch of 40 entries is over the limit of 4"
    assert core.counters["errors"] == 1


def test_a_batch_answer_that_cannot_fit_even_as_errors_is_one_error() -> None:
    core = RpcCore(max_line=1000)
    # Each id alone is 400 bytes: the answers do not fit together, nor do errors for them.
    events = incoming(core.receive(line([req("a", str(i) * 400) for i in range(3)])))
    answers = [core.complete(ev.slot, ok(ev.id, "y" * 100)) for ev in events]
    assert answers[2] is not None
    [error] = sent([Send(answers[2])])
    assert (error["id"], error["error"]["code"]) == (None, -32005)
    assert "over the line limit of 1000 bytes" in error["error"]["message"]


def test_a_request_over_the_line_limit_is_refused_before_anything_is_pending() -> None:
    core = RpcCore(max_line=100)
    with pytest.raises(LimitExceeded, match="over the line limit of 100 bytes"):
        core.request("a", ["x" * 200])
    assert core.outgoing == 0
    with pytest.raises(LimitExceeded):
        core.notification("a", ["x" * 200])
    assert core.request("a", [1])[0] == 1  # the refused one took no id


@pytest.mark.parametrize(
    "raw", [b"123456789012345678901234567890", b"-9223372036854775809", b"1e300"]
)
def test_a_numeric_id_beyond_64_bits_is_refused_not_echoed_rounded(raw: bytes) -> None:
    # orjson reads such an integer as a float: echoed, it would no longer match the request.
    core = RpcCore()
    [error] = sent(core.receive(b'{"jsonrpc":"2.0","id":' + raw + b',"method":"a"}'))
    assert (error["error"]["code"], error["id"]) == (-32600, None)
    assert "64 bits" in error["error"]["data"]
    assert incoming(core.receive(line(req("a", 2**64 - 1))))  # the largest orjson keeps an int


def test_an_id_already_in_flight_is_refused() -> None:
    core = RpcCore()
    incoming(core.receive(line(req("a", "dup"))))
    [error] = sent(core.receive(line(req("a", "dup"))))
    assert (error["error"]["code"], error["id"]) == (-32600, "dup")


def test_draining_refuses_new_requests_with_unavailable() -> None:
    core = RpcCore()
    core.start_draining()
    [error] = sent(core.receive(line(req("a", 1))))
    assert error["error"]["code"] == -32010
    assert isinstance(core.receive(line(note("n")))[0], Dropped)


def test_cancel_notification_targets_only_a_running_request() -> None:
    core = RpcCore()
    [ev] = core.receive(line(req("slow", "r1")))
    assert isinstance(ev, Incoming)
    events = core.receive(line(note("notifications/cancelled", {"requestId": "r1", "reason": "x"})))
    assert events == [CancelRequested(ev.slot, "r1", "x")]
    again = core.receive(line(note("notifications/cancelled", {"requestId": "r1"})))
    assert again == []  # already cancelled
    assert core.complete(ev.slot, ok("r1", "too late")) is None
    for params in ({"requestId": "r1"}, {"requestId": [1]}, {}, None, [1]):
        assert core.receive(line(note("notifications/cancelled", params))) == []


# -- outgoing --------------------------------------------------------------------------------


def test_requests_get_fresh_ids_and_their_responses_are_matched() -> None:
    core = RpcCore()
    id1, data1 = core.request("a", [1])
    id2, _ = core.request("b", {"k": "v"})
    assert id1 != id2
    assert orjson.loads(data1) == {"jsonrpc": "2.0", "method": "a", "params": [1], "id": id1}
    assert "params" not in orjson.loads(core.request("c")[1])
    assert core.outgoing == 3
    [got] = core.receive(line(ok(id2, "B")))
    assert got == ResponseReceived(id2, "B", None)
    err = {"jsonrpc": "2.0", "error": {"code": -32003, "message": "no", "data": 1}, "id": id1}
    [got] = core.receive(line(err))
    assert isinstance(got, ResponseReceived)
    assert isinstance(got.error, PermissionDenied)
    assert (str(got.error), got.error.data) == ("no", 1)
    assert core.outgoing == 1


def test_unknown_codes_keep_their_code() -> None:
    core = RpcCore()
    rid, _ = core.request("a")
    err = {"jsonrpc": "2.0", "error": {"code": 42, "message": "odd"}, "id": rid}
    [got] = core.receive(line(err))
    assert isinstance(got, ResponseReceived)
    assert isinstance(got.error, WireError)
    assert got.error.code == 42


def test_responses_to_unknown_and_abandoned_ids_are_reported_as_unmatched() -> None:
    core = RpcCore()
    rid, _ = core.request("slow")
    assert core.abandon(rid)
    assert not core.abandon(rid)
    [late] = core.receive(line(ok(rid, 1)))
    assert late == UnmatchedResponse(rid, True, None)
    [stray] = core.receive(line(ok(12345, 1)))
    assert stray == UnmatchedResponse(12345, False, None)
    [stray] = core.receive(line(ok([1], 1)))
    assert isinstance(stray, UnmatchedResponse)


def test_malformed_response_fails_its_pending_request() -> None:
    core = RpcCore()
    rid, _ = core.request("a")
    [got] = core.receive(line({"jsonrpc": "2.0", "id": rid, "result": 1, "error": {}}))
    assert isinstance(got, ResponseReceived)
    assert isinstance(got.error, ProtocolError)
    rid, _ = core.request("a")
    [got] = core.receive(line({"jsonrpc": "2.0", "id": rid, "error": {"code": "x"}}))
    assert isinstance(got, ResponseReceived)
    assert isinstance(got.error, ProtocolError)


def test_abandon_all_forgets_every_pending_request() -> None:
    core = RpcCore()
    ids = [core.request("a")[0] for _ in range(3)]
    assert sorted(core.abandon_all()) == sorted(ids)
    assert core.outgoing == 0


def test_progress_token_goes_out_in_meta_and_progress_comes_back_as_an_event() -> None:
    core = RpcCore()
    rid, data = core.request("tools/call", {"name": "t", "_meta": {"other": 1}}, progress=True)
    assert orjson.loads(data)["params"]["_meta"] == {"other": 1, "progressToken": rid}
    progress = {"progressToken": rid, "progress": 1, "total": 2}
    [ev] = core.receive(line(note("notifications/progress", progress)))
    assert ev == ProgressReceived(rid, progress)
    # a token nobody asked for is an ordinary notification for the method table
    [ev] = core.receive(line(note("notifications/progress", {"progressToken": 999})))
    assert isinstance(ev, Incoming)
    with pytest.raises(TypeError):
        core.request("a", [1], progress=True)


def test_outgoing_batch_and_its_array_of_responses() -> None:
    core = RpcCore()
    ids, data = core.batch([Call("a", [1]), Call("log", notification=True), Call("b")])
    first, note_id, last = ids
    assert note_id is None
    assert first is not None
    assert last is not None
    messages = orjson.loads(data)
    assert [m.get("id") for m in messages] == ids
    got = core.receive(line([ok(last, "B"), ok(first, "A")]))
    assert got == [ResponseReceived(last, "B", None), ResponseReceived(first, "A", None)]
    with pytest.raises(ValueError, match="at least one"):
        core.batch([])


def test_unserialisable_params_raise_to_the_caller_and_leave_nothing_pending() -> None:
    core = RpcCore()
    with pytest.raises(TypeError):
        core.request("a", [object()])
    assert core.outgoing == 0


def test_counters() -> None:
    core = RpcCore()
    core.receive(line(req("a", 1)))
    core.receive(line(note("b")))
    core.receive(b"garbage")
    assert (core.counters["requests"], core.counters["notifications"]) == (1, 1)
    assert core.counters["errors"] == 1


# -- method tables ---------------------------------------------------------------------------


def test_methods_registration() -> None:
    async def ping(ctx: Any) -> str:
        return "pong"

    methods = Methods({"ping": ping})

    @methods.method
    async def named(ctx: Any) -> None: ...

    @methods.method("tools/call")
    async def call(ctx: Any, name: str) -> None: ...

    assert set(methods) == {"ping", "named", "tools/call"}
    assert methods["tools/call"] is call
    assert Methods.of(methods) is methods
    methods.unregister("ping")
    assert "ping" not in methods
    assert len(methods) == 2

    def not_async(ctx: Any) -> None: ...

    with pytest.raises(TypeError, match="async"):
        methods.register("sync", not_async)  # type: ignore[arg-type]


# -- the jsonrpcserver hook -------------------------------------------------------------------


def test_validate_request_works_as_jsonrpcserver_validator() -> None:
    assert validate_request(req("a")) == req("a")
    for bad in ([], [1], {"jsonrpc": "2.0"}, "x"):
        with pytest.raises(InvalidRequest):
            validate_request(bad)

    def ping() -> Any:
        return jsonrpcserver.Success("pong")

    request = '{"jsonrpc": "2.0", "method": "ping", "id": 1}'
    out = jsonrpcserver.dispatch(
        request, {"ping": ping}, deserializer=orjson.loads, validator=validate_request
    )
    assert orjson.loads(out) == ok(1, "pong")
    out = jsonrpcserver.dispatch('{"jsonrpc": "1.0"}', {}, validator=validate_request)
    assert orjson.loads(out)["error"]["code"] == -32600


def test_error_line() -> None:
    data = error_line(PermissionDenied("nope"), 5)
    assert orjson.loads(data) == {
        "jsonrpc": "2.0",
        "error": {"code": -32003, "message": "nope"},
        "id": 5,
    }


# -- fuzzing -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)

# Messages that look almost right reach the deeper branches more often than random values.
near_messages = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2]),
        "method": st.sampled_from(["a", "notifications/cancelled", "notifications/progress", 1]),
        "id": json_values,
        "params": json_values,
        "result": json_values,
        "error": json_values,
    },
)


def check_output(core: RpcCore, events: list[Event]) -> None:
    """Only typed events; everything sent is a well-formed response (or array of them)."""
    for event in events:
        assert isinstance(
            event,
            Send
            | Incoming
            | CancelRequested
            | Dropped
            | ProgressReceived
            | ResponseReceived
            | UnmatchedResponse,
        )
        if isinstance(event, Incoming):
            response = None if event.notification else ok(event.id, "r")
            data = core.complete(event.slot, response)
            core.release(event.slot)
            if data is not None:
                check_output(core, [Send(data)])
    for message in sent(events):
        for response in message if isinstance(message, list) else [message]:
            assert response["jsonrpc"] == "2.0"
            assert "id" in response
            assert ("result" in response) != ("error" in response)
            if "error" in response:
                assert isinstance(response["error"]["code"], int)
                assert isinstance(response["error"]["message"], str)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_fuzz_arbitrary_bytes_through_decoder_and_core(chunks: list[bytes]) -> None:
    core = RpcCore(max_in_flight=4)
    decoder = LineDecoder(max_line=64)
    for chunk in chunks:
        for item in decoder.feed(chunk):
            check_output(core, core.receive(item))
    assert core.in_flight == 0


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values | near_messages | st.lists(near_messages, max_size=4), max_size=6))
def test_fuzz_arbitrary_json_into_core(values: list[Any]) -> None:
    core = RpcCore(max_in_flight=3)
    core.request("pending")
    for value in values:
        check_output(core, core.receive(orjson.dumps(value)))
    assert core.in_flight == 0
