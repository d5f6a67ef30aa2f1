"""The agent behind the latency rig: asked about one observation at a time, answering now or later.

``ask(observation)`` starts a request; ``take()`` returns its ``Answer`` once it is available, each answer once;
``wait(until_s)`` sleeps until the request in flight is answered or ``until_s`` comes, whichever is first. Every
answer arrives ``LatencySpec``-injected seconds after the agent returned it (robot/injected_latency.py).

- ``InlineAnswers``: the agent runs in the loop's thread when asked. On the twin's simulated clock no time
  passes while it computes, and the injected delay is simulated time: the twin keeps stepping while the policy
  "thinks", exactly and reproducibly (a lock-step rehearsal of a slow policy). On a real clock the compute
  time has passed already when the injected delay starts.
- ``ThreadedAnswers`` (real clocks): the agent runs on a worker thread while the loop keeps ticking.

A failure that means "no action" (``OSError``, ``TimeoutError``: a remote policy down or late) becomes an answer
without a command; anything else (a wrong token, another checkpoint) is re-raised in the loop's thread.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from robot.clock import Clock
from robot.injected_latency import LatencySpec

if TYPE_CHECKING:
    from robot.runtime import Agent, AgentOutput, Observation

log = logging.getLogger(__name__)

_EPS_S = 1e-9
WORKER_JOIN_TIMEOUT_S = 10.0  # longer than any request budget a PolicyAgent gives itself on a real clock


@dataclass(frozen=True)
class Answer:
    observation: Observation  # what the agent was asked about
    output: AgentOutput
    asked_s: float  # clock time of the question
    ready_s: float  # clock time the answer became available to the loop (injected delay included)
    injected_s: float  # the injected part of ready_s - asked_s

    @property
    def latency_s(self) -> float:
        return self.ready_s - self.asked_s


def call_agent(agent: Agent, observation: Observation) -> AgentOutput:
    """``agent.act``, with a failed remote policy turned into a missing command (handled by the watchdog)."""
    from robot.runtime import AgentOutput

    try:
        return agent.act(observation)
    except (OSError, TimeoutError, ConnectionError) as error:
        log.warning("agent failed at step %d: %s", observation.step, error)
        return AgentOutput(None, info={"agent_error": f"{type(error).__name__}: {error}"})


class InlineAnswers:
    """The agent called in the caller's thread; its answer is held back for the injected delay."""

    def __init__(self, agent: Agent, clock: Clock, latency: LatencySpec, rng: np.random.Generator) -> None:
        self.agent, self.clock, self.latency, self.rng = agent, clock, latency, rng
        self._in_flight: Answer | None = None
        self._finished: Answer | None = None

    def ask(self, observation: Observation) -> None:
        """Ask now; an answer still held back is dropped (it will never be taken)."""
        asked = self.clock.now_s()
        output = call_agent(self.agent, observation)
        injected = self.latency.sample_s(self.rng)
        self._in_flight = Answer(observation, output, asked, self.clock.now_s() + injected, injected)

    def _settle(self) -> None:
        if self._in_flight is not None and self.clock.now_s() >= self._in_flight.ready_s - _EPS_S:
            self._finished, self._in_flight = self._in_flight, None

    @property
    def busy(self) -> bool:
        self._settle()
        return self._in_flight is not None

    def take(self) -> Answer | None:
        self._settle()
        answer, self._finished = self._finished, None
        return answer

    def wait(self, until_s: float) -> None:
        ready = self._in_flight.ready_s if self._in_flight is not None else until_s
        self.clock.sleep_until(min(until_s, ready))

    def close(self) -> None:
        self._in_flight = self._finished = None


class ThreadedAnswers:
    """The agent called on a worker thread (one request at a time), so that the loop keeps its rate."""

    def __init__(self, agent: Agent, clock: Clock, latency: LatencySpec, rng: np.random.Generator) -> None:
        if clock.is_simulated:
            raise ValueError("ThreadedAnswers needs a real clock; the simulated clock is advanced by one thread only "
                             "(use InlineAnswers)")
        self.agent, self.clock, self.latency, self.rng = agent, clock, latency, rng
        self._changed = threading.Condition()
        self._closed = threading.Event()
        self._request: tuple[Observation, float] | None = None
        self._in_flight = False
        self._finished: Answer | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="fanvla-agent", daemon=True)
        self._thread.start()

    def ask(self, observation: Observation) -> None:
        with self._changed:
            if self._in_flight:
                raise RuntimeError("ThreadedAnswers.ask while a request is in flight")
            self._request, self._in_flight = (observation, self.clock.now_s()), True
            self._changed.notify_all()

    def _work(self) -> None:
        while True:
            with self._changed:
                while self._request is None and not self._closed.is_set():
                    self._changed.wait()
                if self._closed.is_set():
                    return
                (observation, asked), self._request = self._request, None
            answer, error = self._answer(observation, asked)
            with self._changed:
                self._finished = answer if error is None else None
                self._error = error if error is not None else self._error
                self._in_flight = False
                self._changed.notify_all()
            if error is not None or self._closed.is_set():
                return

    def _answer(self, observation: Observation, asked: float) -> tuple[Answer | None, BaseException | None]:
        try:
            output = call_agent(self.agent, observation)
        except BaseException as error:  # re-raised by take() in the loop's thread
            return None, error
        injected = self.latency.sample_s(self.rng)
        if injected > 0 and self._closed.wait(injected):
            return None, None
        return Answer(observation, output, asked, self.clock.now_s(), injected), None

    @property
    def busy(self) -> bool:
        with self._changed:
            return self._in_flight

    def take(self) -> Answer | None:
        with self._changed:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            answer, self._finished = self._finished, None
            return answer

    def wait(self, until_s: float) -> None:
        with self._changed:
            while self._in_flight:
                remaining = until_s - self.clock.now_s()
                if remaining <= 0:
                    return
                self._changed.wait(remaining)
            if self._error is not None or self._finished is not None:
                return
        self.clock.sleep_until(until_s)

    def close(self) -> None:
        """Stop the worker; an answer in flight is dropped. Waits for a running agent call to return."""
        self._closed.set()
        with self._changed:
            self._changed.notify_all()
        self._thread.join(WORKER_JOIN_TIMEOUT_S)
        if self._thread.is_alive():
            log.warning("the agent call in flight did not return within %.0f s of the episode end",
                        WORKER_JOIN_TIMEOUT_S)
