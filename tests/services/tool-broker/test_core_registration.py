"""Registration decisions, without sockets: who may provide which NSID, which stay reserved
for whom and how many, the limits on one provider, and what tools/list shows whom."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from kiki_tool_broker.config import BrokerConfig
from kiki_tool_broker.core import BrokerCore
from kiki_tool_broker.policy import Policy, Rule
from kiki_tool_broker.protocol import encode_cursor
from kiki_tool_broker.registry import Provider, Tool, ToolRegistry
from kiki_tool_broker.schemas import Catalog
from kiki_tool_broker.tools import GET_INFO_TOOL
from kikitest.broker_lexicons import procedure
from libkiki.errors import Conflict, InvalidParams, NotFound, PermissionDenied
from libkiki.peer import PeerCred
from libkiki.principals import Principals, globs

pytestmark = pytest.mark.unit

BROKER = PeerCred(1, 999, 999, "kiki-tool-broker")
MUSIC = PeerCred(10, 1000, 1000, "org.example.Music", app_user=1000)
OTHER = PeerCred(11, 1001, 1001)
ROOT = PeerCred(12, 0, 0)
A11Y_UNIT = PeerCred(13, 0, 0, "kiki-a11y-server")  # a system unit of Kiki's: a Kiki service


def lexicons(*nsids: str) -> list[dict[str, object]]:
    return [procedure(n, {}, {"text": {"type": "string"}}, []) for n in nsids]


def make_core(tmp_path: Path, policy: Policy | None = None, **config: Any) -> BrokerCore:
    apps = tmp_path / "apps"
    apps.mkdir(exist_ok=True)
    (apps / "org.example.Music.json").write_text(json.dumps({"id": "org.example.Music"}))
    return BrokerCore(
        BrokerConfig(**config), Catalog.load(), policy or Policy(), apps_dir=apps, own=BROKER
    )


def register(core: BrokerCore, cred: PeerCred, nsids: list[str]) -> Provider:
    provider = core.provider(cred)
    core.register(provider, nsids, lexicons(*nsids))
    return provider


# -- who may provide what ----------------------------------------------------------------------


def test_an_installed_app_provides_under_its_authority_only(tmp_path: Path) -> None:
    core = make_core(tmp_path)
    register(core, MUSIC, ["org.example.Music.play"])
    with pytest.raises(PermissionDenied, match=r"not under org\.example\.Music") as refused:
        register(core, MUSIC, ["org.example.Music.stop", "org.example.Other.x"])
    # All or nothing: the NSID it may provide was not registered either.
    assert refused.value.data == {
        "nsids": ["org.example.Other.x"],
        "reasons": {"org.example.Other.x": refused.value.data["reasons"]["org.example.Other.x"]},
    }
    assert [t.nsid for t in core.registry if t.provider.cred == MUSIC] == ["org.example.Music.play"]


def test_dev_kiki_is_for_kikis_own_services(tmp_path: Path) -> None:
    core = make_core(tmp_path)
    with pytest.raises(PermissionDenied, match=r"dev\.kiki\.\* is provided only"):
        register(core, OTHER, ["dev.kiki.test.t"])
    register(core, A11Y_UNIT, ["dev.kiki.test.t"])


def test_only_the_nsids_whose_verdict_reserves_them_are_reserved(tmp_path: Path) -> None:
    # An installed app also granted org.shared.* by a [[provide]] rule registers one of each
    # in one request: its own NSID stays reserved, the shared one does not.
    shared = Rule(
        Principals.parse(["uid:1000+app:org.example.Music", "uid:1001"]),
        globs(["org.shared.*"]),
        True,
    )
    # OTHER may provide the app's NSIDs too, but for its reservation.
    other = Rule(Principals.parse(["uid:1001"]), globs(["org.example.Music.*"]), True)
    core = make_core(tmp_path, Policy(provide=(shared, other)))
    music = register(core, MUSIC, ["org.example.Music.play", "org.shared.notify"])
    assert core.registry.reserved == {"org.example.Music.play": music.identity}
    assert core.drop_provider(music) == ["org.example.Music.play", "org.shared.notify"]
    register(core, OTHER, ["org.shared.notify"])  # the rule grants it, and nobody holds it
    with pytest.raises(PermissionDenied, match="reserved for"):
        register(core, OTHER, ["org.example.Music.play"])


def test_a_kiki_service_is_not_locked_out_by_a_reservation(tmp_path: Path) -> None:
    # The a11y-server's unit reserved its NSIDs; root running the same tools by hand may take
    # them while the unit is down (anyone else still may not).
    core = make_core(
        tmp_path,
        Policy(provide=(Rule(Principals.parse(["*"]), globs(["org.example.a11y.*"]), True),)),
    )
    service = register(core, A11Y_UNIT, ["org.example.a11y.act"])
    core.drop_provider(service)
    with pytest.raises(PermissionDenied, match="reserved for app:kiki-a11y-server"):
        register(core, OTHER, ["org.example.a11y.act"])
    register(core, ROOT, ["org.example.a11y.act"])


def tool(nsid: str, provider: Provider) -> Tool:
    return Tool(nsid, "procedure", "", {}, None, False, provider)


def registered(
    registry: ToolRegistry, cred: PeerCred, nsids: list[str], reserve: Collection[str] = ()
) -> Provider:
    provider = Provider(f"pid {cred.pid}", cred)
    registry.register(provider, [tool(n, provider) for n in nsids], reserve=reserve)
    return provider


def test_reservations_are_bounded() -> None:
    registry = ToolRegistry(max_reserved=3)
    for n in range(5):
        nsid = f"org.example.Music.t{n}"
        registry.remove_provider(registered(registry, MUSIC, [nsid], reserve={nsid}))
    assert len(registry.reserved) == 3
    registered(registry, OTHER, ["org.example.Music.t4"])  # past the bound: provided, not reserved


# -- limits and params -------------------------------------------------------------------------


def test_a_provider_registers_at_most_its_limit_of_tools(tmp_path: Path) -> None:
    core = make_core(tmp_path, max_tools_per_provider=2)
    music = register(core, MUSIC, ["org.example.Music.a"])
    with pytest.raises(InvalidParams, match="at most 2 tools") as over:
        core.register(music, ["org.example.Music.b", "org.example.Music.c"])
    assert over.value.data == {"limit": 2}
    core.register(music, ["org.example.Music.b"], lexicons("org.example.Music.b"))


@pytest.mark.parametrize(
    ("tools", "max_in_flight", "message"),
    [
        ("org.example.Music.a", None, "tools must be a list of NSIDs"),
        ([1], None, "tools must be a list of NSIDs"),
        (["org.example.Music.a"], 0, "maxInFlight must be a positive integer"),
        (["org.example.Music.a"], True, "maxInFlight must be a positive integer"),
        (["org.example.Music.a"], "4", "maxInFlight must be a positive integer"),
    ],
)
def test_registration_params_of_the_wrong_type_are_refused(
    tmp_path: Path, tools: object, max_in_flight: object, message: str
) -> None:
    core = make_core(tmp_path)
    provider = core.provider(MUSIC)
    with pytest.raises(InvalidParams, match=message):
        core.register(provider, tools, lexicons("org.example.Music.a"), max_in_flight)
    assert len(core.registry) == 0


def test_an_nsid_named_twice_counts_once_and_a_taken_one_is_a_conflict(tmp_path: Path) -> None:
    core = make_core(tmp_path)
    music = core.provider(MUSIC)
    nsid = "org.example.Music.a"
    assert core.register(music, [nsid, nsid], lexicons(nsid)) == [nsid]
    with pytest.raises(Conflict, match="already registered"):
        core.register(music, [nsid])


def test_unregistering_takes_only_the_providers_own(tmp_path: Path) -> None:
    grant = Principals.parse(["*"])
    core = make_core(tmp_path, Policy(provide=(Rule(grant, globs(["org.shared.*"]), True),)))
    mine = register(core, MUSIC, ["org.shared.a", "org.shared.b"])
    theirs = register(core, OTHER, ["org.shared.c"])
    with pytest.raises(NotFound, match=r"org\.shared\.c \(registered by pid 11\)"):
        core.unregister(mine, ["org.shared.a", "org.shared.c"])
    assert core.unregister(mine, ["org.shared.a", "org.shared.a"]) == ["org.shared.a"]
    assert core.unregister(mine, []) == []
    assert core.drop_provider(theirs) == ["org.shared.c"]
    assert [t.nsid for t in core.registry] == ["org.shared.b"]


# -- what tools/list shows ---------------------------------------------------------------------


def test_tools_list_shows_what_the_caller_may_call_a_page_at_a_time(tmp_path: Path) -> None:
    core = make_core(tmp_path, list_page_size=2)
    core.register_own([GET_INFO_TOOL])
    nsids = [f"org.example.Music.t{n}" for n in range(3)]
    register(core, MUSIC, nsids)
    music = core.identify(MUSIC)  # its own tools; the broker's query needs group kiki
    first = core.list_tools(music, None, None)
    assert [t["name"] for t in first["tools"]] == nsids[:2]
    assert first["nextCursor"] == encode_cursor(nsids[1])
    rest = core.list_tools(music, first["nextCursor"], None)
    assert [t["name"] for t in rest["tools"]] == nsids[2:]
    assert "nextCursor" not in rest
    stranger = core.identify(OTHER)  # procedures of another user: none of them
    assert core.list_tools(stranger, None, None)["tools"] == []
    everything = core.list_tools(core.identify(ROOT), None, None)["tools"]
    assert [t["name"] for t in everything] == [GET_INFO_TOOL, *nsids[:1]]
    with pytest.raises(InvalidParams, match="invalid cursor"):
        core.list_tools(music, "!", None)
