"""A client the a11y-server refuses is told why, as a typed error, and leaves nothing open."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from libkiki.a11y.client import A11yClient
from libkiki.a11y.publisher import A11yPublisher
from libkiki.errors import LimitExceeded

pytestmark = pytest.mark.integration


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize(
    "client",
    [A11yClient, A11yClient.subscribing, A11yPublisher],
    ids=["client", "subscribing", "publisher"],
)
async def test_a_client_over_the_limit_gets_the_refusal(
    a11y_server: Callable[..., tuple[Path, Any]],
    client: Callable[[Path], A11yClient | A11yPublisher],
) -> None:
    # Root is held only to the total: one connection is all it may have here.
    path, _ = a11y_server(max_connections=1)
    async with asyncio.timeout(20), A11yClient(path):
        before = _open_fds()
        with pytest.raises(LimitExceeded, match="connection"):
            async with client(path):
                pass
        assert _open_fds() == before
