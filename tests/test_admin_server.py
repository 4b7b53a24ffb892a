"""The admin socket's server in-process (admin/server.py): whatever a client does, and whatever
a component's command raises, the server (and so the appliance) serves on."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from secureconnect.admin import server as admin_server
from secureconnect.admin.server import AdminServer


class Broken:
    """A component whose admin methods fail the way a bug would."""

    name = "broken"

    async def admin_sessions(self, user: str | None) -> list[dict[str, object]]:
        raise RuntimeError("a bug in listing")

    async def admin_kill(
        self, *, user: str | None = None, allocation: str | None = None, peer: str | None = None
    ) -> int:
        raise KeyError(user)


@pytest.fixture
def directory() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sc-adm-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def ask(path: Path, data: bytes) -> dict[str, Any]:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        await sock.connect(str(path))
        await sock.send(data)
        reply = b""
        while chunk := await sock.recv(65536):
            reply += chunk
    result: dict[str, Any] = json.loads(reply)
    return result


async def test_silence_disconnects_and_bugs_cost_the_server_nothing(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_server, "READ_TIMEOUT", 0.2)
    server = AdminServer(directory / "admin-all.sock", [Broken()], None, lambda: [{"x": 1.0}])
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        assert (directory / "admin-all.sock").stat().st_mode & 0o777 == 0o600
        silent = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await silent.connect(str(server.path))
        assert await silent.recv(10) == b""  # closed after READ_TIMEOUT, nothing said
        silent.close()
        gone = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await gone.connect(str(server.path))
        gone.close()  # connects and leaves at once
        listing = await ask(server.path, b'{"command": "sessions"}\n')
        assert listing["ok"]
        assert listing["sessions"] == []
        assert listing["errors"] == ["broken: a bug in listing"]
        killed = await ask(server.path, b'{"command": "kill", "user": "u"}\n')
        assert killed["ended"] == {}
        assert killed["errors"] == ["broken: 'u'"]
        assert (await ask(server.path, b"not json\n"))["error"].startswith("a request is")
        assert (await ask(server.path, b'{"command": "metrics"}\n'))["samples"] == {"x": 1.0}
        revoke = await ask(server.path, b'{"command": "revoke", "user": "u"}\n')
        assert revoke["turn"] is False  # no TURN in this process: nothing kept, nothing ended
        nursery.cancel_scope.cancel()
    assert not server.path.exists()  # the socket file goes with the server


async def test_a_live_socket_is_left_to_its_process(directory: Path) -> None:
    path = directory / "admin-turn.sock"
    first = AdminServer(path, [], None, list)
    second = AdminServer(path, [], None, list)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.serve)
        with pytest.raises(admin_server.AdminUnavailable, match="another process serves"):
            await second.serve()
        nursery.cancel_scope.cancel()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a dead process's socket file: replaced
    async with trio.open_nursery() as nursery:
        await nursery.start(second.serve)
        assert (await ask(path, b'{"command": "metrics"}\n'))["ok"]
        nursery.cancel_scope.cancel()
    too_long = AdminServer(directory / ("x" * 120) / "admin.sock", [], None, list)
    with pytest.raises(admin_server.AdminUnavailable, match="longer than"):
        await too_long.serve()
