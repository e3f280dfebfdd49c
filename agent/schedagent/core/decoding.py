"""Checks a decoded record against its dataclass: each field's JSON type from its annotation."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

# What JSON gives for each annotated Python type. A number field takes an int or a float
# (never a bool, which json would otherwise pass as an int).
_Check = typing.Callable[[object], bool]


def is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def _integer(value: object) -> bool:
    return type(value) is int


def _string_map(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def _exactly(kind: type) -> _Check:
    return lambda value: type(value) is kind


_SIMPLE: dict[Any, _Check] = {
    float: is_number,
    int: _integer,
    bool: _exactly(bool),
    str: _exactly(str),
    type(None): lambda value: value is None,
    Any: lambda _value: True,
}


def _check_for(hint: Any) -> _Check:
    """A predicate for one annotation (the shapes our records use, nothing more)."""
    if hint in _SIMPLE:
        return _SIMPLE[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        checks = [_check_for(arg) for arg in args]
        return lambda value: any(check(value) for check in checks)
    if origin is Mapping or origin is dict:
        return _string_map if args == (str, str) else lambda value: isinstance(value, dict)
    if origin in (list, tuple):
        return lambda value: isinstance(value, list | tuple)
    if isinstance(hint, type) and issubclass(hint, str):  # a StrEnum: its value is checked later
        return lambda value: isinstance(value, str)
    if dataclasses.is_dataclass(hint):
        return lambda value: isinstance(value, dict)
    raise TypeError(f"no JSON check for {hint!r}")


def field_checks(cls: type[Any], skip: frozenset[str] = frozenset()) -> dict[str, _Check]:
    """A check per field of a dataclass, made once when the module loads."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: _check_for(hints[f.name]) for f in dataclasses.fields(cls) if f.name not in skip
    }


def split(
    data: object, what: str, checks: Mapping[str, _Check], required: frozenset[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(known fields, unknown fields) of a JSON object; ValueError if it is not one,
    lacks a required field or holds a known field of the wrong type."""
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object, not {type(data).__name__}")
    missing = sorted(required - data.keys())
    if missing:
        raise ValueError(f"{what} lacks {', '.join(missing)}")
    known: dict[str, Any] = {}
    unknown: dict[str, Any] = {}
    for name, value in data.items():
        check = checks.get(name)
        if check is None:
            unknown[name] = value
        elif not check(value):
            raise ValueError(f"{what}: {name} has the wrong type ({type(value).__name__})")
        else:
            known[name] = value
    return known, unknown


def required_fields(cls: type[Any]) -> frozenset[str]:
    """The fields without a default: a record must carry them."""
    missing = dataclasses.MISSING
    return frozenset(
        f.name
        for f in dataclasses.fields(cls)
        if f.default is missing and f.default_factory is missing
    )
