"""The checks of agent.yaml's values: each returns the config's value or raises saying why."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from urllib.parse import urlsplit

from schedagent.core.names import NODE_NAME_RE
from schedagent.core.spec import USER_RE

HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?$")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_TARGETS = ("auto", "journal", "stderr")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def number(minimum: float, integer: bool = False) -> Callable[[object], float]:
    def check(value: object) -> float:
        ok_types = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_types):
            want = "an integer" if integer else "a number"
            raise TypeError(f"must be {want}, not {kind(value)} {value!r}")
        if value < minimum:
            raise ValueError(f"must be >= {minimum}, got {value}")
        return value

    return check


def optional_cpus(value: object) -> float | None:
    if value is None:
        return None
    cpus = number(0.01)(value)
    return float(cpus)


def node_name(value: object) -> str:
    if not isinstance(value, str) or not NODE_NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid node name (letters, digits, '_' and '-', max 63)"
        )
    return value


def labels(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise TypeError(f"must be a mapping of strings, not {kind(value)}")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str | int | float) or isinstance(v, bool):
            raise TypeError(f"label {k!r}: keys and values must be strings")
        out[k] = str(v)
    return out


def urls(schemes: tuple[str, ...]) -> Callable[[object], tuple[str, ...]]:
    def check(value: object) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise TypeError("must be a URL or a non-empty list of URLs")
        for url in items:
            _check_url(url, schemes)
        return tuple(items)

    return check


def _check_url(url: object, schemes: tuple[str, ...]) -> None:
    if not isinstance(url, str):
        raise TypeError(f"must be a URL string, not {kind(url)}")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in schemes or not parts.hostname or port == -1:
        raise ValueError(f"{url!r} is not a valid URL (want {'/'.join(schemes)}://host:port)")


def key_prefix(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/") or value.endswith("/"):
        raise ValueError(f"{value!r} must start with '/' and not end with '/'")
    return value


def subject_prefix(value: object) -> str:
    if not isinstance(value, str) or not re.match(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$", value):
        raise ValueError(f"{value!r} is not a valid NATS subject prefix")
    return value


def optional_file(value: object) -> str | None:
    # Only the form: the file may be installed after the configuration (Ansible checks
    # the configuration before it copies the CA); connecting says if it is missing.
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ValueError(f"{value!r} is not an absolute file path")
    return value


def optional_host_name(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not HOST_RE.match(value):
        raise ValueError(f"{value!r} is not a host name")
    return value


def log_level(value: object) -> str:
    if value not in LOG_LEVELS:
        raise ValueError(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
    return str(value)


def log_target(value: object) -> str:
    if value not in LOG_TARGETS:
        raise ValueError(f"{value!r} is not one of {', '.join(LOG_TARGETS)}")
    return str(value)


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"must be true or false, not {kind(value)} {value!r}")
    return value


def listen_address(value: object) -> tuple[str, int] | None:
    """host:port ([v6]:port for IPv6), or null for no endpoint."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"must be host:port or null, not {kind(value)} {value!r}")
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port (a port from 1 to 65535)")
    if not _is_ip(host) and not HOST_RE.match(host):
        raise ValueError(f"{value!r}: {host!r} is not an IP address or host name")
    return host, int(port)


def networks(value: object) -> tuple[IPNetwork, ...]:
    """A list of IP addresses and networks (CIDR): 192.0.2.7, 10.1.0.0/16, 2001:db8::/32."""
    if not isinstance(value, list):
        raise TypeError(f"must be a list of IP addresses or networks, not {kind(value)}")
    found = []
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"{item!r} is not an IP address or network")
        try:
            found.append(ipaddress.ip_network(item.strip()))
        except ValueError as exc:  # its text says why: host bits set, not an address ...
            raise ValueError(f"{item!r} is not an IP address or network ({exc})") from None
    return tuple(found)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def public_keys(value: object) -> tuple[str, ...]:
    from schedagent.core.signing import parse_public

    if not isinstance(value, list):
        raise TypeError(f"must be a list of public keys, not {kind(value)}")
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"{item!r} is not a public key string")
        parse_public(item)
    return tuple(value)


def user_names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, str) and USER_RE.match(v) for v in value
    ):
        raise ValueError(f"must be a list of user names, got {value!r}")
    return tuple(value)
