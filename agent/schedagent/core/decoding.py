"""Checks a decoded record against its dataclass: each field's JSON type from its annotation."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

_NONE = type(None)


@dataclasses.dataclass(frozen=True)
class FieldCheck:
    """The JSON types a field may hold, and a deeper look for some (finite numbers,
    maps of strings); type(value) in kinds is the whole check for most fields."""

    kinds: frozenset[type]
    deep: Callable[[Any], bool] | None = None

    def __call__(self, value: object) -> bool:
        if type(value) not in self.kinds:
            return False
        return self.deep is None or value is None or self.deep(value)


def is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def _finite(value: Any) -> bool:
    return type(value) is int or math.isfinite(value)


def _strings(value: Any) -> bool:
    return all(type(k) is str and type(v) is str for k, v in value.items())


def _check_for(hint: Any) -> FieldCheck:
    """The check of one annotation (the shapes our records use, nothing more)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        parts = [_check_for(arg) for arg in args]
        deep = [p.deep for p in parts if p.deep is not None]
        if len(deep) > 1:
            raise TypeError(f"no JSON check for {hint!r}")
        return FieldCheck(frozenset().union(*(p.kinds for p in parts)), deep[0] if deep else None)
    if hint is float:
        return FieldCheck(frozenset({int, float}), _finite)
    if hint in (int, bool, str, _NONE):
        return FieldCheck(frozenset({hint}))
    if hint is Any:
        return FieldCheck(frozenset({dict, list, str, int, float, bool, _NONE}))
    if origin is Mapping or origin is dict:
        return FieldCheck(frozenset({dict}), _strings if args == (str, str) else None)
    if origin in (list, tuple):
        return FieldCheck(frozenset({list, tuple}))
    if isinstance(hint, type) and issubclass(hint, str):  # a StrEnum: its value is checked later
        return FieldCheck(frozenset({str}))
    if dataclasses.is_dataclass(hint):
        return FieldCheck(frozenset({dict}))
    raise TypeError(f"no JSON check for {hint!r}")


def field_checks(cls: type[Any], skip: frozenset[str] = frozenset()) -> dict[str, FieldCheck]:
    """A check per field of a dataclass, made once when the module loads."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: _check_for(hints[f.name]) for f in dataclasses.fields(cls) if f.name not in skip
    }


def split(
    data: object, what: str, checks: Mapping[str, FieldCheck], required: frozenset[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(known fields, unknown fields) of a JSON object; ValueError if it is not one,
    lacks a required field or holds a known field of the wrong type."""
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object, not {type(data).__name__}")
    if not required <= data.keys():
        raise ValueError(f"{what} lacks {', '.join(sorted(required - data.keys()))}")
    known: dict[str, Any] = {}
    unknown: dict[str, Any] = {}
    for name, value in data.items():
        check = checks.get(name)
        if check is None:
            unknown[name] = value
        elif check(value):
            known[name] = value
        else:
            raise ValueError(f"{what}: {name} has the wrong type ({type(value).__name__})")
    return known, unknown


def required_fields(cls: type[Any]) -> frozenset[str]:
    """The fields without a default: a record must carry them."""
    missing = dataclasses.MISSING
    return frozenset(
        f.name
        for f in dataclasses.fields(cls)
        if f.default is missing and f.default_factory is missing
    )
