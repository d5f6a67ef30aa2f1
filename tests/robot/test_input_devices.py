"""Which teleop devices are usable, and what to do when one is not (hidapi library, udev rule, the teleop extra)."""

from __future__ import annotations

import pytest

from collect.teleop.spacemouse import open_failure_message
from robot import input_devices
from robot.check import format_report, run_check


@pytest.fixture
def with_modules(monkeypatch):
    """Pretend the named Python packages are installed (only their presence is checked)."""
    def install(*names: str) -> None:
        real = input_devices.importlib.util.find_spec
        monkeypatch.setattr(input_devices.importlib.util, "find_spec",
                            lambda name, *a: object() if name in names else real(name, *a))
    return install


def test_spacemouse_without_the_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(input_devices, "_installed", lambda name: False)
    status = input_devices.spacemouse_status()
    assert not status.usable and "pip install -e .[teleop]" in status.detail


def test_spacemouse_without_hidapi_names_the_system_package(monkeypatch, with_modules):
    with_modules("pyspacemouse")
    monkeypatch.setattr(input_devices.ctypes.util, "find_library", lambda name: None)
    status = input_devices.spacemouse_status()
    assert not status.usable and "libhidapi-hidraw0" in status.detail and "apt install" in status.detail


def test_spacemouse_without_access_names_the_udev_rule(monkeypatch, with_modules):
    with_modules("pyspacemouse")
    monkeypatch.setattr(input_devices.ctypes.util, "find_library", lambda name: "libhidapi-hidraw.so.0")
    monkeypatch.setattr(input_devices.glob, "glob", lambda pattern: ["/dev/hidraw7"] if "hidraw" in pattern else [])
    monkeypatch.setattr(input_devices, "_hidraw_vendor", lambda node: "256F")
    monkeypatch.setattr(input_devices.os, "access", lambda path, mode: False)
    status = input_devices.spacemouse_status()
    assert not status.usable and "/dev/hidraw7" in status.detail
    assert 'ATTRS{idVendor}=="256f"' in status.detail and "udevadm" in status.detail
    monkeypatch.setattr(input_devices.os, "access", lambda path, mode: True)
    assert input_devices.spacemouse_status().usable


def test_gamepad_and_keyboard(monkeypatch, with_modules):
    with_modules("pygame")
    monkeypatch.setattr(input_devices.glob, "glob", lambda pattern: [])
    assert "no gamepad is plugged in" in input_devices.gamepad_status().detail
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setattr(input_devices.os, "isatty", lambda fd: True)
    keyboard = input_devices.keyboard_status()
    assert keyboard.usable and "terminal keyboard" in keyboard.detail


def test_the_hid_api_message_of_pyspacemouse_becomes_instructions():
    message = open_failure_message(RuntimeError("HID API is probably not installed. See https://..."))
    assert "HID API is probably not installed" in message and "sudo apt install libhidapi-hidraw0" in message


def test_robot_check_reports_the_teleop_devices(hardware_config):
    report = run_check(hardware_config, "sim", measure_s=0.2)
    assert set(report.teleop) == {"keyboard", "spacemouse", "gamepad"}
    assert all(set(status) == {"usable", "detail"} for status in report.teleop.values())
    text = format_report(report)
    assert "teleop spacemouse:" in text and report.arm["sdk"]["measured_state"] == "actual"
