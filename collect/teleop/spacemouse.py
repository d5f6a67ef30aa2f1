"""3Dconnexion SpaceMouse through pyspacemouse: six axes move the TCP, the two buttons grip and save.

Axes are mapped with hardware.yaml ``teleop.spacemouse``: output axis i (x, y, z, roll, pitch, yaw in
the base frame) takes input axis ``axis_map[i]`` times ``axis_sign[i]``, after the ``deadzone``; full
deflection moves ``scale_mm`` / ``scale_deg`` per command. Left button: open/close the gripper; right
button: save the episode. Discard, quit and start come from the keyboard (terminal) when there is one.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from collect.teleop.base import InputSource, InputState, TeleopUnavailableError, missing_library
from robot.input_devices import HIDAPI_HINT, HIDRAW_UDEV_HINT, hidapi_library
from robot.runtime import Event

log = logging.getLogger(__name__)
_POLL_S = 0.005
_RAW_FIELDS = ("x", "y", "z", "roll", "pitch", "yaw")


def apply_deadzone(values, deadzone: float) -> np.ndarray:
    """Zero inside ``deadzone``, rescaled so that the output still spans -1..1 outside it."""
    values = np.clip(np.asarray(values, dtype=np.float64), -1.0, 1.0)
    magnitude = np.clip((np.abs(values) - deadzone) / (1.0 - deadzone), 0.0, 1.0)
    return np.sign(values) * magnitude


def spacemouse_motion(raw, axis_map, axis_sign, deadzone: float) -> np.ndarray:
    """Base-frame motion (-1..1 per axis) from the device's six raw axes."""
    raw = apply_deadzone(raw, deadzone)
    return np.array([raw[axis_map[i]] * axis_sign[i] for i in range(6)], dtype=np.float64)


def import_pyspacemouse():
    try:
        import pyspacemouse
    except ImportError as error:
        raise missing_library("SpaceMouse", "pyspacemouse", error) from None
    except OSError as error:  # its HID backend loads libhidapi at import
        raise TeleopUnavailableError(f"pyspacemouse cannot load its HID library ({error}): {HIDAPI_HINT}") from None
    return pyspacemouse


def open_failure_message(error: BaseException) -> str:
    """What to do when ``pyspacemouse.open()`` fails: its own message names neither the package nor the rule."""
    text = str(error)
    if "HID API" in text or hidapi_library() is None:  # easyhid could not find hid_enumerate in any hidapi library
        return f"cannot open the SpaceMouse: {text}. The hidapi library is missing: {HIDAPI_HINT}"
    return (f"cannot open the SpaceMouse: {text}. Check the USB connection, and that you may read and write its "
            f"/dev/hidraw* node: {HIDRAW_UDEV_HINT}")


class SpaceMouse(InputSource):
    name = "SpaceMouse"

    def __init__(self, config) -> None:
        """``config``: hardware.yaml ``teleop.spacemouse``."""
        self.config = config
        self._device = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, state: InputState) -> None:
        pyspacemouse = import_pyspacemouse()
        try:
            opened = pyspacemouse.open()
        except Exception as error:  # no hidapi library, permission on /dev/hidraw*, device busy
            raise TeleopUnavailableError(open_failure_message(error)) from None
        if not opened:
            raise TeleopUnavailableError(f"no SpaceMouse found: check that it is plugged in (`lsusb` lists "
                                         f"3Dconnexion) and that you may read /dev/hidraw*: {HIDRAW_UDEV_HINT}")
        self._device = pyspacemouse
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, args=(state,), name="fanvla-spacemouse", daemon=True)
        self._thread.start()

    def _poll(self, state: InputState) -> None:
        config, buttons_before = self.config, [0, 0]
        while not self._stop.wait(_POLL_S):
            try:
                reading = self._device.read()
            except Exception as error:  # unplugged: stop moving, let the operator decide
                log.error("SpaceMouse read failed: %s", error)
                state.set_held(self.name, [0.0] * 6)
                return
            raw = [float(getattr(reading, name, 0.0)) for name in _RAW_FIELDS]
            state.set_held(self.name, spacemouse_motion(raw, config.axis_map, config.axis_sign, config.deadzone))
            buttons = [*list(getattr(reading, "buttons", None) or [])[:2], 0, 0]
            if buttons[0] and not buttons_before[0]:
                state.toggle_gripper()
            if buttons[1] and not buttons_before[1]:
                state.raise_event(Event.SAVE)
            buttons_before = buttons[:2]

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=2.0)
        device, self._device = self._device, None
        if device is not None and hasattr(device, "close"):
            device.close()
