"""The agent behind the latency rig on a real clock: a worker thread, the injected delay, errors brought home."""

from __future__ import annotations

import time

import numpy as np
import pytest

from robot.answers import InlineAnswers, ThreadedAnswers
from robot.clock import RealClock
from robot.injected_latency import LatencySpec
from robot.interfaces import ArmState, CameraFrame, GripperState
from robot.runtime import AgentOutput, Observation


def observation(step: int) -> Observation:
    arm = ArmState(np.zeros(6), np.zeros(6), 0.0)
    frame = CameraFrame(np.zeros((2, 2, 3), np.uint8), 0.0, step, 0.0)
    return Observation(frame, arm, GripperState(1.0, None, 0.0), "x", step, time.monotonic())


class Echo:
    def __init__(self, fail_with: BaseException | None = None) -> None:
        self.fail_with = fail_with

    def reset(self, instruction: str) -> None:
        pass

    def act(self, obs: Observation) -> AgentOutput:
        if self.fail_with is not None:
            raise self.fail_with
        return AgentOutput(None, info={"step": obs.step})


def test_answers_arrive_after_the_injected_delay_while_the_caller_goes_on():
    clock = RealClock()
    answers = ThreadedAnswers(Echo(), clock, LatencySpec(80), np.random.default_rng(0))
    try:
        asked = clock.now_s()
        answers.ask(observation(3))
        assert answers.busy and answers.take() is None  # the caller is not blocked
        with pytest.raises(RuntimeError, match="in flight"):
            answers.ask(observation(4))
        answers.wait(asked + 5.0)  # returns when the answer arrives, not at the deadline
        answer = answers.take()
        assert answer.observation.step == 3 and answer.output.info == {"step": 3}
        assert answer.injected_s == pytest.approx(0.08) and 0.08 <= answer.latency_s < 2.0
        assert clock.now_s() - asked < 2.0 and answers.take() is None  # each answer once
    finally:
        answers.close()


def test_an_agent_failure_is_a_missing_command_and_a_configuration_error_is_raised_in_the_loop():
    clock = RealClock()
    answers = ThreadedAnswers(Echo(ConnectionRefusedError("down")), clock, LatencySpec(), np.random.default_rng(0))
    answers.ask(observation(0))
    answers.wait(clock.now_s() + 5.0)
    answer = answers.take()
    assert answer.output.command is None and "ConnectionRefusedError: down" in answer.output.info["agent_error"]
    answers.close()
    broken = ThreadedAnswers(Echo(ValueError("wrong token")), clock, LatencySpec(), np.random.default_rng(0))
    broken.ask(observation(0))
    broken.wait(clock.now_s() + 5.0)
    with pytest.raises(ValueError, match="wrong token"):
        broken.take()
    broken.close()


def test_closing_drops_an_answer_in_flight_without_waiting_out_its_delay():
    clock = RealClock()
    answers = ThreadedAnswers(Echo(), clock, LatencySpec(5000), np.random.default_rng(0))
    answers.ask(observation(0))
    started = time.monotonic()
    answers.close()
    assert time.monotonic() - started < 2.0 and answers.take() is None


def test_inline_answers_on_a_real_clock_hold_the_answer_back():
    clock = RealClock()
    answers = InlineAnswers(Echo(), clock, LatencySpec(50), np.random.default_rng(0))
    answers.ask(observation(1))
    assert answers.busy and answers.take() is None
    answers.wait(clock.now_s() + 5.0)
    assert not answers.busy and answers.take().observation.step == 1


def test_the_worker_needs_a_real_clock():
    from robot.sim.clock import SimClock

    with pytest.raises(ValueError, match="real clock"):
        ThreadedAnswers(Echo(), SimClock(lambda: None, 0.008), LatencySpec(), np.random.default_rng(0))
