#!/usr/bin/env bash
# Build dist/secureconnect: one executable file (a shiv zipapp) holding the project and its
# runtime dependencies (trio, cryptography, websockets and what they need). It runs on a machine
# with CPython of the same minor version as the build interpreter (3.11 by default), on the same
# platform (Linux x86_64, glibc), without the project or its dependencies installed:
#
#   scp dist/secureconnect host:/usr/bin/secureconnect && ssh host secureconnect run
#
# The compiled wheels inside (cryptography's Rust core is abi3, but cffi's backend is built per
# Python version) make the file per platform and per Python minor version; a preamble stops it
# with a clear message on another version instead of an ImportError.
#
# On first run the file extracts its site-packages to $SHIV_ROOT (default ~/.shiv), one directory
# per build; later runs start from there. Under systemd's DynamicUser= set SHIV_ROOT to a
# CacheDirectory= (docs/deployment.md).
#
# Environment: PYTHON (build interpreter, default python3), OUT (default dist/secureconnect),
# PIP_CONSTRAINT (pin dependency versions, pip's own variable), SOURCE_DATE_EPOCH (zip
# timestamps; a fixed default otherwise, so one source tree and one set of wheels give one file).
#
# shiv is installed into a throwaway venv; nothing is written to the source tree but $OUT.
set -euo pipefail

SHIV_VERSION=1.0.8
PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-dist/secureconnect}
case $OUT in /*) ;; *) OUT=$ROOT/$OUT ;; esac

started=$SECONDS
work=$(mktemp -d "${TMPDIR:-/tmp}/secureconnect-dist.XXXXXX")
trap 'rm -rf "$work"' EXIT

version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { echo "build-dist: $PYTHON is Python $version; secureconnect needs 3.11+" >&2; exit 1; }

echo "build-dist: shiv $SHIV_VERSION in a throwaway venv ($PYTHON, Python $version)"
"$PYTHON" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip --disable-pip-version-check --no-input -q)
"${pip[@]}" install "shiv==$SHIV_VERSION"

# Build from a copy, so pip's in-tree build leaves no build/ or *.egg-info in the repository and
# a stray .venv or cache never reaches the file.
mkdir "$work/src"
cp "$ROOT/pyproject.toml" "$ROOT/README.md" "$work/src/"
for license in "$ROOT"/LICEN[CS]E*; do
    if [[ -e $license ]]; then cp "$license" "$work/src/"; fi
done
cp -r "$ROOT/src" "$work/src/src"
find "$work/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +

echo "build-dist: installing secureconnect and its dependencies (wheels from the package index)"
"${pip[@]}" install --no-compile --target "$work/site-packages" "$work/src"
# Drop what names the build machine, so that two builds of one tree give the same file: the
# console-script wrappers (their shebang is the build venv; shiv calls the entry point itself)
# and pip's record of the source directory, with their RECORD lines.
rm -rf "$work/site-packages/bin" "$work"/site-packages/*.dist-info/direct_url.json
sed -i -e '/^\.\.\/\.\.\/bin\//d' -e '/\/direct_url\.json,/d' "$work"/site-packages/*.dist-info/RECORD

# Runs after extraction, before the entry point: the compiled dependencies match one version.
cat >"$work/version_check.py" <<EOF
import sys

if sys.version_info[:2] != (${version%.*}, ${version#*.}):
    here = "%d.%d" % sys.version_info[:2]
    fix = "" if sys.version_info < (3, 11) else f", or rebuild it with PYTHON=python{here}"
    sys.exit(
        f"secureconnect: this file was built for Python $version (its compiled dependencies are"
        f" per version), but {sys.executable} is Python {here}: run it with python$version{fix}"
    )
EOF

mkdir -p "$(dirname "$OUT")"
"$work/venv/bin/shiv" \
    --site-packages "$work/site-packages" \
    --console-script secureconnect \
    --python '/usr/bin/env python3' \
    --preamble "$work/version_check.py" \
    --compressed --reproducible \
    --output-file "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
chmod 0755 "$OUT"

size=$(stat -c %s "$OUT")
echo "build-dist: $OUT: $((size / 1024)) KiB ($size bytes), sha256 $(sha256sum "$OUT" | cut -d' ' -f1)"
echo "build-dist: for Python $version on $(uname -s) $(uname -m); built in $((SECONDS - started)) s"
