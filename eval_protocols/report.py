"""``fanvla eval report RUN_DIR [RUN_DIR ...] --out report/``: the paper's Table 3 for our runs, with statistics.

Writes into the report folder:

- ``README.md``: a table shaped like the paper's Table 3 (rows = runs, columns = tasks; successes/N, rate and
  Wilson 95% interval); for two or more runs, each run against the first: the difference with Newcombe's
  interval and Fisher's exact p-value per task, and which differences are significant; the runs' identities
  (with their execution mode and injected latency); every trial with a link to its video (relative to the
  report folder) and its timing: answer latency quantiles, held ticks, stale answers, watchdog events, late
  ticks (and the real-time twin's late physics cycles);
- ``chart.png``: success rate per task and run with Wilson-interval whiskers;
- ``results.json``: every number above.

Incomplete runs are reported with the trials scored so far and flagged. Runs whose seeds or task files differ did
not face the same situations; the report says so next to the comparison.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval_protocols.power import minimum_detectable_difference
from eval_protocols.results import LEGACY_EXECUTION, RunDirError, RunStore, write_json_atomic
from eval_protocols.stats import (
    DEFAULT_CONFIDENCE,
    DEFAULT_SIGNIFICANCE,
    TaskOutcome,
    compare_task,
    format_difference_cell,
    format_p_value,
    format_results_table,
)

CHART, README, NUMBERS = "chart.png", "README.md", "results.json"


@dataclass(frozen=True)
class RunResults:
    name: str
    run_dir: Path
    manifest: dict[str, Any]
    records: dict[str, list[dict[str, Any]]]  # task -> scored trials in trial order

    def outcome(self, task: str) -> TaskOutcome | None:
        flags = [bool(r["success"]) for r in self.records.get(task, [])]
        return TaskOutcome.from_trials(flags) if flags else None

    def complete(self, task: str) -> bool:
        return len(self.records.get(task, [])) >= int(self.manifest.get("trials", 0))


def load_runs(run_dirs: list[Path], names: list[str] | None = None) -> list[RunResults]:
    if names is not None and len(names) != len(run_dirs):
        raise ValueError(f"--names gives {len(names)} names for {len(run_dirs)} runs")
    runs = []
    for index, run_dir in enumerate(run_dirs):
        store = RunStore.read(run_dir)
        records: dict[str, list[dict[str, Any]]] = {}
        for record in store.records():
            records.setdefault(record["task"], []).append(record)
        name = names[index] if names else str(store.manifest.get("policy", {}).get("name") or run_dir.name)
        runs.append(RunResults(name, Path(run_dir).resolve(), store.manifest, records))
    seen: dict[str, int] = {}
    for run in runs:  # equal names (two runs of one baseline) would merge rows: tell them apart by folder
        seen[run.name] = seen.get(run.name, 0) + 1
    return [RunResults(f"{r.name} ({r.run_dir.name})", r.run_dir, r.manifest, r.records) if seen[r.name] > 1 else r
            for r in runs]


def report_tasks(runs: list[RunResults]) -> list[str]:
    """Tasks with scored trials in every run, in the first run's order."""
    first = [t for t in runs[0].manifest.get("tasks", {}) if runs[0].outcome(t) is not None]
    common = [t for t in first if all(run.outcome(t) is not None for run in runs)]
    if not common:
        raise RunDirError("the runs have no task with scored trials in common: "
                          + "; ".join(f"{run.run_dir}: {sorted(run.records)}" for run in runs))
    return common


def comparability_notes(runs: list[RunResults], tasks: list[str]) -> list[str]:
    notes = []
    base = runs[0]
    for run in runs[1:]:
        if run.manifest.get("seed") != base.manifest.get("seed"):
            notes.append(f"{run.name} used seed {run.manifest.get('seed')}, {base.name} seed "
                          f"{base.manifest.get('seed')}: their trials are different situations (drawn from the same "
                          f"distributions).")
        if run.manifest.get("backend") != base.manifest.get("backend"):
            notes.append(f"{run.name} ran on {run.manifest.get('backend')}, {base.name} on "
                         f"{base.manifest.get('backend')}.")
        for task in tasks:
            a, b = base.manifest["tasks"].get(task, {}), run.manifest["tasks"].get(task, {})
            if a.get("sha256") != b.get("sha256"):
                notes.append(f"{task}: the task files differ between {base.name} and {run.name} (SHA-256 "
                             f"{str(a.get('sha256'))[:12]} vs {str(b.get('sha256'))[:12]}).")
    for run in runs:
        for task in tasks:
            if not run.complete(task):
                notes.append(f"{run.name}: {task} is incomplete ({len(run.records.get(task, []))} of "
                             f"{run.manifest.get('trials')} trials scored).")
    return notes


def build_numbers(runs: list[RunResults], tasks: list[str], significance: float = DEFAULT_SIGNIFICANCE,
                  confidence: float = DEFAULT_CONFIDENCE) -> dict[str, Any]:
    numbers: dict[str, Any] = {"confidence": confidence, "significance": significance, "tasks": tasks, "runs": [],
                               "comparisons": []}
    for run in runs:
        per_task = {}
        for task in tasks:
            outcome = run.outcome(task)
            low, high = outcome.wilson_interval(confidence)
            per_task[task] = {"successes": outcome.successes, "trials": outcome.trials, "rate": outcome.rate,
                              "wilson_low": low, "wilson_high": high, "complete": run.complete(task)}
        numbers["runs"].append({"name": run.name, "run_dir": str(run.run_dir), "policy": run.manifest.get("policy"),
                                "backend": run.manifest.get("backend"), "seed": run.manifest.get("seed"),
                                "software_version": run.manifest.get("software_version"), "tasks": per_task})
    for run in runs[1:]:
        for task in tasks:
            comparison = compare_task(task, runs[0].outcome(task), run.outcome(task), significance, confidence)
            numbers["comparisons"].append({
                "task": task, "baseline": runs[0].name, "run": run.name, "difference": comparison.difference,
                "difference_low": comparison.difference_interval[0],
                "difference_high": comparison.difference_interval[1], "fisher_p": comparison.p_value,
                "significant": comparison.significant, "detectable": _detectable(comparison, significance).to_dict()})
    return numbers


def _detectable(comparison, significance: float):
    """The smallest differences this comparison had an 80% chance to find, at the baseline's observed rate."""
    return minimum_detectable_difference(comparison.a.trials, comparison.b.trials, comparison.a.rate, significance)


def plot_chart(runs: list[RunResults], tasks: list[str], path: Path, confidence: float = DEFAULT_CONFIDENCE) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    width = 0.8 / len(runs)
    figure, axis = plt.subplots(figsize=(max(6.0, 1.6 * len(tasks) * max(1, len(runs)) / 1.5), 4.2))
    positions = np.arange(len(tasks))
    for index, run in enumerate(runs):
        outcomes = [run.outcome(task) for task in tasks]
        rates = np.array([o.rate for o in outcomes])
        intervals = np.array([o.wilson_interval(confidence) for o in outcomes])
        errors = np.vstack([rates - intervals[:, 0], intervals[:, 1] - rates])
        x = positions + (index - (len(runs) - 1) / 2) * width
        bars = axis.bar(x, rates, width * 0.95, yerr=errors, capsize=4, label=run.name)
        for bar, outcome in zip(bars, outcomes, strict=True):
            axis.annotate(f"{outcome.successes}/{outcome.trials}", (bar.get_x() + bar.get_width() / 2, 0.01),
                          ha="center", va="bottom", fontsize=8, color="white" if outcome.rate > 0.1 else "black")
    axis.set_xticks(positions, tasks)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel(f"success rate (whiskers: Wilson {round(confidence * 100)}%)")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _link(run: RunResults, record: dict[str, Any], out_dir: Path) -> str:
    mark = "✓" if record["success"] else "✗"
    label = f"{int(record['trial']):02d}{mark}"
    if not record.get("video"):
        return label
    target = os.path.relpath(run.run_dir / record["video"], out_dir)
    return f"[{label}]({Path(target).as_posix()})"


def _markdown(runs: list[RunResults], tasks: list[str], numbers: dict[str, Any], notes: list[str],
              out_dir: Path) -> str:
    significance, confidence = numbers["significance"], numbers["confidence"]
    results = {run.name: {task: run.outcome(task) for task in tasks} for run in runs}
    titles = "; ".join(f"{task}: {runs[0].manifest['tasks'].get(task, {}).get('title') or task}" for task in tasks)
    lines = ["# Evaluation report", "", format_results_table(results, tasks, None, significance, confidence),
             f"Tasks: {titles}.", "", f"![success rates]({CHART})", ""]
    if len(runs) > 1:
        lines += [f"## Differences against {runs[0].name}", "",
                  "| task | run | difference (95% CI) | Fisher exact p | significant | detectable (80% power) |",
                  "|---|---|---|---|---|---|"]
        for run in runs[1:]:
            for task in tasks:
                comparison = compare_task(task, runs[0].outcome(task), run.outcome(task), significance, confidence)
                lines.append(f"| {task} | {run.name} | {format_difference_cell(comparison)} | "
                             f"{format_p_value(comparison.p_value, significance)} | "
                             f"{'yes' if comparison.significant else 'no'} | "
                             f"{_detectable(comparison, significance).describe()} |")
        significant = [c for c in numbers["comparisons"] if c["significant"]]
        lines += ["", "Significant at p < " + f"{significance:g}: "
                  + (", ".join(f"{c['task']} ({c['run']})" for c in significant) if significant else "none") + ".", "",
                  "Detectable: the smallest decrease / increase from the baseline's observed rate that these trial "
                  "counts had an 80% chance to call significant (exact power of Fisher's test; none: no change in "
                  "that direction could be). A difference below it that is \"not significant\" may only mean too "
                  "few trials.", ""]
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    lines += ["## Runs", "", "| run | policy | fingerprint | backend | execution | seed | trials | folder |",
              "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        policy = run.manifest.get("policy", {})
        lines.append(f"| {run.name} | {policy.get('id', policy.get('name'))} | `{policy.get('fingerprint')}` | "
                     f"{run.manifest.get('backend')}{' (real time)' if _realtime(run) else ''} | {_execution(run)} | "
                     f"{run.manifest.get('seed')} | {run.manifest.get('trials')} | "
                     f"{Path(os.path.relpath(run.run_dir, out_dir)).as_posix()} |")
    lines += ["", "## Trials", "", "Each link opens the trial's video (✓ success, ✗ failure).", ""]
    for run in runs:
        lines.append(f"### {run.name}")
        lines.append("")
        for task in tasks:
            links = " ".join(_link(run, record, out_dir) for record in run.records.get(task, []))
            lines.append(f"- {task}: {links}")
        lines.append("")
    lines += _timing_lines(runs, tasks)
    return "\n".join(lines)


def _execution(run: RunResults) -> str:
    execution = run.manifest.get("execution") or LEGACY_EXECUTION
    latency = str(execution.get("policy_latency_ms", "0"))
    return f"{execution.get('mode')}" + (f", +{latency} ms" if latency != "0" else "")


def _realtime(run: RunResults) -> bool:
    if "sim.realtime" in (run.manifest.get("hardware_overrides") or {}):
        return bool(run.manifest["hardware_overrides"]["sim.realtime"])
    return bool(((run.manifest.get("hardware") or {}).get("sim") or {}).get("realtime"))


def _ms(value: Any) -> str:
    return "-" if value is None else f"{1000 * float(value):.0f}"


TIMING_COLUMNS = ("trial", "result", "end", "steps", "commands", "held", "stale",
                  "answer latency p50 / p90 / max (ms)", "action age p50 (ms)", "watchdog hold ticks / stops",
                  "late ticks", "late physics cycles")


def _timing_row(record: dict[str, Any]) -> str:
    summary, episode, twin = record.get("summary") or {}, record.get("episode") or {}, record.get("twin_timing")
    cells = [f"{int(record['trial']):02d}", "✓" if record["success"] else "✗", episode.get("status"),
             episode.get("steps"), summary.get("commands_sent", "-"), summary.get("held_steps", "-"),
             summary.get("stale_actions", "-"),
             " / ".join(_ms(summary.get(f"answer_latency_{q}_s")) for q in ("p50", "p90", "max")),
             _ms(summary.get("action_age_p50_s")),
             f"{summary.get('watchdog_hold_ticks', '-')} / {summary.get('watchdog_stops', '-')}",
             episode.get("late_ticks", "-"),
             f"{twin['physics_late_cycles']} / {twin['physics_cycles']}" if twin else "-"]
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _timing_lines(runs: list[RunResults], tasks: list[str]) -> list[str]:
    """Per trial: what the loop saw of the policy's latency (each trial's summary: policy/step_log.py)."""
    lines = ["## Timing", "", "Answer latency: from asking the policy to its answer being usable, injected latency "
             "included. Held: ticks the arm was stopped for want of a fresh command. Stale: answers dropped as too "
             "old. Late ticks: the control loop started a tick late (real time only); late physics cycles: the "
             "real-time twin itself fell behind (CPU contention).", ""]
    for run in runs:
        for task in tasks:
            lines += [f"### {run.name}, {task}", "", "| " + " | ".join(TIMING_COLUMNS) + " |",
                      "|" + "---|" * len(TIMING_COLUMNS)]
            lines += [_timing_row(record) for record in run.records.get(task, [])]
            lines.append("")
    return lines


def write_report(run_dirs: list[Path], out_dir: Path, names: list[str] | None = None,
                 significance: float = DEFAULT_SIGNIFICANCE, confidence: float = DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """Write README.md, chart.png and results.json into ``out_dir``; returns the numbers."""
    if not 0.0 < significance < 1.0:
        raise ValueError(f"the significance level must be between 0 and 1 (e.g. 0.05), got {significance}")
    runs = load_runs([Path(d) for d in run_dirs], names)
    tasks = report_tasks(runs)
    notes = comparability_notes(runs, tasks)
    numbers = build_numbers(runs, tasks, significance, confidence)
    numbers["notes"] = notes
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_chart(runs, tasks, out_dir / CHART, confidence)
    (out_dir / README).write_text(_markdown(runs, tasks, numbers, notes, out_dir.resolve()), encoding="utf-8")
    numbers["trials"] = {run.name: {task: [{"trial": r["trial"], "success": r["success"], "video": r.get("video"),
                                            "note": r.get("note", "")} for r in run.records.get(task, [])]
                                    for task in tasks} for run in runs}
    write_json_atomic(out_dir / NUMBERS, numbers)
    return numbers


def summary_lines(numbers: dict[str, Any]) -> list[str]:
    """One line per run for the terminal."""
    lines = []
    for run in numbers["runs"]:
        cells = [f"{task} {v['successes']}/{v['trials']}" for task, v in run["tasks"].items()]
        lines.append(f"{run['name']}: " + ", ".join(cells))
    return lines
