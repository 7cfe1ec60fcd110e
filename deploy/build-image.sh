#!/bin/sh
# Build localhost/astra-gym:latest without a registry: the sandbox base image from this host's interpreter
# (gym_server/sandbox/image.py), the gym's packages installed into a build folder, bubblewrap and its
# libraries copied from this host. Usage: deploy/build-image.sh [ENGINE=podman]
set -eu
ENGINE=${1:-podman}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
PY=${PYTHON:-$REPO/.venv/bin/python}
CTX=$HERE/.build
rm -rf "$CTX" && mkdir -p "$CTX/root/usr/local/bin" "$CTX/root/arenas" "$CTX/root/tmp"
"$PY" -m gym_server.sandbox.image build --engine "$ENGINE"
"$PY" -m pip install -q --no-compile --target "$CTX/site-packages" "$REPO"
REAL=$("$PY" -c 'import os, sys; print(os.path.realpath(sys._base_executable))')
ln -s "$REAL" "$CTX/root/usr/local/bin/astra-python"
# bubblewrap, and every shared library it or a compiled extension in site-packages loads (the base image has
# only what the interpreter itself loads)
"$PY" - "$CTX" <<'PY'
import glob, os, shutil, sys
from gym_server.sandbox.image import shared_libraries
ctx = sys.argv[1]
bwrap = shutil.which("bwrap")
binaries = glob.glob(f"{ctx}/site-packages/**/*.so*", recursive=True) + [bwrap]
# pyseccomp finds libseccomp through `ldconfig -p` (ctypes.util.find_library): the static ldconfig and the
# loader cache come along, with the library itself
seccomp = "/usr/lib/x86_64-linux-gnu/libseccomp.so.2"
extra = {bwrap, "/sbin/ldconfig", "/etc/ld.so.cache", *([seccomp] if os.path.exists(seccomp) else [])}
for path in sorted(shared_libraries(binaries) | extra):
    if path.startswith(ctx):
        continue
    dest = f"{ctx}/root{path}"
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.copy(path, dest)
PY
chmod 1777 "$CTX/root/tmp"
"$ENGINE" build --format docker -t localhost/astra-gym:latest -f "$HERE/Containerfile" "$CTX"
