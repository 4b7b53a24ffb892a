"""`scripts/build-dist.sh`: the one-file build runs where only a Python interpreter is installed.

The test builds the file (shiv zipapp) into a temporary directory, copies it alone into an empty
scratch directory and runs it from there with a scrubbed environment (``PATH=/usr/bin:/bin``,
``HOME`` and ``XDG_STATE_HOME`` in the scratch area, nothing else), so neither this repository,
nor ``.venv``, nor ``PYTHONPATH`` can supply the package. The interpreter is the system's
``/usr/bin/python3`` found through the file's own ``#!/usr/bin/env python3`` line when it is the
build's minor version; otherwise the base interpreter this venv was made from (outside the venv),
put first on ``PATH``. A failed build fails the test: it is never skipped.

The STUN client here is written out by hand (RFC 8489 Binding, XOR-MAPPED-ADDRESS) and imports
nothing from ``secureconnect``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest
from appliance import Running, free_port, run_appliance

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "scripts" / "build-dist.sh"
BUILD_TIMEOUT = 240.0  # seconds; a build takes about 20 s with a warm pip cache
SYSTEM_PYTHON = Path("/usr/bin/python3")
MAGIC_COOKIE = 0x2112A442
XOR_MAPPED_ADDRESS = 0x0020


@dataclass(frozen=True, slots=True)
class Scratch:
    """The built file, alone in an empty directory, and the environment to run it with."""

    directory: Path
    executable: Path
    env: dict[str, str]
    home: Path
    python: Path


def _minor(python: Path) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [str(python), "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            env={"PATH": "/usr/bin:/bin"},
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return int(out[0]), int(out[1])


def _target_python() -> Path:
    """The interpreter a plain machine would use: /usr/bin/python3 if it is our minor version."""
    if _minor(SYSTEM_PYTHON) == sys.version_info[:2]:
        return SYSTEM_PYTHON
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    assert _minor(base) == sys.version_info[:2], f"no Python {sys.version_info[:2]} outside venv"
    return base


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run scripts/build-dist.sh once; a failure fails every test here with the build's output."""
    out = tmp_path_factory.mktemp("dist") / "secureconnect"
    env = {k: v for k, v in os.environ.items() if k not in {"OUT", "PYTHON"}}
    env.update(OUT=str(out), PYTHON=sys.executable)  # the build's Python decides the target's
    started = time.monotonic()
    try:
        result = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"build-dist.sh took more than {BUILD_TIMEOUT:.0f} s: {exc.stderr!r}")
    if result.returncode != 0 or not out.is_file():
        pytest.fail(
            f"build-dist.sh failed (exit {result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    assert "KiB" in result.stdout, result.stdout  # it prints the size
    print(f"build-dist.sh: {time.monotonic() - started:.1f} s, {out.stat().st_size} bytes")
    return out


@pytest.fixture
def scratch(built: Path, tmp_path: Path) -> Scratch:
    directory = tmp_path / "scratch"
    directory.mkdir()
    executable = directory / "secureconnect"
    shutil.copy2(built, executable)
    python = _target_python()
    path = "/usr/bin:/bin"
    if python != SYSTEM_PYTHON:  # the shebang's `env python3` must find the 3.11 interpreter
        shim = tmp_path / "python-bin"
        shim.mkdir()
        (shim / "python3").symlink_to(python)
        path = f"{shim}:{path}"
    env = {
        "PATH": path,
        "HOME": str(tmp_path / "home"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    return Scratch(directory, executable, env, tmp_path / "home", python)


def _run(scratch: Scratch, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(scratch.executable), *args],
        cwd=scratch.directory,
        env={**scratch.env, **extra},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_file_is_one_executable_with_an_env_python3_shebang(built: Path) -> None:
    with built.open("rb") as file:
        assert file.readline() == b"#!/usr/bin/env python3\n"
    assert built.stat().st_mode & 0o111 == 0o111


def test_version_and_the_package_come_from_the_file_alone(scratch: Scratch) -> None:
    version = _run(scratch, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip().startswith("secureconnect ")
    # shiv's SHIV_INTERPRETER runs code inside the file's environment: where does it import from?
    probe = _run(
        scratch,
        "-c",
        "import sys, secureconnect, trio, cryptography, websockets\n"
        "print(sys.executable)\n"
        "for m in (secureconnect, trio, cryptography, websockets): print(m.__file__)\n"
        "print(*sys.path, sep='\\n')",
        SHIV_INTERPRETER="1",
    )
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    assert Path(lines[0]).resolve() == scratch.python.resolve()
    extracted = scratch.home / ".shiv"
    for module_file in lines[1:5]:
        assert Path(module_file).is_relative_to(extracted), module_file
    for entry in lines:
        assert str(REPO) not in entry, entry
        assert ".venv" not in entry, entry
    assert os.listdir(scratch.directory) == ["secureconnect"]  # nothing written beside it


def test_the_file_carries_the_compiled_fast_path(scratch: Scratch) -> None:
    """``make dist`` builds the TURN fast path's extension into the file (docs/fastpath.md), and
    the file runs it, extracted beside the rest."""
    probe = _run(
        scratch,
        "-c",
        "from secureconnect.turn import fastpath, _fastpath\n"
        "print(fastpath.ACTIVE)\nprint(_fastpath.__file__)",
        SHIV_INTERPRETER="1",
    )
    assert probe.returncode == 0, probe.stderr
    active, module_file = probe.stdout.splitlines()
    assert active == "compiled"
    assert Path(module_file).is_relative_to(scratch.home / ".shiv"), module_file


def _stun_binding(port: int) -> tuple[tuple[str, int], tuple[str, int]]:
    """An RFC 8489 Binding request over UDP: (XOR-MAPPED-ADDRESS, our own address)."""
    tid = secrets.token_bytes(12)
    request = struct.pack("!HHI", 0x0001, 0, MAGIC_COOKIE) + tid
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(1.0)
        for _ in range(5):
            sock.sendto(request, ("127.0.0.1", port))
            try:
                reply = sock.recv(2048)
            except TimeoutError:
                continue
            break
        else:
            raise AssertionError(f"no STUN answer from 127.0.0.1:{port}")
        mine = sock.getsockname()
    kind, length, cookie = struct.unpack_from("!HHI", reply)
    assert (kind, cookie, reply[8:20]) == (0x0101, MAGIC_COOKIE, tid)  # Binding success
    assert len(reply) == 20 + length
    offset = 20
    while offset < len(reply):
        attr, size = struct.unpack_from("!HH", reply, offset)
        value = reply[offset + 4 : offset + 4 + size]
        if attr == XOR_MAPPED_ADDRESS:
            family, xport = struct.unpack_from("!xBH", value)
            assert family == 0x01  # IPv4
            (xaddr,) = struct.unpack_from("!I", value, 4)
            address = socket.inet_ntoa(struct.pack("!I", xaddr ^ MAGIC_COOKIE))
            return (address, xport ^ (MAGIC_COOKIE >> 16)), (mine[0], mine[1])
        offset += 4 + (size + 3) // 4 * 4
    raise AssertionError(f"no XOR-MAPPED-ADDRESS in {reply.hex()}")


def run_from_file(
    scratch: Scratch, tmp_path: Path, component: str, settings: tuple[str, ...]
) -> AbstractContextManager[Running]:
    """``secureconnect run COMPONENT`` from the built file, in its scratch directory."""
    return run_appliance(
        tmp_path,
        component,
        program=(str(scratch.executable),),
        cwd=scratch.directory,
        env=scratch.env,
        state_dir=tmp_path / "run-state",
        settings=settings,
        ready_timeout=60,
    )


def test_run_stun_answers_binding_and_stops_on_sigterm(scratch: Scratch, tmp_path: Path) -> None:
    port = free_port()
    settings = (f"stun.port={port}", "stun.tcp=false", "stun.tls=false")
    with run_from_file(scratch, tmp_path, "stun", settings) as app:
        mapped, mine = _stun_binding(port)
        assert mapped == mine
        assert app.stop(signal.SIGTERM, timeout=20) == 0
        assert "event=stopped" in app.log_text()


def test_turn_workers_run_from_the_file(scratch: Scratch, tmp_path: Path) -> None:
    """``turn.workers = 2`` from the single file: each worker is started with the file's
    interpreter and its extracted site-packages (docs/workers.md), serves, and answers Binding
    on the shared TURN port; SIGTERM stops the parent and both workers."""
    port = free_port()
    settings = (f"turn.port={port}", "turn.tcp=false", "turn.tls=false", "turn.workers=2")
    with run_from_file(scratch, tmp_path, "turn", settings) as app:
        for index in (1, 2):
            app.wait_log(f"event=worker-serving worker={index}")
        mapped, mine = _stun_binding(port)
        assert mapped == mine
        assert app.stop(signal.SIGTERM, timeout=20) == 0
        assert "event=stopped" in app.log_text()
