"""The default per-user TURN quota fits what a browser really does (issue #12, finding 3).

One Chromium page plays one peer of a 10-person mesh: nine RTCPeerConnections sharing the one
credential signaling mints per peer (here from ``/ice``), relay-only, with the three TURN URLs
we hand out (UDP, TCP, TLS). Chromium allocates once per TURN URL per connection, so the peer
needs 27 allocations at once: every connection must gather a relay candidate through each of
the three. With the old ``user_quota = 10`` the 4th connection lost two of its three and the 5th
got none.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from appliance import AllInOnePorts, run_appliance
from chromium import launch_chromium

pytestmark = [pytest.mark.browser]

PEERS = 9  # the other nine people of a 10-person mesh
GATHER = """async ([peers, user]) => {
  const reply = await fetch(`/ice?service=turn&username=${user}`);
  const servers = (await reply.json()).iceServers;
  const connections = [];
  const results = [];
  for (let i = 0; i < peers; i++) {
    const pc = new RTCPeerConnection({iceServers: servers, iceTransportPolicy: 'relay'});
    connections.push(pc);  // kept open: their allocations must all exist at once
    const relayed = [];
    const gathered = new Promise(resolve => {
      pc.onicecandidate = e => {
        if (!e.candidate) { resolve(); return; }
        const c = e.candidate;
        if (c.type === 'relay') relayed.push(`${c.address}:${c.port}`);
      };
    });
    pc.createDataChannel('mesh');
    await pc.setLocalDescription(await pc.createOffer());
    await Promise.race([gathered, new Promise(r => setTimeout(r, 20000))]);
    results.push(relayed);
  }
  window.meshConnections = connections;
  return results;
}"""


def test_one_browser_peer_of_a_ten_person_mesh_gets_every_relay_candidate(
    tmp_path: Path,
) -> None:
    ports = AllInOnePorts.free()
    with (
        run_appliance(tmp_path, state_dir=tmp_path / "state", settings=ports.settings()),
        launch_chromium(["--ignore-certificate-errors"]) as browser,  # turns: self-signed
    ):
        context = browser.new_context(ignore_https_errors=True)
        page = context.new_page()
        page.goto(f"https://127.0.0.1:{ports.wss}/healthz")
        results = page.evaluate(GATHER, [PEERS, "meshpeer"])
        context.close()
        # One relayed address per TURN URL per connection, all different: 27 allocations.
        assert [len(relayed) for relayed in results] == [3] * PEERS, results
        assert len({address for relayed in results for address in relayed}) == 3 * PEERS
