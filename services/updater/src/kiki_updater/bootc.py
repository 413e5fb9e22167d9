"""The OS through bootc: its JSON status read, its commands run, its exit codes kept.

Every field Kiki shows comes from ``bootc status --format=json`` (``BootcHost``, apiVersion
``org.containers.bootc/v1`` or ``v1alpha1``): the deployments ``staged``, ``booted``,
``rollback`` and ``otherDeployments`` (pinned ones), each with its image reference, version,
digest, timestamp, pinned flag and ostree checksum. Nothing reboots unless the caller asked
(``apply``: bootc's ``--apply``).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Any

import orjson

from libkiki.errors import KikiError, Unavailable

__all__ = ["Bootc", "BootcFailed", "deployments", "reboot_required"]

TIMEOUT = 3600.0  # an upgrade pulls a whole image
MAX_OUTPUT = 8 << 20


class BootcFailed(KikiError):
    """bootc ran and failed: its exit status and the last line it wrote."""


@dataclass(frozen=True, slots=True)
class Bootc:
    executable: str = "bootc"

    def run(self, *args: str, timeout: float = TIMEOUT) -> str:
        try:
            done = subprocess.run(
                [self.executable, *args], capture_output=True, timeout=timeout, check=False
            )
        except FileNotFoundError:
            raise Unavailable(f"{self.executable} is not installed: not a bootc system") from None
        except subprocess.TimeoutExpired:
            raise BootcFailed(f"bootc {args[0]} did not end within {timeout:g} s") from None
        if done.returncode != 0:
            said = done.stderr.decode(errors="replace").strip().splitlines()
            raise BootcFailed(
                f"bootc {' '.join(args)} exited {done.returncode}"
                + (f": {said[-1][:300]}" if said else ""),
                data={"error": "BootcFailed", "exitStatus": done.returncode},
            )
        return done.stdout[:MAX_OUTPUT].decode(errors="replace")

    def status(self) -> dict[str, Any]:
        text = self.run("status", "--format=json", timeout=60)
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise BootcFailed(f"bootc status wrote no JSON document: {exc}") from None
        if not isinstance(doc, dict) or doc.get("kind") != "BootcHost":
            raise BootcFailed("bootc status wrote something other than a BootcHost")
        return doc

    def upgrade(self, *, check: bool = False, apply: bool = False) -> str:
        args = ["upgrade"] + (["--check"] if check else []) + (["--apply"] if apply else [])
        return self.run(*args)

    def switch(self, image: str, *, apply: bool = False) -> str:
        return self.run("switch", *(["--apply"] if apply else []), image)

    def rollback(self, *, apply: bool = False) -> str:
        return self.run("rollback", *(["--apply"] if apply else []))


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _view(entry: Any, role: str) -> dict[str, Any] | None:
    """``dev.kiki.update.defs#deployment`` from one of bootc's ``BootEntry``."""
    if not isinstance(entry, dict):
        return None
    image = _obj(entry.get("image"))
    reference = _obj(image.get("image"))
    view: dict[str, Any] = {
        "booted": role == "booted",
        "staged": role == "staged",
        "rollback": role == "rollback",
        "pinned": bool(entry.get("pinned", False)),
    }
    for key, source in (
        ("image", reference.get("image")),
        ("transport", reference.get("transport")),
        ("version", image.get("version")),
        ("digest", image.get("imageDigest")),
        ("timestamp", image.get("timestamp")),
        ("architecture", image.get("architecture")),
        ("checksum", _obj(entry.get("ostree")).get("checksum")),
    ):
        if isinstance(source, str) and source:
            view[key] = source
    return view


def deployments(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Staged, booted, rollback, then the other (pinned) deployments, as bootc names them."""
    status = _obj(doc.get("status"))
    found = [_view(status.get(role), role) for role in ("staged", "booted", "rollback")]
    others = status.get("otherDeployments")
    found += [_view(e, "other") for e in others] if isinstance(others, list) else []
    return [view for view in found if view is not None]


def reboot_required(doc: dict[str, Any]) -> bool:
    """A staged deployment waits for a reboot, or a rollback was queued."""
    status = _obj(doc.get("status"))
    return status.get("staged") is not None or bool(status.get("rollbackQueued"))
