"""The report over training seeds (``fanvla eval report RUN... --seeds-per-method N``; ``fanvla demo --seeds N``).

One training run per method cannot separate the method from its training seed: the same recordings and steps gave
FAN-SFT 22/30 and then 16/30 on Task-1 (README). With N training seeds per method, each evaluated on the same trial
situations (one run seed), the runs are given method by method, seed by seed. On top of the ordinary report (every
run a row) this adds, per task:

- per method: the successes of each seed, the pooled successes with a Wilson interval, and the spread between seeds
  (lowest, highest rate and the standard deviation);
- each method against the first, stratified by training seed (seed k of one method against seed k of the other: the
  same initialisation seed and data order): the exact conditional test (``eval_protocols.stratified``; the one to
  read at these counts) and the Cochran-Mantel-Haenszel test with the Mantel-Haenszel common odds ratio;
- ``seeds.png``: each seed's rate as a point and the pooled rate as a bar with its Wilson interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval_protocols.report import NUMBERS, README, RunResults, load_runs, write_report
from eval_protocols.results import RunDirError, write_json_atomic
from eval_protocols.stats import DEFAULT_CONFIDENCE, DEFAULT_SIGNIFICANCE, TaskOutcome, format_p_value
from eval_protocols.stratified import SeedSpread, Stratum, cmh_test, exact_stratified_test, pooled

SEEDS_CHART = "seeds.png"


def method_groups(run_dirs: list[Path], per_method: int, names: list[str] | None) -> tuple[list[str], list[list[Path]]]:
    """(method names, the runs of each method) from runs given method by method, ``per_method`` each."""
    if isinstance(per_method, bool) or not isinstance(per_method, int) or per_method < 1:
        raise ValueError(f"--seeds-per-method must be a positive int, got {per_method!r}")
    if len(run_dirs) % per_method or len(run_dirs) < per_method:
        raise ValueError(f"{len(run_dirs)} runs cannot be split into methods of {per_method} seeds each: give the "
                         f"runs method by method, {per_method} per method")
    groups = [run_dirs[i:i + per_method] for i in range(0, len(run_dirs), per_method)]
    if names is not None and len(names) != len(groups):
        raise ValueError(f"with --seeds-per-method, --names names the methods: {len(groups)} expected, got "
                         f"{len(names)}")
    if names is None:
        names = [load_runs([group[0]])[0].name for group in groups]
    return names, groups


def seed_numbers(methods: list[str], runs: list[list[RunResults]], tasks: list[str],
                 confidence: float = DEFAULT_CONFIDENCE) -> dict[str, Any]:
    out: dict[str, Any] = {"methods": methods, "seeds": len(runs[0]), "per_method": {}, "comparisons": []}
    for method, method_runs in zip(methods, runs, strict=True):
        rows = {}
        for task in tasks:
            outcomes = [run.outcome(task) for run in method_runs]
            total = pooled(outcomes)
            spread = SeedSpread(tuple(o.rate for o in outcomes))
            low, high = total.wilson_interval(confidence)
            rows[task] = {"per_seed": [[o.successes, o.trials] for o in outcomes], "pooled": [total.successes,
                          total.trials], "rate": total.rate, "wilson_low": low, "wilson_high": high,
                          "seed_low": spread.low, "seed_high": spread.high, "seed_std": spread.std}
        out["per_method"][method] = rows
    for method, method_runs in zip(methods[1:], runs[1:], strict=True):
        for task in tasks:
            strata = [Stratum(base.outcome(task), run.outcome(task)) for base, run in zip(runs[0], method_runs,
                                                                                             strict=True)]
            exact, cmh = exact_stratified_test(strata), cmh_test(strata)
            total_a, total_b = pooled([s.a for s in strata]), pooled([s.b for s in strata])
            out["comparisons"].append({
                "task": task, "baseline": methods[0], "method": method,
                "pooled_a": f"{total_a.successes}/{total_a.trials}",
                "pooled_b": f"{total_b.successes}/{total_b.trials}",
                "difference": total_b.rate - total_a.rate, "exact_p": exact.p_value, "cmh_p": cmh.p_value,
                "cmh_statistic": cmh.statistic, "odds_ratio": exact.odds_ratio})
    return out


def _markdown(numbers: dict[str, Any], tasks: list[str], significance: float) -> str:
    lines = ["", f"## Over training seeds ({numbers['seeds']} per method)", "",
             "Each method trained with several seeds (initialisation and data order), every seed evaluated on the same "
             "trial situations. Pooled: all seeds' trials together (Wilson 95%); spread: the lowest and highest seed "
             "and the standard deviation between seeds.", "",
             "| method | task | per seed | pooled | spread between seeds |", "|---|---|---|---|---|"]
    for method, rows in numbers["per_method"].items():
        for task in tasks:
            row = rows[task]
            per_seed = ", ".join(f"{s}/{n}" for s, n in row["per_seed"])
            std = "-" if row["seed_std"] is None else f"{100 * row['seed_std']:.0f}"
            lines.append(f"| {method} | {task} | {per_seed} | {row['pooled'][0]}/{row['pooled'][1]} "
                         f"({100 * row['rate']:.0f}%, {100 * row['wilson_low']:.0f}-{100 * row['wilson_high']:.0f}) | "
                         f"{100 * row['seed_low']:.0f}-{100 * row['seed_high']:.0f}% (sd {std} pts) |")
    if numbers["comparisons"]:
        lines += ["", "Stratified by training seed (seed k against seed k): the exact conditional test is the one to "
                  "read at these counts; CMH (continuity-corrected) and the Mantel-Haenszel odds ratio of success "
                  "beside it.", "",
                  "| task | method vs baseline | pooled | difference | exact stratified p | CMH p | MH odds ratio |",
                  "|---|---|---|---|---|---|---|"]
        for row in numbers["comparisons"]:
            ratio = "-" if row["odds_ratio"] is None else f"{row['odds_ratio']:.2f}"
            lines.append(f"| {row['task']} | {row['method']} vs {row['baseline']} | {row['pooled_b']} vs "
                         f"{row['pooled_a']} | {100 * row['difference']:+.0f} pts | "
                         f"{format_p_value(row['exact_p'], significance)} | "
                         f"{format_p_value(row['cmh_p'], significance)} | {ratio} |")
    lines += ["", f"![per seed and pooled]({SEEDS_CHART})", ""]
    return "\n".join(lines)


def plot_seeds(numbers: dict[str, Any], tasks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = numbers["methods"]
    width = 0.8 / len(methods)
    figure, axis = plt.subplots(figsize=(max(6.0, 1.5 * len(tasks) * len(methods) / 1.5), 4.2))
    positions = np.arange(len(tasks))
    for index, method in enumerate(methods):
        rows = [numbers["per_method"][method][task] for task in tasks]
        x = positions + (index - (len(methods) - 1) / 2) * width
        rates = np.array([r["rate"] for r in rows])
        errors = np.vstack([rates - [r["wilson_low"] for r in rows], [r["wilson_high"] for r in rows] - rates])
        axis.bar(x, rates, width * 0.9, yerr=errors, capsize=4, alpha=0.45, label=f"{method} (pooled)")
        for xi, row in zip(x, rows, strict=True):
            seed_rates = [s / n for s, n in row["per_seed"]]
            axis.scatter(np.full(len(seed_rates), xi), seed_rates, s=18, color="black", zorder=3)
    axis.set_xticks(positions, tasks)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("success rate (dots: seeds; bars: pooled, Wilson 95%)")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_seeds_report(run_dirs: list[Path], per_method: int, out_dir: Path, names: list[str] | None = None,
                       significance: float = DEFAULT_SIGNIFICANCE) -> dict[str, Any]:
    """The ordinary report of every run (rows named "method, seed k") plus the section over seeds."""
    methods, groups = method_groups([Path(d) for d in run_dirs], per_method, names)
    row_names = [f"{method}, seed {k + 1}" for method, group in zip(methods, groups, strict=True)
                 for k in range(len(group))]
    numbers = write_report([d for group in groups for d in group], out_dir, row_names, significance)
    runs = load_runs([d for group in groups for d in group], row_names)
    by_method = [runs[i:i + per_method] for i in range(0, len(runs), per_method)]
    tasks = numbers["tasks"]
    for run in runs:
        for task in tasks:
            if not isinstance(run.outcome(task), TaskOutcome):
                raise RunDirError(f"{run.run_dir} has no scored trial of {task}")
    seeds = seed_numbers(methods, by_method, tasks)
    numbers["seeds"] = seeds
    plot_seeds(seeds, tasks, out_dir / SEEDS_CHART)
    readme = out_dir / README
    text, marker = readme.read_text(encoding="utf-8"), "\n## Runs\n"
    section = _markdown(seeds, tasks, significance)
    readme.write_text(text.replace(marker, section + marker, 1) if marker in text else text + section,
                      encoding="utf-8")
    write_json_atomic(out_dir / NUMBERS, numbers)
    return numbers
