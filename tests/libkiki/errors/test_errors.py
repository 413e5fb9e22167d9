"""The exception tree's wire forms."""

from __future__ import annotations

import pytest

from libkiki import errors

pytestmark = pytest.mark.unit


def test_every_error_has_distinct_dbus_name_and_a_server_range_code() -> None:
    classes = [
        c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.KikiError)
    ]
    for cls in classes:
        assert cls.dbus_name.startswith("dev.kiki.Error.")
        assert -32800 <= cls.jsonrpc_code <= -32000 or cls.jsonrpc_code in range(-32700, -32599)
        assert 1000 <= cls.ws_close_code <= 4999


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.ParseError(), -32700),
        (errors.InvalidRequest(), -32600),
        (errors.FrameTooLarge(10, 5), -32600),
        (errors.MethodNotFound(), -32601),
        (errors.ValidationError("input.title", "must be at most 256 graphemes"), -32602),
        (errors.PermissionDenied(), -32003),
        (errors.Cancelled(), -32800),
        (errors.UnsupportedVersion(data={"supported": ["2026-07-28"]}), -32022),
    ],
)
def test_jsonrpc_codes(exc: errors.KikiError, code: int) -> None:
    assert exc.to_jsonrpc()["code"] == code


def test_validation_error_message_names_path_and_rule() -> None:
    exc = errors.ValidationError("input.track.title", "must be at most 256 graphemes")
    assert str(exc) == "input.track.title: must be at most 256 graphemes"
    assert exc.to_jsonrpc()["data"] == {
        "path": "input.track.title",
        "rule": "must be at most 256 graphemes",
    }


def test_unknown_exceptions_become_opaque_internal_errors() -> None:
    wire = errors.to_wire(RuntimeError("secret /etc/shadow detail"))
    assert wire == {"code": -32603, "message": "Internal error"}


def test_error_for_code_rebuilds_known_and_keeps_unknown_codes() -> None:
    denied = errors.error_for_code(-32003, "no", {"x": 1})
    assert isinstance(denied, errors.PermissionDenied)
    assert denied.data == {"x": 1}
    other = errors.error_for_code(-31999, "custom")
    assert isinstance(other, errors.WireError)
    assert other.to_jsonrpc() == {"code": -31999, "message": "custom"}
