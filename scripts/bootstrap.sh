#!/usr/bin/env bash
# Install everything fanvla needs on a fresh Debian/Ubuntu machine (idempotent, quick when done):
# system packages, a virtual environment in .venv, torch==2.13.0 (CPU), the project with [dev], and
# openvla-7b's Llama-2 tokenizer built in .cache/ from the npm package llama-tokenizer-js.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  libusb-1.0-0                               # pyrealsense2 cannot be imported without it
  libegl1 libegl-mesa0 libgl1-mesa-dri libgl1  # MuJoCo headless rendering (MUJOCO_GL=egl, llvmpipe)
  chromium chromium-driver                   # the operator console's browser test
)

missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
# npm fetches the Llama-2 vocabulary below; only when absent (a NodeSource nodejs already bundles npm).
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "bootstrap: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  echo "bootstrap: installing system packages: ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.fanvla-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  # Pinned first and explicitly: an open range would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi

# openvla-7b's Llama-2 tokenizer, rebuilt from the vocabulary and merges that the npm package
# llama-tokenizer-js carries (policy/llama_tokenizer.py; no hub access needed). Fetched once, checksum-verified,
# rebuilt only when the tarball or the builder changes. Tests and tools read it, never download it.
TOKENIZER_PACKAGE=llama-tokenizer-js@1.2.2
TOKENIZER_TARBALL=.cache/npm/llama-tokenizer-js-1.2.2.tgz
TOKENIZER_SHA256=ee83014ac8b379b16cf8d81e99ffcdb23dfade8c0d2e751bd06e7dc0b8476e72
TOKENIZER_DIR=.cache/llama2-tokenizer
tarball_ok() { echo "$TOKENIZER_SHA256  $TOKENIZER_TARBALL" | sha256sum -c --status 2>/dev/null; }
if ! tarball_ok; then
  command -v npm >/dev/null || { echo "bootstrap: npm is needed to fetch $TOKENIZER_PACKAGE" >&2; exit 1; }
  echo "bootstrap: fetching $TOKENIZER_PACKAGE (the Llama-2 vocabulary) with npm"
  mkdir -p "$(dirname "$TOKENIZER_TARBALL")"
  rm -f "$TOKENIZER_TARBALL"
  npm pack "$TOKENIZER_PACKAGE" --pack-destination "$(dirname "$TOKENIZER_TARBALL")" --silent >/dev/null
  if ! tarball_ok; then
    echo "bootstrap: $TOKENIZER_TARBALL does not have the expected sha256 $TOKENIZER_SHA256" >&2
    rm -f "$TOKENIZER_TARBALL"
    exit 1
  fi
fi
tokenizer_stamp=.cache/llama2-tokenizer.built
want="$TOKENIZER_SHA256 $(sha256sum policy/llama_tokenizer.py | cut -d' ' -f1)"
built=1
for file in tokenizer.json tokenizer_config.json special_tokens_map.json added_tokens.json; do
  [ -f "$TOKENIZER_DIR/$file" ] || built=0
done
if [ "$built" = 0 ] || [ ! -f "$tokenizer_stamp" ] || [ "$(cat "$tokenizer_stamp")" != "$want" ]; then
  echo "bootstrap: building the Llama-2 tokenizer in $TOKENIZER_DIR"
  .venv/bin/python -m fanvla policy build-tokenizer --npm-tarball "$TOKENIZER_TARBALL" --out "$TOKENIZER_DIR" \
    --overwrite >/dev/null
  echo "$want" > "$tokenizer_stamp"
fi
