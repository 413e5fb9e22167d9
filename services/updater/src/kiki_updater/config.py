"""The updater's settings: ``/etc/kiki/updater.toml`` or ``KIKI_UPDATER_<FIELD>``.

Every collection and number is bounded, so that a mistaken value is refused at load (exit 78,
naming the field) rather than costing memory or time per request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pydantic

from kiki_updater.health_unit import HealthRunner
from kiki_updater.names import is_name
from libkiki.config import ServiceConfig
from libkiki.paths import state_dir

MAX_REMOTES = 64
MAX_KEYS = 16
MAX_PRINCIPALS = 256


def _name(text: str) -> str:
    if not is_name(text):
        raise ValueError("a name: a letter or digit, then letters, digits, _ . - (64 at most)")
    return text


Name = Annotated[str, pydantic.AfterValidator(_name)]
Key = Annotated[str, pydantic.StringConstraints(pattern=r"^[A-Za-z0-9+/]{43}=$")]
PrincipalText = Annotated[str, pydantic.StringConstraints(min_length=1, max_length=255)]


class RemoteConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    # http(s)://… or an absolute path (pulled as file://, untrusted).
    url: str = pydantic.Field(min_length=1, max_length=4096, pattern=r"^(https?://|file:///|/)")
    # base64 ed25519 public keys a commit from here must be signed by (one is enough).
    ed25519_keys: list[Key] = pydantic.Field(default_factory=list, max_length=MAX_KEYS)
    # A GPG keyring file: libostree then checks commits and the summary itself.
    gpg_keyring: Path | None = None


class UpdaterConfig(ServiceConfig):
    # Where the repository and the deployments live; unset: <state dir>/ostree.
    root: Path | None = None
    # Remotes by name: what install's ``remote`` names.
    remotes: dict[Name, RemoteConfig] = pydantic.Field(default_factory=dict, max_length=MAX_REMOTES)
    # Operations whose blocking work (libostree, checkouts) runs at once, in worker threads;
    # more wait for a slot. Two on the same app are never both running (the second is refused).
    max_operations: int = pydantic.Field(default=2, ge=1, le=16)
    # Who may install, update, roll back and remove, besides Kiki's own services (root, this
    # service's uid, kiki-* system units): principals (libkiki.principals). Anyone who can
    # connect may list and read.
    managers: list[PrincipalText] = pydantic.Field(default_factory=list, max_length=MAX_PRINCIPALS)
    # Offer dev.kiki.update.* on the tool broker (libkiki's ToolProvider.keep_registered).
    broker_tools: bool = True
    # The broker's socket; unset: tools.sock in the runtime directory.
    broker_socket: str | None = pydantic.Field(default=None, max_length=4096)
    # Seconds between progress reports of a pull.
    progress_interval: float = pydantic.Field(default=0.25, ge=0.01, le=10)
    # Agents moved between devices: the file holding this device's ed25519 secret key (base64)
    # that exported agents are signed with, and the public keys an imported agent must be
    # signed by (none: every import is refused).
    agent_secret_key: Path | None = None
    agent_keys: list[Key] = pydantic.Field(default_factory=list, max_length=MAX_KEYS)
    # The bootc executable (a name looked up on PATH, or a path).
    bootc: str = pydantic.Field(default="bootc", min_length=1, max_length=4096)
    # Where a health command runs (kiki_updater.health_unit.HealthRunner). "process" with the
    # updater in a kiki-* system unit is refused for an app's check: the child would be taken
    # for Kiki's own service by its peers.
    health_runner: HealthRunner = "auto"

    def ostree_root(self) -> Path:
        return self.root if self.root is not None else state_dir() / "ostree"
