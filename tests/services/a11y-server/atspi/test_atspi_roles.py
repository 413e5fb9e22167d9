"""Roles Kiki's enum does not have, from a real app: they reach the a11y socket as ``unknown``
with AT-SPI's name for them (``Node.role_name``).

None of the shared desktop's apps (gtk3-widget-factory, the Qt example, Chromium's form) shows
such a role, so this starts a Chromium of its own on a page made of them (a block quote, a
description list, MathML, live regions, ...): web pages are where AT-SPI roles outside Kiki's
table turn up.
"""

from __future__ import annotations

import os
import shutil

import pytest

from kikitest.atspi_fixtures import (
    AtspiDesktop,
    atspi_desktop,  # noqa: F401 -- the session's desktop, shared by these tests
)
from libkiki.a11y import wire
from libkiki.a11y.client import Mirror, MirrorTree
from libkiki.a11y.render import render_text

pytestmark = pytest.mark.interop

PAGE = """<!doctype html><html><head><title>Roles</title></head><body>
<h1>Roles</h1>
<blockquote>Quoted words</blockquote>
<p>x<sup>2</sup> and H<sub>2</sub>O, <del>old</del> <ins>new</ins>.</p>
<dl><dt>Term</dt><dd>Its meaning</dd></dl>
<math><mi>x</mi><mo>=</mo><mn>1</mn></math>
<div role="log">Log line</div>
<div role="timer">0:10</div>
</body></html>
"""
# What AT-SPI calls the page's elements (Chromium's mapping; roles.ATSPI_ROLES spells them).
EXPECTED = {
    "block quote",
    "superscript",
    "subscript",
    "content deletion",
    "content insertion",
    "description list",
    "description term",
    "description value",
    "math",
    "log",
    "timer",
}


def unknown_roles(tree: MirrorTree) -> dict[str, wire.Node]:
    return {n.role_name: n for n in tree.nodes.values() if n.role_name}


def page_tree(mirror: Mirror, pid: int) -> MirrorTree | None:
    """The tree of the Chromium running as ``pid``, once the whole page is in it."""
    for tree in mirror:
        if tree.app.pid == pid and set(unknown_roles(tree)) >= EXPECTED:
            return tree
    return None


async def test_unmapped_roles_of_a_web_page_reach_the_socket_by_name(
    atspi_desktop: AtspiDesktop,  # noqa: F811
) -> None:
    browser = shutil.which("chromium")
    if browser is None:
        pytest.fail("chromium is not installed (scripts/install-test-deps installs it)")
    page = atspi_desktop.root / "roles.html"
    page.write_text(PAGE)
    proc = atspi_desktop.start_app(
        browser,
        "--force-renderer-accessibility",
        f"--user-data-dir={atspi_desktop.root / 'chromium-roles'}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-gpu",
        "--disable-extensions",
        "--password-store=basic",
        *(["--no-sandbox"] if os.geteuid() == 0 else []),  # its sandbox refuses root
        page.as_uri(),
    )
    try:
        # Another Chromium may be on the desktop: this one is the tree named for its process.
        async with atspi_desktop.tree_of("Chromium", within=60) as (client, _):
            tree = await client.wait_for(lambda m: page_tree(m, proc.pid), 60)
            named = unknown_roles(tree)
            assert all(n.role == wire.ROLES["unknown"] for n in named.values())
            quote = named["block quote"]
            assert any(
                tree.nodes[c].name == "Quoted words" for c in quote.children if c in tree.nodes
            )
            # The agent's outline names them, though they have no name of their own.
            outline = render_text([tree], max_nodes=10_000, max_chars=10**6).text
            assert f"unknown(block quote) [{tree.tree_id}:{quote.id}]" in outline
            assert 'unknown(description term) "Term"' in outline
            # Kiki's own roles still map: the heading is a heading, with no role name.
            headings = [n for n in tree.nodes.values() if n.role == wire.ROLES["heading"]]
            assert [(h.name, h.role_name) for h in headings] == [("Roles", "")]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
