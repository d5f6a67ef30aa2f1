"""Finding JAKA's jkrc bundle: clear errors for a missing folder, a missing module, the wrong Python."""

from __future__ import annotations

import sys

import pytest

from robot.errors import SDKNotFoundError
from robot.jaka import ENV_SDK_PATH, JakaArm, load_jkrc


@pytest.fixture(autouse=True)
def isolated_import(monkeypatch):
    """Each test imports jkrc afresh and leaves sys.path / sys.modules / the env as they were."""
    monkeypatch.delitem(sys.modules, "jkrc", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv(ENV_SDK_PATH, raising=False)
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    yield
    sys.modules.pop("jkrc", None)


def test_missing_folder_names_the_setting(tmp_path):
    with pytest.raises(SDKNotFoundError, match=f"from {ENV_SDK_PATH} / robot.sdk_path.*does not exist"):
        load_jkrc(str(tmp_path / "nowhere"))


def test_folder_without_the_module_explains_where_to_get_it(tmp_path):
    with pytest.raises(SDKNotFoundError, match=r"jkrc module was not found in .*Set FANVLA_JKRC_PATH"):
        load_jkrc(str(tmp_path))


def test_bundle_for_another_python_is_named(tmp_path):
    (tmp_path / "jkrc.cpython-38-x86_64-linux-gnu.so").write_bytes(b"\x7fELF not really")
    major, minor = sys.version_info[:2]
    with pytest.raises(SDKNotFoundError, match=rf"jkrc.cpython-38.*must match CPython {major}.{minor}"):
        load_jkrc(str(tmp_path))


def test_broken_shared_object_reports_the_import_error_and_python(tmp_path):
    (tmp_path / "jkrc.so").write_bytes(b"this is not an ELF file")
    with pytest.raises(SDKNotFoundError) as info:
        load_jkrc(str(tmp_path))
    message = str(info.value)
    assert "does not import into this Python" in message and sys.executable in message
    assert "jkrc.so" in message


def test_environment_variable_wins_over_the_config(tmp_path, monkeypatch):
    good, other = tmp_path / "good", tmp_path / "other"
    good.mkdir()
    other.mkdir()
    (good / "jkrc.py").write_text("SOURCE = 'env'\n")
    monkeypatch.setenv(ENV_SDK_PATH, str(good))
    module = load_jkrc(str(other))
    assert module.SOURCE == "env"
    assert str(good) in sys.path and str(good) in __import__("os").environ["LD_LIBRARY_PATH"]


def test_connect_without_an_sdk_raises_before_touching_anything(hardware_config, tmp_path):
    config = hardware_config.with_overrides({"robot.sdk_path": str(tmp_path)})
    arm = JakaArm(config)
    with pytest.raises(SDKNotFoundError):
        arm.connect()
    assert not arm.connected
