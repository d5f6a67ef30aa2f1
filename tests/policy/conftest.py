"""Shared setup of the policy tests: one tiny 'test' model directory per session, the fixture's tiny model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The tiny models gain nothing from a second intra-op thread, and on a loaded 2-core machine torch's
    thread handoff makes them 10x slower (measured: a 15-step training test 1.7 s with 1 thread, 21.5 s with 2
    at load average 6). Restored after each module."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from policy.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny") / "model", preset="test", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from policy.openvla import OpenVLA

    return OpenVLA.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def fixture_reference(openvla_fixtures) -> dict[str, np.ndarray]:
    with np.load(openvla_fixtures / "tiny" / "reference.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def fixture_model(openvla_fixtures):
    from policy.openvla import OpenVLA

    return OpenVLA.from_pretrained(openvla_fixtures / "tiny")


def random_images(count: int, seed: int = 0, shape: tuple[int, int] = (96, 128)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(count)]
