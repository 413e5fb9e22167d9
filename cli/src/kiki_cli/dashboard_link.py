"""The web dashboard's URL for a session, which `kiki session share --dashboard` and `kiki up`
print: the page on the relay (or edge) a join URL names, with the session and the token in the
fragment."""

from __future__ import annotations

from urllib.parse import urlencode


def dashboard_url(join_url: str, name: str, token: str) -> str:
    """The dashboard's URL on the relay a join URL (``ws://HOST:PORT/session/NAME?token=…``)
    names. The session and token go in the fragment, which a browser never sends: the token is
    in no request line and no server's log."""
    base = join_url.split("/session/", 1)[0]
    for ws, web in (("ws://", "http://"), ("wss://", "https://")):
        if base.startswith(ws):
            base = web + base[len(ws) :]
    return f"{base}/dashboard/#{urlencode({'session': name, 'token': token})}"
