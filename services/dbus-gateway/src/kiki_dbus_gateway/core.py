"""The health answer as D-Bus values: ``ServiceContext.info()`` in, ``a{sv}`` out.

Sans-I/O: no bus, no loop. The lexicon's ``dev.kiki.service.defs#info`` fields, each with the
D-Bus type ``busctl`` and ``kiki status`` read: ``pid`` u, ``uptimeSeconds`` t, ``counters``
a{sx}, the rest s.
"""

from __future__ import annotations

from typing import Any

from dbus_fast import Variant


def info_variants(info: dict[str, Any]) -> dict[str, Variant]:
    return {
        "name": Variant("s", info["name"]),
        "version": Variant("s", info["version"]),
        "pid": Variant("u", info["pid"]),
        "uptimeSeconds": Variant("t", int(info["uptimeSeconds"])),
        "status": Variant("s", info["status"]),
        "statusText": Variant("s", info["statusText"]),
        "counters": Variant("a{sx}", {k: int(v) for k, v in info["counters"].items()}),
    }
