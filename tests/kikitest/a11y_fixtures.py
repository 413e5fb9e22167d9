"""Fixtures for the a11y tests (registered in tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kikitest import REPO, VENV_BIN
from libkiki.a11y import wire
from libkiki.a11y.schema import SCHEMA as DESC
from libkiki.flatbuf import schema

FLATC = VENV_BIN / "flatc"
SCHEMA = REPO / "schemas" / "a11y.fbs"

R = wire.ROLES
A = wire.ACTIONS
S = wire.STATES


def form_tree() -> list[wire.Node]:
    """A window with a form: 1 window > 2 form > (3 field, 4 wrapper > (5 Save, 6 Cancel))."""
    return [
        wire.Node(1, R["window"], "Editor", children=(2,), bounds=(0, 0, 800, 600)),
        wire.Node(2, R["form"], "Form", children=(3, 4)),
        wire.Node(
            3,
            R["textField"],
            "Title",
            value="draft",
            states=S["focusable"] | S["editable"],
            actions=(A["setValue"], A["focus"]),
        ),
        wire.Node(4, R["generic"], children=(5, 6)),
        wire.Node(5, R["button"], "Save", states=S["focusable"], actions=(A["press"],)),
        wire.Node(6, R["button"], "Cancel", actions=(A["press"],)),
    ]


def big_tree(count: int, fanout: int = 10) -> list[wire.Node]:
    """``count`` nodes in a tree where node i's parent is (i - 2) // fanout + 1."""
    children: dict[int, list[int]] = {i: [] for i in range(1, count + 1)}
    for i in range(2, count + 1):
        children[(i - 2) // fanout + 1].append(i)
    roles = (R["button"], R["label"], R["listItem"], R["textField"], R["group"])
    return [
        wire.Node(
            i,
            R["window"] if i == 1 else roles[i % len(roles)],
            f"node {i}",
            "" if i % 3 else f"description of {i}",
            "" if i % 4 else f"value {i}",
            S["focusable"] if i % 2 else 0,
            (i % 800, i % 600, 100, 20),
            (A["press"], A["focus"]) if i % 5 == 0 else (),
            tuple(children[i]),
        )
        for i in range(1, count + 1)
    ]


def flatc_json(frame: bytes, *, size_prefixed: bool = False) -> dict[str, Any] | None:
    """The independent decoder: ``flatc --json`` on one buffer; ``None`` when flatc refuses it."""
    with tempfile.TemporaryDirectory(prefix="kiki-flatc-") as tmp:
        path = Path(tmp) / "frame.bin"
        path.write_bytes(frame)
        cmd = [str(FLATC), "--json", "--strict-json", "--raw-binary", "-o", tmp]
        if size_prefixed:
            cmd.append("--size-prefixed")
        proc = subprocess.run(
            [*cmd, str(SCHEMA), "--", str(path)], capture_output=True, timeout=30, check=False
        )
        out = Path(tmp) / "frame.json"
        if proc.returncode != 0 or not out.exists():
            return None
        doc: dict[str, Any] = json.loads(out.read_text())
        return doc


def split_frames(data: bytes) -> list[bytes]:
    """A capture file (concatenated size-prefixed buffers) as its frames, prefix included."""
    frames = []
    pos = 0
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + 4], "little")
        frames.append(data[pos : pos + 4 + size])
        pos += 4 + size
    assert pos == len(data), "the capture ends inside a frame"
    return frames


@pytest.fixture
def a11y_server(
    sockdir: Path, spawn_service: Any
) -> Callable[..., tuple[Path, subprocess.Popen[bytes]]]:
    """Start a real kiki-a11y-server in ``sockdir`` (settings as KIKI_A11Y_SERVER_* values)."""

    def start(**settings: Any) -> tuple[Path, subprocess.Popen[bytes]]:
        # spawn_service pipes stderr and nobody reads it: at DEBUG, a few hundred connections
        # fill the pipe and the server blocks on its own log. Warnings only, then.
        env = {"KIKI_A11Y_SERVER_BROKER_TOOLS": "false", "KIKI_LOG_LEVEL": "WARNING"}
        env.update({f"KIKI_A11Y_SERVER_{k.upper()}": str(v) for k, v in settings.items()})
        proc, notes = spawn_service("a11y-server", extra_env=env)
        notes.wait_for("READY")
        return sockdir / "a11y.sock", proc

    return start


def demo_env(sockdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIKI_")}
    env["KIKI_RUNTIME_DIR"] = str(sockdir)
    return env


def normalize(value: Any) -> Any:
    """Drop what flatc and we may legitimately differ on: defaults present or absent."""
    if isinstance(value, dict):
        return {
            k: normalize(v)
            for k, v in value.items()
            if v not in (0, "", [], False, None, "unknown", "none", "NONE")
        }
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


def as_flatc(obj: Any, table: str) -> Any:
    """Our decoded value in flatc's JSON form, driven by the same description."""
    desc = DESC.tables[table]
    values = list(DESC.encoder_of(obj)[1](obj)) if type(obj) is not tuple else list(obj)
    out: dict[str, Any] = {}
    it = iter(values)
    for f in desc.fields:
        if f.kind == schema.UTYPE:
            continue
        v = next(it)
        match f.kind:
            case schema.ENUM:
                out[f.name] = {n: k for k, n in DESC.enums[f.ref].values.items()}[v]
            case schema.FLAGS:
                names = [k for k, bit in DESC.enums[f.ref].values.items() if v & bit]
                out[f.name] = " ".join(names) if names else 0
            case schema.VEC_ENUM:
                inv = {n: k for k, n in DESC.enums[f.ref].values.items()}
                out[f.name] = [inv[x] for x in v]
            case schema.STRUCT:
                if v is not None:
                    out[f.name] = dict(zip(DESC.structs[f.ref].fields, v, strict=True))
            case schema.TABLE:
                if v is not None:
                    out[f.name] = as_flatc(v, f.ref)
            case schema.VEC_TABLE:
                out[f.name] = [as_flatc(x, f.ref) for x in v]
            case schema.UNION:
                if v is not None:
                    member = type(v).__name__
                    out[f.name + "_type"] = member
                    out[f.name] = as_flatc(v, member)
            case (
                schema.SCALAR | schema.BOOL | schema.STRING | schema.VEC_SCALAR | schema.VEC_STRING
            ):
                out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def message_as_flatc(message: wire.Message) -> dict[str, Any]:
    body = as_flatc(message, type(message).__name__)
    return {"request_id": message.request_id, "body_type": type(message).__name__, "body": body}


# One of every message kind, for round trips and for flatc.
APP = wire.App(7, "org.example.Editor", 4242, 1000, "app-org.example.Editor.service", "Editor")

MESSAGES: list[wire.Message] = [
    wire.Hello(1, wire.PROTOCOL_VERSION, "agent"),
    wire.GetInfo(2),
    wire.Info(3, "a11y-server", "0.1.0", 42, 1234, "ok", (("requests", 5), ("errors", 0))),
    wire.Error(4, -32600, "bad frame"),
    wire.TreeUpdate(5, 7, 3, 2, 0, 1, tuple(form_tree()), (9, 10), wire.CAUSES["agent"], APP),
    wire.Ack(6, 7, 3),
    wire.Subscribe(7, ("a", "b"), 7, 2, (wire.ROLES["button"],), 3),
    wire.Snapshot(8, (wire.TreeUpdate(0, 7, 3, 0, 0, 1, tuple(form_tree()), (), 0, APP),)),
    wire.TreeGone(9, 7, APP),
    wire.Query(10, 7, "x", wire.ROLES["button"], "Save", "sav", wire.STATES["focusable"], 5),
    wire.QueryResult(11, tuple(form_tree()[:2]), 2),
    wire.ActionRequest(12, 7, 5, wire.ACTIONS["setValue"], "héllo ✓", 250),
    wire.ActionResult(13, "done"),
    wire.Resync(14, 7, "gap"),
]
