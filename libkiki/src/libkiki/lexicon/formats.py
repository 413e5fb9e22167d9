"""The Lexicon string formats and grapheme counting.

Each checker takes a ``str`` and answers ``True`` when it is well formed. The rules follow the AT
Protocol specifications (atproto.com/specs) and the published interop vectors: where the two
disagree the vectors win, since they are what other implementations test against.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import cache
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import regex

_NSID: Final = re.compile(
    r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+"
    r"\.[a-zA-Z][a-zA-Z0-9]{0,62}"
)
_HANDLE: Final = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
)
_DID: Final = re.compile(r"did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]")
_TID: Final = re.compile(r"[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}")
_RECORD_KEY: Final = re.compile(r"[a-zA-Z0-9_~.:-]{1,512}")
_CID: Final = re.compile(r"[a-zA-Z0-9+=]{8,256}")
_URI: Final = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:\S+")
_DATETIME: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]{1,20})?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})"
)
_LANGUAGE: Final = re.compile(
    r"(?:en-GB-oed|i-ami|i-bnn|i-default|i-enochian|i-hak|i-klingon|i-lux|i-mingo|i-navajo"
    r"|i-pwn|i-tao|i-tay|i-tsu|sgn-BE-FR|sgn-BE-NL|sgn-CH-DE|art-lojban|cel-gaulish|no-bok"
    r"|no-nyn|zh-guoyu|zh-hakka|zh-min|zh-min-nan|zh-xiang)"
    r"|(?:[a-z]{2,3}(?:-[a-zA-Z]{3}){0,3}|[a-z]{5,8})"  # language, extlang
    r"(?:-[a-zA-Z]{4})?"  # script
    r"(?:-(?:[a-zA-Z]{2}|[0-9]{3}))?"  # region
    r"(?:-(?:[a-zA-Z0-9]{5,8}|[0-9][a-zA-Z0-9]{3}))*"  # variants
    r"(?:-[0-9a-wyzA-WYZ](?:-[a-zA-Z0-9]{2,8})+)*"  # extensions
    r"(?:-[xX](?:-[a-zA-Z0-9]{1,8})+)?"  # private use
    r"|[xX](?:-[a-zA-Z0-9]{1,8})+"
)

MAX_NSID_LENGTH: Final = 317
MAX_HANDLE_LENGTH: Final = 253
MAX_DID_LENGTH: Final = 2048
MAX_URI_LENGTH: Final = 8192


@cache
def _grapheme() -> regex.Pattern[str]:
    # Compiled on first use: the regex module costs more to import than the rest of a lexicon
    # load, and only a string with a *Graphemes limit needs it.
    import regex

    return regex.compile(r"\X")


def grapheme_count(value: str) -> int:
    """User-perceived characters (extended grapheme clusters), as Lexicon's *Graphemes count."""
    return len(_grapheme().findall(value))


def utf8_length(value: str) -> int:
    if value.isascii():
        return len(value)
    return len(value.encode("utf-8", "surrogatepass"))


def is_nsid(value: str) -> bool:
    return len(value) <= MAX_NSID_LENGTH and _NSID.fullmatch(value) is not None


def is_handle(value: str) -> bool:
    return len(value) <= MAX_HANDLE_LENGTH and _HANDLE.fullmatch(value) is not None


def is_did(value: str) -> bool:
    return len(value) <= MAX_DID_LENGTH and _DID.fullmatch(value) is not None


def is_at_identifier(value: str) -> bool:
    return is_did(value) if value.startswith("did:") else is_handle(value)


def is_tid(value: str) -> bool:
    return _TID.fullmatch(value) is not None


def is_record_key(value: str) -> bool:
    return value not in (".", "..") and _RECORD_KEY.fullmatch(value) is not None


def is_cid(value: str) -> bool:
    # A syntax check only: CIDv0 ("Qm…", base58 sha256) is not allowed in atproto data.
    if value.startswith("Qm") and len(value) == 46:
        return False
    return _CID.fullmatch(value) is not None


def is_uri(value: str) -> bool:
    return len(value) <= MAX_URI_LENGTH and _URI.fullmatch(value) is not None


def is_at_uri(value: str) -> bool:
    """The strict at-uri Lexicon fields take: authority, then optional collection and rkey."""
    if len(value) > MAX_URI_LENGTH or not value.startswith("at://") or "#" in value:
        return False
    parts = value[5:].split("/")
    if len(parts) > 3 or not is_at_identifier(parts[0]):
        return False
    if len(parts) >= 2 and not is_nsid(parts[1]):
        return False
    return len(parts) < 3 or is_record_key(parts[2])


_DAYS: Final = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_in_month(year: int, month: int) -> int:
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return 29 if month == 2 and leap else _DAYS[month - 1]


def is_datetime(value: str) -> bool:
    """RFC 3339 with the ISO 8601 restrictions atproto adds: upper-case T and Z, a timezone."""
    match = _DATETIME.fullmatch(value)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    zone = match.group(7)
    if zone == "-00:00":  # RFC 3339's "unknown offset" is not ISO 8601
        return False
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)):
        return False
    if hour > 23 or minute > 59 or second > 59:
        return False
    if zone != "Z":
        offset = int(zone[1:3]) * 60 + int(zone[4:6])
        if int(zone[1:3]) > 23:
            return False
        if year == 0 and zone[0] == "+":
            # Normalised to UTC the instant must not fall before year zero.
            day_of_year = sum(_DAYS[: month - 1]) + (month > 2) + day - 1
            if (day_of_year * 24 + hour) * 60 + minute < offset:
                return False
    return True


def is_language(value: str) -> bool:
    """A BCP 47 tag, also refusing a repeated variant or extension singleton (RFC 5646 2.2.9)."""
    if _LANGUAGE.fullmatch(value) is None:
        return False
    seen_variants: set[str] = set()
    seen_singletons: set[str] = set()
    in_extension = False
    for subtag in value.lower().split("-")[1:]:
        if subtag == "x":
            break
        if len(subtag) == 1:
            if subtag in seen_singletons:
                return False
            seen_singletons.add(subtag)
            in_extension = True
        elif not in_extension and (len(subtag) >= 5 or (len(subtag) == 4 and subtag[0].isdigit())):
            if subtag in seen_variants:
                return False
            seen_variants.add(subtag)
    return True


FORMATS: Final[Mapping[str, Callable[[str], bool]]] = {
    "at-identifier": is_at_identifier,
    "at-uri": is_at_uri,
    "cid": is_cid,
    "datetime": is_datetime,
    "did": is_did,
    "handle": is_handle,
    "language": is_language,
    "nsid": is_nsid,
    "record-key": is_record_key,
    "tid": is_tid,
    "uri": is_uri,
}
