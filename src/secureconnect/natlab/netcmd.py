"""The commands that build a lab: ``ip``, ``nft``, ``sysctl`` and ``tc``, bounded and checked.

Every lab module that changes a namespace goes through these: each command runs with a timeout
(:data:`COMMAND_TIMEOUT`), and every failure is a :class:`~secureconnect.natlab.labs.LabError`
that names the command and quotes what it wrote on stderr (and the rules it was fed), so a lab
that cannot be built says why. :func:`require_root` names the Debian package of a missing tool.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from secureconnect.natlab.labs import LabError

COMMAND_TIMEOUT = 15.0  # seconds for any one ip/nft/sysctl/tc command
PACKAGES = {"ip": "iproute2", "nft": "nftables", "sysctl": "procps", "tc": "iproute2"}


def require_root() -> None:
    """LabError unless this process is root and ``ip``, ``nft``, ``sysctl`` and ``tc`` exist
    (naming the Debian package to install)."""
    if os.geteuid() != 0:
        raise LabError("secureconnect natlab needs root (it creates network namespaces)")
    missing = sorted({pkg for tool, pkg in PACKAGES.items() if shutil.which(tool) is None})
    if missing:
        raise LabError(
            "secureconnect natlab needs "
            + ", ".join(f"`{t}`" for t, p in PACKAGES.items() if p in missing)
            + f": apt-get install {' '.join(missing)}"
        )


def tool(name: str) -> str:
    """The path of ``name``; LabError naming its package when it is missing."""
    path = shutil.which(name)
    if path is None:
        raise LabError(f"`{name}` not found: apt-get install {PACKAGES.get(name, name)}")
    return path


def run(argv: Sequence[str], *, stdin: str | None = None) -> str:
    """Run ``argv`` (bounded by COMMAND_TIMEOUT); its stdout, or LabError with its stderr."""
    shown = " ".join(argv)
    try:
        done = subprocess.run(  # noqa: S603 (our own argv: tool paths and lab names)
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"`{shown}` did not finish in {COMMAND_TIMEOUT} s") from None
    except OSError as exc:
        raise LabError(f"`{shown}` could not run: {exc}") from None
    if done.returncode != 0:
        fed = f"\ninput:\n{stdin}" if stdin else ""
        raise LabError(f"`{shown}` exited {done.returncode}: {done.stderr.strip()}{fed}")
    return done.stdout


def ip_batch(namespace: str | None, commands: Iterable[str]) -> None:
    """Run ``ip`` commands (one per line, without the leading ``ip``) in one process, inside
    ``namespace`` (None: the namespace-management commands ``netns add/del``)."""
    where = ["-n", namespace] if namespace else []
    text = "\n".join(commands) + "\n"
    run([tool("ip"), *where, "-batch", "-"], stdin=text)


def exec_argv_in(namespace: str, *argv: str) -> list[str]:
    """``ip netns exec NAMESPACE ARGV...``: the argv that runs a command inside ``namespace``."""
    return [tool("ip"), "netns", "exec", namespace, *argv]


def base_sysctls(*, router: bool, udp_timeout: int) -> list[str]:
    """A lab namespace's kernel settings: IPv4 forwarding for routers only, IPv6 off, no
    reverse path filter, and (routers) the conntrack UDP timeout: how long an idle UDP mapping
    lives. Set explicitly because a new namespace inherits the host's IPv4 settings
    (``devconf_inherit_init_net``)."""
    settings = [
        f"net.ipv4.ip_forward={int(router)}",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ]
    if Path("/proc/sys/net/ipv6").exists():
        settings += ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
    if router:
        settings += [
            f"net.netfilter.nf_conntrack_udp_timeout={udp_timeout}",
            f"net.netfilter.nf_conntrack_udp_timeout_stream={udp_timeout}",
        ]
    return settings


def sysctl(namespace: str, settings: Sequence[str]) -> None:
    """Apply ``settings`` (``key=value``, in order: a later one wins) inside ``namespace``."""
    if settings:
        run(exec_argv_in(namespace, tool("sysctl"), "-q", "-w", *settings))


def nft(namespace: str, ruleset: str) -> None:
    """Load ``ruleset`` with ``nft -f -`` inside ``namespace``."""
    if ruleset:
        run(exec_argv_in(namespace, tool("nft"), "-f", "-"), stdin=ruleset)
