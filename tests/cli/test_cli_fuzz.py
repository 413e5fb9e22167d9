"""Arbitrary command lines for every ``kiki`` command that ends by itself: each ends with an exit
status (a message when it is not 0), never with an exception a user would see as a traceback.

No service runs: the runtime directory is empty, so the commands that talk to one fail to reach
it, which is input too. ``up`` (starts services) and ``mcp`` (serves stdin) are left out, and
so are ``-`` (stdin) and the follow and watch loops' endless success paths, which cannot occur
without a service."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kiki_cli import main

pytestmark = pytest.mark.unit

NASTY = st.sampled_from(
    [
        *("nan", "inf", "-1", "0", "1e308", "99999999999999999999", "", " ", "%s", "é", "1.5"),
        *("a=b", "=", "1:1", "-1:-1", "4294967296:1", "role=button", "state=nope", "name~="),
        *("dev.kiki.media.seek", "dev.kiki.media.defs#track", "#", "a..b", "x"),
        *("/dev/null", "/dev/full", "/dev/zero", "/etc/passwd", "/proc/self/status", "."),
    ]
)
WORD = NASTY | st.text(st.characters(blacklist_characters="\x00", codec="utf-8"), max_size=12)

# command: (positional arguments it takes, flags, options that take a value)
COMMANDS: dict[str, tuple[int, list[str], list[str]]] = {
    "status": (2, ["--json"], ["--timeout", "--relay", "--runtime-dir"]),
    "schema lint": (2, ["--json"], ["--lexicons"]),
    "schema show": (1, ["--json"], ["--lexicons"]),
    "schema validate": (2, ["--json"], ["--part", "--lexicons"]),
    "schema gen": (2, ["--json"], ["--out", "--module", "--lexicons"]),
    "schema compat": (2, ["--json"], []),
    "app validate": (1, ["--json", "--allow-breaking"], ["--lexicons"]),
    "app install": (1, ["--json", "--allow-breaking"], ["--lexicons"]),
    "tools list": (0, ["--json"], []),
    "tools call": (3, [], ["--json", "--timeout"]),
    "tools log": (0, ["--json", "--verify"], ["--limit", "--file"]),
    "a11y dump": (0, ["--json", "--text"], ["--app", "--max-nodes", "--max-chars"]),
    "a11y find": (2, ["--json"], ["--app", "--limit"]),
    "a11y act": (3, [], []),
    "a11y watch": (0, ["--json"], ["--app", "--reconnect"]),
    "a11y capture": (1, [], ["--count", "--app"]),
    "sensors list": (0, ["--json"], []),
    "sensors stats": (0, ["--json"], []),
    "sensors watch": (1, ["--json", "--futex"], ["--count", "--rate"]),
    "media list": (0, ["--json"], []),
    "media status": (0, ["--json"], ["--player"]),
    "media play": (0, ["--json"], ["--player"]),
    "media seek": (1, ["--json"], ["--player"]),
    "media volume": (1, ["--json"], ["--player"]),
    "notify send": (2, ["--json"], ["--urgency", "--icon", "--action", "--expire", "--replace"]),
    "notify list": (0, ["--json"], ["--limit"]),
    "desktop settings": (0, ["--json"], []),
    "desktop network": (0, ["--json"], []),
    "desktop power": (0, ["--json"], []),
    "session list": (0, [], []),
    "session show": (1, [], []),
    "session share": (1, ["--json"], ["--role", "--ttl", "--sub"]),
    "session revoke": (2, [], []),
    "session dump": (1, [], []),
    "remote state": (1, ["--json"], ["--token", "--connect-timeout"]),
    "remote call": (3, ["--json"], ["--token", "--timeout", "--deadline", "--id"]),
    "remote watch": (1, ["--json"], ["--token", "--count", "--connect-timeout"]),
    "app list": (0, ["--json"], []),
    "app history": (1, ["--json"], []),
    "app rollback": (1, ["--json"], []),
    "app remove": (1, ["--json", "--keep-data"], []),
    "app update": (1, ["--json"], ["--remote"]),
    "app build": (1, ["--json", "--allow-breaking"], ["--repo", "--channel", "--arch"]),
    "os status": (0, ["--json"], []),
    "os check": (0, ["--json"], []),
    "agent export": (1, ["--json", "--full"], ["--out", "--destination"]),
    "agent import": (2, ["--json"], []),
}
GROUP_OPTIONS = {"tools": ["--socket"], "a11y": ["--socket", "--timeout"], "sensors": ["--socket"]}


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    """Mostly well-formed: the command's own options, with nasty values."""
    command = draw(st.sampled_from(sorted(COMMANDS)))
    positionals, flags, valued = COMMANDS[command]
    group, _, sub = command.partition(" ")
    argv = [group]
    for option in draw(st.lists(st.sampled_from(GROUP_OPTIONS.get(group, ["-"])), max_size=2)):
        if option != "-":
            argv += [option, draw(WORD)]
    argv += [sub] if sub else []
    argv += draw(st.lists(WORD, min_size=positionals, max_size=positionals))
    argv += draw(st.lists(st.sampled_from(flags), unique=True)) if flags else []
    for option in draw(st.lists(st.sampled_from(valued), max_size=2)) if valued else []:
        argv += [option, draw(WORD)]
    return [w for w in argv if w != "-"]


@pytest.fixture(autouse=True)
def nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    empty = Path(tempfile.mkdtemp(prefix="kiki-fuzz-", dir="/tmp"))
    monkeypatch.setenv("KIKI_RUNTIME_DIR", str(empty))
    monkeypatch.setenv("KIKI_STATE_DIR", str(empty / "state"))
    monkeypatch.setenv("KIKI_LEXICON_PATH", str(empty / "lexicons"))
    monkeypatch.delenv("KIKI_SESSION_TOKEN", raising=False)  # kiki remote: no token but the words
    monkeypatch.chdir(empty)  # relative paths among the words land here


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(argv=command_lines())
def test_any_command_line_ends_with_a_status_and_a_message(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        main(argv)
    code = ended.value.code
    said = capsys.readouterr()
    assert isinstance(code, int), (argv, code)
    event(f"{argv[0]} exit {code}")
    if code != 0:
        assert (said.out + said.err).strip(), f"{argv} exited {code} without a word"
