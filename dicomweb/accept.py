"""A request's Accept header (RFC 9110 12.5.1) as media ranges, most preferred first.

WADO-RS negotiates on more than the media type: a ``multipart/related`` range
names the type of its parts and their transfer syntax (PS3.18 8.7.3), as in
``multipart/related; type="application/dicom"; transfer-syntax=*``. Values may
be quoted or not (OHIF sends them bare).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class MediaRange:
    """One item of an Accept header: its media range, its parameters (``q`` apart) and its weight."""

    media_type: str
    """Lower case, e.g. ``multipart/related``, ``application/*``, ``*/*``."""
    params: Mapping[str, str]
    """Parameter names in lower case, values unquoted (``type``, ``transfer-syntax``, ...)."""
    q: float = 1.0


def _split(text: str, separator: str) -> Iterator[str]:
    """``text`` split at ``separator`` where it is not inside a quoted string."""
    start, quoted, escaped = 0, False, False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            yield text[start:i]
            start = i + 1
    yield text[start:]


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def _weight(value: str) -> float:
    try:
        q = float(value)
    except ValueError:
        return 1.0  # a weight that is not a number is read as none given
    return min(max(q, 0.0), 1.0)


def parse_accept(header: str | None) -> list[MediaRange]:
    """The acceptable media ranges of ``header``, most preferred first (by weight, then as listed).

    No header, or an empty one, accepts anything (``*/*``); ranges of weight 0 are not acceptable
    and left out.
    """
    if header is None or not header.strip():
        return [MediaRange("*/*", {})]
    ranges: list[MediaRange] = []
    for item in _split(header, ","):
        media_type, *rest = list(_split(item, ";"))
        media_type = media_type.strip().lower()
        if not media_type:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for param in rest:
            name, equals, value = param.partition("=")
            name = name.strip().lower()
            if not equals or not name:
                continue
            if name == "q":
                q = _weight(value.strip())
            else:
                params[name] = _unquote(value)
        if q > 0:
            ranges.append(MediaRange(media_type, params, q))
    return sorted(ranges, key=lambda r: -r.q)  # sorted() is stable: equal weights keep their order
