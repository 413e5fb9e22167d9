"""The relay's settings as the environment gives them: the upstream link's and trusted keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiki_sync_relay.config import RelayConfig
from libkiki.config import load_config
from libkiki.errors import KikiError
from libkiki.sync.tokens import SigningKey

pytestmark = pytest.mark.unit


def test_upstream_settings_from_the_environment() -> None:
    jwk = SigningKey.generate().public_jwk()
    env = {
        "KIKI_CONFIG_DIR": "/nonexistent",
        "KIKI_SYNC_RELAY_UPSTREAM": "wss://edge.example.com",
        "KIKI_SYNC_RELAY_UPSTREAM_SESSIONS": "kitchen, hall",
        "KIKI_SYNC_RELAY_TRUSTED_KEYS": json.dumps([jwk]),
    }
    config = load_config(RelayConfig, "sync-relay", env)
    assert config.upstream == "wss://edge.example.com"
    assert config.upstream_sessions == ["kitchen", "hall"]
    assert config.trusted_keys == [jwk]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("UPSTREAM", "http://edge.example.com"),
        ("UPSTREAM", "wss://edge.example.com/session/x"),
        ("UPSTREAM_SESSIONS", "ok,not a name"),
        ("TRUSTED_KEYS", "not json"),
    ],
)
def test_bad_upstream_settings_are_refused(key: str, value: str) -> None:
    env = {"KIKI_CONFIG_DIR": "/nonexistent", f"KIKI_SYNC_RELAY_{key}": value}
    with pytest.raises(KikiError):
        load_config(RelayConfig, "sync-relay", env)


def test_the_state_is_systemds_state_directory_itself(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """StateDirectory=kiki/sync-relay is the relay's own: not nested once more inside it; under
    DynamicUser= it is named by a symlink into private/, which is followed."""
    config = load_config(RelayConfig, "sync-relay", {"KIKI_CONFIG_DIR": "/nonexistent"})
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("KIKI_STATE_DIR", "/var/lib/kiki")
    assert str(config.state_path()) == "/var/lib/kiki/sync-relay"
    real = tmp_path / "private" / "sync-relay"
    real.mkdir(parents=True)
    (tmp_path / "sync-relay").symlink_to(real)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "sync-relay"))
    assert config.state_path() == real


def test_device_link_settings_from_the_environment() -> None:
    env = {
        "KIKI_CONFIG_DIR": "/nonexistent",
        "KIKI_RUNTIME_DIR": "/run/test-kiki",
        "KIKI_SYNC_RELAY_LINK_SESSIONS": "home, local",
        "KIKI_SYNC_RELAY_LINK_TOOLS": "dev.kiki.a11y.*,dev.kiki.demo.*",
    }
    config = load_config(RelayConfig, "sync-relay", env)
    assert config.link_sessions == ["home", "local"]
    assert config.link_tools == ["dev.kiki.a11y.*", "dev.kiki.demo.*"]
    plain = load_config(RelayConfig, "sync-relay", {"KIKI_CONFIG_DIR": "/nonexistent"})
    assert plain.link_sessions == []
    assert plain.link_tools == ["*"]
    with pytest.raises(KikiError):
        load_config(RelayConfig, "sync-relay", {**env, "KIKI_SYNC_RELAY_LINK_SESSIONS": "a b"})
