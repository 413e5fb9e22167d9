"""What ``kiki up`` adds so that its first run ends with a dashboard to open: the sync relay's
device link for one session, policies that show the screen to its people and let the relay act
for them, and the dashboard's URL with a controller token. (On a device the same rules are the
operator's: see the sync relay's README, "Policy it needs".)

On a developer's machine every service runs as the developer, so the delegate the broker
trusts is that uid (on a device it is the relay's unit, ``app:kiki-sync-relay``); the
a11y-server lets the session's shared screen stream carry that user's apps. A policy file the
developer already has (``$KIKI_TOOL_BROKER_POLICY_FILE`` or ``tool-policy.toml`` in the config
directory; ``$KIKI_A11Y_SERVER_POLICY_FILE`` or ``a11y-policy.toml``) is theirs and used as it
is; without one, ``kiki up`` writes its own in its state directory and points the service at
it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from libkiki.errors import KikiError
from libkiki.paths import config_dir
from libkiki.sync import ADMIN_SOCKET

DEFAULT_SESSION = "local"
# What a person at the dashboard may ask the device: act on its screen, drive its player, and
# the demo provider's tools. The link offers these (KIKI_SYNC_RELAY_LINK_TOOLS) and the policy
# allows the same to every remote person the relay speaks for.
DASHBOARD_TOOLS = ("dev.kiki.a11y.*", "dev.kiki.media.*", "dev.kiki.demo.*")
TOKEN_TTL = 12 * 3600.0


def tool_policy(uid: int, tools: tuple[str, ...] = DASHBOARD_TOOLS) -> str:
    globs = ", ".join(f'"{t}"' for t in tools)
    return (
        "# Written by `kiki up`: the sync relay (this user's process here) may call for the\n"
        "# people in its sessions, and they may call what the dashboard offers.\n"
        "[[delegate]]\n"
        f'principals = ["uid:{uid}"]\n'
        "\n"
        "[[allow]]\n"
        'principals = ["remote:*"]\n'
        f"tools = [{globs}]\n"
    )


def a11y_policy(uid: int) -> str:
    # The screen reaches the session through one stream shared by all its subscribers, which
    # carries only the trees everyone (local peers and remote people) may subscribe to. Only
    # this user and `--group` reach the a11y socket here, so every tree on it is theirs to
    # show. (A rule naming `publishers` would miss a tree's first appearance: the stream
    # decides it before the tree's publisher is recorded.)
    del uid
    return (
        "# Written by `kiki up`: the apps' trees go to the sessions' screens.\n"
        "[[allow]]\n"
        'principals = ["*", "remote:*"]\n'
        'rights = ["subscribe"]\n'
        'apps = ["*"]\n'
    )


@dataclass(frozen=True, slots=True)
class Policy:
    """One service's policy file: kiki up's own (``written``) or the developer's."""

    service: str
    path: Path
    written: bool


@dataclass(frozen=True, slots=True)
class DashboardSetup:
    """The environment each service gets for it, and what to tell the developer."""

    env: Mapping[str, Mapping[str, str]]
    policies: tuple[Policy, ...]


# service: (its policy file's name, the setting naming another, the text kiki up writes)
_POLICIES = {
    "tool-broker": ("tool-policy.toml", "KIKI_TOOL_BROKER_POLICY_FILE", tool_policy),
    "a11y-server": ("a11y-policy.toml", "KIKI_A11Y_SERVER_POLICY_FILE", a11y_policy),
}


def prepare(
    session: str, state_dir: Path, uid: int, environ: Mapping[str, str] = os.environ
) -> DashboardSetup:
    """The relay links ``session``; the broker and the a11y-server get kiki up's policies,
    each unless one is configured. Settings the developer put in the environment are left as
    they are."""
    env: dict[str, dict[str, str]] = {"sync-relay": {}}
    if "KIKI_SYNC_RELAY_LINK_SESSIONS" not in environ:
        env["sync-relay"]["KIKI_SYNC_RELAY_LINK_SESSIONS"] = session
    if "KIKI_SYNC_RELAY_LINK_TOOLS" not in environ:
        env["sync-relay"]["KIKI_SYNC_RELAY_LINK_TOOLS"] = ",".join(DASHBOARD_TOOLS)
    policies = []
    for service, (name, setting, text) in _POLICIES.items():
        configured = environ.get(setting)
        theirs = Path(configured) if configured else config_dir(environ) / name
        if configured or theirs.exists():
            policies.append(Policy(service, theirs, written=False))
            continue
        ours = state_dir / "up" / name
        ours.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = ours.with_suffix(".tmp")
        tmp.write_text(text(uid))
        tmp.replace(ours)
        env[service] = {setting: str(ours)}
        policies.append(Policy(service, ours, written=True))
    return DashboardSetup(env, tuple(policies))


def dashboard_url(join_url: str, name: str, token: str) -> str:
    """The dashboard's URL on the relay a join URL (``ws://HOST:PORT/session/NAME?token=…``)
    names. The session and token go in the fragment, which a browser never sends: the token is
    in no request line and no server's log."""
    base = join_url.split("/session/", 1)[0]
    for ws, web in (("ws://", "http://"), ("wss://", "https://")):
        if base.startswith(ws):
            base = web + base[len(ws) :]
    return f"{base}/dashboard/#{urlencode({'session': name, 'token': token})}"


async def mint_url(runtime_dir: Path, session: str) -> str:
    """The dashboard's URL for ``session`` with a controller token from the relay's admin
    channel (the relay mints it with the device's key)."""
    # Here, not at the top: `kiki up --help` and `kiki session` starts need no JSON-RPC stack.
    from libkiki.rpc import connect_unix

    async with asyncio.timeout(10), connect_unix(runtime_dir / ADMIN_SOCKET) as conn:
        shared = await conn.request(
            "dev.kiki.session.share",
            {"name": session, "role": "controller", "ttl": TOKEN_TTL, "sub": ""},
        )
    return dashboard_url(str(shared["url"]), session, str(shared["token"]))


async def announce(runtime_dir: Path, session: str, setup: DashboardSetup) -> list[str]:
    """The lines ``kiki up`` ends its start with."""
    try:
        url = await mint_url(runtime_dir, session)
    except (KikiError, OSError, TimeoutError) as exc:
        return [f"no dashboard: the sync relay did not share session {session} ({exc})"]
    lines = [
        f"the dashboard of this device (session {session}, a controller's link for 12 h):",
        f"  {url}",
    ]
    for policy in setup.policies:
        if not policy.written:
            needs = _NEEDS[policy.service]
            lines.append(f"  it works through your {policy.service} policy {policy.path}: {needs}")
    return lines


_NEEDS = {
    "tool-broker": "the relay as a [[delegate]], and an [[allow]] for remote:*",
    "a11y-server": 'an [[allow]] of "subscribe" for "*" and "remote:*", or no screen is shown',
}
