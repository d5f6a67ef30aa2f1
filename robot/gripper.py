"""Grippers. ``BinaryGripper`` is the base for open/closed devices; ``DigitalOutputGripper`` switches one
output of the JAKA controller (cabinet, tool flange or extension IO) through the arm's SDK handle.

In the twin the same output drives the finger actuator (robot/sim/fake_jkrc.py), so this driver is
the code exercised in simulation. A set that times out (-60, jkerr.h ERR_IO_SET_TIMEOUT: the tool IO did
not answer) is tried once more; a second failure raises ``IOTimeoutError`` and the gripper's state keeps
the last command that was applied, never the one that was lost.
"""

from __future__ import annotations

import logging
import math
import threading
from abc import abstractmethod

from fanvla.config import TOOL_FLANGE_OUTPUTS
from robot.clock import Clock, RealClock
from robot.errors import BadParameterError, IOTimeoutError
from robot.interfaces import Gripper, GripperState

log = logging.getLogger(__name__)

IO_TYPE_CODES = {"cabinet": 0, "tool": 1, "extended": 2}  # JAKA's set_digital_output ``type`` (jktypes.h IOType)
OPEN_THRESHOLD = 0.5
IO_SET_ATTEMPTS = 2


class BinaryGripper(Gripper):
    """A gripper that is either open or closed: a command >= 0.5 opens it, below closes it.

    Subclasses implement ``_apply(open_)``. ``state()`` reports the applied command; ``width`` is
    None because such a device has no position sensor.
    """

    def __init__(self, settle_s: float, clock: Clock | None = None) -> None:
        self.settle_s = settle_s
        self.clock = clock or RealClock()
        self._lock = threading.Lock()
        self._applied: float | None = None
        self._changed_s = 0.0

    def command(self, opening: float) -> float:
        value = float(opening)
        if not math.isfinite(value):
            raise BadParameterError(f"gripper opening must be a finite number in 0..1, got {opening!r}")
        target = 1.0 if value >= OPEN_THRESHOLD else 0.0
        with self._lock:
            self._apply(target == 1.0)
            if self._applied != target:
                self._changed_s = self.clock.now_s()
            self._applied = target
        return target

    def state(self) -> GripperState:
        with self._lock:
            command = self._applied if self._applied is not None else 1.0
        return GripperState(command=command, width=None, timestamp_s=self.clock.now_s())

    @property
    def settled(self) -> bool:
        """The fingers have had ``settle_s`` to reach the last commanded state."""
        return self.clock.now_s() - self._changed_s >= self.settle_s

    @abstractmethod
    def _apply(self, open_: bool) -> None:
        """Drive the device open (True) or closed (False)."""


class DigitalOutputGripper(BinaryGripper):
    """A parallel gripper switched by ``gripper.io_type/io_index``; ``close_level`` is the closing level."""

    def __init__(self, config, arm, clock: Clock | None = None) -> None:
        gripper = config.gripper
        super().__init__(gripper.settle_s, clock or getattr(arm, "clock", None))
        self.arm = arm
        self.io_type = IO_TYPE_CODES[gripper.io_type]
        self.io_index = gripper.io_index
        if gripper.io_type == "tool" and not 0 <= self.io_index < TOOL_FLANGE_OUTPUTS:
            raise BadParameterError(f"gripper.io_index {self.io_index}: the MiniCobo's tool flange has "
                                    f"{TOOL_FLANGE_OUTPUTS} digital outputs (0 or 1)", call="set_digital_output")
        self.close_level = gripper.close_level

    def connect(self) -> None:
        """Needs the arm connected (the output is the arm controller's); opens the gripper."""
        if not self.arm.connected:
            self.arm.connect()
        self.open()

    def disconnect(self) -> None:
        """Leaves the output as it is: dropping a held object on disconnect would be worse."""

    def _apply(self, open_: bool) -> None:
        level = (not self.close_level) if open_ else self.close_level
        for attempt in range(1, IO_SET_ATTEMPTS + 1):
            try:
                self.arm.sdk_call("set_digital_output", self.io_type, self.io_index, int(level))
                return
            except IOTimeoutError as error:
                if attempt == IO_SET_ATTEMPTS:
                    raise IOTimeoutError(f"the gripper was not {'opened' if open_ else 'closed'}: {error} (tried "
                                         f"{IO_SET_ATTEMPTS} times; output {self.io_index} of type "
                                         f"{self.io_type})", code=error.code, call=error.call) from None
                log.warning("gripper output set timed out, trying once more: %s", error)


GRIPPER_KINDS = {"digital_output": DigitalOutputGripper}


def make_gripper(config, arm, clock: Clock | None = None) -> Gripper:
    """The gripper named by ``gripper.kind`` in hardware.yaml, on ``arm``'s controller."""
    try:
        kind = GRIPPER_KINDS[config.gripper.kind]
    except KeyError:
        raise ValueError(f"gripper.kind {config.gripper.kind!r} is not supported; "
                         f"known: {sorted(GRIPPER_KINDS)}") from None
    return kind(config, arm, clock)
