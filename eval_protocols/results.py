"""The results of one evaluation run, in RUN_DIR, safe against crashes and against mixing policies.

Layout::

    RUN_DIR/
      run.json          what was evaluated: policy identity, backend, seed, trials, tasks (+ each file's SHA-256),
                        software version, hardware.yaml snapshot; written atomically (temp file + os.replace)
      results.jsonl     one JSON line per SCORED trial, appended with flush + fsync; never rewritten
      run.lock          held (flock) by the one process evaluating into RUN_DIR
      trials/<task>/<NNN>/steps.zarr, video.mp4     each trial's step log and video

Resuming skips every trial with a line in results.jsonl; a trial that has none (the process died mid-way)
is run again from scratch. A line cut short by a crash is the only thing ever removed from results.jsonl:
its bytes are moved to ``results.jsonl.torn-<n>`` first and that trial counts as unscored.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collect.atomic_store import fsync_path, write_file_atomically
from collect.layout import utc_now_iso

RUN_FILE, RESULTS_FILE, LOCK_FILE, TRIALS_DIR = "run.json", "results.jsonl", "run.lock", "trials"
RUN_FORMAT = "fanvla-eval-run"
RUN_FORMAT_VERSION = 1
RECORD_KEYS = ("task", "trial", "success")
# Runs made before execution modes existed ran every answer in sync, without injected latency.
LEGACY_EXECUTION = {"mode": "sync", "policy_latency_ms": "0"}


class RunDirError(RuntimeError):
    """RUN_DIR cannot be used as asked (another policy, changed task files, locked, unreadable)."""


def trial_dir(run_dir: Path, task: str, trial: int) -> Path:
    return run_dir / TRIALS_DIR / task / f"{trial:03d}"


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``path`` so that a crash leaves either the old or the new file, never a mix (and the rename is durable)."""
    write_file_atomically(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
    fsync_path(path.parent)


@dataclass(frozen=True)
class RunIdentity:
    """What must not change while trials are added to a run."""

    policy: dict[str, Any]  # {"kind", "name", "fingerprint", ...}; fingerprint decides sameness
    backend: str
    seed: int
    trials: int
    # ExecutionConfig.describe(): mode, injected latency, max action age (robot/execution.py)
    execution: dict[str, Any] = field(default_factory=lambda: dict(LEGACY_EXECUTION))

    def differences(self, stored: Mapping[str, Any]) -> list[str]:
        problems = []
        old_policy = stored.get("policy") or {}
        if old_policy.get("fingerprint") != self.policy.get("fingerprint"):
            problems.append(f"policy: the run evaluated {old_policy.get('name')!r} (fingerprint "
                            f"{old_policy.get('fingerprint')}), this command evaluates {self.policy.get('name')!r} "
                            f"(fingerprint {self.policy.get('fingerprint')})")
        for key in ("backend", "seed", "trials"):
            if stored.get(key) != getattr(self, key):
                problems.append(f"{key}: the run has {stored.get(key)!r}, this command asks for {getattr(self, key)!r}")
        old_execution = stored.get("execution") or LEGACY_EXECUTION
        for key in sorted(set(old_execution) | set(self.execution)):
            if old_execution.get(key) != self.execution.get(key) and not (key not in old_execution and
                                                                        stored.get("execution") is None):
                problems.append(f"execution {key}: the run has {old_execution.get(key)!r}, this command asks for "
                                f"{self.execution.get(key)!r}")
        return problems


class RunStore:
    """RUN_DIR opened for evaluating (``open_for_run``, takes the lock) or for reading (``read``)."""

    def __init__(self, run_dir: Path, manifest: dict[str, Any], lock_fd: int | None) -> None:
        self.run_dir = run_dir
        self.manifest = manifest
        self._lock_fd = lock_fd
        self._scored: dict[tuple[str, int], dict[str, Any]] = {}
        for record in _read_records(run_dir / RESULTS_FILE, repair=lock_fd is not None):
            key = (record["task"], int(record["trial"]))
            if key in self._scored:  # only possible if someone edited the file by hand
                raise RunDirError(f"{run_dir / RESULTS_FILE} scores {key[0]} trial {key[1]} twice; keep one line "
                                  f"and remove the other by hand")
            self._scored[key] = record

    # -- opening ------------------------------------------------------------------------------------------
    @classmethod
    def open_for_run(cls, run_dir: str | Path, identity: RunIdentity, tasks: Mapping[str, Mapping[str, Any]],
                     extra: Mapping[str, Any]) -> RunStore:
        """Create RUN_DIR's run.json, or check that the existing one describes the same evaluation.

        ``tasks``: name -> ``TaskSpec.describe()``. Tasks new to the run are added; a task whose file changed
        (SHA-256) is refused, as is another policy, backend, seed or trial count."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(run_dir)
        try:
            manifest = cls._reconcile(run_dir, identity, tasks, extra)
            return cls(run_dir, manifest, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    @staticmethod
    def _reconcile(run_dir: Path, identity: RunIdentity, tasks: Mapping[str, Mapping[str, Any]],
                   extra: Mapping[str, Any]) -> dict[str, Any]:
        path = run_dir / RUN_FILE
        if not path.exists():
            if (run_dir / RESULTS_FILE).exists():
                raise RunDirError(f"{run_dir} has {RESULTS_FILE} but no {RUN_FILE}: it was not made by "
                                  f"'fanvla eval run' or run.json was removed; use a new RUN_DIR")
            manifest = {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "created_at": utc_now_iso(),
                        "policy": identity.policy, "backend": identity.backend, "seed": identity.seed,
                        "trials": identity.trials, "execution": dict(identity.execution),
                        "tasks": {name: dict(spec) for name, spec in tasks.items()},
                        **dict(extra)}
            write_json_atomic(path, manifest)
            return manifest
        manifest = read_manifest(run_dir)
        problems = identity.differences(manifest)
        for name, spec in tasks.items():
            old = manifest["tasks"].get(name)
            if old is not None and old.get("sha256") != spec.get("sha256"):
                problems.append(f"task {name}: the task file changed since the run started ({old.get('file')} had "
                                f"SHA-256 {old.get('sha256')}, {spec.get('file')} has {spec.get('sha256')})")
        if problems:
            raise RunDirError(f"{run_dir} holds another evaluation; refusing to mix trials:\n  "
                              + "\n  ".join(problems) + "\nUse a new RUN_DIR, or re-run with the run's settings.")
        new = {name: dict(spec) for name, spec in tasks.items() if name not in manifest["tasks"]}
        if new:
            manifest["tasks"].update(new)
            write_json_atomic(path, manifest)
        return manifest

    @classmethod
    def read(cls, run_dir: str | Path) -> RunStore:
        """Read-only view (for reports): no lock, nothing repaired or written."""
        run_dir = Path(run_dir)
        return cls(run_dir, read_manifest(run_dir), None)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- records ------------------------------------------------------------------------------------------
    def is_scored(self, task: str, trial: int) -> bool:
        return (task, trial) in self._scored

    def record(self, task: str, trial: int) -> dict[str, Any] | None:
        return self._scored.get((task, trial))

    def records(self, task: str | None = None) -> list[dict[str, Any]]:
        """Scored trials (of ``task``), in trial order."""
        chosen = [r for (name, _), r in self._scored.items() if task is None or name == task]
        return sorted(chosen, key=lambda r: (r["task"], int(r["trial"])))

    def append(self, record: Mapping[str, Any]) -> None:
        """Add one scored trial; refuses a trial that is already scored (nothing is ever overwritten)."""
        if self._lock_fd is None:
            raise RunDirError("this run store was opened read-only")
        missing = [key for key in RECORD_KEYS if key not in record]
        if missing:
            raise ValueError(f"a trial record needs {', '.join(RECORD_KEYS)}; missing {missing}")
        key = (str(record["task"]), int(record["trial"]))
        if key in self._scored:
            raise RunDirError(f"{key[0]} trial {key[1]} is already scored in {self.run_dir}; a score is never replaced")
        line = json.dumps(dict(record), sort_keys=False, allow_nan=False) + "\n"
        path = self.run_dir / RESULTS_FILE
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self._scored[key] = dict(record)


def read_manifest(run_dir: Path) -> dict[str, Any]:
    return read_json_document(run_dir / RUN_FILE, RUN_FORMAT, "a fanvla evaluation run file", RunDirError,
                              f"{run_dir} is not an evaluation run: no {RUN_FILE} (made by 'fanvla eval run')")


def read_json_document(path: Path, expected_format: str, kind: str, error: type[Exception],
                       missing_message: str) -> dict[str, Any]:
    """A JSON object whose ``format`` is ``expected_format``; every failure is ``error`` with a clear message."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(missing_message) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise error(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != expected_format:
        raise error(f"{path} is not {kind} (format {expected_format!r} expected)")
    return data


def _lock(run_dir: Path) -> int:
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunDirError(f"another 'fanvla eval run' (pid {holder}) is evaluating into {run_dir}; wait for it or "
                          f"stop it first") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _read_records(path: Path, repair: bool) -> Iterator[dict[str, Any]]:
    """The complete lines of results.jsonl; with ``repair``, a torn last line is moved aside first."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return iter(())
    complete_end = data.rfind(b"\n") + 1
    if complete_end < len(data):
        if repair:
            _move_torn_tail(path, data, complete_end)
        data = data[:complete_end]
    records = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise RunDirError(f"{path} line {number} is not JSON ({error}); it was edited by hand?") from None
        if not isinstance(record, dict) or any(key not in record for key in RECORD_KEYS):
            raise RunDirError(f"{path} line {number} is not a trial record (needs {', '.join(RECORD_KEYS)})")
        records.append(record)
    return iter(records)


def _move_torn_tail(path: Path, data: bytes, complete_end: int) -> None:
    number = 0
    while (side := path.with_name(f"{path.name}.torn-{number}")).exists():
        number += 1
    with open(side, "wb") as handle:
        handle.write(data[complete_end:])
        handle.flush()
        os.fsync(handle.fileno())
    with open(path, "r+b") as handle:
        handle.truncate(complete_end)
        handle.flush()
        os.fsync(handle.fileno())
