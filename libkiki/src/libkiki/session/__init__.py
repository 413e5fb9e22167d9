"""Remote control of a device through its session: ``SessionClient``.

A phone, a dashboard or another agent joins a session (on the device's sync relay or on the
edge) with a token from ``kiki session share``, keeps a copy of the session document in sync
over the y-websocket protocol (pycrdt), reads the device's live state, and asks the device to
call its tools by writing intents, then waits for the results the device writes beside them::

    from libkiki.session import SessionClient

    async with SessionClient("ws://127.0.0.1:8765/session/kitchen?token=...") as s:
        print(s.state()["tools"])
        output = await s.call("dev.kiki.media.pause", {}, timeout=10)
        async for key, value in s.changes():
            print(key, value)

The token may instead be passed apart (``SessionClient(url, token)``): it then travels as the
first WebSocket message, never in a URL a proxy may log. Errors are libkiki.errors': what a
result names (``refused`` is :class:`~libkiki.errors.PermissionDenied`, ``expired`` is
:class:`~libkiki.errors.Timeout`), and what the relay's close code and reason name when it
ends the connection. The protocol logic is sans-I/O (:mod:`libkiki.session.protocol`); the
asyncio layer (:mod:`libkiki.session.client`) only moves frames.
"""

from __future__ import annotations

from libkiki.session.address import redact
from libkiki.session.client import SessionClient
from libkiki.session.outcomes import error_for_close, outcome
from libkiki.session.protocol import SessionProtocol

__all__ = ["SessionClient", "SessionProtocol", "error_for_close", "outcome", "redact"]
