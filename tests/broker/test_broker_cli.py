"""Tier 2: `kiki tools` against the real broker."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import orjson

from kikitest import VENV_BIN


def kiki(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "kiki"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        check=False,
    )


def test_list_call_and_log(broker: tuple[Path, Any], sockdir: Path) -> None:
    path, _ = broker
    sock = ["tools", "--socket", str(path)]
    listed = kiki(*sock, "list")
    assert listed.returncode == 0, listed.stderr
    assert "dev.kiki.service.getInfo" in listed.stdout
    assert "query" in listed.stdout
    as_json = json.loads(kiki(*sock, "list", "--json").stdout)
    assert any(t["name"] == "dev.kiki.tools.readAuditLog" for t in as_json)

    info = kiki(*sock, "call", "dev.kiki.service.getInfo")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["name"] == "tool-broker"
    paged = kiki(*sock, "call", "dev.kiki.tools.readAuditLog", "limit=1", "verify=true")
    assert paged.returncode == 0, paged.stderr
    assert len(json.loads(paged.stdout)["entries"]) == 1
    from_stdin = kiki(
        *sock, "call", "dev.kiki.tools.readAuditLog", "--json", "-", stdin='{"limit": 2}'
    )
    assert from_stdin.returncode == 0, from_stdin.stderr

    bad = kiki(*sock, "call", "dev.kiki.tools.readAuditLog", "limit=0")
    assert bad.returncode == 1
    assert "input.limit: must be at least 1" in bad.stderr
    unknown = kiki(*sock, "call", "org.example.none")
    assert unknown.returncode == 1
    assert "unknown tool: org.example.none" in unknown.stderr
    malformed = kiki(*sock, "call", "dev.kiki.service.getInfo", "--json", "[1]")
    assert malformed.returncode == 1
    assert "--json must be a JSON object" in malformed.stderr

    log = kiki(*sock, "log", "--verify")
    assert log.returncode == 0, log.stderr
    assert "dev.kiki.service.getInfo ok" in log.stdout
    assert "chain intact" in log.stderr

    # Offline verification of the file spots an edited line.
    audit = sockdir / "state" / "audit.jsonl"
    lines = audit.read_bytes().splitlines()
    entry = orjson.loads(lines[0])
    entry["outcome"] = "denied"
    lines[0] = orjson.dumps(entry)
    audit.write_bytes(b"\n".join(lines) + b"\n")
    tampered = kiki("tools", "log", "--file", str(audit), "--verify")
    assert tampered.returncode == 1
    assert "line 1: hash mismatch: the entry was edited" in tampered.stderr


def test_broker_not_running(sockdir: Path) -> None:
    result = kiki("tools", "--socket", str(sockdir / "tools.sock"), "list")
    assert result.returncode == 1
    assert "cannot connect to" in result.stderr
    bridge = subprocess.run(
        [str(VENV_BIN / "kiki"), "mcp", "--socket", str(sockdir / "tools.sock")],
        capture_output=True,
        text=True,
        timeout=30,
        input="",
        check=False,
    )
    assert bridge.returncode == 1
    assert "cannot reach the tool broker" in bridge.stderr
