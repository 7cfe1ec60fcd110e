#!/usr/bin/env bash
# Prepares what the GPU machine (the `device` tool; no internet there) needs to run the staged training recipe,
# in .device/ (git-ignored; name it in the run's `carry`): wheels of the packages its image lacks, for its
# Python 3.12, and the Debian packages of the sandbox (bubblewrap, libseccomp). Then, on the device:
#   bash scripts/device-run.sh            # installs from .device/, runs `bench/tiny_training_run.py --preset device`
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .device && mkdir -p .device/wheels .device/debs
# what the device image already holds (/work/.library/device/KINDS.md, "Python packages already there"):
# torch (with CUDA), transformers, accelerate, tokenizers, numpy, pyarrow, jinja2, rich, typer, pyyaml, ...
image_has="torch transformers accelerate tokenizers safetensors huggingface-hub hf-xet numpy pyarrow pandas jinja2 markupsafe
rich typer click pyyaml matplotlib pillow fonttools kiwisolver contourpy cycler pyparsing python-dateutil six packaging filelock
fsspec requests urllib3 idna certifi charset-normalizer tqdm regex psutil anyio h11 httpx httpcore aiohttp aiosignal attrs
frozenlist multidict yarl propcache aiohappyeyeballs xxhash typing-extensions mpmath sympy networkx triton setuptools pip
wheel uvloop pygments markdown-it-py mdurl shellingham annotated-doc"
pyplat=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
# the project's own dependencies and the training stack's, resolved for the device's Python, torch left out
deps=$(python3 - <<'PY'
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = p["dependencies"] + [r for r in p["optional-dependencies"]["train"] if not r.startswith("torch")]
print(" ".join(f"'{r.split(';')[0].strip()}'" for r in reqs))
PY
)
eval pip download --quiet --dest .device/wheels "${pyplat[@]}" $deps 2>&1 | grep -v "^WARNING: Location" || true
for name in $image_has; do
    norm=$(echo "$name" | tr '-' '_')
    rm -f .device/wheels/"$norm"-[0-9]*.whl .device/wheels/"$name"-[0-9]*.whl
done
rm -f .device/wheels/nvidia_* .device/wheels/torch-*
(cd .device/debs && apt-get download bubblewrap libseccomp2 >/dev/null)
du -sh .device/wheels .device/debs
ls .device/wheels | sed 's/-[0-9].*//' | tr '\n' ' '; echo
