"""The lab's network: namespaces, veth pairs, a bridge, addresses, routes and NAT routers.

Layout of lab N (every name starts with ``scnl-N-``, which is how :func:`cleanup_stale` finds
leftovers)::

    scnl-N-wan   bridge br0, 198.51.100.2 and .3 (the servers; RFC 5780 needs two addresses)
      |-- v-<tag>-<i> ==veth== wan    scnl-N-r-<tag>-<i>  198.51.100.x   (a NAT router)
      |                        lan    10.n.0.1/24
      |                          ==veth== uplink  scnl-N-c-<tag>-<i>  10.n.0.2, default via .1
      `-- v-open-<i>  ==veth== uplink scnl-N-c-open-<i>  198.51.100.x   (no NAT)

Several labs at once (pytest-xdist workers, two CI jobs on one machine): each has a *lab id*
N (0 to :data:`MAX_LABS` - 1; by default the first one free), its own namespace names and its
own lock, ``/run/secureconnect-natlab-N.lock``. Their addresses are the same plan: every lab
is a set of namespaces of its own, with no link to any other lab or to the host, so equal
addresses in two labs never meet.

198.51.100.0/24 is TEST-NET-2 (RFC 5737): it is routed nowhere, and nothing here ever touches
the host's own namespace: every link is created inside a lab namespace (``ip -n``), so the
host's interfaces, addresses and routes are never read or changed. Each client has a router of
its own, so two symmetric clients are behind two different NATs, as on the internet.

Addresses are assigned in order of the behaviours given and then of the clients: the k-th
client (from 0) gets the public address 198.51.100.(10+k) (its router's WAN, or its own for
``open``) and the LAN 10.(k+1).0.0/24. IPv6 is disabled in every lab namespace, so that only
the IPv4 paths under test exist. Routers forward (``ip_forward`` in their namespace only),
keep UDP conntrack entries for RFC 4787's recommended five minutes, and get the nftables rules
of ``behaviours.router_ruleset``.

The harder networks (``networks=``, :mod:`secureconnect.natlab.networks`: two clients behind
one NAT, a double NAT, dual-stack clients behind an IPv6 firewall, NATs with a short UDP
timeout) are planned there as data, named ``scnl-N-<tag>-...``, and built here after the
matrix's clients, on the public addresses from 198.51.100.210 up. ``netem`` impairs the
matrix's links only.

Resource handling: :class:`Lab` is a context manager. Its lab id's exclusive lock is held from
the moment the id is chosen (construction) to teardown; entering it removes what a crashed run
of the same lab id left behind, and builds the lab; if building fails or is interrupted, what
was built is torn down before the error propagates. Leaving it, however the block ends, kills
every process still inside a lab namespace (SIGTERM, then SIGKILL) and deletes the namespaces,
which destroys their links.

Error handling: every failure is a :class:`LabError` naming the command that failed and what it
wrote on stderr. Every command runs with a timeout.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from secureconnect.natlab.behaviours import (
    ALL_BEHAVIOURS,
    Behaviour,
    loss_ruleset,
    router_ruleset,
)
from secureconnect.natlab.labs import MAX_LABS, PREFIX, LabError, LabLock, free_lab, lab_prefix
from secureconnect.natlab.netcmd import (
    base_sysctls,
    exec_argv_in,
    ip_batch,
    nft,
    require_root,
    run,
    sysctl,
    tool,
)
from secureconnect.natlab.networks import LabClient, Network, NetworkPlan, plan_network

__all__ = [
    "Lab",
    "LabClient",
    "Netem",
    "call_in_namespace",
    "cleanup_stale",
    "exec_argv_in",
    "list_namespaces",
    "namespace_pids",
    "require_root",
]

BRIDGE = "br0"
SERVER_ADDRESSES = ("198.51.100.2", "198.51.100.3")
PUBLIC_NETWORK = "198.51.100.0/24"
_PUBLIC_PREFIX = "198.51.100."
_FIRST_PUBLIC_HOST = 10
_MAX_CLIENTS = 190  # 198.51.100.10-199 and 10.1-190.0.0/24 (the networks: .210 and up)
WAN, LAN, UPLINK = "wan", "lan", "uplink"  # interface names inside router/client namespaces
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for processes left in a namespace
NETNS_DIR = Path("/run/netns")  # where `ip netns` keeps the namespaces' names
_CLONE_NEWNET = 0x40000000  # setns(2): join a network namespace
T = TypeVar("T")
DEFAULT_UDP_TIMEOUT = 300  # RFC 4787 REQ-5 recommends >= 5 minutes for UDP mappings


def call_in_namespace(namespace: str, fn: Callable[[], T], *, timeout: float) -> T:
    """Run ``fn()`` in a new thread that has joined ``namespace`` (``setns``); what it returns.

    The thread is made for this call and ends with it, so no pooled thread is ever left in a
    namespace. Raises what ``fn`` raised, or LabError after ``timeout`` seconds (the daemon
    thread is then abandoned: ``fn`` should bound its own work).
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def enter_and_call() -> None:
        try:
            fd = os.open(NETNS_DIR / namespace, os.O_RDONLY)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns({namespace}): {os.strerror(errno)}")
            finally:
                os.close(fd)
            outcome.append(fn())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=enter_and_call, name=f"netns-{namespace}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise LabError(f"a call in namespace {namespace} still ran after {timeout} s")
    if failure:
        raise failure[0]
    return outcome[0]


def list_namespaces() -> list[str]:
    """The names of all named network namespaces (``ip netns list``)."""
    output = run([tool("ip"), "netns", "list"])
    return [line.split()[0] for line in output.splitlines() if line.strip()]


def namespace_pids(namespace: str) -> list[int]:
    """The processes whose network namespace is ``namespace`` (what ``ip netns pids`` prints,
    read from /proc directly so that waiting for them to exit costs no subprocess)."""
    try:
        target = os.stat(NETNS_DIR / namespace)
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:  # exited meanwhile, or a zombie (no namespace any more)
            continue
        if (ns.st_dev, ns.st_ino) == (target.st_dev, target.st_ino):
            pids.append(int(entry.name))
    return pids


def _kill_processes(namespaces: Sequence[str]) -> None:
    """SIGTERM every process in ``namespaces``; SIGKILL those still there after KILL_GRACE."""
    deadline = time.monotonic() + KILL_GRACE
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [pid for name in namespaces for pid in namespace_pids(name)]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                os.kill(pid, sig)
        while time.monotonic() < deadline:
            if not any(namespace_pids(name) for name in namespaces):
                return
            time.sleep(0.02)
        deadline = time.monotonic() + KILL_GRACE
    left = {name: namespace_pids(name) for name in namespaces}
    left = {name: pids for name, pids in left.items() if pids}
    if left:
        raise LabError(f"processes survived SIGKILL in lab namespaces: {left}")


def _delete_namespaces(namespaces: Sequence[str]) -> list[str]:
    """Kill what runs in the existing ones of ``namespaces``, delete them; the names removed."""
    present = set(list_namespaces())
    doomed = [name for name in namespaces if name in present]
    if doomed:
        _kill_processes(doomed)
        ip_batch(None, (f"netns del {name}" for name in doomed))
    return doomed


def cleanup_stale() -> list[str]:
    """Delete every ``scnl-*`` namespace of a lab that is not running (its lock is free),
    killing its processes first; the names removed.

    For the leftovers of runs that crashed or were killed before their teardown. A running lab
    (in this or another process) is left alone; LabError if there is one and nothing else.
    """
    require_root()
    by_lab: dict[int | None, list[str]] = {}
    for name in list_namespaces():
        if name.startswith(PREFIX):
            number, dash, _ = name[len(PREFIX) :].partition("-")
            key = int(number) if dash and number.isdigit() else None  # None: an older layout
            by_lab.setdefault(key, []).append(name)
    removed: list[str] = []
    running: list[int] = []
    for lab_id in sorted(by_lab, key=lambda key: -1 if key is None else key):
        names = by_lab[lab_id]
        if lab_id is None:
            removed += _delete_namespaces(names)
            continue
        lock = LabLock(lab_id)
        if not lock.try_acquire():
            running.append(lab_id)
            continue
        try:
            removed += _delete_namespaces(names)
        finally:
            lock.release()
    if running and not removed:
        raise LabError(
            f"another natlab is running as lab {', '.join(map(str, running))}: its namespaces "
            "are not stale"
        )
    return removed


@dataclass(frozen=True)
class Netem:
    """Link impairment on every client's way to the public segment, in each direction.

    ``loss_percent`` of the packets are dropped on the WAN link of every router (the uplink of
    an ``open`` client) as they arrive and as they leave, by nftables ``numgen`` rules (no kernel
    module needed). ``delay_ms`` +- ``jitter_ms`` is added by ``tc qdisc ... netem`` on both
    ends of that link, so a round trip through it grows by twice the delay; it needs a kernel
    with the netem qdisc (CONFIG_NET_SCH_NETEM), and the lab fails to build, saying so, if the
    kernel has none.
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_percent: float = 0.0

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("netem delay and jitter must not be negative")
        if self.jitter_ms and not self.delay_ms:
            raise ValueError("netem jitter needs a delay")
        if not 0.0 <= self.loss_percent <= 100.0:
            raise ValueError("netem loss must be within 0-100 %")


@dataclass(frozen=True)
class _Node:
    """A client and the plumbing around it."""

    client: LabClient
    bridge_port: str  # the veth end in scnl-wan, enslaved to the bridge
    lan_gateway: str  # the router's LAN address ("" for open)


def _letter(index: int) -> str:
    return chr(ord("a") + index)


class Lab:
    """The lab network; build it with ``with Lab(...) as lab:``.

    * ``behaviours``: which NATs to build (default: all six), each at most once.
    * ``clients_per_behaviour``: independent clients per behaviour, each behind its own router;
      index 0, 1, ... (named ``a``, ``b``, ... in namespace names).
    * ``netem``: optional loss/delay on every client's WAN link (see :class:`Netem`).
    * ``lab_id``: which lab of this machine (its names and lock); None: the first one free.

    The plan (lab id, names and addresses) is fixed at construction, so :meth:`clients` works
    before the lab is built; the lab id's lock is held from then on, until :meth:`teardown`.
    :attr:`server_namespace` (``scnl-N-wan``) is where servers run, on both
    :attr:`server_addresses`; :attr:`public_network` is the segment between them and the NATs.
    """

    server_addresses: tuple[str, str] = SERVER_ADDRESSES
    public_network: str = PUBLIC_NETWORK

    def __init__(
        self,
        behaviours: Sequence[Behaviour] = ALL_BEHAVIOURS,
        *,
        clients_per_behaviour: int = 2,
        netem: Netem | None = None,
        lab_id: int | None = None,
        udp_timeout: int = DEFAULT_UDP_TIMEOUT,
        networks: Sequence[Network] = (),
    ) -> None:
        behaviours = [Behaviour(b) for b in behaviours]
        if not behaviours:
            raise ValueError("a lab needs at least one behaviour")
        if len(set(behaviours)) != len(behaviours):
            raise ValueError("each behaviour may be given once (use clients_per_behaviour)")
        if not 1 <= clients_per_behaviour <= 26:
            raise ValueError("clients_per_behaviour must be within 1-26")
        if len(behaviours) * clients_per_behaviour > _MAX_CLIENTS:
            raise ValueError(f"a lab holds at most {_MAX_CLIENTS} clients")
        if lab_id is not None and not 0 <= lab_id < MAX_LABS:
            raise ValueError(f"lab_id must be within 0-{MAX_LABS - 1}")
        if not 1 <= udp_timeout <= 3600:
            raise ValueError("udp_timeout must be within 1-3600 seconds")
        self.netem = netem
        self.udp_timeout = udp_timeout  # seconds an idle UDP mapping lives in every router
        if lab_id is None:
            self._lock = free_lab()
        else:
            self._lock = LabLock(lab_id)
            self._lock.acquire()
        # A lab that is never built or torn down still gives its lock back when collected.
        self._release = weakref.finalize(self, self._lock.release)
        self.lab_id = self._lock.lab_id
        prefix = lab_prefix(self.lab_id)
        self.server_namespace = f"{prefix}wan"
        self.build_seconds: float | None = None  # how long the last build took
        self._nodes: dict[tuple[Behaviour, int], _Node] = {}
        for k, (behaviour, index) in enumerate(
            (b, i) for b in behaviours for i in range(clients_per_behaviour)
        ):
            suffix = f"{behaviour.tag}-{_letter(index)}"
            public = f"{_PUBLIC_PREFIX}{_FIRST_PUBLIC_HOST + k}"
            is_open = behaviour is Behaviour.OPEN
            client = LabClient(
                behaviour=behaviour,
                index=index,
                namespace=f"{prefix}c-{suffix}",
                address=public if is_open else f"10.{k + 1}.0.2",
                public_address=public,
                router_namespace=None if is_open else f"{prefix}r-{suffix}",
            )
            gateway = "" if is_open else f"10.{k + 1}.0.1"
            self._nodes[behaviour, index] = _Node(client, f"v-{suffix}", gateway)
        self._networks: dict[Network, NetworkPlan] = {
            Network(network): plan_network(
                Network(network),
                m,
                prefix=prefix,
                server_namespace=self.server_namespace,
                bridge=BRIDGE,
            )
            for m, network in enumerate(dict.fromkeys(networks))
        }
        self._built: list[str] = []  # namespaces created so far, for teardown

    # -- the plan ----------------------------------------------------------------------------

    def client(self, behaviour: Behaviour, index: int) -> LabClient:
        """The client ``index`` (from 0) of ``behaviour``; LabError if the lab has none."""
        node = self._nodes.get((Behaviour(behaviour), index))
        if node is None:
            raise LabError(f"this lab has no client {index} behind {Behaviour(behaviour).value}")
        return node.client

    def clients(self) -> list[LabClient]:
        """Every client, in address order (behaviours as given, then index)."""
        return [node.client for node in self._nodes.values()]

    def network_clients(self, network: Network) -> tuple[LabClient, LabClient]:
        """The two clients of a harder network (:mod:`.networks`); LabError if the lab has
        not got it."""
        plan = self._networks.get(Network(network))
        if plan is None:
            raise LabError(f"this lab has no {Network(network).value} network")
        first, second = plan.clients
        return first, second

    @property
    def networks(self) -> tuple[Network, ...]:
        """The harder networks of this lab, in the order given."""
        return tuple(self._networks)

    def namespaces(self) -> list[str]:
        """Every namespace of the lab: the server's, each router's and client's, then the
        harder networks'."""
        names = [self.server_namespace]
        for node in self._nodes.values():
            if node.client.router_namespace:
                names.append(node.client.router_namespace)
            names.append(node.client.namespace)
        for plan in self._networks.values():
            names += plan.namespaces
        return names

    def exec_argv(self, namespace: str, *argv: str) -> list[str]:
        """``ip netns exec NAMESPACE ARGV...`` for one of this lab's namespaces (LabError for
        any other name, so a typo cannot run something in the wrong place)."""
        if namespace not in self.namespaces():
            raise LabError(f"{namespace!r} is not a namespace of this lab")
        return exec_argv_in(namespace, *argv)

    # -- building and tearing down -----------------------------------------------------------

    def __enter__(self) -> Lab:
        self.build()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()

    def build(self) -> None:
        """Clean up what a crashed run of this lab id left, build everything; on any failure or
        interrupt, tear down what was built and re-raise."""
        require_root()
        if self._built:
            raise LabError("this lab is already built (tear it down first)")
        self._lock.acquire()  # again after a teardown
        started = time.monotonic()
        try:
            prefix = lab_prefix(self.lab_id)
            _delete_namespaces([n for n in list_namespaces() if n.startswith(prefix)])
            self._build()
        except BaseException:
            with contextlib.suppress(LabError):  # the build's own error is the one to report
                self.teardown()
            raise
        self.build_seconds = time.monotonic() - started

    def _build(self) -> None:
        names = self.namespaces()
        self._built = names  # registered first: teardown deletes whichever exist
        ip_batch(None, (f"netns add {name}" for name in names))
        routers = {node.client.router_namespace: self.udp_timeout for node in self._nodes.values()}
        for plan in self._networks.values():
            routers.update(dict.fromkeys(plan.routers, plan.udp_timeout or self.udp_timeout))
        for name in names:  # before any link exists, so that new links inherit "default"
            timeout = routers.get(name)
            sysctl(name, base_sysctls(router=timeout is not None, udp_timeout=timeout or 0))
        self._build_public_segment()
        for node in self._nodes.values():
            self._build_node(node)
        for plan in self._networks.values():
            self._build_network(plan)
        if self.netem is not None and (self.netem.delay_ms or self.netem.jitter_ms):
            self._add_delay(self.netem)

    def _build_public_segment(self) -> None:
        """The bridge with the server addresses, and one veth per client plugged into it."""
        commands = [
            "link set dev lo up",
            f"link add name {BRIDGE} type bridge",
            *(f"address add {a}/24 dev {BRIDGE}" for a in self.server_addresses),
            f"link set dev {BRIDGE} up",
        ]
        for node in self._nodes.values():
            client = node.client
            far_ns = client.router_namespace or client.namespace
            far_if = WAN if client.router_namespace else UPLINK
            commands += [
                f"link add name {node.bridge_port} type veth peer name {far_if} netns {far_ns}",
                f"link set dev {node.bridge_port} master {BRIDGE}",
                f"link set dev {node.bridge_port} up",
            ]
        ip_batch(self.server_namespace, commands)

    def _build_node(self, node: _Node) -> None:
        client = node.client
        router = client.router_namespace
        uplink = ["link set dev lo up", f"link set dev {UPLINK} up"]
        if router is None:  # open: the client's uplink is on the bridge itself
            ip_batch(client.namespace, [*uplink, f"address add {client.address}/24 dev {UPLINK}"])
            self._add_loss(client.namespace, UPLINK)
            return
        ip_batch(
            router,
            [
                "link set dev lo up",
                f"address add {client.public_address}/24 dev {WAN}",
                f"link set dev {WAN} up",
                f"link add name {LAN} type veth peer name {UPLINK} netns {client.namespace}",
                f"address add {node.lan_gateway}/24 dev {LAN}",
                f"link set dev {LAN} up",
            ],
        )
        ip_batch(
            client.namespace,
            [
                *uplink,
                f"address add {client.address}/24 dev {UPLINK}",
                f"route add default via {node.lan_gateway} dev {UPLINK}",
            ],
        )
        rules = router_ruleset(
            client.behaviour,
            wan_interface=WAN,
            wan_address=client.public_address,
            lan_interface=LAN,
            client_address=client.address,
        )
        nft(router, rules)
        self._add_loss(router, WAN)

    def _build_network(self, plan: NetworkPlan) -> None:
        """Run a harder network's steps in order (:func:`.networks.plan_network`)."""
        for step in plan.steps:
            if step.kind == "ip":
                ip_batch(step.namespace, step.lines)
            elif step.kind == "nft":
                nft(step.namespace, step.lines[0])
            else:
                sysctl(step.namespace, step.lines)

    def _add_loss(self, namespace: str, interface: str) -> None:
        if self.netem is not None and self.netem.loss_percent:
            nft(namespace, loss_ruleset(interface, self.netem.loss_percent))

    def _add_delay(self, netem: Netem) -> None:
        """netem on both ends of every client's WAN link (each direction gets the delay)."""
        spec = ["netem", "delay", f"{netem.delay_ms}ms"]
        if netem.jitter_ms:
            spec.append(f"{netem.jitter_ms}ms")
        per_namespace: dict[str, list[str]] = {self.server_namespace: []}
        for node in self._nodes.values():
            client = node.client
            far_ns = client.router_namespace or client.namespace
            far_if = WAN if client.router_namespace else UPLINK
            per_namespace[self.server_namespace].append(node.bridge_port)
            per_namespace.setdefault(far_ns, []).append(far_if)
        for namespace, interfaces in per_namespace.items():
            text = "".join(f"qdisc add dev {dev} root {' '.join(spec)}\n" for dev in interfaces)
            try:
                run([tool("tc"), "-n", namespace, "-batch", "-"], stdin=text)
            except LabError as exc:
                if "unknown" in str(exc).lower():
                    raise LabError(
                        "this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM), so the lab "
                        "cannot add delay or jitter (loss works without it)"
                    ) from exc
                raise

    def teardown(self) -> None:
        """Kill every process left in a lab namespace and delete the namespaces (their links
        go with them); release the lock. Idempotent: safe after a failed or partial build."""
        try:
            if self._built:
                _delete_namespaces(self._built)
                self._built = []
        finally:
            self._lock.release()
