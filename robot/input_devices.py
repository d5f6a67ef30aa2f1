"""Which teleoperation devices this machine can use, checked without opening them (``fanvla robot check``).

The teleop drivers themselves live in collect/teleop/; what they need from the system is checked here, at the
lowest layer, so that the hardware check and the drivers' error messages say the same thing:

- SpaceMouse: the ``pyspacemouse`` package, the system's hidapi library (its ``easyhid`` backend loads it with
  ``cffi``; without it pyspacemouse only says "HID API is probably not installed"), and read/write access to
  the device's ``/dev/hidraw*`` node (a udev rule);
- gamepad: ``pygame`` and a readable ``/dev/input/js*`` joystick node;
- keyboard: ``pynput`` with an X display, else the terminal (always there in an interactive shell).
"""

from __future__ import annotations

import ctypes.util
import glob
import importlib.util
import os
from dataclasses import asdict, dataclass
from pathlib import Path

SPACEMOUSE_VENDORS = {"256F": "3Dconnexion", "046D": "Logitech (3Dconnexion)"}
HIDAPI_LIBRARIES = ("hidapi-hidraw", "hidapi-libusb", "hidapi")
HIDAPI_HINT = ("install the system's hidapi library: `sudo apt install libhidapi-hidraw0 libhidapi-libusb0` "
               "(Debian/Ubuntu; `libhidapi` / `hidapi` on other distributions)")
HIDRAW_UDEV_HINT = ("give your user access to the SpaceMouse's /dev/hidraw* node with a udev rule, e.g. "
                    "/etc/udev/rules.d/99-spacemouse.rules: KERNEL==\"hidraw*\", ATTRS{idVendor}==\"256f\", "
                    "MODE=\"0660\", GROUP=\"plugdev\" (and the same with 046d for older Logitech-made models); then "
                    "`sudo udevadm control --reload-rules && sudo udevadm trigger`, join the plugdev group and re-plug")
TELEOP_EXTRA_HINT = "install the teleop extra: `pip install -e .[teleop]`"


@dataclass(frozen=True)
class DeviceStatus:
    usable: bool
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def hidapi_library() -> str | None:
    """The hidapi shared library the dynamic loader finds, or None."""
    for name in HIDAPI_LIBRARIES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def _hidraw_vendor(node: str) -> str | None:
    """The USB vendor id (upper-case hex) of a /dev/hidrawN node, from sysfs (HID_ID=bus:vendor:product)."""
    uevent = Path("/sys/class/hidraw") / Path(node).name / "device" / "uevent"
    try:
        for line in uevent.read_text().splitlines():
            if line.startswith("HID_ID="):
                return line.split("=", 1)[1].split(":")[1][-4:].upper()
    except (OSError, IndexError):
        return None
    return None


def spacemouse_status() -> DeviceStatus:
    if not _installed("pyspacemouse"):
        return DeviceStatus(False, f"pyspacemouse is not installed: {TELEOP_EXTRA_HINT}")
    library = hidapi_library()
    if library is None:
        return DeviceStatus(False, f"pyspacemouse cannot work without the hidapi library: {HIDAPI_HINT}")
    nodes = [node for node in sorted(glob.glob("/dev/hidraw*")) if _hidraw_vendor(node) in SPACEMOUSE_VENDORS]
    if not nodes:
        return DeviceStatus(False, f"no SpaceMouse is plugged in (no /dev/hidraw* of vendor "
                                   f"{'/'.join(SPACEMOUSE_VENDORS).lower()}; hidapi: {library})")
    readable = [node for node in nodes if os.access(node, os.R_OK | os.W_OK)]
    if not readable:
        return DeviceStatus(False, f"SpaceMouse at {', '.join(nodes)} is not accessible: {HIDRAW_UDEV_HINT}")
    return DeviceStatus(True, f"SpaceMouse at {', '.join(readable)} (hidapi: {library})")


def gamepad_status() -> DeviceStatus:
    if not _installed("pygame"):
        return DeviceStatus(False, f"pygame is not installed: {TELEOP_EXTRA_HINT}")
    nodes = sorted(glob.glob("/dev/input/js*"))
    if not nodes:
        return DeviceStatus(False, "no gamepad is plugged in (no /dev/input/js*)")
    readable = [node for node in nodes if os.access(node, os.R_OK)]
    if not readable:
        return DeviceStatus(False, f"gamepad at {', '.join(nodes)} is not readable: add your user to the 'input' "
                                   "group (or a udev rule for the device) and log in again")
    return DeviceStatus(True, f"gamepad at {', '.join(readable)}")


def keyboard_status(stdin_fd: int = 0) -> DeviceStatus:
    display = os.environ.get("DISPLAY")
    if display and _installed("pynput"):
        return DeviceStatus(True, f"desktop keyboard through pynput on display {display}")
    try:
        terminal = os.isatty(stdin_fd)
    except OSError:
        terminal = False
    if terminal:
        why = "no X display" if not display else f"pynput is not installed ({TELEOP_EXTRA_HINT})"
        return DeviceStatus(True, f"terminal keyboard ({why}; keys are read from this terminal)")
    return DeviceStatus(False, "no X display with pynput and no terminal on stdin: run the recording from a "
                               "terminal (SSH is fine) or on the desktop")


def teleop_devices() -> dict[str, DeviceStatus]:
    return {"keyboard": keyboard_status(), "spacemouse": spacemouse_status(), "gamepad": gamepad_status()}
