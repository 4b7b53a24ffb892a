"""Where a new allocation goes: here, to an alternate server (300 Try Alternate), or nowhere
(486). RFC 8489 §10 and RFC 8656 §7.2 (sans-IO).

``turn.alternate_servers`` (UDP and TCP clients) and ``turn.tls_alternate_servers`` (TLS
clients, on the alternates' TLS port) list where to send them, in turn; a 300 to a TLS client
also carries ``turn.tls_alternate_domain`` as ALTERNATE-DOMAIN when it is set, the name the
client checks the alternate's certificate against (RFC 8489 §10, §14.16). An Allocate is
redirected:

* always while the node drains (a rolling upgrade): to an alternate, or refused with 486
  (Allocation Quota Reached) when none is configured for the client's transport;
* when this node holds ``turn.alternate_threshold`` allocations or more (0: never), if an
  alternate is configured; otherwise it is served here as usual.

The redirect is decided after the request has authenticated, and the 300 carries
MESSAGE-INTEGRITY like any authenticated answer: RFC 8489 §10 asks clients to trust an
ALTERNATE-SERVER only from an authenticated response, so an attacker who can inject packets but
does not hold the credential cannot move the client (docs/cluster.md). Allocations that exist
are never moved: Refresh, CreatePermission, ChannelBind and data keep working on this node
until they end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from secureconnect.netaddr import Address
from secureconnect.stun.attributes import encode_address
from secureconnect.stun.constants import AttrType as A
from secureconnect.stun.constants import ErrorCode
from secureconnect.stun.message import StunError

#: :meth:`RedirectPolicy.decide`'s answer for "refuse it" (486)
REFUSE: Final = ("", 0)


@dataclass
class RedirectPolicy:
    """The policy of the module docstring; ``draining`` is set by the component's drain."""

    alternates: tuple[Address, ...] = ()
    tls_alternates: tuple[Address, ...] = ()
    threshold: int = 0
    draining: bool = False
    tls_domain: str = ""  # ALTERNATE-DOMAIN of a TLS client's 300; "": none
    _turn: dict[bool, int] = field(default_factory=lambda: {False: 0, True: 0})

    def decide(self, transport: str, allocations: int) -> Address | None:
        """For an Allocate over ``transport`` while ``allocations`` exist here: None to serve
        it here, :data:`REFUSE`, or the alternate server to name (each in turn)."""
        tls = transport == "tls"
        choices = self.tls_alternates if tls else self.alternates
        busy = bool(self.threshold) and allocations >= self.threshold
        if not (self.draining or busy):
            return None
        if not choices:
            # Over the threshold with nowhere to send it: served here; draining: refused.
            return REFUSE if self.draining else None
        index = self._turn[tls] % len(choices)
        self._turn[tls] = index + 1
        return choices[index]

    def error(self, alternate: Address, transport: str) -> StunError:
        """:func:`redirect_error` for a client over ``transport``: over TLS, with
        ALTERNATE-DOMAIN when one is configured (RFC 8489 §10: "If the transport protocol uses
        TLS or DTLS, the server SHOULD include an ALTERNATE-DOMAIN attribute")."""
        domain = self.tls_domain if transport == "tls" else ""
        return redirect_error(alternate, domain)


def redirect_error(alternate: Address, domain: str = "") -> StunError:
    """The error for :meth:`RedirectPolicy.decide`'s answer: 486, or 300 naming ``alternate``
    (and ``domain`` as ALTERNATE-DOMAIN, when given)."""
    if alternate == REFUSE:
        # RFC 8656 §7.2: "the server MAY ... reject with 486 (Allocation Quota Reached)".
        return StunError(ErrorCode.ALLOCATION_QUOTA_REACHED, "this server is draining")
    # RFC 8489 §10: "the server ... generates an error response with an error code of 300
    # (Try Alternate) ... MUST include an ALTERNATE-SERVER attribute".
    attributes = [(int(A.ALTERNATE_SERVER), encode_address(*alternate))]
    if domain:
        attributes.append((int(A.ALTERNATE_DOMAIN), domain.encode("ascii")))
    return StunError(ErrorCode.TRY_ALTERNATE, attributes=tuple(attributes))
