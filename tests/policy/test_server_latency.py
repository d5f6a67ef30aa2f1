"""``fanvla serve --policy-latency-ms``: every /act answer is held back by the injected delay, which /metadata and
the reply's timing report."""

from __future__ import annotations

import time

import pytest

from fanvla.cli import main
from policy.client import PolicyClient
from policy.inference import InferenceEngine
from robot.injected_latency import LatencySpec
from tests.policy.server_testing import INSTRUCTION, rgb, running_server


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return InferenceEngine.load(tiny_model_dir, threads=1)


def test_every_answer_is_delayed_and_says_so(engine):
    with running_server(engine, injected_latency=LatencySpec(120, 20)) as server, PolicyClient(server.url) as client:
        metadata = client.metadata()
        assert metadata["injected_latency"] == {"spec_ms": "120+-20", "mean_ms": 120.0, "spread_ms": 20.0,
                                                "distribution": "uniform"}
        for _ in range(3):
            started = time.perf_counter()
            reply = client.act(rgb(56, 56), INSTRUCTION)
            round_trip_s = time.perf_counter() - started
            assert 0.1 <= reply.timing["injected_s"] <= 0.14
            assert round_trip_s >= reply.timing["injected_s"]
            assert reply.timing["total_s"] >= reply.timing["inference_s"] + reply.timing["injected_s"]
            assert reply.actions.shape == (1, 7)
    with running_server(engine) as server, PolicyClient(server.url) as client:
        assert "injected_latency" not in client.metadata()
        assert "injected_s" not in client.act(rgb(56, 56), INSTRUCTION).timing


def test_a_bad_latency_is_refused_before_the_model_loads(tmp_path, capsys):
    assert main(["serve", "--checkpoint", str(tmp_path), "--policy-latency-ms", "150+-200"]) == 2
    assert "may not exceed" in capsys.readouterr().err
