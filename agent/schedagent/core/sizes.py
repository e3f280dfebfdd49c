"""Memory sizes as people write them ("64M", "1.5G", "1048576") and back."""

from __future__ import annotations

import re

UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
# Below this a job's shell alone cannot start; above it no host has the memory.
MIN_MEMORY = 1024**2
MAX_MEMORY = 1024**5


def parse_size(text: str) -> int:
    """Bytes in "64M", "1.5G", "512k", "1048576" (binary units); ValueError otherwise."""
    match = SIZE_RE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size (a number of bytes, or with K, M, G or T)")
    number, unit = match.groups()
    return int(float(number) * UNITS[unit.upper()])


def format_size(n: int) -> str:
    """n in the largest unit that holds it exactly: 67108864 -> "64M", 1536 -> "1536"."""
    for unit in ("T", "G", "M", "K"):
        if n and n % UNITS[unit] == 0:
            return f"{n // UNITS[unit]}{unit}"
    return str(n)


def memory_limit(value: object, name: str = "memory") -> int:
    """A memory limit given as bytes or a size string, checked: ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{name} must be a size such as 64M or a number of bytes, got {value!r}")
    try:
        size = parse_size(value) if isinstance(value, str) else value
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if not MIN_MEMORY <= size <= MAX_MEMORY:
        raise ValueError(f"{name} must be from 1M to 1P, got {value!r}")
    return size


def task_limit(value: object, name: str = "tasks") -> int:
    """A limit on a job's processes and threads: an integer from 1 to 4194304 (pid_max)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4194304:
        raise ValueError(f"{name} must be an integer from 1 to 4194304, got {value!r}")
    return value
