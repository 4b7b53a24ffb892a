"""``secureconnect.testing`` the way a user meets it: a project of its own, outside our
package, installs ``secureconnect[natlab]`` (and pytest, pytest-trio) into a fresh virtualenv,
writes tests that use the plugin's fixtures, and passes (issue #16).

Its tests: ``/healthz`` and ``/metrics`` of the ``appliance`` fixture; settings from the
``secureconnect`` marker; two aiortc peers of the user's own that connect relay-only through the
appliance's TURN with the credential the fixture minted (no signaling: they swap descriptions
in-process); a pytest-trio test; ``appliance_factory`` for a second appliance; and a program of
the user's own run behind a symmetric NAT of the ``nat_pair`` fixture, finding the lab's
appliance through the environment the lab gives it. A machine that cannot build a lab fails
such tests loudly, or skips them when told to.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROJECT_TESTS = """
import asyncio
import json

import pytest
import trio
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
)


def test_health_and_metrics(appliance):
    status, body = appliance.get("/healthz")
    assert status == 200, body
    assert json.loads(body)["status"] == "ok"
    assert appliance.metrics()["turn_allocations"] == 0


@pytest.mark.secureconnect("signal.ice_ttl=120")
def test_settings_reach_the_appliance(appliance):
    status, body = appliance.get("/ice?service=turn&username=me")
    assert (status, json.loads(body)["ttl"]) == (200, 120)


def relay_only(appliance, user):
    server = appliance.credential(user)
    udp = [url for url in server["urls"] if url.endswith("transport=udp")]
    ice = RTCIceServer(udp, server["username"], server["credential"])
    return RTCConfiguration(iceServers=[ice], iceTransportPolicy=RTCIceTransportPolicy.RELAY)


def test_my_peers_connect_through_its_turn(appliance):
    async def call():
        offerer = RTCPeerConnection(relay_only(appliance, "alice"))
        answerer = RTCPeerConnection(relay_only(appliance, "bob"))
        channel = offerer.createDataChannel("chat")
        opened, echoed = asyncio.Event(), asyncio.Future()
        channel.on("open", opened.set)
        channel.on("message", echoed.set_result)

        @answerer.on("datachannel")
        def on_channel(remote):
            remote.on("message", lambda text: remote.send("echo:" + text))

        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)
        async with asyncio.timeout(20):
            await opened.wait()
            channel.send("hello")
            assert await echoed == "echo:hello"
        await offerer.close()
        await answerer.close()

    asyncio.run(call())
    assert appliance.metrics()["turn_allocations_created_total"] >= 2


@pytest.mark.trio
async def test_under_trio(appliance):
    samples = await trio.to_thread.run_sync(appliance.metrics)
    assert samples["signal_connections"] == 0


def test_a_second_appliance(appliance, appliance_factory):
    with appliance_factory("signal.max_room_size=2") as other:
        assert other.signal_url != appliance.signal_url
        assert other.get("/healthz")[0] == 200


@pytest.fixture(scope="module")
def natlab_behaviours():
    return ("symmetric", "port-restricted")


MY_PROGRAM = '''
import asyncio, json, os, ssl
from websockets.asyncio.client import connect

async def main():
    context = ssl.create_default_context(cafile=os.environ["SECURECONNECT_CAFILE"])
    url = os.environ["SECURECONNECT_SIGNAL_URL"]
    async with connect(url, ssl=context, proxy=None) as ws:
        await ws.send(json.dumps({"type": "join", "room": os.environ["SECURECONNECT_ROOM"]}))
        welcome = json.loads(await ws.recv())
        print(json.dumps({"peer": welcome["peer"], "servers": len(welcome["iceServers"])}))

asyncio.run(main())
'''


@pytest.mark.nat_pair("symmetric", "port-restricted")
def test_my_program_behind_a_symmetric_nat(nat_pair):
    import sys

    environment = nat_pair.natlab.environment(nat_pair.room)
    done = nat_pair.first.run([sys.executable, "-c", MY_PROGRAM], env=environment, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["peer"].startswith("p-")
    assert nat_pair.first.public_address != nat_pair.first.address
"""


@pytest.mark.slow
def test_a_project_of_its_own_uses_the_fixtures(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            f"{ROOT}[natlab]",
            "pytest",
            "pytest-trio",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_with_secureconnect.py").write_text(textwrap.dedent(PROJECT_TESTS))
    (project / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "VIRTUAL_ENV"))}
    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "tests"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "HOME": str(tmp_path)},
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "6 passed" in result.stdout, result.stdout[-3000:]


NEEDS_A_LAB = """
def test_behind_a_nat(natlab):
    assert natlab.behaviours
"""


@pytest.mark.root
def test_a_machine_without_a_lab_fails_loudly_or_skips_when_told(tmp_path: Path) -> None:
    """As an unprivileged user (no namespaces): the natlab fixture fails with the reason by
    default, and skips with it under --natlab-unavailable=skip."""
    project = Path(tempfile.mkdtemp(prefix="plugin-"))
    try:
        project.chmod(0o777)
        (project / "test_lab.py").write_text(textwrap.dedent(NEEDS_A_LAB))
        base = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rs",
            str(project),
        ]
        env = {**os.environ, "HOME": str(project)}
        failed = subprocess.run(
            base, cwd=project, capture_output=True, text=True, timeout=120, env=env, check=False
        )
        assert failed.returncode == 1, failed.stdout[-3000:]
        assert "the NAT lab needs root" in failed.stdout, failed.stdout[-3000:]
        skipped = subprocess.run(
            [*base, "--natlab-unavailable=skip"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
        assert skipped.returncode == 0, skipped.stdout[-3000:]
        assert "1 skipped" in skipped.stdout
        assert "the NAT lab needs root" in skipped.stdout
    finally:
        shutil.rmtree(project, ignore_errors=True)
