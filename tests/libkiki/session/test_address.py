"""A session's URL and token, and the claims a client acts on."""

from __future__ import annotations

import jwt
import pytest

from libkiki.errors import InvalidParams
from libkiki.session.address import claims_of, redact, split_token

pytestmark = pytest.mark.unit

TOKEN = jwt.encode({"sub": "alice", "role": "controller"}, "k" * 32, algorithm="HS256")
BASE = "ws://127.0.0.1:8765/session/kitchen"


def test_a_url_is_told_without_its_query() -> None:
    assert redact(f"{BASE}?token=secret&x=1#frag") == BASE
    assert redact("wss://edge.example/session/a") == "wss://edge.example/session/a"


def test_the_token_comes_from_the_url_or_apart() -> None:
    assert split_token(f"{BASE}?token={TOKEN}", None) == (f"{BASE}?token={TOKEN}", None, TOKEN)
    assert split_token(BASE, TOKEN) == (BASE, TOKEN, TOKEN)


@pytest.mark.parametrize(
    ("url", "token", "said"),
    [
        (f"{BASE}?token={TOKEN}", TOKEN, "give one"),
        (BASE, None, f"no token for {BASE}"),
        (BASE, "", f"no token for {BASE}"),
        ("http://127.0.0.1:8765/session/k?token=secret", None, "not a ws:// or wss://"),
        ("ws:///session/k", TOKEN, "not a ws:// or wss://"),
        ("kitchen", TOKEN, "not a ws:// or wss://"),
    ],
)
def test_a_url_and_token_that_do_not_go_together_are_refused(
    url: str, token: str | None, said: str
) -> None:
    with pytest.raises(InvalidParams, match=said) as refused:
        split_token(url, token)
    assert "secret" not in str(refused.value)


def test_the_claims_are_read_without_the_key() -> None:
    assert claims_of(TOKEN) == {"sub": "alice", "role": "controller"}
    with pytest.raises(InvalidParams, match="not a JWT"):
        claims_of("x.y.z")
    no_sub = jwt.encode({"role": "controller"}, "k" * 32, algorithm="HS256")
    with pytest.raises(InvalidParams, match="no subject"):
        claims_of(no_sub)
