"""``kiki schema`` and ``kiki app`` through the real entry point."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kiki_cli import main
from kikitest import VENV_BIN
from kikitest.lexicon_testdata import KIKI_LEXICONS, data_path

pytestmark = pytest.mark.integration


def kiki(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out = capsys.readouterr().out
    code = exit_info.value.code
    assert isinstance(code, int)
    return code, out


@pytest.fixture(autouse=True)
def isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KIKI_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("KIKI_LEXICON_PATH", raising=False)
    return tmp_path / "state"


def test_lint_clean_and_broken(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert kiki(capsys, "schema", "lint", str(KIKI_LEXICONS))[0] == 0
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "lexicon": 1,
                "id": "com.example.bad",
                "defs": {
                    "main": {
                        "type": "object",
                        "properties": {"a": {"type": "ref", "ref": "#missing"}},
                    },
                },
            }
        )
    )
    code, out = kiki(capsys, "schema", "lint", str(bad), "--json")
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert report["problems"][0]["path"] == "defs.main.properties.a.ref"


def test_show(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = kiki(capsys, "schema", "show", "dev.kiki.media.defs#track", "--json")
    assert code == 0
    assert json.loads(out)["type"] == "object"
    assert kiki(capsys, "schema", "show", "dev.kiki.media.nothing")[0] == 2


def test_validate_file_and_stdin(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"offsetUs": 10}))
    assert kiki(capsys, "schema", "validate", "dev.kiki.media.seek", str(good))[0] == 0
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"offsetUs": "ten"}')))
    code, out = kiki(capsys, "schema", "validate", "dev.kiki.media.seek", "-", "--json")
    assert code == 1
    assert json.loads(out) == {
        "ok": False,
        "message": "input.offsetUs: must be an integer",
        "path": "input.offsetUs",
        "rule": "must be an integer",
    }


def test_lexicon_path_override(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIKI_LEXICON_PATH", str(tmp_path / "empty"))
    assert kiki(capsys, "schema", "show", "dev.kiki.media.seek")[0] == 2
    args = ("schema", "show", "app.bsky.feed.post", "--lexicons")
    assert kiki(capsys, *args, str(data_path("atproto-lexicons")))[0] == 0


def test_gen_writes_an_importable_module(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, _ = kiki(
        capsys, "schema", "gen", str(KIKI_LEXICONS / "dev" / "kiki" / "media"), "--out", str(out)
    )
    assert code == 0
    check = "import lexicons; print(len(lexicons.MODELS))"
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=out, capture_output=True, text=True, check=True
    )
    assert int(result.stdout) > 3
    first = (out / "lexicons.py").read_text()
    kiki(capsys, "schema", "gen", str(KIKI_LEXICONS / "dev" / "kiki" / "media"), "--out", str(out))
    assert (out / "lexicons.py").read_text() == first


def test_compat(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    old = KIKI_LEXICONS / "dev" / "kiki" / "media" / "seek.json"
    raw = json.loads(old.read_text())
    raw["defs"]["main"]["input"]["schema"]["required"].append("player")
    new = tmp_path / "seek.json"
    new.write_text(json.dumps(raw))
    assert kiki(capsys, "schema", "compat", str(old), str(old))[0] == 0
    code, out = kiki(capsys, "schema", "compat", str(old), str(new), "--json")
    assert code == 1
    (change,) = json.loads(out)["breaking"]
    assert change == {
        "document": "dev.kiki.media.seek",
        "path": "defs.main.input.schema.properties.player",
        "rule": "became required",
    }


def make_app(root: Path, app_id: str, bundle: bytes, tools: list[str]) -> Path:
    app = root / app_id
    (app / "components").mkdir(parents=True)
    (app / "components" / "card.js").write_bytes(bundle)
    lexdir = app / "lexicons" / Path(*app_id.split("."))
    lexdir.mkdir(parents=True)
    (lexdir / "card.json").write_text(
        json.dumps(
            {
                "lexicon": 1,
                "id": f"{app_id}.card",
                "defs": {
                    "main": {
                        "type": "object",
                        "properties": {
                            "track": {"type": "ref", "ref": "dev.kiki.media.defs#track"}
                        },
                    }
                },
            }
        )
    )
    (lexdir / "search.json").write_text(
        json.dumps(
            {
                "lexicon": 1,
                "id": f"{app_id}.search",
                "defs": {
                    "main": {
                        "type": "query",
                        "parameters": {
                            "type": "params",
                            "properties": {"q": {"type": "string", "maxGraphemes": 100}},
                        },
                    }
                },
            }
        )
    )
    manifest: dict[str, Any] = {
        "id": app_id,
        "version": "1.0.0",
        "tools": tools,
        "events": ["dev.kiki.media.subscribePlayback"],
        "components": [
            {
                "nsid": f"{app_id}.card",
                "bundle": "components/card.js",
                "sha256": hashlib.sha256(bundle).hexdigest(),
            }
        ],
        "permissions": [{"nsid": "dev.kiki.media.playPause", "reason": "play music"}],
    }
    (app / "kiki-app.json").write_text(json.dumps(manifest))
    return app


def test_app_validate_refuses_unpublished_type(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = make_app(tmp_path, "org.example.player", b"card", ["org.example.player.search"])
    assert kiki(capsys, "app", "validate", str(good))[0] == 0
    bad = make_app(tmp_path, "org.example.other", b"card", ["org.example.other.serch"])
    code, out = kiki(capsys, "app", "validate", str(bad))
    assert code == 1
    assert "manifest.tools[0]: org.example.other.serch is not a published lexicon" in out


def test_app_install_generates_bindings_and_dedups_components(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, isolated_state: Path
) -> None:
    # The install step the updater runs on a checkout (kiki app install DIR goes through the
    # updater: tests/cli/test_app_cli.py); here without one, on the directory itself.
    from libkiki.lexicon.install import install_app
    from libkiki.lexicon.registry import Registry

    first = make_app(tmp_path, "org.example.player", b"shared card", ["org.example.player.search"])
    report = install_app(first, isolated_state, Registry.from_search_path(None)[0])
    assert len(report.components_stored) == 1
    second = make_app(tmp_path, "org.example.radio", b"shared card", ["dev.kiki.media.seek"])
    report = install_app(second, isolated_state, Registry.from_search_path(None)[0])
    assert report.components_stored == ()
    assert len(report.components_shared) == 1
    stored = [p for p in (isolated_state / "components").iterdir() if p.name != "index.json"]
    assert len(stored) == 1
    index = json.loads((isolated_state / "components" / "index.json").read_text())
    assert index[stored[0].name]["apps"] == ["org.example.player", "org.example.radio"]
    # The first app's lexicons are now published: a third app may use them.
    third = make_app(tmp_path, "org.example.third", b"x", ["org.example.player.search"])
    assert kiki(capsys, "app", "validate", str(third))[0] == 0
    check = (
        "import kiki_apps.org_example_player as m; "
        "print(m.MODELS['org.example.player.card'].model_validate({'track': {'title': 't'}}))"
    )
    subprocess.run(
        [sys.executable, "-c", check],
        cwd=isolated_state / "bindings",
        check=True,
        capture_output=True,
    )


def test_console_script_runs() -> None:
    result = subprocess.run(
        [str(VENV_BIN / "kiki"), "schema", "lint", str(KIKI_LEXICONS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_reinstall_refuses_breaking_lexicon_change(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, isolated_state: Path
) -> None:
    from libkiki.errors import LexiconError
    from libkiki.lexicon.install import install_app
    from libkiki.lexicon.registry import Registry

    app = make_app(tmp_path, "org.example.player", b"card", ["org.example.player.search"])
    install_app(app, isolated_state, Registry.from_search_path(None)[0])
    search = app / "lexicons" / "org" / "example" / "player" / "search.json"
    raw = json.loads(search.read_text())
    raw["defs"]["main"]["parameters"]["properties"]["q"]["maxGraphemes"] = 10
    search.write_text(json.dumps(raw))
    # kiki app validate (and install, before asking the updater) sees it against what is installed
    code, out = kiki(capsys, "app", "validate", str(app))
    assert code == 1
    assert "q.maxGraphemes: breaking change: tightened from 100 to 10" in out
    with pytest.raises(LexiconError, match="breaking change"):
        install_app(app, isolated_state, Registry.from_search_path(None)[0])
    install_app(app, isolated_state, Registry.from_search_path(None)[0], allow_breaking=True)
