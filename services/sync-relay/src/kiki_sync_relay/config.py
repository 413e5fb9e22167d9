"""The relay's settings: ``/etc/kiki/sync-relay.toml`` or ``KIKI_SYNC_RELAY_<FIELD>``."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pydantic

from kiki_sync_relay.limits import Limits
from libkiki.config import ServiceConfig
from libkiki.constellation import DEFAULT_RELAY_HOST, DEFAULT_RELAY_PORT
from libkiki.paths import TOOLS_SOCKET, runtime_dir, socket_path, state_dir
from libkiki.sync import ADMIN_SOCKET
from libkiki.sync.tokens import valid_session_name


class RelayConfig(ServiceConfig):
    # Where it binds when started by hand (systemd and `kiki up` pass the socket instead); port 0
    # takes any free port, which the status line then names.
    host: str = pydantic.Field(default=DEFAULT_RELAY_HOST, min_length=1, max_length=253)
    port: int = pydantic.Field(default=DEFAULT_RELAY_PORT, ge=0, le=65535)
    # The largest WebSocket message it takes, in bytes.
    max_message: int = pydantic.Field(default=1 << 20, ge=1024, le=1 << 26)
    # Where the documents, the signing key and the revocations live (default: systemd's
    # $STATE_DIRECTORY, else the state directory's sync-relay/).
    state: Path | None = None
    # The admin socket `kiki session` talks to (default: the runtime directory's).
    admin_socket: Path | None = None
    # The device id tokens carry as their issuer (default: the host name).
    device_id: str = pydantic.Field(default_factory=socket.gethostname, min_length=1)
    # Where a shared session's join URL points (default: ws://<host>:<port> it serves on).
    public_url: str | None = None
    max_sessions: int = pydantic.Field(default=1024, ge=1)
    max_clients: int = pydantic.Field(default=256, ge=1)
    max_document: int = pydantic.Field(default=64 << 20, ge=1024)
    # Awareness states (cursors, presence) one client may hold at once.
    max_awareness_clients: int = pydantic.Field(default=16, ge=1)
    # Messages a client may send per second, on average and at once.
    rate: float = pydantic.Field(default=500.0, gt=0)
    burst: float = pydantic.Field(default=2000.0, ge=1)
    # Bytes waiting unsent to one client before it counts as not reading and is dropped.
    send_buffer: int = pydantic.Field(default=4 << 20, ge=1 << 16)
    # Seconds a session without clients stays in memory before it hibernates.
    idle_timeout: float = pydantic.Field(default=30.0, gt=0)
    # Updates logged before a session's log is compacted into its snapshot.
    compact_every: int = pydantic.Field(default=1000, ge=1)
    # Seconds a client has to send its token when the URL carries none.
    auth_timeout: float = pydantic.Field(default=5.0, gt=0)
    # The edge (or another relay) the shared sessions link to: ws(s)://host[:port]; none: the
    # relay stands alone.
    upstream: str | None = pydantic.Field(default=None, pattern=r"^wss?://[^/?#\s]+/?$")
    # The sessions linked upstream (a list, or in the environment names separated by commas).
    upstream_sessions: list[str] = pydantic.Field(default_factory=list, max_length=1024)
    # The longest wait between two attempts to link a session upstream, in seconds.
    upstream_backoff_max: float = pydantic.Field(default=30.0, ge=0.5, le=3600)
    # Public keys (JWKs, OKP/Ed25519) whose tokens are accepted besides the relay's own: what
    # lets a device link to a relay standing in for the edge (in the environment, as JSON).
    trusted_keys: list[dict[str, str]] = pydantic.Field(default_factory=list)
    # The device link (link/): the sessions it serves as the device (a list, or in the
    # environment names separated by commas; none: no link).
    link_sessions: list[str] = pydantic.Field(default_factory=list, max_length=64)
    # The tool broker's socket (default: the runtime directory's tools.sock).
    broker_socket: Path | None = None
    # NSID globs of the tools an intent may name (also what the broker's policy allows).
    link_tools: list[str] = pydantic.Field(default_factory=lambda: ["*"], max_length=256)
    # Intents per second one person (an intent's by) may send, on average and at once.
    link_intent_rate: float = pydantic.Field(default=2.0, gt=0)
    link_intent_burst: float = pydantic.Field(default=10.0, ge=1)
    # Calls at once per session, and intents accepted but not finished per session.
    link_max_running: int = pydantic.Field(default=8, ge=1, le=256)
    link_max_pending: int = pydantic.Field(default=256, ge=1, le=4096)
    # Seconds one intent's call may take.
    link_call_timeout: float = pydantic.Field(default=30.0, gt=0)
    # Seconds a finished intent and its result stay, and how many are kept at most.
    link_keep: float = pydantic.Field(default=600.0, ge=1)
    # Seconds after its createdAt an intent is expired unrun; keep it below the broker's
    # idempotency_window by the clocks' difference allowed (README, the device link).
    link_intent_max_age: float = pydantic.Field(default=300.0, gt=0)
    link_max_entries: int = pydantic.Field(default=256, ge=1, le=4096)
    link_prune_every: float = pydantic.Field(default=30.0, gt=0)
    # The longest wait before the link connects to the broker (or opens a stream) again.
    link_backoff_max: float = pydantic.Field(default=30.0, ge=0.5, le=3600)

    @pydantic.field_validator("upstream_sessions", "link_sessions", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        if isinstance(value, str):
            value = [name.strip() for name in value.split(",") if name.strip()]
        if isinstance(value, list):
            for name in value:
                if not isinstance(name, str) or not valid_session_name(name):
                    raise ValueError(f"not a session name: {name!r}")
        return value

    @pydantic.field_validator("link_tools", mode="before")
    @classmethod
    def _globs(cls, value: object) -> object:
        if isinstance(value, str):
            value = [glob.strip() for glob in value.split(",") if glob.strip()]
        return value

    @pydantic.field_validator("trusted_keys", mode="before")
    @classmethod
    def _json(cls, value: object) -> object:
        return json.loads(value) if isinstance(value, str) else value

    def limits(self) -> Limits:
        return Limits(
            max_sessions=self.max_sessions,
            max_clients=self.max_clients,
            max_message=self.max_message,
            max_document=self.max_document,
            max_awareness_clients=self.max_awareness_clients,
            rate=self.rate,
            burst=self.burst,
        )

    def state_path(self) -> Path:
        if self.state is not None:
            return self.state
        if os.environ.get("STATE_DIRECTORY"):
            # systemd's StateDirectory=kiki/sync-relay: the relay's own directory already. With
            # DynamicUser= systemd names it by a symlink into /var/lib/private/: the directory
            # itself is what is checked and used.
            return state_dir().resolve()
        return state_dir() / "sync-relay"

    def broker_path(self) -> Path:
        return self.broker_socket or socket_path(TOOLS_SOCKET)

    def admin_path(self) -> Path:
        return self.admin_socket or runtime_dir() / ADMIN_SOCKET
