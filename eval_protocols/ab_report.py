"""The unblinded report of an A/B run (``fanvla eval report RUN`` where RUN was made by ``fanvla eval ab``).

It is the ordinary report of the two arms' runs (``RUN/a``, ``RUN/b``: table, Wilson intervals, Fisher's unpaired
test, detectable differences, chart, videos, timing), followed by the paired analysis the design allows:

- per task, over the pairs scored with both policies: the 2x2 table of paired outcomes, the difference, McNemar's
  exact p-value next to Fisher's unpaired p-value on the very same trials, and the smallest difference McNemar's
  test had an 80% chance to detect at the observed rate of discordant pairs;
- with sequential stopping: the design's decision (which it is, after how many pairs, and why). A task the design
  stopped early is judged by that decision; the fixed-sample p-values beside it ignore the stopping and are shown
  for reference only;
- the unblinding: which policy ran first in every pair (A-first and B-first counts should be near half each).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval_protocols.ab import (
    ARMS,
    complete_pairs,
    pair_order,
    paired_counts,
    read_design,
    sequential_decision,
    sequential_design,
)
from eval_protocols.paired_stats import compare_paired
from eval_protocols.power import paired_minimum_detectable_difference
from eval_protocols.report import NUMBERS, README, write_report
from eval_protocols.results import RunStore, write_json_atomic
from eval_protocols.stats import DEFAULT_SIGNIFICANCE, fisher_exact_two_sided, format_p_value


def paired_numbers(run_dir: Path, significance: float = DEFAULT_SIGNIFICANCE) -> dict[str, Any]:
    """Per task: the paired analysis of an A/B run (see the module docstring)."""
    design = read_design(run_dir)
    stores = {arm: RunStore.read(run_dir / arm) for arm in ARMS}
    sequential = sequential_design(design)
    out: dict[str, Any] = {}
    for task in design["tasks"]:
        records = {arm: {int(r["trial"]): r for r in stores[arm].records(task)} for arm in ARMS}
        pairs = complete_pairs(records["a"], records["b"])
        counts = paired_counts(pairs)
        if counts is None:
            continue
        comparison = compare_paired(task, counts, significance)
        discordant_rate = counts.discordant / counts.pairs
        detectable = paired_minimum_detectable_difference(counts.pairs, discordant_rate, significance)
        decision = sequential_decision(sequential, pairs) if sequential is not None else None
        orders = [pair_order(int(design["order_seed"]), task, pair)[0] for pair, _, _ in pairs]
        out[task] = {
            "pairs": counts.pairs, "planned_pairs": int(design["pairs"]),
            "both": counts.both, "only_a": counts.only_a, "only_b": counts.only_b, "neither": counts.neither,
            "successes_a": counts.successes_a, "successes_b": counts.successes_b, "difference": counts.difference,
            "mcnemar_p": comparison.mcnemar_p, "significant": comparison.significant,
            "fisher_p": fisher_exact_two_sided(counts.successes_a, counts.pairs, counts.successes_b, counts.pairs),
            "detectable": detectable.to_dict(), "detectable_text": detectable.describe(),
            "sequential": None if decision is None else decision.to_dict(),
            "first": "".join(o.upper() for o in orders), "a_first": orders.count("a"), "b_first": orders.count("b"),
        }
    return {"design": {k: design.get(k) for k in ("pairs", "seed", "backend", "sequential", "order_seed", "tasks")},
            "tasks": out}


def _markdown(paired: dict[str, Any], names: list[str], significance: float) -> str:
    a, b = names
    sequential = paired["design"].get("sequential")
    lines = ["", "## Paired analysis (unblinded A/B)", "",
             f"Policy A = {a}, policy B = {b}. Every pair is one trial situation run with both policies back to back, "
             "in an order drawn at random per pair and hidden from the operator until this report. Counts over the "
             "pairs scored with both policies. Difference = B - A.", "",
             "| task | pairs | both | A only | B only | neither | difference | McNemar exact p | Fisher p "
             "(unpaired, same trials) | detectable (80% power) | sequential |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for task, row in paired["tasks"].items():
        decision = row["sequential"]
        if sequential is None:
            stop = "-"
        elif decision is None:
            stop = f"continuing ({row['pairs']} of {row['planned_pairs']} pairs)"
        else:
            stop = f"**{decision['outcome']}** after {decision['pairs']} pairs"
        lines.append(f"| {task} | {row['pairs']} | {row['both']} | {row['only_a']} | {row['only_b']} | "
                     f"{row['neither']} | {100 * row['difference']:+.0f} pts | "
                     f"{format_p_value(row['mcnemar_p'], significance)} | "
                     f"{format_p_value(row['fisher_p'], significance)} | {row['detectable_text']} | {stop} |")
    lines += ["", "McNemar's test uses only the discordant pairs (one policy succeeded, the other not); detectable: "
              "the smallest difference McNemar's exact test had an 80% chance to find at the observed rate of "
              "discordant pairs (none: no discordant pair)."]
    if sequential is not None:
        lines += ["", f"Sequential stopping (two-sided level {sequential['alpha']:g}, a look after every pair; "
                  "eval_protocols/sequential.py): a task the design stopped is judged by its decision; the "
                  "fixed-sample p-values beside it do not account for the stopping and are for reference only."]
        for task, row in paired["tasks"].items():
            if row["sequential"] is not None:
                lines.append(f"- {task}: {row['sequential']['reason']}.")
    lines += ["", "### Unblinding: which policy ran first", ""]
    for task, row in paired["tasks"].items():
        lines.append(f"- {task}: A first in {row['a_first']}, B first in {row['b_first']} pairs: `{row['first']}`")
    lines.append("")
    return "\n".join(lines)


def write_ab_report(run_dir: Path, out_dir: Path, names: list[str] | None = None,
                    significance: float = DEFAULT_SIGNIFICANCE) -> dict[str, Any]:
    """The arms' ordinary report plus the paired analysis (README.md, chart.png, results.json in ``out_dir``)."""
    read_design(run_dir)  # a damaged or foreign ab.json is named before anything else
    if names is None:
        names = [f"{arm.upper()}: {RunStore.read(run_dir / arm).manifest.get('policy', {}).get('name') or arm}"
                 for arm in ARMS]
    numbers = write_report([run_dir / arm for arm in ARMS], out_dir, names, significance)
    paired = paired_numbers(run_dir, significance)
    numbers["paired"] = paired
    readme = out_dir / README
    text = readme.read_text(encoding="utf-8")
    marker = "\n## Runs\n"  # the paired analysis goes before the runs' identities and the trial lists
    section = _markdown(paired, [run["name"] for run in numbers["runs"]], significance)
    readme.write_text(text.replace(marker, section + marker, 1) if marker in text else text + section,
                      encoding="utf-8")
    write_json_atomic(out_dir / NUMBERS, numbers)
    return numbers
