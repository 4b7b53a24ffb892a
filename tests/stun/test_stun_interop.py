"""Interop: STUN clients nobody here wrote, against our server, on loopback only.

* pystun3, a classic RFC 3489 client: the mapped address, and NAT classification when RFC 5780 is
  on (its CHANGE-REQUEST tests are the classic ones).
* coturn's ``turnutils_stunclient`` and ``turnutils_natdiscovery`` (RFC 5389/5780): the reflexive
  address, CHANGE-REQUEST with RESPONSE-PORT and PADDING, mapping and filtering discovery.
* aioice, the ICE agent under aiortc: a server-reflexive candidate.

The server runs in-process (``loopback_stun.running_stun``) with 127.0.0.1 as its primary and
127.0.0.2 as its RFC 5780 alternate address (Linux routes all of 127/8 to ``lo``); the clients
run as subprocesses, each bounded by ``trio.fail_after``. aioice gathers host addresses from every
interface except exactly 127.0.0.1, so its test runs the appliance and aioice in a throwaway
network namespace whose ``lo`` also carries 127.0.0.2/8. Nothing here leaves loopback.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import aioice
import pytest
import trio
from appliance import run_appliance
from loopback_stun import bound, free_port_pair, running_stun
from netns import call_in, exec_argv, netns

from secureconnect.netaddr import Address
from secureconnect.stun.serve import StunServer

PYSTUN_CLIENT = Path(__file__).resolve().parents[1] / "support" / "pystun_client.py"
ALTERNATE_IP = "127.0.0.2"
CLIENT_SECONDS = 20  # each client finishes in well under a second when all is well


async def run_client(*argv: str) -> str:
    """Run a client to completion (killed after CLIENT_SECONDS); its stdout, if it exited 0.

    turnutils_stunclient's RFC 5780 test binds the port after its first one without asking
    whether it is free; when another process on the machine holds it, it exits with "Address
    already in use" before sending anything. That (and only that) is tried again, twice."""
    for _ in range(3):
        with trio.fail_after(CLIENT_SECONDS):
            done = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False
            )
        stdout, stderr = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
        if done.returncode == 0 or "Address already in use" not in stderr:
            break
    assert done.returncode == 0, f"{argv} exited {done.returncode}\n{stdout}\n{stderr}"
    return stdout


async def pystun(*args: str) -> dict[str, Any]:
    """What ``pystun_client.py ARGS`` printed (see that script for the JSON)."""
    output = await run_client(sys.executable, str(PYSTUN_CLIENT), *args)
    result: dict[str, Any] = json.loads(output)
    return result


def coturn_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's coturn package (make system-deps)")
    return path


@asynccontextmanager
async def rfc5780_server() -> AsyncIterator[tuple[StunServer, Address, Address]]:
    """A server with RFC 5780 on: (server, primary, alternate) addresses."""
    port, alt_port = free_port_pair(("127.0.0.1", ALTERNATE_IP))
    primary, alternate = ("127.0.0.1", port), (ALTERNATE_IP, alt_port)
    async with running_stun(port=port, alternate=alternate) as server:
        yield server, primary, alternate


_ADDR = r"(\d+\.\d+\.\d+\.\d+):(\d+)"
_COTURN_FIELDS = {
    "origin": re.compile(rf"Response origin: : {_ADDR}"),
    "other": re.compile(rf"Other addr: : {_ADDR}"),
    "reflexive": re.compile(rf"UDP reflexive addr: {_ADDR}"),
}


def coturn_fields(text: str) -> dict[str, Address]:
    """The addresses coturn printed in ``text``. coturn 4.6.1 prints some lines twice (its log
    also goes to stdout), so repeats are fine but two different values are not."""
    fields = {}
    for name, pattern in _COTURN_FIELDS.items():
        values = {(ip, int(port)) for ip, port in pattern.findall(text)}
        assert len(values) <= 1, f"{name}: {values} in {text!r}"
        if values:
            fields[name] = values.pop()
    return fields


def coturn_responses(output: str) -> list[dict[str, Address]]:
    """One dict per "RFC 5780 response N" block (printed for answers with OTHER-ADDRESS)."""
    return [coturn_fields(block) for block in re.split(r"RFC 5780 response \d+", output)[1:]]


async def test_pystun3_reads_our_mapped_address() -> None:
    """RFC 5780 off: a classic request (no magic cookie) gets MAPPED-ADDRESS with the client's own
    socket address and SOURCE-ADDRESS with ours, which pystun3's attribute walk can parse."""
    async with running_stun() as server:
        host, port = bound(server, "udp")
        seen = await pystun("binding", host, str(port))
    result = seen["result"]
    assert result["Resp"] is True
    assert [result["ExternalIP"], result["ExternalPort"]] == seen["local"]
    assert (result["SourceIP"], result["SourcePort"]) == (host, port)
    assert result["ChangedIP"] is None  # no CHANGED-ADDRESS without an alternate address
    assert server.counters.classic_requests == 1


@pytest.mark.parametrize(
    ("source_ip", "nat_type"), [("127.0.0.1", "Open Internet"), ("0.0.0.0", "Full Cone")]
)
async def test_pystun3_classifies_the_nat_with_rfc5780(source_ip: str, nat_type: str) -> None:
    """RFC 5780 on: pystun3's Test II (CHANGE-REQUEST, change IP and port) is answered from the
    alternate address, so the path counts as unfiltered. From 127.0.0.1 the mapped address equals
    the source, hence "Open Internet"; from 0.0.0.0 pystun3 compares the mapped IP with the literal
    "0.0.0.0", assumes a NAT, and the same answer makes it a "Full Cone" (endpoint-independent)."""
    async with rfc5780_server() as (server, primary, alternate):
        seen = await pystun("classify", source_ip, *map(str, primary))
    assert seen["nat_type"] == nat_type
    test2 = seen["result"]  # the answer to the CHANGE-REQUEST
    assert (test2["SourceIP"], test2["SourcePort"]) == alternate
    assert (test2["ChangedIP"], test2["ChangedPort"]) == alternate
    assert (test2["ExternalIP"], test2["ExternalPort"]) == ("127.0.0.1", seen["local"][1])
    assert server.counters.classic_requests == 2
    assert server.counters.change_requests == 1


async def test_pystun3_without_rfc5780_is_not_told_it_is_on_the_open_internet() -> None:
    """RFC 5780 off: the classic CHANGE-REQUEST is dropped on purpose (a 420 would make pystun3
    retransmit forever; a same-address success would fake an open path). pystun3 ends with
    "Symmetric UDP Firewall": the reply from another address did not come, which is the truth."""
    async with running_stun() as server:
        host, port = bound(server, "udp")
        seen = await pystun("--timeout", "0.5", "classify", host, host, str(port))
    assert seen["nat_type"] == "Symmetric UDP Firewall"
    # pystun3 sends each test four times (more when a late answer to Test I, on a loaded
    # machine, restarts its count)
    assert 4 <= server.counters.dropped_classic_change <= 8


@pytest.mark.coturn
async def test_turnutils_stunclient_reads_our_reflexive_address() -> None:
    """RFC 5780 off: one RFC 5389 Binding; coturn finds XOR-MAPPED-ADDRESS and, seeing no
    OTHER-ADDRESS, stops there. (With ``-f`` it would hang: our 420 to its CHANGE-REQUEST with
    RESPONSE-PORT goes to the socket it sent from, which it has already swapped for another.)"""
    async with running_stun() as server:
        host, port = bound(server, "udp")
        output = await run_client(coturn_tool("turnutils_stunclient"), "-p", str(port), host)
    assert "RFC 5780 response" not in output
    reflexive = coturn_fields(output)["reflexive"]
    assert reflexive[0] == "127.0.0.1"
    assert reflexive[1] != port
    assert server.counters.responses == 1


@pytest.mark.coturn
@pytest.mark.parametrize("flags", [(), ("-f",)], ids=["discovered", "forced"])
async def test_turnutils_stunclient_rfc5780(flags: tuple[str, ...]) -> None:
    """RFC 5780 on: coturn learns it from OTHER-ADDRESS (or is forced with ``-f``) and sends
    (1) a plain Binding, (2) CHANGE-REQUEST IP+port with RESPONSE-PORT = its port + 1, read on a
    new socket bound to that port, (3) CHANGE-REQUEST IP+port with PADDING from the new socket.
    Every answer must come from the right address and name the right mapped address."""
    async with rfc5780_server() as (server, primary, alternate):
        output = await run_client(
            coturn_tool("turnutils_stunclient"), *flags, "-p", str(primary[1]), primary[0]
        )
    first, redirected, padded = coturn_responses(output)
    assert first["origin"] == primary
    assert first["other"] == alternate
    client_ip, client_port = first["reflexive"]
    assert client_ip == "127.0.0.1"
    # (2) reached the port RESPONSE-PORT named (a different socket), from the alternate address
    assert redirected == {"origin": alternate, "other": alternate, "reflexive": first["reflexive"]}
    # (3) was sent from the socket coturn bound to client_port + 1
    assert padded == {
        "origin": alternate,
        "other": alternate,
        "reflexive": (client_ip, client_port + 1),
    }
    assert (server.counters.responses, server.counters.change_requests) == (3, 2)
    assert server.counters.errors_sent == 0


@pytest.mark.coturn
@pytest.mark.parametrize(
    "flags", [(), ("-P", "-L", "127.0.0.1")], ids=["plain", "padding-from-127.0.0.1"]
)
async def test_turnutils_natdiscovery_finds_endpoint_independent_behaviour(
    flags: tuple[str, ...],
) -> None:
    """RFC 5780 §4.3/§4.4 as coturn runs them: mapping discovery sends to our alternate IP at the
    primary port (a third socket must answer), filtering discovery asks for a change of IP and
    port. Loopback has no NAT, so both must come out endpoint-independent; with ``-L 127.0.0.1``
    coturn also sees the mapped address equal its own and says "No NAT!". ``-P`` pads each
    request to 1500 bytes."""
    async with rfc5780_server() as (server, primary, alternate):
        output = await run_client(
            coturn_tool("turnutils_natdiscovery"),
            "-m",
            "-f",
            *flags,
            "-p",
            str(primary[1]),
            "127.0.0.1",
        )
    assert "NAT with Endpoint Independent Mapping!" in output
    assert "NAT with Endpoint Independent Filtering!" in output
    assert "timeout" not in output
    assert "error" not in output
    assert ("No NAT! (Endpoint Independent Mapping)" in output) == ("-L" in flags)
    origins = [response["origin"] for response in coturn_responses(output)]
    assert origins == [primary, (ALTERNATE_IP, primary[1]), primary, alternate]
    assert server.counters.errors_sent == 0


def gather_with_aioice(stun_server: Address) -> list[Any]:
    """aioice's candidate gathering, in an event loop of its own (run in a namespaced thread)."""

    async def gather() -> list[Any]:
        connection = aioice.Connection(
            ice_controlling=True, stun_server=stun_server, use_ipv6=False
        )
        try:
            await asyncio.wait_for(connection.gather_candidates(), 10)
            return list(connection.local_candidates)
        finally:
            await connection.close()

    return asyncio.run(gather())


@pytest.mark.root
def test_aioice_gathers_a_server_reflexive_candidate(tmp_path: Path) -> None:
    """In a namespace where ``lo`` has 127.0.0.1 and 127.0.0.2: the appliance (``secureconnect
    run stun``, so config and CLI are in the path) on 127.0.0.1:3478, aioice on its only usable
    host address, 127.0.0.2. Without NAT the srflx candidate must be exactly the host one."""
    with (
        netns(addresses=(f"{ALTERNATE_IP}/8",)) as name,
        run_appliance(
            tmp_path,
            "stun",
            argv_prefix=exec_argv(name),
            state_dir=tmp_path,
            settings=(
                'stun.listen=["127.0.0.1"]',
                "stun.port=3478",
                "stun.tcp=false",
                "stun.tls=false",
            ),
        ),
    ):
        gather = partial(gather_with_aioice, ("127.0.0.1", 3478))
        candidates = call_in(name, gather, timeout=20)
    hosts = [c for c in candidates if c.type == "host"]
    reflexive = [c for c in candidates if c.type == "srflx"]
    assert [(c.host, c.component) for c in hosts] == [(ALTERNATE_IP, 1)]
    assert len(reflexive) == 1
    srflx, host = reflexive[0], hosts[0]
    assert (srflx.host, srflx.port) == (host.host, host.port)
    assert (srflx.related_address, srflx.related_port) == (host.host, host.port)
