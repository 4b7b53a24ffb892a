"""RFC 5780 NAT behaviour discovery, the verdicts: what the client side's tests mean (pure).

The server must offer RFC 5780 (an OTHER-ADDRESS in its Binding responses, §7.4: a second IP
and port of its own). The tests, run by `secureconnect.probe.natprobe` over UDP:

* Mapping (RFC 5780 §4.3), all from one local socket: test I is a Binding to the primary
  address. A mapped address equal to the socket's own address means no NAT (§4.3: "the client
  is not behind a NAT", which maps endpoint-independently by definition). Otherwise test II goes
  to the alternate IP at the primary port: the same mapping as test I means
  endpoint-independent mapping; else test III goes to the alternate IP and port: the same
  mapping as test II means address-dependent, a different one address-and-port-dependent.
* Filtering (RFC 5780 §4.4), from a fresh local socket: after test I, test II asks with
  CHANGE-REQUEST (§7.2) for the answer from the alternate IP and port. If it arrives, filtering
  is endpoint-independent; otherwise test III asks for the alternate port only: if that arrives,
  address-dependent, else address-and-port-dependent.

Verdicts are named as in RFC 4787 and the lab's discovery (secureconnect.natlab.discovery,
which runs coturn's turnutils_natdiscovery; the probe implements the client itself). They
describe the network between the probe and the server, not the server: they are reported as
information (ok), and a warning only when the server's RFC 5780 side misbehaves (it advertises
an alternate address that does not answer, or answers a CHANGE-REQUEST from the wrong address).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from secureconnect.netaddr import Address, format_address
from secureconnect.probe.verdicts import Check, Detail, Status

NO_NAT: Final = "no-nat"
ENDPOINT_INDEPENDENT: Final = "endpoint-independent"
ADDRESS_DEPENDENT: Final = "address-dependent"
ADDRESS_AND_PORT_DEPENDENT: Final = "address-and-port-dependent"
INCONCLUSIVE: Final = "inconclusive"

FIX_ALTERNATE = (
    "the server advertises OTHER-ADDRESS but does not answer there: ours needs "
    "`stun.alternate_address` to be an address of this host (and `stun.alternate_port` open in "
    "the firewall); coturn needs a second `listening-ip` and `alt-listening-port` reachable"
)


@dataclass(frozen=True, slots=True)
class MappingTests:
    """Mapped addresses seen by RFC 5780 §4.3's tests (None: that test got no answer)."""

    local: Address
    test1: Address | None
    test2: Address | None = None
    test3: Address | None = None


@dataclass(frozen=True, slots=True)
class FilteringTests:
    """RFC 5780 §4.4's answers: whether each arrived, and from the address it had to come from
    (``*_from_expected`` False: the server answered a CHANGE-REQUEST from the wrong address)."""

    test2_answered: bool
    test3_answered: bool
    test2_from_expected: bool = True
    test3_from_expected: bool = True


def mapping_verdict(tests: MappingTests) -> str:
    """RFC 5780 §4.3 (see the module docstring)."""
    if tests.test1 is None:
        return INCONCLUSIVE
    if tests.test1 == tests.local:
        return NO_NAT
    if tests.test2 is None:
        return INCONCLUSIVE
    if tests.test2 == tests.test1:
        return ENDPOINT_INDEPENDENT
    if tests.test3 is None:
        return INCONCLUSIVE
    return ADDRESS_DEPENDENT if tests.test3 == tests.test2 else ADDRESS_AND_PORT_DEPENDENT


def filtering_verdict(tests: FilteringTests) -> str:
    """RFC 5780 §4.4 (see the module docstring)."""
    if tests.test2_answered:
        return ENDPOINT_INDEPENDENT
    if tests.test3_answered:
        return ADDRESS_DEPENDENT
    return ADDRESS_AND_PORT_DEPENDENT


def _addr(address: Address | None) -> str | None:
    return format_address(*address) if address is not None else None


def mapping_check(tests: MappingTests) -> Check:
    """The ``nat-mapping`` check."""
    verdict = mapping_verdict(tests)
    details: dict[str, Detail] = {
        "verdict": verdict,
        "local": _addr(tests.local),
        "test1": _addr(tests.test1),
        "test2": _addr(tests.test2),
        "test3": _addr(tests.test3),
    }
    if verdict == NO_NAT:
        summary = (
            f"no NAT: mapped {_addr(tests.test1)} is this host's own address "
            "(endpoint-independent mapping)"
        )
    elif verdict == ENDPOINT_INDEPENDENT:
        summary = "endpoint-independent mapping (a cone NAT: peers can reach the mapped address)"
    elif verdict == ADDRESS_DEPENDENT:
        summary = "address-dependent mapping (symmetric NAT: direct connections need TURN often)"
    elif verdict == ADDRESS_AND_PORT_DEPENDENT:
        summary = "address-and-port-dependent mapping (symmetric NAT: expect to relay via TURN)"
    else:
        return Check(
            "nat-mapping",
            Status.WARN,
            "inconclusive: the alternate address did not answer",
            FIX_ALTERNATE,
            details,
        )
    return Check("nat-mapping", Status.OK, summary, details=details)


def filtering_check(tests: FilteringTests, *, no_nat: bool) -> Check:
    """The ``nat-filtering`` check; ``no_nat`` from the mapping test: without a NAT a missing
    answer is a firewall here or a server that ignores CHANGE-REQUEST."""
    verdict = filtering_verdict(tests)
    details: dict[str, Detail] = {
        "verdict": verdict,
        "test2_answered": tests.test2_answered,
        "test3_answered": tests.test3_answered,
    }
    if not (tests.test2_from_expected and tests.test3_from_expected):
        return Check(
            "nat-filtering",
            Status.WARN,
            f"{verdict} filtering, but the server answered a CHANGE-REQUEST from the wrong "
            "address (RFC 5780 §6.1): the verdict cannot be trusted",
            FIX_ALTERNATE,
            details,
        )
    if verdict == ENDPOINT_INDEPENDENT:
        prefix = "no NAT, no filtering firewall: " if no_nat else ""
        summary = f"{prefix}endpoint-independent filtering (answers from any address arrive)"
    elif verdict == ADDRESS_DEPENDENT:
        summary = "address-dependent filtering (restricted cone, or a stateful firewall)"
    else:
        summary = "address-and-port-dependent filtering (port-restricted, or a strict firewall)"
    return Check("nat-filtering", Status.OK, summary, details=details)
