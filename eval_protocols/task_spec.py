"""Evaluation tasks: one YAML file each, and the trials they determine.

A task file (``eval_protocols/tasks/task1.yaml`` .. ``task4.yaml``, or any file a user writes) names the
objects, the perturbation ranges around hardware.yaml's nominal placements (``robot.scene.PerturbationRanges``),
the episode length and the success criterion. Trial ``i`` of a task is fully determined by the file and the
run seed: its seed is ``trial_seed(task name, run seed, i)`` and its object is ``objects[i % len(objects)]``,
so two policies evaluated with the same seed face the same situations, and 30 trials over three objects
give each object 10.

Example::

    name: task2
    title: Perturbed object pose
    description: The object starts far from where it stood in the demonstrations.
    objects: [red_cube, green_cylinder, blue_prism]
    perturbation:
      object_dx_mm: [-60, 60]
      object_yaw_deg: [-45, 45]
    max_duration_s: 30
    success: object_in_box
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fanvla.yaml_loader import YamlError, load_yaml
from robot.scene import PerturbationRanges, SceneSampler, SceneSpec

BUILTIN_TASKS_DIR = Path(__file__).resolve().parent / "tasks"
SUCCESS_CRITERIA = {
    "object_in_box": "the object rests inside the box's inner footprint, below the wall top, released by an open "
                     "gripper (robot.sim.twin.Twin.task_success; at the robot: the operator's judgement)",
}
MAX_DURATION_RANGE_S = (1.0, 600.0)
# Beyond these a perturbation no longer describes "the same task, perturbed" (and sampling fails anyway).
MAX_OFFSET_MM = 300.0
MAX_YAW_DEG = 180.0
MAX_JOINT_OFFSET_DEG = 90.0
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
REQUIRED_KEYS = ("name", "title", "objects", "perturbation", "max_duration_s", "success")
OPTIONAL_KEYS = ("description", "instruction_template")


class TaskFileError(ValueError):
    """A task file that cannot be used; the message names the file, the key, the value and what is allowed."""


def trial_seed(task_name: str, run_seed: int, trial: int) -> int:
    """The seed of trial ``trial`` of ``task_name`` in a run seeded ``run_seed`` (stable across machines and
    Python versions: a SHA-256, not Python's salted ``hash``)."""
    digest = hashlib.sha256(f"fanvla-eval/{task_name}/{run_seed}/{trial}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: fits numpy's and JSON's integers


@dataclass(frozen=True)
class Trial:
    """One situation of a task: what the twin places or the operator sets up."""

    task: str
    index: int
    seed: int
    scene: SceneSpec
    instruction: str

    @property
    def object_name(self) -> str:
        return self.scene.object_name


@dataclass(frozen=True)
class TaskSpec:
    name: str
    title: str
    description: str
    objects: tuple[str, ...]
    perturbation: PerturbationRanges
    max_duration_s: float
    success: str
    instruction_template: str | None
    path: Path
    sha256: str  # of the file's bytes: a run refuses to mix trials of two versions of a task

    def object_for(self, trial: int) -> str:
        return self.objects[trial % len(self.objects)]

    def instruction_for(self, object_name: str, scene_config) -> str:
        if self.instruction_template is None:
            return scene_config.instruction_for(object_name)
        return self.instruction_template.format(object=scene_config.objects[object_name])

    def trial(self, sampler: SceneSampler, run_seed: int, index: int) -> Trial:
        """Trial ``index`` for a run seeded ``run_seed`` (deterministic)."""
        if index < 0:
            raise ValueError(f"trial index must be >= 0, got {index}")
        seed = trial_seed(self.name, run_seed, index)
        name = self.object_for(index)
        try:
            scene = sampler.sample(seed, name, self.perturbation)
        except ValueError as error:
            raise TaskFileError(f"{self.path}: trial {index} of task {self.name}: {error}") from None
        return Trial(self.name, index, seed, scene, self.instruction_for(name, sampler.config.scene))

    def describe(self) -> dict[str, Any]:
        """The plain-data form stored in a run's run.json."""
        p = self.perturbation
        return {"name": self.name, "title": self.title, "description": self.description, "objects": list(self.objects),
                "perturbation": {"object_dx_mm": list(p.object_dx_mm), "object_dy_mm": list(p.object_dy_mm),
                                 "object_yaw_deg": list(p.object_yaw_deg), "box_dx_mm": list(p.box_dx_mm),
                                 "box_dy_mm": list(p.box_dy_mm),
                                 "start_joint_offsets_deg": [list(r) for r in p.start_joint_offsets_deg]},
                "max_duration_s": self.max_duration_s, "success": self.success,
                "instruction_template": self.instruction_template, "file": str(self.path), "sha256": self.sha256}


# ------------------------------------------------------------------------------------------------------------
# Loading and validation
# ------------------------------------------------------------------------------------------------------------


def load_task(path: str | Path, scene_config=None) -> TaskSpec:
    """Read and validate one task file; ``scene_config`` (hardware.yaml ``scene``) checks the object names."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TaskFileError(f"task file not found: {path}") from None
    except OSError as error:
        raise TaskFileError(f"cannot read task file {path}: {error.strerror}") from None
    try:
        data = load_yaml(raw, str(path))  # the strict loader of hardware.yaml: duplicate keys, alias bombs
    except YamlError as error:
        raise TaskFileError(str(error)) from None
    if not isinstance(data, dict):
        raise TaskFileError(f"{path}: expected a mapping of task keys ({', '.join(REQUIRED_KEYS)}), "
                            f"got {type(data).__name__}")
    return _parse(data, path, hashlib.sha256(raw).hexdigest(), scene_config)


def _parse(data: Mapping[str, Any], path: Path, sha256: str, scene_config) -> TaskSpec:
    def fail(key: str, message: str) -> TaskFileError:
        return TaskFileError(f"{path}: {key}: {message}")

    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise fail(missing[0], f"required key is missing (required: {', '.join(REQUIRED_KEYS)})")
    unknown = sorted(set(data) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise fail(unknown[0], f"unknown key; allowed: {', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}")
    name = data["name"]
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise fail("name", f"{name!r} must be 1-64 letters, digits, '_' or '-' (it names folders and seeds)")
    for key in ("title", "description", "instruction_template"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise fail(key, f"must be text, got {data[key]!r}")
    objects = _objects(data["objects"], scene_config, fail)
    template = data.get("instruction_template")
    if template is not None and "{object}" not in template:
        raise fail("instruction_template", f"{template!r} must contain the placeholder {{object}}")
    duration = data["max_duration_s"]
    low, high = MAX_DURATION_RANGE_S
    if isinstance(duration, bool) or not isinstance(duration, int | float) or not low <= duration <= high:
        raise fail("max_duration_s", f"{duration!r} is not allowed (allowed: {low:g} <= value <= {high:g} seconds)")
    if data["success"] not in SUCCESS_CRITERIA:
        raise fail("success", f"{data['success']!r} is not a known criterion (allowed: {', '.join(SUCCESS_CRITERIA)})")
    perturbation = _perturbation(data["perturbation"], fail)
    return TaskSpec(name, str(data["title"]), str(data.get("description") or ""), objects, perturbation,
                    float(duration), str(data["success"]), template, path.resolve(), sha256)


def _objects(value: Any, scene_config, fail) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise fail("objects", f"must be a non-empty list of object names, got {value!r}")
    if len(set(value)) != len(value):
        raise fail("objects", f"lists an object twice: {value}")
    if scene_config is not None:
        known = sorted(scene_config.objects)
        for name in value:
            if name not in scene_config.objects:
                raise fail("objects", f"{name!r} is not in hardware.yaml scene.objects (allowed: {', '.join(known)})")
    return tuple(value)


def _perturbation(value: Any, fail) -> PerturbationRanges:
    if not isinstance(value, dict):
        raise fail("perturbation", f"must be a mapping of ranges (e.g. object_dx_mm: [-50, 50]), got {value!r}")
    limits = {"object_dx_mm": MAX_OFFSET_MM, "object_dy_mm": MAX_OFFSET_MM, "box_dx_mm": MAX_OFFSET_MM,
              "box_dy_mm": MAX_OFFSET_MM, "object_yaw_deg": MAX_YAW_DEG}
    for key, limit in limits.items():
        if key in value:
            _check_range(value[key], f"perturbation.{key}", limit, fail)
    offsets = value.get("start_joint_offsets_deg")
    if offsets is not None:
        pairs = [offsets] if _is_pair(offsets) else offsets
        if not isinstance(pairs, list):
            raise fail("perturbation.start_joint_offsets_deg", f"must be one [low, high] pair or one per joint, "
                                                               f"got {offsets!r}")
        for index, pair in enumerate(pairs):
            _check_range(pair, f"perturbation.start_joint_offsets_deg[{index}]", MAX_JOINT_OFFSET_DEG, fail)
    try:
        return PerturbationRanges.from_dict(value, origin="perturbation")
    except ValueError as error:
        raise fail("perturbation", str(error).removeprefix("perturbation: ")) from None


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_range(value: Any, key: str, limit: float, fail) -> None:
    if not _is_pair(value) or not all(math.isfinite(v) for v in value):
        raise fail(key, f"must be a [low, high] pair of numbers, got {value!r}")
    low, high = value
    if low > high:
        raise fail(key, f"[{low}, {high}] has low > high")
    if low < -limit or high > limit:
        raise fail(key, f"[{low}, {high}] is not allowed (allowed: -{limit:g} <= low <= high <= {limit:g})")


def builtin_task_names(tasks_dir: Path = BUILTIN_TASKS_DIR) -> list[str]:
    return sorted(path.stem for path in tasks_dir.glob("*.yaml"))


def resolve_tasks(selection: str | Sequence[str], scene_config=None,
                  tasks_dir: str | Path | None = None) -> list[TaskSpec]:
    """``"all"``, or comma-separated task names (files ``<tasks_dir>/<name>.yaml``) and paths to YAML files.

    ``tasks_dir`` defaults to the built-in tasks. Names must be unique: two files with one ``name`` would share
    seeds and result rows."""
    directory = Path(tasks_dir) if tasks_dir is not None else BUILTIN_TASKS_DIR
    items = [s.strip() for s in (selection.split(",") if isinstance(selection, str) else selection) if s.strip()]
    if not items:
        raise TaskFileError("no tasks selected: give 'all' or a comma-separated list such as task1,task2")
    if items == ["all"]:
        items = builtin_task_names(directory)
        if not items:
            raise TaskFileError(f"no task files (*.yaml) in {directory}")
    tasks: list[TaskSpec] = []
    for item in items:
        path = Path(item)
        if path.suffix not in (".yaml", ".yml"):
            path = directory / f"{item}.yaml"
            if not path.exists():
                raise TaskFileError(f"unknown task {item!r}: no file {path} (known: "
                                    f"{', '.join(builtin_task_names(directory)) or 'none'}; or give a path to a "
                                    f".yaml file)")
        tasks.append(load_task(path, scene_config))
    names = [task.name for task in tasks]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise TaskFileError(f"task name(s) {duplicates} selected twice; every task needs its own name")
    return tasks
