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

from kiki_cli.dashboard_link import dashboard_url
from kiki_cli.demos import A11Y_APP_ID as DEMO_APP_ID
from libkiki.errors import KikiError
from libkiki.paths import config_dir
from libkiki.sync import ADMIN_SOCKET

DEFAULT_SESSION = "local"
# What a person at the dashboard may ask the device: act on its screen, move its player, and
# the demo provider's tools. The link offers these (KIKI_SYNC_RELAY_LINK_TOOLS) and the policy
# allows the same to every remote person the relay speaks for. Exact names, not globs: a glob
# would also hand them the screen's snapshot and find and the player's openUri.
DASHBOARD_TOOLS = (
    "dev.kiki.a11y.act",
    "dev.kiki.media.previous",
    "dev.kiki.media.playPause",
    "dev.kiki.media.next",
    "dev.kiki.demo.*",
)
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
    # carries only the trees everyone (local peers and remote people) may subscribe to. Only the
    # demo app's tree goes there: in a desktop session the AT-SPI bridge publishes every app
    # (the terminal, the password manager), and none of those is for the people in a session.
    # The demo app names its app id itself, which the server takes from this user's processes
    # only under the [[publisher]] rule. (A rule naming `publishers` would miss a tree's first
    # appearance: the stream decides it before the tree's publisher is recorded.) The people
    # may act on the demo app only: an a11y-server that decides a relayed act for the person
    # (not the relay's uid) finds this rule, and nothing else for `remote:`.
    return (
        "# Written by `kiki up`: the demo app's tree goes to the sessions' screens, and the\n"
        "# sessions' people may act on it.\n"
        "[[publisher]]\n"
        f'principals = ["uid:{uid}"]\n'
        f'apps = ["{DEMO_APP_ID}"]\n'
        "\n"
        "[[allow]]\n"
        'principals = ["*", "remote:*"]\n'
        'rights = ["subscribe"]\n'
        f'apps = ["{DEMO_APP_ID}"]\n'
        "\n"
        "[[allow]]\n"
        'principals = ["remote:*"]\n'
        'rights = ["act"]\n'
        f'apps = ["{DEMO_APP_ID}"]\n'
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


@dataclass(frozen=True, slots=True)
class Shared:
    """The dashboard's URL, and its token's id (what `kiki session revoke` takes)."""

    url: str
    jti: str


async def mint(runtime_dir: Path, session: str) -> Shared:
    """The dashboard's URL for ``session`` with a controller token from the relay's admin
    channel (the relay mints it with the device's key)."""
    # Here, not at the top: `kiki up --help` and `kiki session` starts need no JSON-RPC stack.
    from libkiki.rpc import connect_unix

    async with asyncio.timeout(10), connect_unix(runtime_dir / ADMIN_SOCKET) as conn:
        shared = await conn.request(
            "dev.kiki.session.share",
            {"name": session, "role": "controller", "ttl": TOKEN_TTL, "sub": ""},
        )
    url = dashboard_url(str(shared["url"]), session, str(shared["token"]))
    return Shared(url, str(shared["jti"]))


async def announce(runtime_dir: Path, session: str, setup: DashboardSetup) -> list[str]:
    """The lines ``kiki up`` ends its start with."""
    try:
        shared = await mint(runtime_dir, session)
    except (KikiError, OSError, TimeoutError) as exc:
        return [f"no dashboard: the sync relay did not share session {session} ({exc})"]
    return lines(session, shared, setup)


def lines(session: str, shared: Shared, setup: DashboardSetup) -> list[str]:
    """What ``kiki up`` says of the dashboard it shared."""
    found = [
        f"the dashboard of this device (session {session}, a controller's link for 12 h):",
        f"  {shared.url}",
        f"  its token's id is {shared.jti}: `kiki session revoke {session} {shared.jti}` ends it",
    ]
    for policy in setup.policies:
        if not policy.written:
            needs = _NEEDS[policy.service]
            found.append(f"  it works through your {policy.service} policy {policy.path}: {needs}")
    return found


def not_ready(session: str, status: str) -> list[str]:
    """What ``kiki up`` says when the sync relay is not ready to share ``session``."""
    why = f" (its last status: {status})" if status else ""
    return [
        f"no dashboard for session {session}: the sync relay is not ready{why};"
        " `kiki session share " + session + " --dashboard` prints the URL once it is"
    ]


_NEEDS = {
    "tool-broker": "the relay as a [[delegate]], and an [[allow]] for remote:*",
    "a11y-server": (
        f'an [[allow]] of "subscribe" for "*" and "remote:*" on the app {DEMO_APP_ID} (and a'
        " [[publisher]] rule letting you name it), or no screen is shown, and one of"
        f' "act" for "remote:*" on it'
    ),
}
