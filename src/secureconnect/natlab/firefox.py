"""Firefox as a peer of the NAT lab: ``secureconnect natlab --browsers firefox`` runs it as
``python -m secureconnect.natlab.firefox`` in each client's namespace (the environment of
:mod:`.usercmd`; docs/natlab.md).

Why: Firefox's ICE is nICEr, a third stack besides aiortc's aioice and Chromium's libwebrtc,
with its own gathering, pacing and nomination. Like :mod:`.browser` it opens the appliance's
demo page for the pair's room, waits until the page says it is connected with a measured round
trip, and prints one JSON line: the candidate types of the pair Firefox selected (the page reads
them from getStats), the time to connect, ``"stack": "firefox"``. Exit status 0: connected.

How: Debian's ``firefox-esr`` (Playwright drives only its own patched Firefox) headless, with a
fresh profile per run whose ``user.js`` turns off everything that would talk to the outside
(telemetry, updates, captive-portal and connectivity checks, Safe Browsing, Normandy, remote
settings, ...) and the ICE preferences that would hide candidates from the lab: no mDNS names
for host candidates (the lab has no mDNS). The verdict comes over Firefox's built-in WebDriver
BiDi (``--remote-debugging-port``, on the namespace's loopback; no geckodriver): ``session.new``
with ``acceptInsecureCerts`` accepts the lab appliance's self-signed certificate for the page
and its WSS (never do that outside a lab), ``browsingContext.navigate`` opens the page and
``script.evaluate`` polls the same expression as Chromium's peer. The page stays untouched
(a page that reported to a server of ours would need its code, its CSP and a trusted certificate
changed) and ``websockets``, already a dependency, is the client. Firefox runs in a process
group of its own, killed on every way out (and by the kernel if this process dies first); the
profile is removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.sync.client import ClientConnection, connect

from secureconnect.natlab.browser import CONNECTED, ice_override

EXECUTABLE = "firefox-esr"
#: headless, no other instance's profile, WebDriver BiDi on a free port of 127.0.0.1 (the
#: namespace's own loopback); Firefox writes the port into the profile
ARGS = ("--headless", "--no-remote", "--remote-debugging-port", "0")
#: user.js of the fresh profile: no connection but to the lab, no candidate hidden
PREFS: dict[str, bool | int | str] = {
    # nothing but the page's own traffic leaves the browser
    "app.normandy.enabled": False,
    "app.normandy.api_url": "",
    "app.shield.optoutstudies.enabled": False,
    "app.update.auto": False,
    "app.update.disabledForTesting": True,
    "browser.aboutwelcome.enabled": False,
    "browser.backup.enabled": False,
    "browser.discovery.enabled": False,
    "browser.ml.enable": False,
    "browser.newtabpage.enabled": False,
    "browser.ping-centre.telemetry": False,
    "browser.places.speculativeConnect.enabled": False,
    "browser.region.network.url": "",
    "browser.region.update.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.downloads.remote.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.provider.google4.updateURL": "",
    "browser.safebrowsing.provider.google4.gethashURL": "",
    "browser.safebrowsing.provider.mozilla.updateURL": "",
    "browser.safebrowsing.provider.mozilla.gethashURL": "",
    "browser.search.update": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage": "about:blank",
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "browser.topsites.contile.enabled": False,
    "browser.translations.enable": False,
    "browser.urlbar.speculativeConnect.enabled": False,
    "captivedetect.canonicalURL": "",
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.usage.uploadEnabled": False,
    "dom.push.connection.enabled": False,
    "dom.push.serverURL": "",
    "extensions.blocklist.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.systemAddon.update.enabled": False,
    "extensions.update.enabled": False,
    "geo.provider.network.url": "",
    "identity.fxaccounts.enabled": False,
    "media.gmp-manager.updateEnabled": False,
    "media.gmp-manager.url": "data:,",
    "messaging-system.rsexperimentloader.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.http.speculative-parallel-limit": 0,
    "network.predictor.enabled": False,
    "network.prefetch-next": False,
    "network.proxy.type": 0,  # direct, whatever the environment says
    "network.trr.mode": 5,  # no DNS over HTTPS
    "security.OCSP.enabled": 0,
    "security.certerrors.mitm.priming.enabled": False,
    "security.remote_settings.crlite_filters.enabled": False,
    "security.remote_settings.intermediates.enabled": False,
    "services.settings.server": "data:,#remote-settings-dummy/v1",
    "startup.homepage_welcome_url": "about:blank",
    "toolkit.telemetry.archive.enabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.server": "data:,",
    "toolkit.telemetry.unified": False,
    # ICE as the lab needs it: host candidates as addresses (no mDNS in the lab), all of them
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.peerconnection.ice.default_address_only": False,
    "media.peerconnection.ice.no_host": False,
    "media.peerconnection.ice.relay_only": False,
    "media.peerconnection.ice.proxy_only_if_behind_proxy": False,
}
CONNECTED_JSON = f"JSON.stringify(({CONNECTED})())"
PR_SET_PDEATHSIG = 1


class BidiError(RuntimeError):
    """Firefox answered a WebDriver BiDi command with an error."""


class Bidi:
    """A WebDriver BiDi session over one WebSocket: one command at a time, each bounded."""

    def __init__(self, ws: ClientConnection, deadline: float) -> None:
        self.ws, self.deadline, self.next_id = ws, deadline, 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer to {method} in time")
            message = json.loads(self.ws.recv(timeout=left))
            if message.get("id") != self.next_id:
                continue  # an event (none subscribed) or a late answer
            if message.get("type") == "error":
                raise BidiError(f"{method}: {message.get('error')}: {message.get('message')}")
            result: dict[str, Any] = message["result"]
            return result


@contextlib.contextmanager
def firefox(executable: str, profile: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Firefox on ``profile`` with BiDi on a free loopback port, until the block ends; then its
    whole process group is killed."""
    (profile / "user.js").write_text(
        "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in PREFS.items())
    )
    env = {
        **os.environ,
        "HOME": str(profile),
        "MOZ_CRASHREPORTER_DISABLE": "1",
        # a release build ignores services.settings.server without it
        "MOZ_REMOTE_SETTINGS_DEVTOOLS": "1",
    }
    prctl = ctypes.CDLL(None).prctl  # loaded here: the child only calls it

    def die_with_us() -> None:  # in the child, before exec: if we die first, so does Firefox
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    with (profile / "firefox.log").open("wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - the system's firefox-esr
            [executable, *ARGS, "--profile", str(profile), "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,  # a process group of its own, killed as one
            preexec_fn=die_with_us,  # noqa: PLW1509 - no threads yet
        )
    try:
        yield proc
    finally:
        for pid in [*_crash_helpers(proc.pid), -proc.pid]:  # -pid: the process group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


def _crash_helpers(pid: int) -> list[int]:
    """Firefox's crash helper leaves the process group (a session of its own) and outlives
    Firefox by seconds; it names the Firefox it serves as its first argument."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if argv[0].endswith(b"/crashhelper") and argv[1:2] == [str(pid).encode()]:
                found.append(int(entry.name))
    return found


def bidi_port(profile: Path, proc: subprocess.Popen[bytes], deadline: float) -> int:
    """The port Firefox's BiDi listens on: it writes it into the profile once it listens."""
    path = profile / "WebDriverBiDiServer.json"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"firefox exited {proc.returncode}: {_tail(profile)}")
        with contextlib.suppress(OSError, ValueError, KeyError):
            return int(json.loads(path.read_text())["ws_port"])
        time.sleep(0.1)
    raise TimeoutError("firefox did not start its WebDriver BiDi server in time")


def _tail(profile: Path) -> str:
    try:
        lines = (profile / "firefox.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-3:])[:300]


def run() -> dict[str, object]:
    started = time.monotonic()
    deadline = started + float(os.environ.get("SECURECONNECT_TIMEOUT", "30"))
    signal_url = urlsplit(os.environ["SECURECONNECT_SIGNAL_URL"])
    page_url = f"https://{signal_url.netloc}/?room={os.environ['SECURECONNECT_ROOM']}"
    if os.environ.get("SECURECONNECT_ROLE") == "answer":
        time.sleep(0.5)  # the offerer joins first: the demo page's rule makes it offer
    name = os.environ.get("SECURECONNECT_FIREFOX") or EXECUTABLE  # e.g. firefox
    executable = shutil.which(name)
    if executable is None:
        return {"connected": False, "error": f"{name} is not installed", "stack": "firefox"}
    with (
        tempfile.TemporaryDirectory(prefix="scnl-firefox-") as tmp,
        firefox(executable, Path(tmp)) as proc,
    ):
        port = bidi_port(Path(tmp), proc, deadline)
        with connect(
            f"ws://127.0.0.1:{port}/session",
            proxy=None,
            open_timeout=max(1.0, deadline - time.monotonic()),
            close_timeout=1.0,
            max_size=None,
        ) as ws:
            bidi = Bidi(ws, deadline)
            bidi.call("session.new", capabilities={"alwaysMatch": {"acceptInsecureCerts": True}})
            context = bidi.call("browsingContext.getTree")["contexts"][0]["context"]
            override = ice_override()
            if override is not None:  # a STUN-only attempt: the page's TURN servers go
                bidi.call("script.addPreloadScript", functionDeclaration=override)
            bidi.call("browsingContext.navigate", context=context, url=page_url, wait="complete")
            peer = _wait_connected(bidi, context, deadline)
            seconds = round(time.monotonic() - started, 2)
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))  # the other's rtt
    return {
        "connected": True,
        "local": peer["pairType"],
        "remote": peer["remoteType"],
        "protocol": peer.get("protocol"),  # of the selected pair's local candidate: udp or tcp
        "seconds": seconds,
        "stack": "firefox",
    }


def _wait_connected(bidi: Bidi, context: str, deadline: float) -> dict[str, Any]:
    """Poll the page until a peer is connected (browser.py's expression), or time out."""
    while True:
        answer = bidi.call(
            "script.evaluate",
            expression=CONNECTED_JSON,
            target={"context": context},
            awaitPromise=False,
        )
        if answer.get("type") == "exception":
            raise BidiError(f"the page: {answer.get('exceptionDetails', {}).get('text')}")
        found = json.loads(answer["result"]["value"])
        if isinstance(found, dict):
            return found
        if time.monotonic() + 0.2 >= deadline:
            raise TimeoutError("the page did not connect in time")
        time.sleep(0.2)


def main() -> int:
    """Run, print the JSON line, return the exit status (0: connected)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # finally blocks run
    try:
        report = run()
    except Exception as exc:  # a verdict, whatever went wrong
        report = {"connected": False, "error": repr(exc)[:300], "stack": "firefox"}
    print(json.dumps(report), flush=True)
    return 0 if report["connected"] else 1


if __name__ == "__main__":
    sys.exit(main())
