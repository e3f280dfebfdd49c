"""The end of a job's output as its record keeps it: at most a bound of encoded bytes."""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Mapping
from typing import Any

import msgspec

# A UTF-8 character is at most 4 bytes: a tail cut inside one starts with at most 3 of
# its continuation bytes.
MAX_CONTINUATION = 3


@dataclasses.dataclass(frozen=True)
class Tail:
    """Output that is UTF-8 text is kept as text; anything else as base64 of its bytes
    (decoded with replacement characters and escaped, binary output took up to 6 bytes
    of JSON for each of its bytes)."""

    text: str = ""
    base64: str | None = None


def keep(data: bytes, limit: int) -> Tail:
    """The end of `data` whose form in a JSON record takes at most `limit` bytes."""
    text = _utf8_end(data)
    if text is not None:
        return Tail(text=_fit_text(text, limit))
    kept = data[max(len(data) - limit // 4 * 3, 0) :] if limit >= 4 else b""
    return Tail(base64=base64.b64encode(kept).decode())


def output_bytes(record: Mapping[str, Any]) -> bytes:
    """The bytes of the tail a job record (as a dict) carries, old records included
    (their `output_tail` is text, binary output decoded with replacement characters)."""
    encoded = record.get("output_tail_base64")
    if isinstance(encoded, str):
        try:
            return base64.b64decode(encoded, validate=True)
        except binascii.Error:
            return b""
    text = record.get("output_tail")
    return text.encode(errors="replace") if isinstance(text, str) else b""


def is_text(record: Mapping[str, Any]) -> bool:
    return not isinstance(record.get("output_tail_base64"), str)


def _utf8_end(data: bytes) -> str | None:
    """data as text if it is UTF-8 past a character the cut of the tail split; else None."""
    start = 0
    while start < min(len(data), MAX_CONTINUATION) and data[start] & 0xC0 == 0x80:
        start += 1
    try:
        return data[start:].decode()
    except UnicodeDecodeError:
        return None


def _encoded_size(text: str) -> int:
    return len(msgspec.json.encode(text)) - 2  # without the quotes


def _fit_text(text: str, limit: int) -> str:
    """The longest end of text whose JSON string takes at most limit bytes: escapes
    (control characters: up to 6 bytes each) can make text longer than its bytes."""
    if _encoded_size(text) <= limit:
        return text
    low, high = 0, len(text)  # the first character kept, searched: longer ends cost more
    while low < high:
        middle = (low + high) // 2
        if _encoded_size(text[middle:]) <= limit:
            high = middle
        else:
            low = middle + 1
    return text[low:]
