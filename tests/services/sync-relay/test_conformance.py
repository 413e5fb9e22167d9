"""The sync conformance suite (pycrdt clients) against a real ``kiki-sync-relay`` process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kikitest.sync_conformance import PY_CHECKS, Check
from kikitest.sync_fixtures import DeviceRelay

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceRelay]:
    relay = DeviceRelay(Path(tmp_path_factory.mktemp("relay")))
    relay.start()
    yield relay
    relay.close()


@pytest.mark.parametrize("check", PY_CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_device_relay_conforms(device: DeviceRelay, check: Check) -> None:
    await check(device)
