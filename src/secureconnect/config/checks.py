"""The validators of :mod:`secureconnect.config.schema`: each takes a key's value and returns an
error message, or None when the value is fine."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from secureconnect.netaddr import parse_address

Check = Callable[[Any], "str | None"]
MAX_WORKERS = 64  # TURN worker processes (turn.workers)
#: turn.metrics_users: each user is three series per process (docs/metrics.md); a TURN worker's
#: report of its samples to the parent must stay one datagram of its socket pair (about 200 KB:
#: 100 users of the longest labels, turn.settings.user_label, take 140 KB)
MAX_METRICS_USERS = 100


def port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "must be a port number from 1 to 65535"


def port_or_zero(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be 0 (ephemeral) or a port number up to 65535"


def workers(value: int) -> str | None:
    return None if 1 <= value <= MAX_WORKERS else f"must be 1 to {MAX_WORKERS}"


def metrics_users(value: int) -> str | None:
    if 0 <= value <= MAX_METRICS_USERS:
        return None
    return f"must be 0 (no per-user series) to {MAX_METRICS_USERS}"


def positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def ip(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address"
    return None


def ip_or_empty(value: str) -> str | None:
    return None if value == "" else ip(value)


def ip_list(values: tuple[str, ...]) -> str | None:
    if not values:
        return "must name at least one address"
    for value in values:
        if (problem := ip(value)) is not None:
            return problem
    return None


def ip_list_or_empty(values: tuple[str, ...]) -> str | None:
    return None if not values else ip_list(values)


def cidr_list(values: tuple[str, ...]) -> str | None:
    for value in values:
        try:
            ipaddress.ip_network(value)  # strict, like the peer policy: no host bits set
        except ValueError:
            return f"{value!r} is not an address or CIDR range (with no host bits set)"
    return None


def user_list(values: tuple[str, ...]) -> str | None:
    for value in values:
        name, colon, password = value.partition(":")
        if not colon or not name or not password:
            return 'entries must be "user:password"'
        if name.isdigit():  # a bare Unix time is a TURN REST API username
            return f"user name {name!r} looks like a REST credential expiry: add a letter"
    return None


def ttl(value: int) -> str | None:
    # The credential minter refuses more than a week (it catches milliseconds-for-seconds).
    return None if 0 < value <= 7 * 86400 else "must be from 1 second to 7 days (604800)"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or more"


_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
BACKPLANE_SCHEMES = ("redis", "rediss", "redis+sentinel")


def name(value: str) -> str | None:
    return None if _NAME.fullmatch(value) else "must be 1-64 characters of A-Z a-z 0-9 _ . -"


def name_or_empty(value: str) -> str | None:
    return None if not value else name(value)


_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def domain_or_empty(value: str) -> str | None:
    """A DNS name in ASCII (an IDN as its ``xn--`` form), at most 253 characters, or empty."""
    if not value:
        return None
    labels = value.removesuffix(".").split(".")
    if len(value) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return "must be a domain name: labels of A-Z a-z 0-9 - joined by dots (IDNs as xn--)"
    return None


def backplane_url(value: str) -> str | None:
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in BACKPLANE_SCHEMES:
        return f"the scheme must be one of {', '.join(BACKPLANE_SCHEMES)} (or leave it empty)"
    if not parts.netloc:
        return "names no host"
    if parts.scheme.endswith("+sentinel") and not parts.path.strip("/"):
        return "a Sentinel URL ends with the service name: redis+sentinel://HOST:PORT/SERVICE"
    return None


def address_list(values: tuple[str, ...]) -> str | None:
    """Entries of ``IP:PORT`` (``[IPv6]:PORT``)."""
    for value in values:
        try:
            parse_address(value)
        except ValueError as exc:
            return str(exc)
    return None
