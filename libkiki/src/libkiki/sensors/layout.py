"""Sample layouts: named, typed, fixed-size fields turned into a ``struct`` format and a hash.

A layout is what a ring's records carry after their sequence word and timestamp. Its hash (the
first 8 bytes of SHA-256 over the canonical form ``name:type,name:type,...``) is written into
the ring's header by the writer and checked by every reader before it reads a byte, so a reader
built for ``imu6`` never decodes a ring whose fields moved.

Kiki's own layouts are below and published as JSON in ``schemas/sensors/`` (written by
``python -m libkiki.sensors.layout --write schemas/sensors``; a test checks they agree).
Layouts derived at run time (IIO channels, external sensors) travel in ``sensors/list``.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from libkiki.errors import InvalidParams

# Field types and their struct codes (little-endian, standard sizes, no padding).
TYPES: Final[Mapping[str, str]] = {
    "i8": "b",
    "u8": "B",
    "i16": "h",
    "u16": "H",
    "i32": "i",
    "u32": "I",
    "i64": "q",
    "u64": "Q",
    "f32": "f",
    "f64": "d",
}
FLOAT_TYPES: Final = frozenset({"f32", "f64"})
MAX_FIELDS: Final = 64
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_LAYOUT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: str
    unit: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise InvalidParams(f"field name {self.name!r} must match {_NAME.pattern}")
        if self.type not in TYPES:
            raise InvalidParams(f"field {self.name}: unknown type {self.type!r}")


@dataclass(frozen=True, slots=True)
class Layout:
    """A sample layout. ``scale`` is the power of ten used when values travel as Lexicon
    integers (the broker tools): ``value * 10**scale``, rounded."""

    name: str
    fields: tuple[Field, ...]
    description: str = ""
    scale: int = 0
    codec: struct.Struct = field(init=False, repr=False, compare=False)
    hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _LAYOUT_NAME.match(self.name):
            raise InvalidParams(f"layout name {self.name!r} must match {_LAYOUT_NAME.pattern}")
        if not 1 <= len(self.fields) <= MAX_FIELDS:
            raise InvalidParams(f"layout {self.name}: 1 to {MAX_FIELDS} fields")
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise InvalidParams(f"layout {self.name}: duplicate field names")
        if not 0 <= self.scale <= 18:
            raise InvalidParams(f"layout {self.name}: scale must be 0..18")
        object.__setattr__(self, "codec", struct.Struct(self.format))
        object.__setattr__(self, "hash", layout_hash(self.name, self.fields))

    @property
    def format(self) -> str:
        return "<" + "".join(TYPES[f.type] for f in self.fields)

    @property
    def size(self) -> int:
        return struct.calcsize(self.format)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "hash": f"{self.hash:016x}",
            "format": self.format,
            "size": self.size,
            "scale": self.scale,
            "fields": [{"name": f.name, "type": f.type, "unit": f.unit} for f in self.fields],
        }

    @classmethod
    def from_json(cls, raw: Any) -> Layout:
        """A layout from its JSON form (a peer's input: every problem is InvalidParams)."""
        if not isinstance(raw, dict):
            raise InvalidParams("a layout is an object")
        fields = raw.get("fields")
        name = raw.get("name")
        scale = raw.get("scale", 0)
        if not isinstance(name, str) or not isinstance(fields, list):
            raise InvalidParams("a layout needs a name and a list of fields")
        if not isinstance(scale, int) or isinstance(scale, bool):
            raise InvalidParams("a layout's scale is an integer")
        parsed = []
        for f in fields:
            if not isinstance(f, dict) or not isinstance(f.get("name"), str):
                raise InvalidParams("each field is an object with a name and a type")
            ftype, unit = f.get("type"), f.get("unit", "")
            if not isinstance(ftype, str) or not isinstance(unit, str) or len(unit) > 32:
                raise InvalidParams(f"field {f['name']}: type and unit are short strings")
            parsed.append(Field(f["name"], ftype, unit))
        desc = raw.get("description", "")
        layout = cls(name, tuple(parsed), desc if isinstance(desc, str) else "", scale)
        claimed = raw.get("hash")
        if claimed is not None and claimed != f"{layout.hash:016x}":
            raise InvalidParams(f"layout {name}: hash {claimed} does not match its fields")
        return layout


def layout_hash(name: str, fields: Sequence[Field]) -> int:
    canonical = name + "|" + ",".join(f"{f.name}:{f.type}" for f in fields)
    return int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], "little")


def _layout(name: str, desc: str, scale: int, *fields: tuple[str, str, str]) -> Layout:
    return Layout(name, tuple(Field(n, t, u) for n, t, u in fields), desc, scale)


IMU6: Final = _layout(
    "imu6",
    "6-axis inertial sample: acceleration and angular rate",
    4,
    ("ax", "f32", "m/s^2"),
    ("ay", "f32", "m/s^2"),
    ("az", "f32", "m/s^2"),
    ("gx", "f32", "rad/s"),
    ("gy", "f32", "rad/s"),
    ("gz", "f32", "rad/s"),
)
CPU_LOAD: Final = _layout(
    "cpu-load",
    "Share of one CPU (or of all) spent per state since the previous sample, 0..1",
    4,
    ("busy", "f32", "1"),
    ("user", "f32", "1"),
    ("system", "f32", "1"),
    ("iowait", "f32", "1"),
    ("irq", "f32", "1"),
    ("steal", "f32", "1"),
)
MEMORY: Final = _layout(
    "memory",
    "/proc/meminfo: the figures that matter, in bytes",
    0,
    ("total", "u64", "B"),
    ("available", "u64", "B"),
    ("free", "u64", "B"),
    ("cached", "u64", "B"),
    ("swap_total", "u64", "B"),
    ("swap_free", "u64", "B"),
)
PRESSURE: Final = _layout(
    "pressure",
    "Pressure stall information of one resource: percentages and total stall time",
    2,
    ("some_avg10", "f32", "%"),
    ("some_avg60", "f32", "%"),
    ("some_avg300", "f32", "%"),
    ("some_total", "u64", "us"),
    ("full_avg10", "f32", "%"),
    ("full_avg60", "f32", "%"),
    ("full_avg300", "f32", "%"),
    ("full_total", "u64", "us"),
)
TEMPERATURE: Final = _layout(
    "temperature", "A thermal zone's temperature", 3, ("celsius", "f32", "Cel")
)
POWER_SUPPLY: Final = _layout(
    "power-supply",
    "A power supply; NaN where the kernel does not report a figure",
    3,
    ("online", "f32", "1"),
    ("capacity", "f32", "%"),
    ("voltage", "f32", "V"),
    ("current", "f32", "A"),
    ("power", "f32", "W"),
)

BUILTIN: Final[Mapping[str, Layout]] = {
    layout.name: layout for layout in (IMU6, CPU_LOAD, MEMORY, PRESSURE, TEMPERATURE, POWER_SUPPLY)
}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m libkiki.sensors.layout --write DIR``: publish the built-in layouts."""
    import argparse
    from pathlib import Path

    import orjson

    parser = argparse.ArgumentParser(prog="python -m libkiki.sensors.layout")
    parser.add_argument("--write", type=Path, required=True, metavar="DIR")
    args = parser.parse_args(argv)
    args.write.mkdir(parents=True, exist_ok=True)
    for layout in BUILTIN.values():
        doc = {
            "$comment": "generated by python -m libkiki.sensors.layout --write schemas/sensors",
            **layout.to_json(),
        }
        text = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"
        (args.write / f"{layout.name}.json").write_text(text)


if __name__ == "__main__":
    main()
