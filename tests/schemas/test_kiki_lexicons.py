"""Kiki's own published lexicons: lint clean, laid out by NSID, covering every service."""

from __future__ import annotations

import orjson
import pytest

from kikitest.lexicon_testdata import KIKI_LEXICONS
from libkiki.lexicon import Registry, document_path, lint_document
from libkiki.lexicon.model import ProcedureType, QueryType, SubscriptionType

pytestmark = pytest.mark.unit


def test_every_document_lints_clean_and_resolves(kiki: Registry) -> None:
    files = sorted(KIKI_LEXICONS.rglob("*.json"))
    assert len(files) == len(kiki)
    for file in files:
        doc, errors = lint_document(orjson.loads(file.read_bytes()), str(file))
        assert errors == [], file
        assert doc is not None
        assert file.relative_to(KIKI_LEXICONS) == document_path(doc.id), "laid out by NSID"
        assert doc.id.startswith("dev.kiki.")
    assert kiki.check() == []


@pytest.mark.parametrize(
    ("nsid", "kind"),
    [
        ("dev.kiki.service.getInfo", QueryType),
        ("dev.kiki.tools.listProviders", QueryType),
        ("dev.kiki.tools.readAuditLog", QueryType),
        ("dev.kiki.a11y.snapshot", QueryType),
        ("dev.kiki.a11y.find", QueryType),
        ("dev.kiki.a11y.act", ProcedureType),
        ("dev.kiki.sensor.list", QueryType),
        ("dev.kiki.sensor.read", QueryType),
        ("dev.kiki.media.playPause", ProcedureType),
        ("dev.kiki.media.next", ProcedureType),
        ("dev.kiki.media.previous", ProcedureType),
        ("dev.kiki.media.seek", ProcedureType),
        ("dev.kiki.media.nowPlaying", QueryType),
        ("dev.kiki.media.subscribePlayback", SubscriptionType),
        ("dev.kiki.notify.notify", ProcedureType),
        ("dev.kiki.notify.close", ProcedureType),
        ("dev.kiki.portal.networkStatus", QueryType),
        ("dev.kiki.portal.memory", SubscriptionType),
        ("dev.kiki.portal.powerProfile", QueryType),
        ("dev.kiki.portal.resolveProxy", QueryType),
        ("dev.kiki.portal.trashFile", ProcedureType),
        ("dev.kiki.update.list", QueryType),
        ("dev.kiki.update.install", ProcedureType),
        ("dev.kiki.update.update", ProcedureType),
        ("dev.kiki.update.rollback", ProcedureType),
        ("dev.kiki.update.status", QueryType),
        ("dev.kiki.update.migrate", ProcedureType),
    ],
)
def test_public_surface_is_published(kiki: Registry, nsid: str, kind: type) -> None:
    _, definition = kiki.resolve(nsid)
    assert isinstance(definition, kind)
    assert definition.description


def test_health_answer_fields(kiki: Registry) -> None:
    _, info = kiki.resolve("dev.kiki.service.defs#info")
    assert set(info.required) == {  # type: ignore[union-attr]
        "name",
        "version",
        "pid",
        "uptimeSeconds",
        "status",
        "counters",
    }
