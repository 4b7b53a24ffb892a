#!/usr/bin/env bash
# Debian's browsers for the tests: chromium, which tests/signal/test_demo_page.py and the lab's
# Chromium peer drive through Playwright (the Python package comes with the test extras; the
# tests use this system browser, never `playwright install`), and firefox-esr, which the lab's
# Firefox peer (secureconnect/natlab/firefox.py) drives over its built-in WebDriver BiDi.
# Installed when missing; if one is missing and cannot be installed (not root, no apt), or does
# not start, this fails loudly instead of letting the tests skip.
set -euo pipefail

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v firefox-esr >/dev/null || missing+=(firefox-esr)
if [ ${#missing[@]} = 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-browser: ${missing[*]} missing and cannot be apt-get installed (need root on Debian)" >&2
    exit 1
fi
echo "install-browser: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if ! chromium --headless=new --no-sandbox --disable-gpu --version >/dev/null 2>&1; then
    echo "install-browser: chromium was installed but does not start" >&2
    exit 1
fi
if ! firefox-esr --headless --version >/dev/null 2>&1; then
    echo "install-browser: firefox-esr was installed but does not start" >&2
    exit 1
fi
echo "install-browser: $(chromium --version 2>/dev/null); $(firefox-esr --headless --version 2>/dev/null)"
