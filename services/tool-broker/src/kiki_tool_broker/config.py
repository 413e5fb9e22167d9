"""The broker's settings: ``/etc/kiki/tool-broker.toml`` or ``KIKI_TOOL_BROKER_<FIELD>``
(e.g. ``KIKI_TOOL_BROKER_CALL_TIMEOUT=10``), read once at start.

Every number is bounded, so a typo fails the start with the field's name (exit status 78)
instead of running a broker that refuses everything or holds without limit.
"""

from __future__ import annotations

from pathlib import Path

import pydantic

from kiki_tool_broker.policy import installed_apps_dir
from kiki_tool_broker.schemas import MAX_DOCUMENTS_PER_PROVIDER
from libkiki.config import ServiceConfig
from libkiki.paths import config_dir


class BrokerConfig(ServiceConfig):
    # Seconds a provider has to answer a forwarded call; then the call is cancelled (-32006).
    call_timeout: float = pydantic.Field(default=30.0, gt=0, le=3600)
    policy_file: str = ""  # default: <config dir>/tool-policy.toml
    max_tools_per_provider: int = pydantic.Field(default=512, ge=1, le=1 << 16)
    max_lexicons_per_provider: int = pydantic.Field(
        default=MAX_DOCUMENTS_PER_PROVIDER, ge=1, le=1 << 16
    )
    # Tools per tools/list page (nextCursor for the rest).
    list_page_size: int = pydantic.Field(default=500, ge=1, le=10_000)
    # subscriptions/listen streams open at once, all connections together.
    max_listen_streams: int = pydantic.Field(default=64, ge=1, le=1 << 16)
    # MCP hosts served on their own pipes (kiki mcp hands them over), all users together.
    max_stdio_sessions: int = pydantic.Field(default=32, ge=1, le=1 << 12)
    # Event streams (see the README's "Event streams"): subscriptions on the broker and on one
    # connection, each subscriber's queue (messages and bytes: past either, its oldest queued
    # messages are dropped and it is told how many), and one message's size.
    stream_max_subscriptions: int = pydantic.Field(default=1024, ge=1, le=1 << 20)
    stream_max_per_connection: int = pydantic.Field(default=64, ge=1, le=1 << 16)
    stream_queue_messages: int = pydantic.Field(default=256, ge=1, le=1 << 16)
    stream_queue_bytes: int = pydantic.Field(default=256 * 1024, ge=1024, le=64 << 20)
    stream_max_message_bytes: int = pydantic.Field(default=64 * 1024, ge=256, le=16 << 20)
    # Idempotent retries (the README's "Idempotent retries"): how long a keyed call's answer is
    # kept for its retries, and how many answers and bytes at most (past either, the oldest
    # are forgotten, and their retries run again).
    idempotency_window: float = pydantic.Field(default=600.0, gt=0, le=86_400)
    idempotency_max_entries: int = pydantic.Field(default=4096, ge=1, le=1 << 20)
    idempotency_max_bytes: int = pydantic.Field(default=16 << 20, ge=64 << 10, le=1 << 30)
    # Keyed calls kept running after their caller left (a relay that crashed mid-call), so
    # that a retry gets their answer instead of running the tool again: at most this many at
    # once; past it such a call is cancelled, as an unkeyed one is, and its key forgotten.
    max_detached_calls: int = pydantic.Field(default=256, ge=0, le=1 << 16)
    apps_dir: str = ""  # installed app manifests; default: where `kiki app install` puts them

    def policy_path(self) -> Path:
        return Path(self.policy_file) if self.policy_file else config_dir() / "tool-policy.toml"

    def apps_path(self) -> Path:
        return Path(self.apps_dir) if self.apps_dir else installed_apps_dir()
