"""The relay's admin channel: JSON-RPC 2.0 on a Unix socket (``kiki session`` talks to it).

The socket (``sync-relay-admin.sock`` in the runtime directory, mode 0600) is for the relay's
own user and root: sharing a session mints tokens with the device's key. The methods:

| method | params | result |
|---|---|---|
| ``dev.kiki.session.list`` | | ``[{name, live, clients, bytes, upstream}]`` |
| ``dev.kiki.session.show`` | ``name`` | ``{name, live, clients: [{sub, role, writes}], bytes,
upstream, deviceLink}`` |
| ``dev.kiki.session.share`` | ``name, role, ttl, sub`` | ``{url, token, jti, exp}`` |
| ``dev.kiki.session.revoke`` | ``jti, exp?, name?`` | ``{closed, upstream}``: whether the edge
confirmed it (``confirmed``, ``pending``, ``not linked``) |
| ``dev.kiki.session.dump`` | ``name`` | the document's top-level types as JSON |
| ``dev.kiki.service.getInfo`` | | the health answer |
"""

from __future__ import annotations

import os
import time
from typing import Any

import jwt

from kiki_sync_relay.link import DeviceLink
from kiki_sync_relay.relay import Relay
from kiki_sync_relay.session import Session
from kiki_sync_relay.upstream import Upstream
from libkiki.constellation import GET_INFO
from libkiki.errors import NotFound, PermissionDenied
from libkiki.rpc import Methods, RequestContext
from libkiki.sync.parts import PARTS
from libkiki.sync.tokens import LEEWAY, SigningKey, valid_session_name

# The session document's parts (libkiki.sync.parts) and the roots the conformance suite writes;
# pycrdt reads a root only when told its type.
ROOTS: dict[str, str] = {
    **{part.root: part.kind for part in PARTS},
    "text": "text",
    "map": "map",
    "array": "array",
}


def document(session: Session) -> dict[str, Any]:
    from pycrdt import Array, Map, Text

    kinds: dict[str, Any] = {"map": Map, "array": Array, "text": Text}
    out: dict[str, Any] = {}
    for name in list(session.doc.keys()):
        kind = ROOTS.get(name)
        if kind is None:
            out[name] = None
            continue
        root = session.doc.get(name, type=kinds[kind])
        out[name] = str(root) if kind == "text" else root.to_py()
    return out


def admin_methods(
    relay: Relay,
    key: SigningKey,
    device_id: str,
    public_url: str,
    upstream: Upstream,
    link: DeviceLink | None = None,
) -> Methods:
    methods = Methods()
    me = os.geteuid()

    def allowed(ctx: RequestContext) -> None:
        if ctx.peer.uid not in (0, me):
            raise PermissionDenied("the sync relay's admin channel is for its own user and root")

    def named(name: str) -> str:
        if not valid_session_name(name):
            raise NotFound(f"not a session name: {name!r}")
        return name

    @methods.method("dev.kiki.session.list")
    async def list_sessions(ctx: RequestContext) -> list[dict[str, Any]]:
        allowed(ctx)
        stored = await relay.store.sessions()
        names = sorted(set(stored) | set(relay.live) | set(upstream.links))
        return [
            {
                "name": n,
                "live": n in relay.live,
                "clients": len(relay.live[n].peers) if n in relay.live else 0,
                "bytes": stored.get(n, 0),
                "upstream": upstream.links[n].linked if n in upstream.links else None,
            }
            for n in names
        ]

    @methods.method("dev.kiki.session.show")
    async def show(ctx: RequestContext, name: str) -> dict[str, Any]:
        allowed(ctx)
        stored = await relay.store.sessions()
        live = relay.live.get(named(name))
        up = upstream.links.get(name)
        if live is None and name not in stored and up is None:
            raise NotFound(f"no session {name}")
        members = list(live.session.members.values()) if live else []
        return {
            "name": name,
            "live": live is not None,
            "clients": [{"sub": m.sub, "role": m.role, "writes": m.writes} for m in members],
            "bytes": stored.get(name, 0),
            "upstream": up.view() if up is not None else None,
            "deviceLink": link.view(name) if link is not None else None,
        }

    @methods.method("dev.kiki.session.share")
    async def share(
        ctx: RequestContext, name: str, role: str = "observer", ttl: float = 3600, sub: str = ""
    ) -> dict[str, Any]:
        allowed(ctx)
        token = key.issue(
            named(name), role, sub=sub or f"uid:{ctx.peer.uid}", iss=device_id, ttl=ttl
        )
        claims = jwt.decode(token, options={"verify_signature": False})
        return {
            "url": f"{public_url}/session/{name}?token={token}",
            "token": token,
            "jti": claims["jti"],
            "exp": claims["exp"],
            "role": role,
        }

    @methods.method("dev.kiki.session.revoke")
    async def revoke(
        ctx: RequestContext, jti: str, exp: int | None = None, name: str | None = None
    ) -> dict[str, Any]:
        allowed(ctx)
        # A token is accepted until LEEWAY after its exp (clocks differ): until then it must
        # still be revocable.
        if exp is not None and exp + LEEWAY < time.time():
            return {"closed": 0, "upstream": "not linked"}
        closed = relay.revoke(jti, exp)
        # Linked upstream: the edge is told too (a token of the session is accepted there).
        told = "not linked" if name is None else await upstream.revoke(named(name), jti, exp)
        return {"closed": closed, "upstream": told}

    @methods.method("dev.kiki.session.dump")
    async def dump(ctx: RequestContext, name: str) -> dict[str, Any]:
        allowed(ctx)
        live = await relay.open(named(name))
        relay.touch(name, live)
        return document(live.session)

    return methods


def add_info(methods: Methods, info: Any) -> None:
    @methods.method(GET_INFO)
    async def get_info(ctx: RequestContext) -> dict[str, Any]:
        result: dict[str, Any] = info()
        return result
