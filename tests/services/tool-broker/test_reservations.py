"""Which NSIDs stay reserved for whom, and how many (the registry, without sockets)."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

import pytest

from kiki_tool_broker.policy import Policy, Rule, installed_authority
from kiki_tool_broker.registry import Provider, Tool, ToolRegistry
from libkiki.errors import PermissionDenied
from libkiki.peer import PeerCred
from libkiki.principals import Principals, globs

pytestmark = pytest.mark.unit

MUSIC = PeerCred(10, 1000, 1000, "org.example.Music", app_user=1000)
OTHER = PeerCred(11, 1001, 1001)
ROOT = PeerCred(12, 0, 0)


def tool(nsid: str, provider: Provider) -> Tool:
    return Tool(nsid, "procedure", "", {}, None, False, provider)


def register(
    registry: ToolRegistry,
    cred: PeerCred,
    nsids: list[str],
    reserve: Collection[str] = (),
    kiki_service: bool = False,
) -> Provider:
    provider = Provider(f"pid {cred.pid}", cred)
    tools = [tool(n, provider) for n in nsids]
    registry.register(provider, tools, reserve=reserve, kiki_service=kiki_service)
    return provider


def test_only_the_nsids_whose_verdict_reserves_them_are_reserved(tmp_path: Path) -> None:
    # An installed app also granted org.shared.* by a [[provide]] rule registers one of each
    # in one request: its own NSID stays reserved, the shared one does not (both were).
    (tmp_path / "org.example.Music.json").write_text(json.dumps({"id": "org.example.Music"}))
    grant = Principals.parse(["uid:1000+app:org.example.Music", "uid:1001"])
    policy = Policy(provide=(Rule(grant, globs(["org.shared.*"]), True),))
    authority = installed_authority(tmp_path, MUSIC.app_id)
    wanted = ["org.example.Music.play", "org.shared.notify"]
    verdicts = {n: policy.may_provide(MUSIC, n, own_uid=999, authority=authority) for n in wanted}
    assert all(v.allowed for v in verdicts.values())
    reserve = {n for n, v in verdicts.items() if v.reserve}
    assert reserve == {"org.example.Music.play"}
    registry = ToolRegistry()
    music = register(registry, MUSIC, wanted, reserve=reserve)
    registry.remove_provider(music)
    register(registry, OTHER, ["org.shared.notify"])  # the rule grants it, and nobody holds it
    with pytest.raises(PermissionDenied, match="reserved for"):
        register(registry, OTHER, ["org.example.Music.play"])


def test_a_kiki_service_is_not_locked_out_by_a_reservation() -> None:
    # The a11y-server's unit reserved its NSIDs; root running the same tools by hand may take
    # them while the unit is down (anyone else still may not).
    unit = PeerCred(13, 0, 0, "kiki-a11y-server")
    registry = ToolRegistry()
    service = register(registry, unit, ["dev.kiki.a11y.act"], reserve={"dev.kiki.a11y.act"})
    registry.remove_provider(service)
    with pytest.raises(PermissionDenied):
        register(registry, OTHER, ["dev.kiki.a11y.act"])
    register(registry, ROOT, ["dev.kiki.a11y.act"], kiki_service=True)


def test_reservations_are_bounded() -> None:
    registry = ToolRegistry(max_reserved=3)
    for n in range(5):
        provider = register(
            registry, MUSIC, [f"org.example.Music.t{n}"], reserve={f"org.example.Music.t{n}"}
        )
        registry.remove_provider(provider)
    assert len(registry.reserved) == 3
    register(registry, OTHER, ["org.example.Music.t4"])  # past the bound: provided, not reserved
