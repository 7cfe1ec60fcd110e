#!/usr/bin/env bash
# System packages astra-gym needs, for a fresh Debian/Ubuntu machine (as root; does nothing it need not).
#   scripts/system-deps.sh            everything the test suite needs
#   scripts/system-deps.sh sandbox    only the sandbox's kernel boundary (bubblewrap, libseccomp), for serving
# bubblewrap + libseccomp: the sandbox (README, Sandbox); podman + runc: the container backend's tests;
# chromium + chromium-driver: the viewer's browser tests (selenium drives /usr/bin/chromium, never a download);
# npm: the MCP conformance suite, pinned in .ci/conformance (it brings its own Node 22).
set -euo pipefail
cd "$(dirname "$0")/.."
packages="bubblewrap libseccomp2"
[ "${1:-all}" = sandbox ] || packages="$packages podman runc chromium chromium-driver"
missing=""
for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ "${1:-all}" != sandbox ] && ! command -v npm >/dev/null; then missing="$missing npm"; fi
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then echo "missing system packages:$missing (run this script as root)" >&2; exit 1; fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
if [ "${1:-all}" != sandbox ]; then
    npm ci --prefix .ci/conformance --no-audit --no-fund --loglevel=error
fi
