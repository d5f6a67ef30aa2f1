"""Strict configuration files (fanvla/yaml_loader.py): duplicate keys, booleans for numbers, alias bombs and huge
values are refused with short messages that name the key and the line. The same loader reads task files and
calibration points files.

Issue 27's probes: a second ``safety:`` section silently won (a workspace z of [-100, 900] and ``watchdog_stop_s:
10`` were accepted); ``rate_hz: true`` was read as 1.0; an alias bomb made ``fanvla robot config`` print the whole
expanded value (2 GB).
"""

from __future__ import annotations

import re

import pytest

from eval_protocols.calibration import CalibrationError, read_points_file
from eval_protocols.task_spec import TaskFileError, load_task
from fanvla.cli import main
from fanvla.config import ConfigError, load_hardware_config
from fanvla.yaml_loader import MAX_EXPANDED_VALUES, YamlError, excerpt, load_yaml
from tests.conftest import REPO_ROOT

HARDWARE = (REPO_ROOT / "hardware.yaml").read_text()


def _config_file(tmp_path, text: str):
    path = tmp_path / "hardware.yaml"
    path.write_text(text)
    return path


def _line_of(text: str, prefix: str) -> int:
    return next(number for number, line in enumerate(text.splitlines(), start=1) if line.startswith(prefix))


def test_a_second_section_is_an_error_naming_the_key_and_both_lines(tmp_path):
    text = HARDWARE + "\nsafety:\n  workspace_mm: {x: [100, 500], y: [-300, 300], z: [-100, 900]}\n" \
                      "  watchdog_stop_s: 10\n"
    with pytest.raises(ConfigError) as error:
        load_hardware_config(_config_file(tmp_path, text))
    first, second = _line_of(text, "safety:"), len(HARDWARE.splitlines()) + 2
    assert f"the key 'safety' is given twice in one mapping (line {first} and line {second})" in str(error.value)


def test_a_duplicate_key_inside_a_section_is_an_error(tmp_path):
    text = HARDWARE.replace("  watchdog_stop_s:", "  watchdog_stop_s: 10\n  watchdog_stop_s:", 1)
    with pytest.raises(ConfigError, match=r"the key 'watchdog_stop_s' is given twice .* \(line \d+ and line \d+\)"):
        load_hardware_config(_config_file(tmp_path, text))


def test_merge_keys_may_still_be_overridden():
    assert load_yaml("base: &b {a: 1, b: 2}\nuse:\n  <<: *b\n  b: 3\n", "x.yaml")["use"] == {"a": 1, "b": 3}
    with pytest.raises(YamlError, match="the key 'b' is given twice"):
        load_yaml("use:\n  <<: {a: 1}\n  b: 3\n  b: 4\n", "x.yaml")


@pytest.mark.parametrize("word", ["true", "yes", "on", "false"])
def test_booleans_are_not_numbers(tmp_path, word):
    text = re.sub(r"(?m)^  rate_hz: .*$", f"  rate_hz: {word}", HARDWARE, count=1)
    assert text != HARDWARE
    with pytest.raises(ConfigError, match=r"recording\.rate_hz: a number is required, not a boolean"):
        load_hardware_config(_config_file(tmp_path, text))


def test_booleans_are_not_numbers_inside_lists_either(tmp_path, hardware_config):
    z = hardware_config.safety.workspace_mm.z
    text = re.sub(r"(?m)^(\s+)z: .*$", rf"\1z: [true, {z[1]}]", HARDWARE, count=1)
    with pytest.raises(ConfigError, match=r"safety\.workspace_mm\.z\.0: a number is required, not a boolean"):
        load_hardware_config(_config_file(tmp_path, text))
    assert hardware_config.recording.record_depth in (True, False)  # real boolean fields still take booleans


def _alias_bomb(levels: int) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, levels)]
    return "\n".join(lines) + f"\nrobot: *l{levels - 1}\n"


def test_an_alias_bomb_is_refused_with_a_short_message(tmp_path, capsys):
    # 9**6 = 531,441 values: over the bound, yet small enough that the unbounded message of before was only ~4 MB.
    path = _config_file(tmp_path, _alias_bomb(6))
    assert main(["robot", "config", "--config", str(path)]) == 2
    message = capsys.readouterr().err
    assert f"expands to more than {MAX_EXPANDED_VALUES:,} values through anchors and aliases" in message
    assert len(message) < 1000
    huge = _config_file(tmp_path, _alias_bomb(10))  # 3.5 billion values: refused as fast
    with pytest.raises(ConfigError, match="expands to more than"):
        load_hardware_config(huge)


def test_a_recursive_alias_and_deep_nesting_are_refused():
    with pytest.raises(YamlError, match="recursive"):
        load_yaml("a: &a [1, *a]\n", "r.yaml")
    with pytest.raises(YamlError, match="nested"):
        load_yaml("a: " + "[" * 200 + "]" * 200 + "\n", "n.yaml")


def test_error_messages_show_a_bounded_excerpt_of_a_bad_value(tmp_path):
    text = re.sub(r"(?m)^  rate_hz: .*$", "  rate_hz: " + "x" * 100_000, HARDWARE, count=1)
    with pytest.raises(ConfigError) as error:
        load_hardware_config(_config_file(tmp_path, text))
    assert "recording.rate_hz = 'xxxx" in str(error.value) and len(str(error.value)) < 400
    assert len(excerpt(list(range(10**6)))) <= 80


def test_task_files_use_the_same_loader(tmp_path, hardware_config):
    text = (REPO_ROOT / "eval_protocols" / "tasks" / "task1.yaml").read_text()
    path = tmp_path / "task.yaml"
    path.write_text(text + "\nmax_duration_s: 5000\n")
    with pytest.raises(TaskFileError, match=r"the key 'max_duration_s' is given twice"):
        load_task(path, hardware_config.scene)
    path.write_text(_alias_bomb(7))
    with pytest.raises(TaskFileError, match="expands to more than"):
        load_task(path)


def test_calibration_points_files_use_the_same_loader(tmp_path):
    path = tmp_path / "points.yaml"
    path.write_text("points:\n  - {x_mm: 200, y_mm: -100, u_px: 10.5, v_px: 20}\npoints: []\n")
    with pytest.raises(CalibrationError, match="the key 'points' is given twice"):
        read_points_file(path)
    path.write_text("points:\n  - {x_mm: 200, y_mm: -100, u_px: yes, v_px: 20}\n")
    with pytest.raises(CalibrationError, match=r"point 1 .* needs numbers"):
        read_points_file(path)
