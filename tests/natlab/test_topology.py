"""The lab for real: namespaces, veths, nftables NAT, and the behaviour each client sees.

Needs root, iproute2, nftables, procps and coturn's tools; without them every test here fails
(never skips), saying what is missing. Nothing leaves the lab's namespaces: all traffic is on
198.51.100.0/24 (TEST-NET-2) and 10.x LANs inside them, and the host's own namespace is not
touched.

* ``TestSharedLab`` builds one lab with all six behaviours, two clients each, and runs the
  appliance's STUN server (RFC 5780 on 198.51.100.2/.3) in ``scnl-wan``. coturn's
  ``turnutils_natdiscovery`` must report exactly the configured behaviour from every client;
  a socket-level matrix checks each router's mapping and filtering without coturn, including
  the conntrack clash an unsolicited inbound packet would cause; UDP-blocked clients still
  reach the server over TCP.
* The other tests use small labs of their own: teardown, the stale-lab cleanup, the one-lab
  lock, and link impairment (loss; delay where the kernel has netem).

Sockets are created inside a namespace by ``netns.call_in`` and used from the test thread: a
socket stays in the namespace it was created in.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest
from appliance import run_appliance
from netns import call_in

from secureconnect.natlab.behaviours import ALL_BEHAVIOURS, Behaviour
from secureconnect.natlab.discovery import TOOL, Discovery, discover
from secureconnect.natlab.labs import LabError
from secureconnect.natlab.topology import (
    Lab,
    LabClient,
    Netem,
    cleanup_stale,
    list_namespaces,
    require_root,
)
from secureconnect.netaddr import Address

pytestmark = [pytest.mark.root, pytest.mark.coturn, pytest.mark.slow]

SILENCE = 0.3  # seconds to wait for a packet that must not come
ARRIVAL = 2.0  # seconds to wait for a packet that must come (no loss in the shared lab)
STUN_CONFIG = """\
[stun]
listen = ["198.51.100.2"]
port = 3478
alternate_address = "198.51.100.3"
alternate_port = 3479
tls = false
"""


@pytest.fixture(autouse=True)
def _root_and_tools() -> None:
    try:
        require_root()
    except LabError as exc:
        pytest.fail(str(exc))
    if subprocess.run(["which", TOOL], capture_output=True, check=False).returncode != 0:
        pytest.fail(f"{TOOL} not found: apt-get install coturn (make system-deps)")


def lab_namespaces() -> list[str]:
    return [name for name in list_namespaces() if name.startswith("scnl-")]


def udp_socket(namespace: str, address: str, port: int = 0) -> socket.socket:
    """A UDP socket bound to ``address:port`` inside ``namespace``."""

    def bind() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, port))
        return sock

    return call_in(namespace, bind, timeout=5)


def receive(sock: socket.socket, timeout: float) -> tuple[bytes, Address] | None:
    """The next datagram and its sender, or None if none came within ``timeout`` s."""
    sock.settimeout(timeout)
    try:
        data, sender = sock.recvfrom(2048)
    except TimeoutError:
        return None
    return data, sender


def count_arrivals(sock: socket.socket, quiet: float = 0.5) -> int:
    """Datagrams read until none has come for ``quiet`` seconds."""
    count = 0
    while receive(sock, quiet) is not None:
        count += 1
    return count


def send_and_count(sender: socket.socket, receiver: socket.socket, to: Address) -> int:
    """Send 400 datagrams, paced so that no socket buffer overflows; how many arrived."""
    sender.settimeout(ARRIVAL)
    for _ in range(400):
        sender.sendto(b"x", to)
        time.sleep(0.0005)
    return count_arrivals(receiver)


# -- one lab with every behaviour ------------------------------------------------------------


@pytest.fixture(scope="class")
def shared_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """All six behaviours x 2 clients, with the appliance's STUN (RFC 5780) in scnl-wan."""
    workdir = tmp_path_factory.mktemp("natlab")
    config = workdir / "stun.toml"
    config.write_text(STUN_CONFIG)
    with (
        Lab(ALL_BEHAVIOURS) as lab,
        run_appliance(
            workdir,
            "stun",
            argv_prefix=lab.exec_argv(lab.server_namespace),
            state_dir=workdir / "state",
            extra_args=("--config", str(config)),
        ),
    ):
        yield lab
    assert lab_namespaces() == [], "teardown left namespaces behind"


class TestSharedLab:
    def test_the_plan(self, shared_lab: Lab) -> None:
        clients = shared_lab.clients()
        assert [(c.behaviour, c.index) for c in clients] == [
            (b, i) for b in ALL_BEHAVIOURS for i in (0, 1)
        ]
        assert sorted(lab_namespaces()) == sorted(shared_lab.namespaces())
        assert shared_lab.server_addresses == ("198.51.100.2", "198.51.100.3")
        sym = shared_lab.client(Behaviour.SYMMETRIC, 1)
        n = shared_lab.lab_id
        assert (sym.namespace, sym.router_namespace) == (f"scnl-{n}-c-sym-b", f"scnl-{n}-r-sym-b")
        assert shared_lab.server_namespace == f"scnl-{n}-wan"
        assert sym.address == "10.10.0.2"
        assert sym.public_address == "198.51.100.19"
        opened = shared_lab.client(Behaviour.OPEN, 0)
        assert opened.router_namespace is None
        assert opened.address == opened.public_address == "198.51.100.10"
        with pytest.raises(LabError, match="no client 2"):
            shared_lab.client(Behaviour.OPEN, 2)
        with pytest.raises(LabError, match="not a namespace of this lab"):
            shared_lab.exec_argv("scnl-nope", "true")

    def test_discovery_reports_the_configured_behaviour_everywhere(self, shared_lab: Lab) -> None:
        """RFC 5780 discovery, all twelve clients at once (each takes up to ~6 s alone)."""
        clients = shared_lab.clients()
        with ThreadPoolExecutor(len(clients)) as pool:
            found: list[Discovery] = list(pool.map(lambda c: discover(shared_lab, c), clients))
        seen = {c.namespace: d.summary() for c, d in zip(clients, found, strict=True)}
        wrong = {
            c.namespace: d.output
            for c, d in zip(clients, found, strict=True)
            if d.behaviour is not c.behaviour
        }
        assert not wrong, f"{seen}\n" + "\n".join(f"--- {k}\n{v}" for k, v in wrong.items())

    @pytest.mark.parametrize(
        ("behaviour", "from_other_port", "from_other_address", "unsolicited"),
        [
            (Behaviour.OPEN, True, True, True),
            (Behaviour.FULL_CONE, True, True, True),
            (Behaviour.RESTRICTED_CONE, True, False, False),
            (Behaviour.PORT_RESTRICTED, False, False, False),
            (Behaviour.SYMMETRIC, False, False, False),
        ],
        ids=lambda v: v.value if isinstance(v, Behaviour) else None,
    )
    def test_mapping_and_filtering_at_the_socket_level(
        self,
        shared_lab: Lab,
        behaviour: Behaviour,
        from_other_port: bool,
        from_other_address: bool,
        unsolicited: bool,
    ) -> None:
        """Without coturn: a server first sends to the client's public port unasked (through
        only with endpoint-independent filtering); then the client sends to it from that port
        and must be mapped to the same public port (no conntrack clash from the unasked
        packet) except behind the symmetric NAT, which maps each destination apart; then
        packets from the server's other port and other address test the filtering."""
        client = shared_lab.client(behaviour, 1)
        wan = shared_lab.server_namespace
        primary, alternate = shared_lab.server_addresses
        port = 40000
        with ExitStack() as stack:
            mine = stack.enter_context(udp_socket(client.namespace, client.address, port))
            server = stack.enter_context(udp_socket(wan, primary, 5000))
            other_port = stack.enter_context(udp_socket(wan, primary, 5001))
            other_address = stack.enter_context(udp_socket(wan, alternate, 5000))

            server.sendto(b"unasked", (client.public_address, port))
            assert (receive(mine, SILENCE) is not None) is unsolicited

            mine.sendto(b"out-1", (primary, 5000))
            got = receive(server, ARRIVAL)
            assert got is not None, "the client's packet did not reach the server"
            mapped = got[1]
            assert mapped[0] == client.public_address
            mine.sendto(b"out-2", (primary, 5001))
            got = receive(other_port, ARRIVAL)
            assert got is not None
            if behaviour is Behaviour.SYMMETRIC:
                assert got[1] != mapped, "the symmetric NAT reused a mapping"
            else:
                assert mapped == (client.public_address, port), "the port was not preserved"
                assert got[1] == mapped, "the mapping is not endpoint-independent"

            server.sendto(b"reply", mapped)
            assert receive(mine, ARRIVAL) == (b"reply", (primary, 5000))
            # Only the first mapping (to primary:5000) is probed from here on.
            fresh = stack.enter_context(udp_socket(wan, primary, 5002))
            fresh.sendto(b"other port", mapped)
            assert (receive(mine, SILENCE) is not None) is from_other_port
            other_address.sendto(b"other address", mapped)
            assert (receive(mine, SILENCE) is not None) is from_other_address

    def test_udp_blocked_clients_reach_the_server_over_tcp_only(self, shared_lab: Lab) -> None:
        client = shared_lab.client(Behaviour.UDP_BLOCKED, 1)
        primary = shared_lab.server_addresses[0]
        binding = struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, os.urandom(12))
        with udp_socket(client.namespace, client.address) as udp:
            udp.sendto(binding, (primary, 3478))
            assert receive(udp, 1.0) is None

        def tcp_socket() -> socket.socket:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

        with call_in(client.namespace, tcp_socket, timeout=5) as tcp:
            tcp.settimeout(ARRIVAL)
            tcp.connect((primary, 3478))
            tcp.sendall(binding)
            header = tcp.recv(20)
        assert header[:2] == b"\x01\x01", "no Binding success over TCP"


# -- small labs ------------------------------------------------------------------------------


def test_teardown_kills_processes_and_removes_every_namespace() -> None:
    lab = Lab([Behaviour.SYMMETRIC, Behaviour.OPEN], clients_per_behaviour=1)
    with lab:
        assert lab.build_seconds is not None
        client = lab.client(Behaviour.SYMMETRIC, 0)
        sleeper = subprocess.Popen(lab.exec_argv(client.namespace, "sleep", "60"))
        assert sorted(lab_namespaces()) == sorted(lab.namespaces())
    assert sleeper.wait(timeout=5) != 0  # killed, not finished
    assert lab_namespaces() == []
    lab.teardown()  # idempotent
    with lab:  # and the same plan builds again
        assert sorted(lab_namespaces()) == sorted(lab.namespaces())
    assert lab_namespaces() == []


def test_teardown_runs_when_the_block_raises() -> None:
    with pytest.raises(KeyboardInterrupt), Lab([Behaviour.FULL_CONE], clients_per_behaviour=1):
        raise KeyboardInterrupt
    assert lab_namespaces() == []


def test_cleanup_stale_removes_a_crashed_runs_namespaces() -> None:
    name = f"scnl-stale-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    sleeper = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        while not Path(f"/proc/{sleeper.pid}/ns/net").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cleanup_stale() == [name]
        assert sleeper.wait(timeout=5) != 0
        assert lab_namespaces() == []
        assert cleanup_stale() == []
    finally:
        sleeper.kill()
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def test_a_lab_id_in_use_is_refused_and_its_lab_left_alone() -> None:
    with Lab([Behaviour.OPEN], clients_per_behaviour=1) as lab:
        with pytest.raises(LabError, match=f"another natlab is running as lab {lab.lab_id}"):
            Lab([Behaviour.SYMMETRIC], clients_per_behaviour=1, lab_id=lab.lab_id)
        with pytest.raises(LabError, match="another natlab is running"):
            cleanup_stale()  # nothing is stale, one lab runs
        assert sorted(lab_namespaces()) == sorted(lab.namespaces())  # left alone


def test_two_labs_at_once_do_not_meet() -> None:
    """Two labs built side by side (what two pytest-xdist workers do) get their own ids and
    names; the same addresses in each stay apart: a datagram sent in one lab reaches only that
    lab's server, though the other binds the very same address and port."""
    plan = [Behaviour.PORT_RESTRICTED]
    with Lab(plan, clients_per_behaviour=1) as first, Lab(plan, clients_per_behaviour=1) as other:
        assert first.lab_id != other.lab_id
        assert not set(first.namespaces()) & set(other.namespaces())
        primary = first.server_addresses[0]
        assert primary == other.server_addresses[0]  # the same plan...
        servers = [udp_socket(lab.server_namespace, primary, 5000) for lab in (first, other)]
        try:
            for n, lab in enumerate((first, other)):
                client = lab.client(plan[0], 0)
                with udp_socket(client.namespace, client.address, 40000) as mine:
                    mine.sendto(b"lab %d" % n, (primary, 5000))
                got = receive(servers[n], ARRIVAL)
                assert got is not None
                assert got[0] == b"lab %d" % n
                assert got[1][0] == client.public_address  # through this lab's NAT
                assert receive(servers[1 - n], 0.3) is None  # ... and never the other lab's
        finally:
            for sock in servers:
                sock.close()
    assert lab_namespaces() == []


def test_bad_plans_are_refused() -> None:
    with pytest.raises(ValueError, match="once"):
        Lab([Behaviour.OPEN, Behaviour.OPEN])
    with pytest.raises(ValueError, match="1-26"):
        Lab(clients_per_behaviour=0)
    with pytest.raises(ValueError, match="jitter needs a delay"):
        Netem(jitter_ms=5)


def test_netem_loss_drops_about_the_share_asked_for_each_way() -> None:
    """50 % loss on the full-cone router's WAN, both directions; 400 datagrams each way."""
    with Lab([Behaviour.FULL_CONE], clients_per_behaviour=1, netem=Netem(loss_percent=50)) as lab:
        client = lab.client(Behaviour.FULL_CONE, 0)
        primary = lab.server_addresses[0]
        with (
            udp_socket(client.namespace, client.address, 40000) as mine,
            udp_socket(lab.server_namespace, primary, 5000) as server,
        ):
            outbound = send_and_count(mine, server, (primary, 5000))
            inbound = send_and_count(server, mine, (client.public_address, 40000))
    assert 120 < outbound < 280, outbound
    assert 120 < inbound < 280, inbound


def test_netem_delay_is_added_or_refused_clearly() -> None:
    """Delay needs the kernel's netem qdisc: with it, a round trip through the open client's
    link takes at least twice the delay; without it, the lab refuses to build and says why,
    leaving nothing behind."""
    netem = Netem(delay_ms=25)
    lab = Lab([Behaviour.OPEN], clients_per_behaviour=1, netem=netem)
    try:
        lab.build()
    except LabError as exc:
        refused: LabError | None = exc
    else:
        refused = None
    if refused is not None:
        assert "CONFIG_NET_SCH_NETEM" in str(refused)
        assert lab_namespaces() == []
        return
    with lab:
        client = lab.client(Behaviour.OPEN, 0)
        primary = lab.server_addresses[0]
        with (
            udp_socket(client.namespace, client.address) as mine,
            udp_socket(lab.server_namespace, primary, 5000) as server,
        ):
            started = time.monotonic()
            mine.sendto(b"ping", (primary, 5000))
            got = receive(server, ARRIVAL)
            assert got is not None
            server.sendto(b"pong", got[1])
            assert receive(mine, ARRIVAL) is not None
            assert time.monotonic() - started >= 2 * netem.delay_ms / 1000


def test_discovery_without_a_server_is_an_error_not_udp_blocked() -> None:
    """No server: nothing answers, as behind a UDP-blocking NAT; discovery tells the two apart
    by a STUN Binding over TCP, which a UDP-blocked client still gets through."""
    with Lab([Behaviour.UDP_BLOCKED], clients_per_behaviour=1) as lab:
        client: LabClient = lab.client(Behaviour.UDP_BLOCKED, 0)
        with pytest.raises(LabError, match="over UDP nor over TCP"):
            discover(lab, client)


def test_a_short_udp_timeout_expires_idle_mappings() -> None:
    """``udp_timeout`` sets how long an idle UDP mapping lives in every router: an answer
    within it gets through the port-restricted NAT, one after it is dropped."""
    with Lab([Behaviour.PORT_RESTRICTED], clients_per_behaviour=1, udp_timeout=2) as lab:
        client = lab.client(Behaviour.PORT_RESTRICTED, 0)
        primary = lab.server_addresses[0]
        with (
            udp_socket(client.namespace, client.address, 40000) as mine,
            udp_socket(lab.server_namespace, primary, 5000) as server,
        ):
            mine.sendto(b"out", (primary, 5000))
            got = receive(server, ARRIVAL)
            assert got is not None
            server.sendto(b"soon", got[1])
            assert receive(mine, ARRIVAL) == (b"soon", (primary, 5000))
            time.sleep(3.5)
            server.sendto(b"late", got[1])
            assert receive(mine, 1.0) is None
