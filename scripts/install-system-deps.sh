#!/usr/bin/env bash
# Debian packages the test suite drives as real clients, and systemd-analyze, which checks the
# unit files. Installed when missing; if they are missing and cannot be installed (not root, no
# apt), this fails loudly instead of letting tests skip.
set -euo pipefail

need=()
command -v turnutils_stunclient >/dev/null || need+=(coturn)
command -v ip >/dev/null || need+=(iproute2)
# secureconnect natlab (tests/natlab): nftables NAT routers in network namespaces, and sysctl to
# turn on forwarding inside them.
command -v nft >/dev/null || need+=(nftables)
command -v sysctl >/dev/null || need+=(procps)
# systemd-analyze verifies the unit files in systemd/ (tests/test_sdnotify.py); the fault tests
# (tests/adversarial/test_systemd_faults.py) boot /lib/systemd/systemd as PID 1 of a private
# PID/mount namespace (unshare, nsenter, setpriv: util-linux) and SIGKILL the units' processes.
command -v systemd-analyze >/dev/null || need+=(systemd)
[ -x /lib/systemd/systemd ] || need+=(systemd)
for tool in unshare nsenter setpriv; do
    command -v "$tool" >/dev/null || need+=(util-linux)
done
# The cluster tests (tests/cluster, docs/cluster.md) start their own redis-server (Debian's),
# in the foreground, with no config file and nothing saved.
command -v redis-server >/dev/null || need+=(redis-server)
# A wall-clock step for the fault tests (tests/adversarial/test_faults.py): libfaketime moves
# CLOCK_REALTIME of the appliance alone.
compgen -G "/usr/lib/*/faketime/libfaketimeMT.so.1" >/dev/null || need+=(libfaketime)

# The compiled UDP fast path (src/secureconnect/turn/*fastpath*.c, docs/fastpath.md): a C
# compiler, the C library's headers and the headers of the Python the venv is made from ($PYTHON,
# as the Makefile passes it; a pyenv or python.org build ships its own, Debian's python3 needs
# python3-dev). Without them pip leaves the optional extension out, and its tests fail.
command -v gcc >/dev/null || need+=(gcc)
[ -e /usr/include/stdio.h ] || need+=(libc6-dev)
"${PYTHON:-python3}" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || need+=(python3-dev)

[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-system-deps: missing ${need[*]} and cannot apt-get install them (need root on Debian)" >&2
    exit 1
fi
echo "install-system-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
# Debian's coturn package would start a turnserver on install where an init system runs; forbid
# service starts during the install so nothing else holds our test ports.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
fi
trap '[ $created_policy = 1 ] && rm -f "$policy"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
