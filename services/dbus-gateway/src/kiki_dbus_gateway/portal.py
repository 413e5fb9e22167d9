"""xdg-desktop-portal answers as the lexicon's values, and the Request handle protocol's paths.

Sans-I/O. The bus glue is :mod:`kiki_dbus_gateway.portal_bus`.

*Request/Response.* A portal method that asks the user (``OpenURI``) answers at once with the
object path of a Request and later emits ``Response(u code, a{sv} results)`` on it. The path is
predictable from the caller's unique name and the ``handle_token`` it passes, so the caller
subscribes to the ``Response`` *before* the call: a fast portal cannot answer into the void.
:func:`request_path` is that prediction; the portal's returned handle is checked against it.
"""

from __future__ import annotations

import itertools
import secrets
from typing import Any, Final

import orjson
from dbus_fast import Variant

PORTAL: Final = "org.freedesktop.portal.Desktop"
PORTAL_PATH: Final = "/org/freedesktop/portal/desktop"
IFACE: Final = "org.freedesktop.portal."
CONNECTIVITY: Final = {1: "local", 2: "limited", 3: "captive", 4: "full"}
COLOR_SCHEMES: Final = {0: "default", 1: "dark", 2: "light"}
CONTRASTS: Final = {0: "normal", 1: "high"}
APPEARANCE: Final = "org.freedesktop.appearance"
RESPONSES: Final = {0: "success", 1: "cancelled", 2: "ended"}
SETTINGS_EVENT: Final = "dev.kiki.portal.subscribeSettings#settingChanged"
MEMORY_EVENT: Final = "dev.kiki.portal.memory#lowMemoryWarning"
MAX_VALUE_JSON: Final = 8192
_tokens = itertools.count(1)


def new_token() -> str:
    """A ``handle_token``: letters, digits and underscores, unique per call."""
    return f"kiki{next(_tokens)}_{secrets.token_hex(4)}"


def request_path(unique_name: str, token: str) -> str:
    """Where the portal puts the Request for a call from ``unique_name`` with ``token``."""
    sender = unique_name.removeprefix(":").replace(".", "_")
    return f"{PORTAL_PATH}/request/{sender}/{token}"


def network_status(status: dict[str, Any]) -> dict[str, Any]:
    def value(key: str, signature: str, default: Any) -> Any:
        v = status.get(key)
        return v.value if isinstance(v, Variant) and v.signature == signature else default

    return {
        "available": bool(value("available", "b", False)),
        "metered": bool(value("metered", "b", False)),
        "connectivity": CONNECTIVITY.get(value("connectivity", "u", 0), "local"),
    }


def plain(value: Any, depth: int = 0) -> Any:
    """A D-Bus value as JSON (variants unwrapped, bytes as a list), bounded in depth."""
    if depth > 16:
        return None
    if isinstance(value, Variant):
        return plain(value.value, depth + 1)
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return list(value)
    return value


def appearance(settings: dict[str, Any]) -> dict[str, Any]:
    """The lexicon's ``settings`` from ``ReadAll``'s ``a{sa{sv}}``: what the backend set."""
    found = settings.get(APPEARANCE)
    out: dict[str, Any] = {}
    if not isinstance(found, dict):
        return out
    scheme = plain(found.get("color-scheme"))
    if isinstance(scheme, int):
        out["colorScheme"] = COLOR_SCHEMES.get(scheme, "default")
    contrast = plain(found.get("contrast"))
    if isinstance(contrast, int):
        out["contrast"] = CONTRASTS.get(contrast, "normal")
    accent = plain(found.get("accent-color"))
    if (
        isinstance(accent, list)
        and len(accent) == 3
        and all(isinstance(c, float) and 0 <= c <= 1 for c in accent)
    ):
        out["accentColor"] = "#" + "".join(f"{round(c * 255):02x}" for c in accent)
    return out


def setting_changed(body: list[Any]) -> dict[str, Any] | None:
    if len(body) != 3 or not all(isinstance(b, str) for b in body[:2]):
        return None
    namespace, key, value = body
    event = {"$type": SETTINGS_EVENT, "namespace": namespace[:256], "key": key[:256]}
    text = orjson.dumps(plain(value)).decode()
    if len(text) <= MAX_VALUE_JSON:
        event["valueJson"] = text
    return event
