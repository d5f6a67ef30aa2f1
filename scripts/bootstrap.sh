#!/usr/bin/env bash
# Install everything fanvla needs on a fresh Debian/Ubuntu machine (idempotent, quick when done):
# system packages, a virtual environment in .venv, torch==2.13.0 (CPU) and the project with [dev].
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
