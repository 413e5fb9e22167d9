"""Lexicons of the test tools that providers in the broker tests serve."""

from __future__ import annotations

from typing import Any

ECHO = "org.example.test.echo"
SLOW = "org.example.test.slow"
BAD_OUTPUT = "org.example.test.badOutput"
COUNT = "org.example.test.count"


def procedure(
    nsid: str,
    input_props: dict[str, Any],
    output_props: dict[str, Any],
    required: list[str],
    description: str = "",
) -> dict[str, Any]:
    """A procedure lexicon whose output requires ``text``."""
    return {
        "lexicon": 1,
        "id": nsid,
        "defs": {
            "main": {
                "type": "procedure",
                "description": description or f"Test tool {nsid}.",
                "input": {
                    "encoding": "application/json",
                    "schema": {"type": "object", "required": required, "properties": input_props},
                },
                "output": {
                    "encoding": "application/json",
                    "schema": {"type": "object", "required": ["text"], "properties": output_props},
                },
            }
        },
    }


TEXT = {"text": {"type": "string", "maxGraphemes": 16}}
LEXICONS = [
    procedure(
        ECHO,
        {
            "text": {"type": "string", "maxGraphemes": 16},
            "delay": {"type": "integer", "minimum": 0},
        },
        TEXT,
        ["text"],
    ),
    procedure(SLOW, {}, TEXT, []),
    procedure(BAD_OUTPUT, {}, TEXT, []),
    procedure(COUNT, {"to": {"type": "integer", "minimum": 1, "maximum": 100}}, TEXT, ["to"]),
]
LEXICONS[3]["defs"]["destructive"] = {"type": "token", "description": "Counts loudly."}

TICKS = "org.example.test.ticks"
TICKS_LEXICON: dict[str, Any] = {
    "lexicon": 1,
    "id": TICKS,
    "defs": {
        "main": {
            "type": "subscription",
            "description": "Test stream: numbered ticks of a room.",
            "parameters": {
                "type": "params",
                "properties": {"room": {"type": "string", "maxLength": 16}},
            },
            "message": {
                "schema": {
                    "type": "object",
                    "required": ["n"],
                    "properties": {
                        "n": {"type": "integer", "minimum": 0},
                        "pad": {"type": "string"},
                    },
                }
            },
        }
    },
}
