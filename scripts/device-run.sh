#!/usr/bin/env bash
# On the GPU machine (from the repository root, .device/ carried; see scripts/device-bundle.sh): installs the
# carried packages into the image's Python and runs the staged recipe's device preset. Results go to $OUT.
#   bash scripts/device-run.sh [more flags for bench/tiny_training_run.py]
set -euo pipefail
OUT=${OUT:-/tmp/astra-device-out}
mkdir -p "$OUT"
for f in .device/debs/*.deb; do dpkg -x "$f" /; done
ldconfig
python3 -m pip install --quiet --no-index --no-deps .device/wheels/*.whl
python3 -m pip install --quiet --no-index --no-deps --no-build-isolation -e .
if ! bwrap --unshare-all --die-with-parent --ro-bind / / true 2>/dev/null; then
    # the image's kernel (gVisor) refuses namespaces: the offline arenas' tools are the built-in worlds' own code
    echo "bubblewrap cannot make namespaces here: running the built-in worlds' code without the kernel sandbox" >&2
    export ASTRA_GYM_UNSAFE_SANDBOX=1
fi
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
PYTHONUNBUFFERED=1 python3 bench/tiny_training_run.py --preset device --work /tmp/astra-staged "$@" 2>&1 \
    | grep -v "it/s]\|s/it]" | tee "$OUT/log.txt"
cp /tmp/astra-staged/results.json "$OUT/"
