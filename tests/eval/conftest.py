"""Shared helpers for the evaluation tests: task files written to tmp_path, run options."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

TASK_KEYS = {
    "name": "quick",
    "title": "Quick check",
    "description": "A short task for tests.",
    "objects": ["red_cube", "green_cylinder", "blue_prism"],
    "perturbation": {"object_dx_mm": [-15, 15], "object_dy_mm": [-15, 15], "object_yaw_deg": [-15, 15],
                     "box_dx_mm": [-10, 10], "box_dy_mm": [-10, 10], "start_joint_offsets_deg": [-2, 2]},
    "max_duration_s": 30,
    "success": "object_in_box",
}


def write_task(directory: Path, **changes) -> Path:
    """A task YAML like the shipped ones, with ``changes`` applied (a value of None removes the key)."""
    data = {**TASK_KEYS, **changes}
    data = {key: value for key, value in data.items() if value is not None}
    path = directory / f"{data.get('name', 'unnamed')}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture()
def task_file(tmp_path):
    def make(**changes) -> Path:
        return write_task(tmp_path, **changes)

    return make
