"""A real systemd, as PID 1 of private namespaces, running copies of our shipped units.

Why: what the units promise (``Restart=on-failure`` after a crash, ``Type=notify`` readiness,
``DynamicUser=``, ``LoadCredential=``, the sandbox) is systemd's behaviour, not ours, and only a
real systemd shows whether the appliance works under it. The machines the tests run on need not
boot with systemd (a container, a VM whose PID 1 is something else), so each lab boots its own:
``/lib/systemd/systemd --system`` as PID 1 of new PID, mount, cgroup, UTS and IPC namespaces
(``unshare``), in the host's network namespace so that tests reach the services on loopback.

What keeps the host safe (a systemd that boots against the host's own unit files runs
``systemd-tmpfiles --remove`` on the shared ``/tmp``, applies ``sysctl.d`` to the running
kernel, and so on): every unit directory it reads is a private tmpfs holding only the units a
test names plus a minimal base (targets, the journal); ``/run``, ``/tmp``, ``/var`` and ``/dev``
are private tmpfs (``/dev`` with a few of the host's nodes bound in), ``/etc`` is an overlay whose
writes stay in the lab, ``/sys`` and ``/proc/sys`` are read-only, and systemd gets a cgroup v2
subtree of its own (a child of the caller's cgroup, the root of its cgroup namespace). Its own
log goes to the lab's journal, never to the kernel log. Killing the namespace's PID 1 ends
everything in it; :func:`systemd_lab` does that whatever happens.

Drive it with :meth:`Systemd.systemctl` (``nsenter`` into its mount and PID namespaces, where
``systemctl`` finds ``/run/systemd/private``), read logs with :meth:`Systemd.journal`, and kill a
service's main process from outside with :meth:`Systemd.kill_main`. A missing prerequisite
raises :class:`LabUnavailable` naming it; tests turn that into a failure, never a skip.
On pytest's pythonpath as ``systemdlab``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

SYSTEMD = Path("/lib/systemd/systemd")
HOST_UNITS = Path("/lib/systemd/system")  # where the base units below are copied from
LAB_TARGET = "lab.target"  # what the lab's systemd starts instead of default.target
# The base every service with default dependencies needs (sysinit/basic/shutdown targets) and
# the journal (socket-activated), so that services log where they would in production.
BASE_UNITS = (
    "sysinit.target",
    "basic.target",
    "shutdown.target",
    "sockets.target",
    "network.target",
    "network-online.target",
    "systemd-journald.service",
    "systemd-journald.socket",
    "systemd-journald-dev-log.socket",
)
JOURNAL_SOCKETS = ("systemd-journald.socket", "systemd-journald-dev-log.socket")
# Masked: the audit socket would subscribe the lab's journal to the host kernel's audit stream.
MASKED = ("systemd-journald-audit.socket",)
TOOLS = ("unshare", "nsenter", "setpriv", "systemctl", "journalctl", "mount")
CONTAINER = "secureconnect-test"  # $container: systemd then skips what only a real boot does
_POLL = 0.05

# Runs as PID 1 of the new namespaces ($1: the lab directory, $2: the unit to start), then
# becomes systemd. Order matters: the lab directory lives under /tmp, so /tmp is hidden last.
BOOT_SCRIPT = r"""set -eu
lab=$1; unit=$2; stage=$lab/ns
shift 2  # the rest: host directories under /tmp, /var or /run to keep visible (a venv in /tmp)
mount --make-rprivate /
mount -t tmpfs -o mode=0755 lab-keep /mnt
i=0
for path in "$@"; do
  i=$((i + 1)); mkdir "/mnt/$i"; mount --bind "$path" "/mnt/$i"
done
mount -t tmpfs -o mode=0700 lab-stage "$stage"
mkdir "$stage/etc-upper" "$stage/etc-work" "$stage/dev" "$stage/sys"
mount -t overlay lab-etc -o "lowerdir=/etc,upperdir=$stage/etc-upper,workdir=$stage/etc-work" /etc
cp -a "$lab/etc/." /etc/
mount -t tmpfs -o mode=0755 lab-units /etc/systemd/system
cp -a "$lab/units/." /etc/systemd/system/
for dir in /usr/lib/systemd/system /lib/systemd/system /usr/local/lib/systemd/system \
    /usr/lib/systemd/system-generators /lib/systemd/system-generators \
    /usr/local/lib/systemd/system-generators /etc/systemd/system-generators; do
  # each real directory once (/lib may be a link to /usr/lib)
  if [ -d "$dir" ] && [ "$(readlink -f "$dir")" = "$dir" ]; then
    mount -t tmpfs -o mode=0755 lab-hidden "$dir"
  fi
done
mount -t tmpfs -o mode=0755,nosuid,nodev lab-run /run
mount -t tmpfs -o mode=0755 lab-var /var
mkdir -p /var/tmp /var/lib /var/cache /var/log
chmod 1777 /var/tmp
mount -t tmpfs -o mode=0755,nosuid lab-dev "$stage/dev"
for node in null zero full random urandom tty; do
  touch "$stage/dev/$node"
  mount --bind "/dev/$node" "$stage/dev/$node"
done
mkdir "$stage/dev/pts" "$stage/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 lab-devpts "$stage/dev/pts"
ln -s pts/ptmx "$stage/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev lab-shm "$stage/dev/shm"
touch "$stage/dev/console"
mount --bind "$lab/console" "$stage/dev/console"
mount --move "$stage/dev" /dev
mount --bind /sys "$stage/sys"
mount -o remount,bind,ro,nosuid,nodev,noexec "$stage/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$stage/sys/fs/cgroup"
mount --move "$stage/sys" /sys
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
if [ -e /proc/sysrq-trigger ]; then
  mount --bind /proc/sysrq-trigger /proc/sysrq-trigger
  mount -o remount,bind,ro /proc/sysrq-trigger
fi
mount -t tmpfs -o mode=1777,nosuid,nodev lab-tmp /tmp
i=0
for path in "$@"; do
  i=$((i + 1)); mkdir -p "$path"; mount --move "/mnt/$i" "$path"
done
umount /mnt
# In a container systemd leaves mount propagation as it finds it, and LoadCredential= needs /
# shared (it mounts the credentials from a child namespace). New peer groups: the host's mounts
# were made private above, so nothing propagates back to it.
mount --make-rshared /
exec env -i "container=$CONTAINER" PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  "$SYSTEMD" --system "--unit=$unit" --log-target=journal --show-status=no
"""


class LabUnavailable(RuntimeError):
    """Something the lab needs is missing on this machine (the message names it)."""


def missing_prerequisites() -> list[str]:
    """What this machine lacks to boot a lab; empty when everything is there."""
    problems = []
    if os.geteuid() != 0:
        problems.append("root is needed (namespaces, mounts, cgroups)")
    if not os.access(SYSTEMD, os.X_OK):
        problems.append(f"{SYSTEMD} is missing (Debian package: systemd)")
    problems += [f"{tool} is not on PATH" for tool in TOOLS if shutil.which(tool) is None]
    problems += [
        f"{HOST_UNITS / u} is missing" for u in BASE_UNITS if not (HOST_UNITS / u).exists()
    ]
    try:
        cgroup2_dir()
    except LabUnavailable as exc:
        problems.append(str(exc))
    return problems


def cgroup2_dir() -> Path:
    """This process's cgroup in a cgroup v2 hierarchy mounted on the host (hybrid or unified)."""
    own = ""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            own = line[3:]
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype == "cgroup2" and own:
            root, mountpoint = fields[3], fields[4]
            relative = os.path.relpath(own, root)
            if not relative.startswith(".."):
                return Path(mountpoint, relative).resolve()
    raise LabUnavailable("no cgroup v2 hierarchy is mounted (systemd needs one)")


@dataclass
class Systemd:
    """A running lab: ``init_pid`` is the host PID of its PID 1 (systemd once booted)."""

    lab: Path
    init_pid: int
    proc: subprocess.Popen[bytes]
    cgroup: Path

    def run(self, *argv: str, timeout: float = 30.0, check: bool = True) -> str:
        """``argv`` in the lab's mount and PID namespaces (its /run, /etc, /var; systemd's
        private bus refuses a peer from another PID namespace); its stdout.

        A non-zero status with ``check`` raises :class:`AssertionError` with the output."""
        done = subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "-m", "-p", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SYSTEMD_COLORS": "0"},
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)}: status {done.returncode}\n{done.stdout}{done.stderr}"
            )
        return done.stdout

    def systemctl(self, *args: str, timeout: float = 30.0, check: bool = True) -> str:
        return self.run(
            "systemctl", "--no-pager", "--no-ask-password", *args, timeout=timeout, check=check
        )

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show -p ... unit`` as a dict."""
        out = self.systemctl("show", "-p", ",".join(properties), unit)
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self, unit: str) -> int:
        """The unit's MainPID as systemd sees it (a PID of the lab's namespace; 0: none)."""
        return int(self.show(unit, "MainPID")["MainPID"])

    def host_pid(self, lab_pid: int) -> int:
        """The host PID of the lab's process ``lab_pid``."""
        namespace = os.readlink(f"/proc/{self.init_pid}/ns/pid")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with suppress(OSError):
                if os.readlink(entry / "ns/pid") != namespace:
                    continue
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("NSpid:") and int(line.split()[-1]) == lab_pid:
                        return int(entry.name)
        raise AssertionError(f"no process {lab_pid} in the lab's PID namespace")

    def kill_main(self, unit: str, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to the unit's main process from outside systemd; its (lab) PID."""
        pid = self.main_pid(unit)
        assert pid > 0, f"{unit} has no main process: {self.status(unit)}"
        os.kill(self.host_pid(pid), sig)
        return pid

    def wait_running(self, unit: str, *, not_pid: int = 0, timeout: float = 10.0) -> int:
        """Wait until ``unit`` is active/running with a main PID other than ``not_pid``; the
        PID. :class:`AssertionError` with its status and journal when ``timeout`` s pass."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            state = self.show(unit, "ActiveState", "SubState", "MainPID")
            summary = f"{state['ActiveState']}/{state['SubState']} pid {state['MainPID']}"
            if not seen or seen[-1] != summary:
                seen.append(summary)
            pid = int(state["MainPID"])
            running = (state["ActiveState"], state["SubState"]) == ("active", "running")
            if running and pid not in (0, not_pid):
                return pid
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{unit} not running again within {timeout} s; states: {' -> '.join(seen)}"
                    f"\n{self.status(unit)}\n{self.journal(unit)}"
                )
            time.sleep(_POLL)

    def status(self, *units: str) -> str:
        """``systemctl status`` of ``units`` (for failure messages; never raises)."""
        try:
            return self.systemctl("status", "-l", "-n", "0", *units, check=False, timeout=10)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"systemctl status failed: {exc!r}"

    def journal(self, *units: str, lines: int = 40) -> str:
        """The last ``lines`` journal lines (of ``units``, or everything; never raises)."""
        selectors = [arg for unit in units for arg in ("-u", unit)]
        try:
            return self.run(
                "journalctl",
                "--no-pager",
                "-q",
                "-o",
                "short-monotonic",
                "-n",
                str(lines),
                *selectors,
                check=False,
                timeout=10,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return f"journalctl failed: {exc!r}"


def base_units() -> dict[str, str]:
    """The host's base units (:data:`BASE_UNITS`) by name, to run beside a test's own."""
    return {name: (HOST_UNITS / name).read_text() for name in BASE_UNITS}


@contextmanager
def systemd_lab(
    workdir: Path,
    units: Mapping[str, str],
    *,
    etc: Path | None = None,
    keep: Sequence[str] = (),
    boot_timeout: float = 20.0,
) -> Iterator[Systemd]:
    """Boot a lab in ``workdir`` and yield it once systemd runs; kill it when the block ends.

    - ``units`` are unit files by name: with :func:`base_units` they are the whole of the lab's
      ``/etc/systemd/system``, and no other unit directory is visible. Nothing of them starts at
      boot (:data:`LAB_TARGET` pulls in ``basic.target`` only): ``systemctl start`` them.
    - ``etc`` is a directory whose contents are copied over the lab's ``/etc`` (an overlay: the
      host's ``/etc`` stays as it is), owners and modes kept.
    - ``keep`` names host directories under ``/tmp``, ``/var`` or ``/run`` that stay visible in
      the lab (a checkout or a virtual environment in ``/tmp``, as CI may have).
    """
    problems = missing_prerequisites()
    if problems:
        raise LabUnavailable("cannot boot a systemd lab: " + "; ".join(problems))
    lab = workdir / "systemd-lab"
    for sub in ("units", "etc", "ns"):
        (lab / sub).mkdir(parents=True)
    (lab / "console").touch()
    all_units = {
        **base_units(),
        LAB_TARGET: "[Unit]\nDescription=The test lab\nWants=basic.target\n",
        **units,
    }
    for name, text in all_units.items():
        (lab / "units" / name).write_text(text)
    wanted = lab / "units" / "sockets.target.wants"
    wanted.mkdir()
    for name in JOURNAL_SOCKETS:
        (wanted / name).symlink_to(f"../{name}")
    for name in MASKED:
        (lab / "units" / name).symlink_to("/dev/null")
    if etc is not None:
        shutil.copytree(etc, lab / "etc", symlinks=True, dirs_exist_ok=True)
    (lab / "boot.sh").write_text(BOOT_SCRIPT)
    cgroup = cgroup2_dir() / f"secureconnect-lab-{uuid.uuid4().hex[:12]}"
    cgroup.mkdir()
    proc: subprocess.Popen[bytes] | None = None
    init_pid = 0
    try:
        proc = _launch(lab, cgroup, keep)
        init_pid = _wait_init(proc, lab, boot_timeout)
        systemd = Systemd(lab, init_pid, proc, cgroup)
        _wait_booted(systemd, boot_timeout)
        yield systemd
    finally:
        _tear_down(proc, init_pid, cgroup)


def _launch(lab: Path, cgroup: Path, keep: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start the lab: a shell moves itself into ``cgroup``, then becomes ``unshare``, whose child
    (PID 1 of the new namespaces, root of the cgroup namespace) runs the boot script and becomes
    systemd. Its output (the boot script's errors) goes to ``boot.log``.

    Should the caller die without tearing down (SIGKILL), the lab dies with it: ``setpriv
    --pdeathsig`` kills ``unshare`` when its parent (the caller) goes, and ``--kill-child`` kills
    the namespace's PID 1, and with it everything inside, when ``unshare`` goes."""
    wrapper = (
        'echo $$ > "$1/cgroup.procs" && lab=$2 && unit=$3 && shift 3 && '
        "exec setpriv --pdeathsig KILL -- unshare --pid "
        "--fork --kill-child=KILL --mount --cgroup --uts --ipc --mount-proc "
        '/bin/sh "$lab/boot.sh" "$lab" "$unit" "$@"'
    )
    with (lab / "boot.log").open("wb") as boot_log:
        return subprocess.Popen(
            ["/bin/sh", "-c", wrapper, "sh", str(cgroup), str(lab), LAB_TARGET, *keep],
            stdin=subprocess.DEVNULL,
            stdout=boot_log,
            stderr=subprocess.STDOUT,
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "SYSTEMD": str(SYSTEMD),
                "CONTAINER": CONTAINER,
            },
            start_new_session=True,
        )


def _boot_output(lab: Path) -> str:
    """What the boot script and systemd's early log (before the journal) said."""
    boot = (lab / "boot.log").read_text(errors="replace")[-4000:]
    console = (lab / "console").read_text(errors="replace")[-4000:]
    return (
        f"boot script: {boot or '(nothing)'}\nsystemd before the journal: {console or '(nothing)'}"
    )


def _wait_init(proc: subprocess.Popen[bytes], lab: Path, timeout: float) -> int:
    """The host PID of the namespace's PID 1, once it has become systemd."""
    deadline = time.monotonic() + timeout
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabUnavailable(
                f"the lab exited with status {proc.returncode} before systemd ran:\n"
                + _boot_output(lab)
            )
        with suppress(OSError, ValueError):
            pids = children.read_text().split()
            if pids and Path(f"/proc/{pids[0]}/comm").read_text().strip() == "systemd":
                return int(pids[0])
        time.sleep(_POLL)
    raise LabUnavailable(f"systemd did not start within {timeout} s:\n{_boot_output(lab)}")


def _wait_booted(systemd: Systemd, timeout: float) -> None:
    """Wait until the lab's systemd answers and has reached :data:`LAB_TARGET`."""
    private = Path(f"/proc/{systemd.init_pid}/root/run/systemd/private")
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        if systemd.proc.poll() is not None:
            break
        if private.exists():
            state = systemd.systemctl("is-system-running", check=False, timeout=5).strip()
            if state in ("running", "degraded"):
                return
        time.sleep(_POLL)
    raise LabUnavailable(
        f"the lab's systemd did not finish booting within {timeout} s (state {state!r}):\n"
        f"{_boot_output(systemd.lab)}\n{systemd.journal()}"
    )


def _tear_down(proc: subprocess.Popen[bytes] | None, init_pid: int, cgroup: Path) -> None:
    """Kill the namespace's PID 1 (the kernel then kills everything in it) and the ``unshare``
    above it, reap, and remove the cgroup subtree systemd made (bottom-up, once empty)."""
    for pid in (init_pid, proc.pid if proc is not None else 0):
        if pid:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if proc is not None:
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while cgroup.exists():
        for directory in sorted(
            (p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
        ):
            with suppress(OSError):
                directory.rmdir()
        with suppress(OSError):
            cgroup.rmdir()
        if time.monotonic() > deadline:
            print(f"systemdlab: could not remove {cgroup}", file=sys.stderr)
            return
        time.sleep(_POLL)


__all__ = [
    "LAB_TARGET",
    "LabUnavailable",
    "Systemd",
    "base_units",
    "missing_prerequisites",
    "systemd_lab",
]
