#!/usr/bin/env bash
# Debian's chromium, the browser tests/signal/test_demo_page.py drives through Playwright (the
# Python package comes with the test extras; the test uses this system browser, never
# `playwright install`). Installed when missing; if it is missing and cannot be installed (not
# root, no apt), this fails loudly instead of letting the test skip.
set -euo pipefail

if command -v chromium >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-browser: chromium is missing and cannot be apt-get installed (need root on Debian)" >&2
    exit 1
fi
echo "install-browser: installing chromium"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
if ! chromium --headless=new --no-sandbox --disable-gpu --version >/dev/null 2>&1; then
    echo "install-browser: chromium was installed but does not start" >&2
    exit 1
fi
echo "install-browser: $(chromium --version 2>/dev/null)"
