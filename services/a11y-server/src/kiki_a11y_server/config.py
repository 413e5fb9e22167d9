"""The a11y-server's settings: ``/etc/kiki/a11y-server.toml`` or ``KIKI_A11Y_SERVER_<FIELD>``.

Every field is bounded both ways, so that a typo cannot turn a limit into no limit: a value out
of range stops the service at start with the field named.
"""

from __future__ import annotations

import pydantic

from libkiki.config import ServiceConfig

_MiB = 1 << 20


class A11yConfig(ServiceConfig):
    # The size prefix is a uint32; past 1 GiB a single frame is a denial of service anyway.
    max_frame: int = pydantic.Field(default=16 * _MiB, ge=4096, le=1024 * _MiB)
    # Bytes of unfinished frames held for all connections together, and a quarter of that (at
    # least one max_frame) per uid; a peer whose frame would go past either gets -32005.
    max_buffered_bytes: int = pydantic.Field(default=128 * _MiB, ge=1 << 16, le=16384 * _MiB)
    max_nodes_per_frame: int = pydantic.Field(default=100_000, ge=1, le=10_000_000)
    max_tree_nodes: int = pydantic.Field(default=200_000, ge=1, le=10_000_000)
    max_tree_depth: int = pydantic.Field(default=512, ge=1, le=65_536)
    # A subscriber's coalesced backlog beyond which it is told to resync.
    max_pending_bytes: int = pydantic.Field(default=4 * _MiB, ge=1024, le=4096 * _MiB)
    # A subscriber's backlog of distinct trees (updates and removals) beyond which it resyncs.
    max_pending_trees: int = pydantic.Field(default=1024, ge=1, le=1 << 20)
    # A subscriber transport's buffer beyond which updates wait (and coalesce).
    write_buffer: int = pydantic.Field(default=_MiB, ge=4096, le=1024 * _MiB)
    # Seconds an app has to answer an action it was sent.
    action_timeout: float = pydantic.Field(default=5.0, gt=0, le=3600)
    # Per connection, and for all of the broker's `act` tool calls together.
    max_actions_in_flight: int = pydantic.Field(default=16, ge=1, le=65_536)
    # Offer dev.kiki.a11y.* tools on the broker's tools.sock, registering again whenever the
    # broker comes back (libkiki's ToolProvider.keep_registered); false: no broker tools.
    broker_tools: bool = True
    # dev.kiki.a11y.subscribeChanges: each upstream emits at most once per interval (seconds),
    # a tree's changes merging meanwhile; an entry past max ids becomes one resend of the tree.
    changes_interval: float = pydantic.Field(default=0.1, ge=0.01, le=60)
    changes_max_pending_ids: int = pydantic.Field(default=4096, ge=16, le=1 << 20)
    # JSON per message, under the broker's stream_max_message_bytes (64 KiB by default).
    changes_max_message_bytes: int = pydantic.Field(default=32 * 1024, ge=1024, le=16 * _MiB)
    # Who may read, subscribe to and act on which tree; default <config dir>/a11y-policy.toml.
    policy_file: str = pydantic.Field(default="", max_length=4096)
