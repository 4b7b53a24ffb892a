"""RFC 5780 NAT behaviour discovery from inside a lab client, to prove each NAT is what it claims.

The probe is coturn's ``turnutils_natdiscovery -m -f`` (Debian package ``coturn``), run in the
client's namespace against the lab server, which must have RFC 5780 on (two addresses,
OTHER-ADDRESS, CHANGE-REQUEST). What the tool does, and so what each verdict means:

* Mapping (RFC 5780 4.3), from one local port: test I to the primary address; test II to the
  alternate address at the primary port; if the mapped addresses differ, test III to the
  alternate address and port. Same mapping for I and II: endpoint-independent; II = III:
  address-dependent; all different: address-and-port-dependent.
* Filtering (RFC 5780 4.4), from a fresh local port: test I to the primary; test II asks for
  the answer from the other address and port; test III from the other port only. II arrives:
  endpoint-independent; only III: address-dependent; neither: address-and-port-dependent.
  A lost answer costs the tool's 3 s receive timeout, so a discovery takes up to about 6 s.
* ``-L CLIENT_ADDRESS`` binds the client's own address, so that on an un-NATed client the
  mapped address equals the local one and the tool says "No NAT!".
* Behind a router that drops UDP no test gets an answer: the tool prints only receive timeouts.
  A server that is down looks the same, so a ``no-answer`` verdict is only trusted once a STUN
  Binding over TCP from the same namespace succeeds (TCP is what a UDP-blocked client has left).

:func:`classify` maps the two verdicts onto :class:`Behaviour`; it is pure, like the parser.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

from secureconnect.natlab.behaviours import Behaviour
from secureconnect.natlab.labs import LabError
from secureconnect.natlab.topology import Lab, LabClient

TOOL = "turnutils_natdiscovery"
# Verdicts, named as in RFC 4787 (and RFC 5780 section 4).
NO_NAT = "no-nat"
ENDPOINT_INDEPENDENT = "endpoint-independent"
ADDRESS_DEPENDENT = "address-dependent"
ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
NO_ANSWER = "no-answer"  # no STUN answer came back at all

_VERDICTS = {
    "Endpoint Independent": ENDPOINT_INDEPENDENT,
    "Address Dependent": ADDRESS_DEPENDENT,
    "Address and Port Dependent": ADDRESS_AND_PORT_DEPENDENT,
}
_MAPPING = re.compile(r"^NAT with (.+) Mapping!$", re.MULTILINE)
_FILTERING = re.compile(r"^NAT with (.+) Filtering!$", re.MULTILINE)
_NO_NAT = "No NAT! (Endpoint Independent Mapping)"
_RFC5780_ANSWER = "RFC 5780 response"  # printed for each answer that has OTHER-ADDRESS
_ANY_ANSWER = "UDP reflexive addr"  # printed for each Binding success, RFC 5780 or not


@dataclass(frozen=True)
class Discovery:
    """What discovery found: ``mapping`` and ``filtering`` are one of the verdict constants
    (``no-nat`` for an un-NATed mapping, ``no-answer`` when nothing came back),
    ``behaviour`` their classification, ``output`` the tool's own output."""

    mapping: str
    filtering: str
    behaviour: Behaviour
    output: str

    def summary(self) -> str:
        """One line: ``symmetric (mapping=..., filtering=...)``."""
        return f"{self.behaviour.value} (mapping={self.mapping}, filtering={self.filtering})"


def _verdict(pattern: re.Pattern[str], output: str, what: str) -> str | None:
    found = pattern.findall(output)
    if not found:
        return None
    if len(set(found)) != 1 or found[0] not in _VERDICTS:
        raise LabError(f"unexpected {what} verdicts from {TOOL}: {found}\n{output}")
    return _VERDICTS[found[0]]


def parse_output(output: str) -> tuple[str, str]:
    """(mapping, filtering) verdicts from ``turnutils_natdiscovery -m -f`` output.

    LabError if the server answered without RFC 5780 (no OTHER-ADDRESS: discovery is
    impossible, not a NAT property) or if the output is not what the tool prints.
    """
    if _ANY_ANSWER in output and _RFC5780_ANSWER not in output:
        raise LabError(
            f"the STUN server answered without OTHER-ADDRESS: RFC 5780 is off there "
            f"(configure an alternate address)\n{output}"
        )
    mapping = _verdict(_MAPPING, output, "mapping")
    filtering = _verdict(_FILTERING, output, "filtering")
    if _NO_NAT in output:
        mapping = NO_NAT
    if mapping is None and filtering is None and _RFC5780_ANSWER not in output:
        return NO_ANSWER, NO_ANSWER
    if mapping is None or filtering is None:
        raise LabError(
            f"{TOOL} gave no complete verdict (mapping={mapping}, filtering={filtering}):\n{output}"
        )
    return mapping, filtering


def classify(mapping: str, filtering: str) -> Behaviour:
    """The lab behaviour that the RFC 4787 mapping and filtering verdicts describe.

    Any mapping that depends on the destination is symmetric (whatever the filtering); an
    endpoint-independent mapping is a cone whose kind is the filtering; no NAT is ``open``; no
    answer at all is ``udp-blocked``. LabError for combinations the lab never builds.
    """
    if mapping == NO_NAT:
        return Behaviour.OPEN
    if mapping == NO_ANSWER and filtering == NO_ANSWER:
        return Behaviour.UDP_BLOCKED
    if mapping in (ADDRESS_DEPENDENT, ADDRESS_AND_PORT_DEPENDENT):
        return Behaviour.SYMMETRIC
    cones = {
        ENDPOINT_INDEPENDENT: Behaviour.FULL_CONE,
        ADDRESS_DEPENDENT: Behaviour.RESTRICTED_CONE,
        ADDRESS_AND_PORT_DEPENDENT: Behaviour.PORT_RESTRICTED,
    }
    if mapping == ENDPOINT_INDEPENDENT and filtering in cones:
        return cones[filtering]
    raise LabError(f"no lab behaviour has mapping={mapping} and filtering={filtering}")


def discover(lab: Lab, client: LabClient, *, port: int = 3478, timeout: float = 15.0) -> Discovery:
    """Run RFC 5780 discovery from ``client``'s namespace against the lab server's primary
    address at ``port`` (UDP, and TCP on the same port when UDP gets no answer).

    LabError if the tool is missing, fails, runs past ``timeout`` seconds or says something
    unexpected, or if the server answers neither over UDP nor over TCP. Blocks for up to about
    6 s (the tool's own receive timeouts); run several clients in threads to save time.
    """
    tool = shutil.which(TOOL)
    if tool is None:
        raise LabError(f"`{TOOL}` not found: apt-get install coturn")
    argv = lab.exec_argv(
        client.namespace,
        tool,
        "-m",
        "-f",
        "-L",
        client.address,
        "-p",
        str(port),
        lab.server_addresses[0],
    )
    try:
        done = subprocess.run(  # noqa: S603 (our own argv: tool paths and lab names)
            argv, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"`{' '.join(argv)}` did not finish in {timeout} s") from None
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` exited {done.returncode}:\n{output}")
    mapping, filtering = parse_output(output)
    if mapping == NO_ANSWER:
        _require_tcp_answer(lab, client, port, timeout)
    return Discovery(mapping, filtering, classify(mapping, filtering), output)


# A STUN Binding over TCP (RFC 8489 header, no attributes); exits 0 on a Binding success.
_TCP_PROBE = """
import os, socket, struct, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as s:
    s.sendall(struct.pack("!HHI12s", 1, 0, 0x2112A442, os.urandom(12)))
    sys.exit(0 if s.recv(20)[:2] == b"\\x01\\x01" else 3)
"""


def _require_tcp_answer(lab: Lab, client: LabClient, port: int, timeout: float) -> None:
    """LabError unless the server answers a Binding over TCP from ``client``'s namespace: with
    no UDP answer either, the server is down or unreachable, which is no NAT behaviour."""
    server = lab.server_addresses[0]
    argv = lab.exec_argv(client.namespace, sys.executable, "-c", _TCP_PROBE, server, str(port), "3")
    try:
        done = subprocess.run(  # noqa: S603 (our own argv: tool paths and lab names)
            argv, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        why = f"no answer in {timeout} s"
    else:
        if done.returncode == 0:
            return
        last = done.stderr.strip().splitlines()[-1:]
        why = last[0] if last else f"exit status {done.returncode}"
    raise LabError(
        f"no STUN answer from {server}:{port} over UDP nor over TCP from "
        f"{client.namespace} ({why}): is the server running there with TCP on?"
    )
