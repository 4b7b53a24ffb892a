"""Plain HTTP on the signaling port: the demo page, /healthz, /ice and /metrics (sans-IO).

/metrics answers only clients inside ``signal.metrics_from`` (loopback and private networks by
default); /healthz stays public for load balancers. /ice is rate-limited per client address
(``signal.rate_limit`` per second, twice that as a burst: 429 beyond). What ``[signal]`` says
about all this arrives as :class:`HttpSettings`.

:meth:`HttpRoutes.respond` maps a request (path with query, headers, the client address) to an
:class:`HttpReply`, or to None for ``/ws``, which continues as a WebSocket handshake. It also
decides who the client is (:func:`client_address`: ``X-Forwarded-For`` counts only when the
connection comes from a configured trusted proxy) and whether a browser's ``Origin`` may open the
WebSocket.

A request target or ``Origin`` that does not parse as a URL (``//[``, ``http://[``: an unclosed
IPv6 literal, RFC 3986 §3.2.2) is the client's error: 400 and one log line without a traceback,
at most one a minute (a client could otherwise write the log at the rate it sends requests).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

from secureconnect.logs import fields
from secureconnect.ratelimit import RateLimiter
from secureconnect.signal.exposition import CONTENT_TYPE as METRICS_TYPE
from secureconnect.signal.exposition import render
from secureconnect.signal.ice import IceConfig
from secureconnect.signal.tokens import RoomTokens

log = logging.getLogger("secureconnect.signal")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
JSON_TYPE = "application/json"
BAD_REQUEST_LOG_INTERVAL = 60.0  # seconds between two "signal-bad-request" lines
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSettings:
    """What ``[signal]`` says about the HTTP side. No defaults: their one home is
    ``config/schema.py``, and ``runtime.http_settings`` maps ``[signal]`` onto them (tests start
    from the same mapping of the schema's defaults), so a test cannot run open routes where a
    user's are closed."""

    #: browser origins allowed to open the WebSocket besides the page's own; ``"*"``: any
    allowed_origins: tuple[str, ...]
    #: networks whose clients may read /metrics (counts of users and sessions are nobody
    #: else's business); empty: everyone
    metrics_from: tuple[Network, ...]
    #: /ice requests per second per client address (each answer is an HMAC and a JSON body),
    #: with :func:`~secureconnect.ratelimit.burst_for` of it as a burst; 0: unlimited
    ice_rate: float


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _json(status: int, obj: Any) -> HttpReply:
    return HttpReply(
        status, JSON_TYPE, json.dumps(obj, indent=1).encode(), (("Cache-Control", "no-store"),)
    )


def client_address(
    remote: str,
    forwarded_for: str | None,
    trusted: Iterable[Network],
) -> str:
    """The client's IP: the TCP peer, or - when that peer is a trusted proxy - the rightmost
    ``X-Forwarded-For`` entry that is not itself a trusted proxy."""
    networks = tuple(trusted)

    def is_trusted(text: str) -> bool:
        try:
            address = ipaddress.ip_address(text.strip())
        except ValueError:
            return False
        return any(address in network for network in networks)

    if not forwarded_for or not is_trusted(remote):
        return remote
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return remote
    return remote


@dataclass
class HttpRoutes:
    """The HTTP side of the signaling port; see the module docstring."""

    ice: IceConfig
    health: Callable[[], Mapping[str, str]]
    metrics: Callable[[], Iterable[Mapping[str, float]]]
    settings: HttpSettings
    tokens: RoomTokens | None = None  # None: open rooms, /ice asks for no token
    clock: Callable[[], float] = time.time
    bad_requests: int = 0  # malformed targets and Origin headers, answered 400
    _static: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    _bad_logged_at: float | None = None
    _ice_limiter: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        self._ice_limiter = RateLimiter.per_second(self.settings.ice_rate)

    def respond(
        self, target: str, headers: Mapping[str, str], client: str = ""
    ) -> HttpReply | None:
        """The reply for ``GET target`` from ``client`` (its IP, as :func:`client_address`
        decided); None means "continue with the WebSocket handshake".

        ``headers`` has lower-case names (HTTP names are case-insensitive, RFC 9110 §5.1).
        """
        url = _split(target)
        if url is None:
            return self._bad_request("target", target, client)
        path = url.path
        if path == "/ws":
            return self._upgrade(headers, client)
        if path == "/ice":
            return self._ice(parse_qs(url.query), headers, client)
        if path == "/healthz":
            return self._health()
        if path == "/metrics":
            return self._metrics(client)
        return self._static_file("/index.html" if path == "/" else path)

    def _upgrade(self, headers: Mapping[str, str], client: str) -> HttpReply | None:
        """None (go on with the WebSocket handshake) if the Origin may open one."""
        origin = headers.get("origin")
        if origin is not None and _split(origin) is None:
            return self._bad_request("origin", origin, client)
        return None if self.origin_allowed(headers) else _json(403, {"error": "origin"})

    def _metrics(self, client: str) -> HttpReply:
        if not self.may_read_metrics(client):
            return _json(403, {"error": "metrics are served to signal.metrics_from only"})
        return HttpReply(200, METRICS_TYPE, render(self.metrics()).encode())

    def may_read_metrics(self, client: str) -> bool:
        """Whether ``client`` is inside ``metrics_from`` (an empty list admits everyone)."""
        metrics_from = self.settings.metrics_from
        if not metrics_from:
            return True
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack listener reports IPv4 clients so
        return any(address in network for network in metrics_from)

    def _health(self) -> HttpReply:
        states = dict(self.health())
        ok = all(state == "running" for state in states.values())
        status = "ok" if ok else "draining" if "draining" in states.values() else "degraded"
        return _json(200 if ok else 503, {"status": status, "components": states})

    def origin_allowed(self, headers: Mapping[str, str]) -> bool:
        """No Origin (not a browser), the page's own origin, or one listed (``*`` for any)."""
        origin = headers.get("origin")
        allowed = self.settings.allowed_origins
        if origin is None or "*" in allowed or origin in allowed:
            return True
        host = headers.get("host", "")
        url = _split(origin)
        return url is not None and url.netloc == host and bool(host)

    def _bad_request(self, what: str, value: str, client: str) -> HttpReply:
        """400 for a target or Origin that is not a URL; logged once a minute at most."""
        self.bad_requests += 1
        now = self.clock()
        if self._bad_logged_at is None or now - self._bad_logged_at >= BAD_REQUEST_LOG_INTERVAL:
            self._bad_logged_at = now
            log.info(
                "signal-bad-request",
                extra=fields(what=what, value=value[:80], client=client, count=self.bad_requests),
            )
        return _json(400, {"error": f"malformed {what}"})

    def _ice(
        self, query: dict[str, list[str]], headers: Mapping[str, str], client: str
    ) -> HttpReply:
        if not self._ice_limiter.allow(client, self.clock()):
            return _json(429, {"error": "too many requests"})
        service = query.get("service", ["turn"])[0]
        if service != "turn":
            return _json(400, {"error": "service must be turn"})
        if self.tokens is not None:
            bearer = headers.get("authorization", "")
            token = query.get("token", [bearer.removeprefix("Bearer ").strip()])[0]
            if not self.tokens.check(token, None, self.clock()):
                return _json(401, {"error": "a valid token is required"})
        user = query.get("username", [None])[0]
        try:
            body = self.ice.rest_response(user, self.clock())
        except (ValueError, TypeError) as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, body)

    def _static_file(self, path: str) -> HttpReply:
        """A file of the demo page's folder, by its path (``/NAME.html``, ``.js``, ``.css``)."""
        if path.count("/") != 1 or not path.endswith((".html", ".js", ".css")):
            return _json(404, {"error": "not found"})
        name = path[1:]
        cached = self._static.get(name)
        if cached is None:
            folder = resources.files("secureconnect.signal").joinpath("static")
            item = folder.joinpath(name)
            if not item.is_file():
                return _json(404, {"error": "not found"})
            suffix = name[name.rfind(".") :]
            cached = self._static[name] = (
                STATIC_TYPES.get(suffix, "application/octet-stream"),
                item.read_bytes(),
            )
        content_type, body = cached
        return HttpReply(200, content_type, body, (("Cache-Control", "no-cache"),))


def _split(url: str) -> SplitResult | None:
    """``urlsplit``, or None where it raises (an unclosed ``[``, characters NFKC turns into URL
    delimiters)."""
    try:
        return urlsplit(url)
    except ValueError:
        return None
