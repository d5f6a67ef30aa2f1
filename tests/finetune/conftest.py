"""Shared fixtures of the finetuning tests: a small synthetic store and a tiny 'test' model knowing its words."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.finetune.store_factory import INSTRUCTIONS, write_store


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory) -> Path:
    """6 episodes x 12 steps, two instructions (read-only: tests must not write into it)."""
    return write_store(tmp_path_factory.mktemp("stores") / "demos.zarr", episodes=6, steps=12)


@pytest.fixture(scope="session")
def tiny_init(tmp_path_factory) -> Path:
    from policy.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("init") / "tiny", preset="test", seed=0, instructions=INSTRUCTIONS)
