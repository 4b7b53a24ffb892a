"""A browser as a peer of the NAT lab: ``secureconnect natlab --browsers chromium`` runs it as
``python -m secureconnect.natlab.browser``, and it is the example of a ``--peer-cmd`` peer too
(``examples/natlab/browser_peer.py``; what a peer gets and reports: docs/natlab.md).

The lab runs this inside a client's namespace. It starts Debian's headless Chromium there
(libwebrtc: a second ICE stack besides aiortc's) through Playwright, opens the appliance's demo
page for the pair's room (the page joins the room, negotiates and pings over a data channel,
using the ICE servers signaling hands it), waits until the page says it is connected with a
measured round trip, and prints one JSON line: the candidate types of the pair Chromium
selected (from getStats), the time to connect. Exit status 0: connected.

Chromium must accept the lab appliance's self-signed certificate: this peer passes
``--ignore-certificate-errors`` (never do that outside a lab). Both roles run the same page (its
rule: the peer already in the room offers), so ``SECURECONNECT_ROLE`` only orders the start.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from urllib.parse import urlsplit

#: headless Chromium that makes no outside connections and reports host candidates as
#: addresses (no mDNS names); our browser tests start from the same list
HEADLESS_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]
FLAGS = [*HEADLESS_FLAGS, "--ignore-certificate-errors"]  # the lab appliance's own certificate
#: A page script run before the page's own: every RTCPeerConnection it makes, and every
#: setConfiguration, gets ``%s`` (JSON) as its ICE servers. The page takes its ICE servers from
#: signaling, TURN included; the lab's STUN-only attempt ("is there a direct path at all")
#: needs them to be the STUN-only list the lab hands the peer in SECURECONNECT_ICE_SERVERS.
ICE_OVERRIDE = """() => {
  const servers = %s;
  const Native = window.RTCPeerConnection;
  const ours = (config) => ({ ...(config || {}), iceServers: servers });
  function Wrapped(config, ...rest) { return new Native(ours(config), ...rest); }
  Wrapped.prototype = Native.prototype;
  Object.setPrototypeOf(Wrapped, Native);
  const set = Native.prototype.setConfiguration;
  Native.prototype.setConfiguration = function (config) { return set.call(this, ours(config)); };
  window.RTCPeerConnection = Wrapped;
}"""
CONNECTED = """() => {
  const peers = Object.values(window.demo ? window.demo.peers : {});
  return peers.find(p => p.state === "connected" && p.channel === "open" && p.pairType
                         && p.rtt != null) || null;
}"""


def ice_override() -> str | None:
    """:data:`ICE_OVERRIDE` for the peer's environment when it is a STUN-only attempt (no TURN
    server among SECURECONNECT_ICE_SERVERS), else None: the page's own servers."""
    servers = json.loads(os.environ.get("SECURECONNECT_ICE_SERVERS", "[]"))
    urls = [u for s in servers for u in ([s["urls"]] if isinstance(s["urls"], str) else s["urls"])]
    if not urls or any(u.startswith(("turn:", "turns:")) for u in urls):
        return None
    return ICE_OVERRIDE % json.dumps(servers)


def run() -> dict[str, object]:
    started = time.monotonic()
    limit = float(os.environ.get("SECURECONNECT_TIMEOUT", "30"))
    signal = urlsplit(os.environ["SECURECONNECT_SIGNAL_URL"])
    page_url = f"https://{signal.netloc}/?room={os.environ['SECURECONNECT_ROOM']}"
    if os.environ.get("SECURECONNECT_ROLE") == "answer":
        time.sleep(0.5)  # the offerer joins first: the demo page's rule makes it offer
    name = os.environ.get("SECURECONNECT_CHROMIUM") or "chromium"  # e.g. google-chrome
    executable = shutil.which(name)
    if executable is None:
        return {"connected": False, "error": f"{name} is not installed"}
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - only when a browser runs

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=FLAGS)
        try:
            page = browser.new_page(ignore_https_errors=True)
            override = ice_override()
            if override is not None:
                page.add_init_script(f"({override})()")
            page.goto(page_url, timeout=limit * 1000)
            left = max(1.0, limit - (time.monotonic() - started))
            handle = page.wait_for_function(CONNECTED, timeout=left * 1000, polling=200)
            peer = handle.json_value()
            seconds = round(time.monotonic() - started, 2)
            time.sleep(1.0)  # the other browser measures its round trip through us too
        finally:
            browser.close()
    return {
        "connected": True,
        "local": peer["pairType"],
        "remote": peer["remoteType"],
        "protocol": peer.get("protocol"),  # of the selected pair's local candidate: udp or tcp
        "seconds": seconds,
        "stack": "chromium",
    }


def main() -> int:
    """Run, print the JSON line, return the exit status (0: connected)."""
    try:
        report = run()
    except Exception as exc:  # a verdict, whatever went wrong
        report = {"connected": False, "error": repr(exc)[:300]}
    print(json.dumps(report), flush=True)
    return 0 if report["connected"] else 1


if __name__ == "__main__":
    sys.exit(main())
