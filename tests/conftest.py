"""Shared test setup. Everything runs against the simulated hardware; nothing needs a device."""

from __future__ import annotations

import os
from pathlib import Path

# Must be set before mujoco is imported anywhere (headless EGL rendering through Mesa llvmpipe).
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "1")

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_DIR = REPO_ROOT.parent / "shared" / "fixtures" / "openvla"


@pytest.fixture(scope="session")
def openvla_fixtures() -> Path:
    """../shared/fixtures/openvla; skipped (with the reason) only when the folder is absent."""
    if not FIXTURES_DIR.is_dir():
        pytest.skip(f"OpenVLA reference fixtures not found at {FIXTURES_DIR}")
    return FIXTURES_DIR


@pytest.fixture(scope="session")
def hardware_config():
    from fanvla.config import load_hardware_config

    return load_hardware_config(REPO_ROOT / "hardware.yaml")
