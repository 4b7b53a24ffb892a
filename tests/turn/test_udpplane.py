"""The UDP data plane drives the TURN core from a plain thread, in a process that never imports
trio (issue #13: the seam worker processes need). A TURN client over UDP allocates, installs a
permission and relays both ways through real loopback sockets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SUPPORT = Path(__file__).resolve().parents[1] / "support"

SCRIPT = r"""
import socket, sys, threading, time

import turnwire
from secureconnect.credentials import CredentialMinter, NonceMint
from secureconnect.stun import AttrType as A, MessageClass, Method, new_transaction_id
from secureconnect.turn.auth import Authenticator
from secureconnect.turn.core import TurnCore, TurnCounters, TurnSettings
from secureconnect.turn.peerpolicy import LOOPBACK_RANGES, OwnEndpoints, PeerPolicy
from secureconnect.turn.udpplane import UdpDataPlane

SECRET, REALM = "plane-secret", "plane.test"
settings = TurnSettings(
    relay_ipv4="127.0.0.1", relay_ipv6=None, external_ipv4=None, external_ipv6=None,
    default_lifetime=600, max_lifetime=3600, user_quota=10, ip_quota=10, total_quota=10,
    max_permissions=8, max_channels=8, bandwidth=0, rfc5766_channels=False, software=None,
    reason_phrases=False, metrics_users=20,
)
auth = Authenticator(realm=REALM, minter=CredentialMinter((SECRET,)), nonces=NonceMint.random())
counters = TurnCounters()
plane = UdpDataPlane(settings, counters.relay)
listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
listener.bind(("127.0.0.1", 0))
listener.setblocking(False)
core = TurnCore(
    settings, auth=auth, peers=PeerPolicy(allow=LOOPBACK_RANGES), binder=plane,
    own_endpoints=OwnEndpoints([listener.getsockname()]), counters=counters,
)
epoll = plane.open(core, {listener.getsockname(): listener})
thread = threading.Thread(target=epoll.run)
thread.start()

client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
client.settimeout(5)
client.connect(listener.getsockname())
peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
peer.settimeout(5)
peer.bind(("127.0.0.1", 0))
credential = turnwire.Credential.rest(SECRET, "plain", realm=REALM)

def call(method, attributes, nonce=b""):
    tid = new_transaction_id()
    cred = credential if nonce else None
    client.send(turnwire.request(method, tid, attributes, cred, nonce))
    return turnwire.decode(client.recv(65536))

transport = [(A.REQUESTED_TRANSPORT, bytes((17, 0, 0, 0)))]
nonce = call(Method.ALLOCATE, transport).get(A.NONCE)
allocated = call(Method.ALLOCATE, transport, nonce)
relay = turnwire.relayed_address(allocated)
tid = new_transaction_id()
to_peer = turnwire.peer_attribute(peer.getsockname(), tid)
permitted = call(Method.CREATE_PERMISSION, [to_peer], nonce)
assert permitted.cls is MessageClass.SUCCESS, permitted
tid = new_transaction_id()
client.send(turnwire.indication(
    Method.SEND, tid, [turnwire.peer_attribute(peer.getsockname(), tid), (A.DATA, b"to peer")]
))
data, source = peer.recvfrom(2048)
assert data == b"to peer" and source == relay, (data, source, relay)
peer.sendto(b"to client", relay)
indication = turnwire.decode(client.recv(65536))
assert indication.get(A.DATA) == b"to client", indication

plane.stop()
thread.join(5)
assert not thread.is_alive()
plane.shutdown()
assert not plane.relay_sockets - {s for s in plane.relay_sockets if s.fileno() < 0}
assert "trio" not in sys.modules, "the data plane pulled in trio"
print("relayed both ways without trio")
"""


def test_the_data_plane_relays_from_a_plain_thread_without_trio() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PYTHONPATH": str(SUPPORT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "relayed both ways without trio" in done.stdout
    assert "Traceback" not in done.stderr, done.stderr
