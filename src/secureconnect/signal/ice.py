"""ICE servers for one peer: STUN URLs plus TURN URLs with a freshly minted REST credential.

The credential comes from the :class:`~secureconnect.credentials.CredentialMinter` that the TURN
component checks against: one explicit object shared through the runtime, so a secret rotated on
SIGHUP is used by both at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from secureconnect.credentials import CredentialMinter


@dataclass(frozen=True)
class IceConfig:
    """What to hand out: URLs (``stun:``, ``turn:``/``turns:``) and the credential lifetime
    (``signal.ice_ttl``: no default here, its one home is ``config/schema.py``)."""

    minter: CredentialMinter
    stun_urls: tuple[str, ...]
    turn_urls: tuple[str, ...]
    ttl: int  # seconds a minted TURN credential lives
    #: with a cluster: the live TURN nodes' STUN and TURN URLs, best first (:mod:`.registry`);
    #: when it has none (no report yet), this node's own are handed out
    cluster: Callable[[], tuple[tuple[str, ...], tuple[str, ...]]] | None = None

    def current_urls(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The STUN and TURN URLs to hand out now."""
        if self.cluster is not None:
            stun, turn = self.cluster()
            if turn:
                return stun or self.stun_urls, turn
        return self.stun_urls, self.turn_urls

    def servers_for(self, user: str, now: float) -> tuple[list[dict[str, Any]], int]:
        """Browser-ready ``RTCIceServer`` objects for ``user`` and their lifetime."""
        servers: list[dict[str, Any]] = []
        stun_urls, turn_urls = self.current_urls()
        if stun_urls:
            servers.append({"urls": list(stun_urls)})
        if turn_urls:
            credential = self.minter.mint(user, self.ttl, now)
            servers.append(credential.to_ice_server(turn_urls))
        return servers, self.ttl

    def rest_response(self, user: str | None, now: float) -> dict[str, Any]:
        """The TURN REST API draft's JSON (``GET /ice?service=turn&username=U``), plus
        ``iceServers`` for browsers."""
        credential = self.minter.mint(user, self.ttl, now)
        stun_urls, turn_urls = self.current_urls()
        body: dict[str, Any] = credential.to_json(turn_urls)
        servers: list[dict[str, Any]] = [{"urls": list(stun_urls)}] if stun_urls else []
        if turn_urls:
            servers.append(credential.to_ice_server(turn_urls))
        body["iceServers"] = servers
        return body
