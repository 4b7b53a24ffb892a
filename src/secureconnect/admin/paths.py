"""Where the admin sockets live (docs/admin.md, "Where the socket is").

A process serves ``admin-<components>.sock`` (``admin-all.sock`` for ``secureconnect run``,
``admin-turn.sock`` for ``secureconnect run turn``...) in its runtime directory:
``general.runtime_dir`` if set, else systemd's ``$RUNTIME_DIRECTORY`` (``RuntimeDirectory=``,
``/run/secureconnect`` in our units, shared by the per-component units), else ``run/`` in the
state directory, so that appliances with state directories of their own never meet. The commands
look in the same places, and in ``/run/secureconnect`` (where the units put them: an operator's
shell has no ``$RUNTIME_DIRECTORY``), and talk to every socket they find.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

SYSTEMD_RUNTIME_DIR: Final = Path("/run/secureconnect")
#: sun_path holds 108 bytes with the terminating NUL (unix(7))
MAX_SOCKET_PATH: Final = 107


def resolve_runtime_dir(
    configured: str, state_dir: Path, env: Mapping[str, str] | None = None
) -> Path:
    """The configured dir, else ``$RUNTIME_DIRECTORY`` (its first entry), else ``state_dir/run``."""
    env = os.environ if env is None else env
    if configured:
        return Path(configured).expanduser()
    if env.get("RUNTIME_DIRECTORY"):
        return Path(env["RUNTIME_DIRECTORY"].split(":")[0])
    return state_dir / "run"


def socket_name(components: Sequence[str]) -> str:
    """The socket's file name for a process running ``components`` (none: all of them)."""
    return f"admin-{'-'.join(sorted(components)) or 'all'}.sock"


def candidate_dirs(runtime_dir: Path) -> list[Path]:
    """Where the commands look: the resolved runtime dir, then systemd's."""
    dirs = [runtime_dir]
    if SYSTEMD_RUNTIME_DIR not in dirs:
        dirs.append(SYSTEMD_RUNTIME_DIR)
    return dirs


def find_sockets(dirs: Sequence[Path]) -> list[Path]:
    """Every admin socket in ``dirs``, in name order, each once."""
    found: list[Path] = []
    for directory in dirs:
        try:
            entries = sorted(directory.glob("admin-*.sock"))
        except OSError:
            continue
        found.extend(path for path in entries if path not in found)
    return found
