"""The edge's configuration files agree with its code: every limit the Worker reads from a
binding is bound in workerd.capnp (else the tests could not set it) and documented."""

from __future__ import annotations

import re

import pytest

from kikitest import REPO

pytestmark = pytest.mark.unit

EDGE = REPO / "edge"


def limit_bindings() -> list[str]:
    source = (EDGE / "src" / "limits.js").read_text()
    block = source[source.index("const BINDINGS") :]
    block = block[: block.index("});")]
    return re.findall(r'"(KIKI_[A-Z_]+)"', block)


def test_the_limits_are_read_from_bindings() -> None:
    assert "KIKI_MAX_MESSAGE" in limit_bindings()
    assert len(limit_bindings()) >= 9


@pytest.mark.parametrize("binding", [*limit_bindings(), "KIKI_TRUSTED_KEYS"])
def test_each_binding_is_in_the_workerd_config_and_the_readme(binding: str) -> None:
    config = (EDGE / "workerd.capnp").read_text()
    assert f'(name = "{binding}", fromEnvironment = "{binding}")' in config
    assert f"`{binding}`" in (EDGE / "README.md").read_text()
