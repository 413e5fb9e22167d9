"""Where a session is and who joins it: the URL, the token and the claims a client acts on.

Pure functions, no I/O. The token travels in the URL's query or apart from it (then as the
connection's first message); its claims are read without checking its signature (the relay
checks it), for the ``sub`` intents are written as and the ``role`` that may write them.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import jwt

from libkiki.errors import InvalidParams


def redact(url: str) -> str:
    """``url`` without its query (where a token travels), for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def split_token(url: str, token: str | None) -> tuple[str, str | None, str]:
    """The URL to open, the token to send as the first frame (None: it is in the URL), and the
    token itself."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise InvalidParams(f"not a ws:// or wss:// session URL: {redact(url)!r}")
    in_url = urllib.parse.parse_qs(parts.query).get("token", [])
    if in_url and token is not None:
        raise InvalidParams("a token in the URL and another given apart: give one")
    if in_url:
        return url, None, in_url[0]
    if not token:
        raise InvalidParams(f"no token for {redact(url)}: put ?token=... in the URL or pass one")
    return url, token, token


def claims_of(token: str) -> dict[str, Any]:
    """The token's claims, read without checking its signature: the relay checks it; this end
    only needs to know who it writes intents as (``sub``) and whether it may (``role``)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise InvalidParams(f"the token is not a JWT: {exc}") from None
    if not isinstance(claims, dict) or not isinstance(claims.get("sub"), str):
        raise InvalidParams("the token has no subject (sub)")
    return claims
