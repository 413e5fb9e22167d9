"""What generated bindings import: base model, IPLD value types and Lexicon constraint hooks.

The constraints pydantic has no words for (UTF-8 byte lengths, grapheme counts, string formats,
``$type`` unions) are plain ``AfterValidator``/``Discriminator`` hooks calling the same checks as
:mod:`libkiki.lexicon.validator`, so a binding and the validator agree on what is valid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    StrictInt,
    StrictStr,
    field_validator,
    model_serializer,
)

from libkiki.lexicon import formats

__all__ = [
    "Blob",
    "Bytes",
    "CidLink",
    "LexModel",
    "NotNull",
    "OpenUnionMember",
    "Unknown",
    "blob_rule",
    "bytes_rule",
    "only_member",
    "string_rule",
    "union_discriminator",
]


def _reject_null(value: Any) -> Any:
    if value is None:
        raise ValueError("must not be null")
    return value


# An optional field that is not nullable may be left out but not sent as null; its Python
# type still says ``| None`` because leaving it out reads as None.
NotNull = BeforeValidator(_reject_null)


class LexModel(BaseModel):
    """Base of every generated model: Lexicon objects are open (unknown fields are kept).

    Dumped, an optional field that reads None is left out when it was left out (or when it is
    not nullable, so that None can only mean absent), and a nullable field's null is kept when
    it was given: ``model_dump(by_alias=True)`` is what the lexicon accepts, without
    ``exclude_none`` (which drops a required nullable field's null, and the lexicon then
    refuses the value).
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=())

    @classmethod
    def _optional_fields(cls) -> tuple[tuple[str, str, bool], ...]:
        """Each optional field: its name, its key when dumped by alias, and whether None can
        only mean absent (not nullable). Worked out at the first dump, once the module's
        forward references are resolved (before that, a field typed by a later class does not
        show its ``NotNull`` yet), and kept on the class itself, not inherited."""
        found = cls.__dict__.get("_lex_optional")
        if found is None:
            found = tuple(
                (name, field.alias or name, NotNull in field.metadata)
                for name, field in cls.model_fields.items()
                if not field.is_required()
            )
            type.__setattr__(cls, "_lex_optional", found)
        return found

    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            given = self.model_fields_set
            for name, alias, not_null in self._optional_fields():
                key = alias if alias in data else name
                if key in data and data[key] is None and (not_null or name not in given):
                    del data[key]
        return data


class Bytes(BaseModel):
    """Bytes in Lexicon's JSON form ``{"$bytes": "<base64>"}``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    data: StrictStr = Field(alias="$bytes")

    def size(self) -> int:
        text = self.data.rstrip("=")
        return len(text) * 3 // 4


class CidLink(BaseModel):
    """A CID link in Lexicon's JSON form ``{"$link": "<cid>"}``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    link: StrictStr = Field(alias="$link")

    @field_validator("link")
    @classmethod
    def _cid(cls, value: str) -> str:
        if not formats.is_cid(value):
            raise ValueError("must be a valid cid")
        return value


class Blob(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    lex_type: Literal["blob"] = Field(default="blob", alias="$type")
    ref: CidLink
    mime_type: StrictStr = Field(alias="mimeType")
    size: StrictInt = Field(ge=0)


class OpenUnionMember(LexModel):
    """A member of an open union whose ``$type`` this binding does not know."""

    lex_type: StrictStr = Field(alias="$type")


def _check_unknown(value: dict[str, Any]) -> dict[str, Any]:
    if "$bytes" in value or "$link" in value or value.get("$type") == "blob":
        raise ValueError("must be a plain object, not bytes, a CID link or a blob")
    return value


Unknown = Annotated[dict[str, Any], AfterValidator(_check_unknown)]


def string_rule(
    *,
    min_length: int | None = None,
    max_length: int | None = None,
    min_graphemes: int | None = None,
    max_graphemes: int | None = None,
    format: str | None = None,
) -> AfterValidator:
    check_format = formats.FORMATS[format] if format else None

    def check(value: str) -> str:
        size = formats.utf8_length(value)
        if max_length is not None and size > max_length:
            raise ValueError(f"must be at most {max_length} bytes")
        if min_length is not None and size < min_length:
            raise ValueError(f"must be at least {min_length} bytes")
        if min_graphemes is not None or max_graphemes is not None:
            count = formats.grapheme_count(value)
            if max_graphemes is not None and count > max_graphemes:
                raise ValueError(f"must be at most {max_graphemes} graphemes")
            if min_graphemes is not None and count < min_graphemes:
                raise ValueError(f"must be at least {min_graphemes} graphemes")
        if check_format is not None and not check_format(value):
            raise ValueError(f"must be a valid {format}")
        return value

    return AfterValidator(check)


def bytes_rule(*, min_length: int | None = None, max_length: int | None = None) -> AfterValidator:
    def check(value: Bytes) -> Bytes:
        size = value.size()
        if max_length is not None and size > max_length:
            raise ValueError(f"must be at most {max_length} bytes")
        if min_length is not None and size < min_length:
            raise ValueError(f"must be at least {min_length} bytes")
        return value

    return AfterValidator(check)


def blob_rule(
    *, accept: tuple[str, ...] | None = None, max_size: int | None = None
) -> AfterValidator:
    def check(value: Blob) -> Blob:
        if max_size is not None and value.size > max_size:
            raise ValueError(f"must be at most {max_size} bytes")
        if accept is not None and not any(
            p in ("*/*", value.mime_type)
            or (p.endswith("/*") and value.mime_type.startswith(p[:-1]))
            for p in accept
        ):
            raise ValueError(f"must be one of {', '.join(accept)}")
        return value

    return AfterValidator(check)


OPEN_TAG = "$open"


def _lex_type(value: Any) -> str | None:
    """A union member's ``$type`` (``#main`` dropped), or None without one."""
    kind = value.get("$type") if isinstance(value, dict) else getattr(value, "lex_type", None)
    if not isinstance(kind, str):
        return None
    return kind[:-5] if kind.endswith("#main") else kind


def union_discriminator(refs: tuple[str, ...], *, closed: bool) -> Discriminator:
    """Pick a union member by ``$type``; an open union sends unknown types to
    :class:`OpenUnionMember`, a closed one refuses them."""
    known = frozenset(refs)

    def tag(value: Any) -> str | None:
        kind = _lex_type(value)
        if kind is None:
            return None
        if kind in known:
            return kind
        return None if closed else OPEN_TAG

    discriminate: Callable[[Any], str | None] = tag
    return Discriminator(discriminate)


def only_member(ref: str) -> BeforeValidator:
    """A closed union of one member: the member itself, with its ``$type`` required, as the
    validator requires it of every union member (the model alone would default it)."""

    def check(value: Any) -> Any:
        if _lex_type(value) != ref:
            raise ValueError(f"$type must be {ref!r}, this union's only member")
        return value

    return BeforeValidator(check)
