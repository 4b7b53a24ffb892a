"""ICE servers for one peer: STUN URLs plus TURN URLs with a freshly minted REST credential.

The credential comes from the :class:`~secureconnect.credentials.CredentialMinter` that the TURN
component checks against: one explicit object shared through the runtime, so a secret rotated on
SIGHUP is used by both at once.
"""

from __future__ import annotations

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

    def servers_for(self, user: str, now: float) -> tuple[list[dict[str, Any]], int]:
        """Browser-ready ``RTCIceServer`` objects for ``user`` and their lifetime."""
        servers: list[dict[str, Any]] = []
        if self.stun_urls:
            servers.append({"urls": list(self.stun_urls)})
        if self.turn_urls:
            credential = self.minter.mint(user, self.ttl, now)
            servers.append(credential.to_ice_server(self.turn_urls))
        return servers, self.ttl

    def rest_response(self, user: str | None, now: float) -> dict[str, Any]:
        """The TURN REST API draft's JSON (``GET /ice?service=turn&username=U``), plus
        ``iceServers`` for browsers."""
        credential = self.minter.mint(user, self.ttl, now)
        body: dict[str, Any] = credential.to_json(self.turn_urls)
        servers: list[dict[str, Any]] = [{"urls": list(self.stun_urls)}] if self.stun_urls else []
        if self.turn_urls:
            servers.append(credential.to_ice_server(self.turn_urls))
        body["iceServers"] = servers
        return body
