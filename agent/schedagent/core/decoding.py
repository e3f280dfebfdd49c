"""Records decoded as msgspec Structs, with the fields of a newer version kept beside them."""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

EMPTY: Mapping[str, Any] = types.MappingProxyType({})
# Where a part's unknown fields are kept: its instance dict (`dict=True`), which the
# encoder does not see, so a Struct's own fields are all it writes on the fast path.
EXTRA = "_extra"

S = TypeVar("S", bound=msgspec.Struct)


class KeepsExtra:
    """What a part of a stored record has besides its fields: the fields of a newer
    version. Mixed into Structs declared `forbid_unknown_fields=True, dict=True`, so a
    record with such fields fails the typed (fast) decoding and `split` takes them apart.
    """

    __slots__ = ()

    @property
    def extra(self) -> Mapping[str, Any]:
        """Fields of a newer version this one does not know: kept, and written back."""
        extra: Mapping[str, Any] = self.__dict__.get(EXTRA, EMPTY)
        return extra

    def keep_extra(self, extra: Mapping[str, Any]) -> None:
        if extra:
            self.__dict__[EXTRA] = dict(extra)

    def plain(self) -> bool:
        """No unknown fields here (parts inside are asked on their own)."""
        return EXTRA not in self.__dict__

    def merged(self, data: dict[str, Any]) -> dict[str, Any]:
        """This part's builtins with its unknown fields; a known field wins a clash."""
        extra = self.extra
        return {**extra, **data} if extra else data


def field_names(cls: type[msgspec.Struct]) -> frozenset[str]:
    return frozenset(f.encode_name for f in msgspec.structs.fields(cls))


def split(data: object, names: frozenset[str]) -> tuple[object, dict[str, Any]]:
    """(the known fields, the unknown ones) of a JSON object; anything else is returned
    whole, for the typed conversion after to reject with its own message."""
    if not isinstance(data, dict):
        return data, {}
    known = {k: v for k, v in data.items() if k in names}
    unknown = {k: v for k, v in data.items() if k not in names}
    return known, unknown


def convert(data: object, cls: type[S], what: str) -> S:
    """`data` (builtins) as `cls`; ValueError naming `what` if it is not one."""
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{what}: {exc}") from None
