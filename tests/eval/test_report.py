"""``fanvla eval report``: the paper's Table 3 numbers as two runs, checked against hand-computed statistics."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from eval_protocols.report import write_report
from eval_protocols.results import RunDirError, RunIdentity, RunStore
from fanvla.cli import main

TASKS = ["task1", "task2", "task3", "task4"]
PAPER = {"SFT": [19, 7, 7, 1], "FAN-SFT": [22, 12, 17, 7]}  # successes out of 30 (/work/shared/notes/fan.md)


def make_run(run_dir, name, successes, trials=30, seed=0, task_hash="a"):
    identity = RunIdentity({"kind": "local", "name": name, "id": f"{name}@0123", "fingerprint": f"sha256:{name}"},
                           "real", seed, trials)
    tasks = {task: {"name": task, "sha256": task_hash * 64, "file": f"{task}.yaml"} for task in TASKS}
    with RunStore.open_for_run(run_dir, identity, tasks, {"software_version": "test"}) as store:
        for task, count in zip(TASKS, successes, strict=True):
            for trial in range(trials):
                video = run_dir / "trials" / task / f"{trial:03d}" / "video.mp4"
                video.parent.mkdir(parents=True, exist_ok=True)
                video.write_bytes(b"\x00")
                store.append({"task": task, "trial": trial, "success": trial < count, "scored_by": "operator",
                              "note": "", "video": str(video.relative_to(run_dir))})
    return run_dir


@pytest.fixture()
def paper_runs(tmp_path):
    return [make_run(tmp_path / "runs" / "sft", "SFT", PAPER["SFT"]),
            make_run(tmp_path / "runs" / "fan", "FAN-SFT", PAPER["FAN-SFT"])]


def test_two_runs_give_the_papers_table_with_hand_checked_statistics(paper_runs, tmp_path):
    out = tmp_path / "report"
    numbers = write_report(paper_runs, out)
    readme = (out / "README.md").read_text()
    # Wilson 95% for 22/30: p = .7333, z = 1.96: centre (p + z²/2n)/(1 + z²/n) = .7068, half-width .1513
    assert "| FAN-SFT | 22/30 (73%, 95% CI 56-86%) | 12/30 (40%, 95% CI 25-58%) |" in readme
    assert "| SFT | 19/30 (63%, 95% CI 46-78%) |" in readme
    fan = numbers["runs"][1]["tasks"]["task1"]
    assert (fan["wilson_low"], fan["wilson_high"]) == pytest.approx((0.5555, 0.8582), abs=1e-4)
    task3 = next(c for c in numbers["comparisons"] if c["task"] == "task3")
    # Fisher, 7/30 vs 17/30: margins 24 successes / 36 failures; P(X <= 7) + P(X >= 17) of the hypergeometric
    assert task3["fisher_p"] == pytest.approx(0.016855, abs=2e-6) and task3["significant"]
    assert task3["difference"] == pytest.approx(10 / 30)
    assert (task3["difference_low"], task3["difference_high"]) == pytest.approx((0.0854, 0.5303), abs=1e-4)
    task1 = next(c for c in numbers["comparisons"] if c["task"] == "task1")
    assert task1["fisher_p"] == pytest.approx(0.57956, abs=1e-5) and not task1["significant"]
    assert "Significant at p < 0.05: task3 (FAN-SFT)." in readme
    assert "| task3 | FAN-SFT | +33 pts (+9 to +53) | 0.017 * | yes |" in readme
    assert json.loads((out / "results.json").read_text())["comparisons"] == numbers["comparisons"]
    with Image.open(out / "chart.png") as chart:
        assert chart.format == "PNG" and chart.size[0] > 400


def test_every_trial_links_to_its_video_relative_to_the_report(paper_runs, tmp_path):
    out = tmp_path / "elsewhere" / "report"
    write_report(paper_runs, out)
    readme = (out / "README.md").read_text()
    links = re.findall(r"\[(\d\d)([✓✗])\]\(([^)]+)\)", readme)
    assert len(links) == 2 * 4 * 30
    assert all((out / target).resolve().is_file() for _, _, target in links)
    assert links[0] == ("00", "✓", "../../runs/sft/trials/task1/000/video.mp4")
    assert sum(mark == "✓" for _, mark, _ in links) == sum(PAPER["SFT"]) + sum(PAPER["FAN-SFT"])


def test_incomplete_runs_and_different_seeds_are_flagged(tmp_path):
    a = make_run(tmp_path / "a", "A", [3, 2, 1, 0], trials=5)
    b = make_run(tmp_path / "b", "B", [5, 5, 5, 5], trials=5, seed=9, task_hash="b")
    with RunStore.read(b) as store:
        assert len(store.records("task4")) == 5
    (b / "results.jsonl").write_text("".join(line + "\n" for line in (b / "results.jsonl").read_text().splitlines()
                                             if '"task4", "trial": 4' not in line))
    numbers = write_report([a, b], tmp_path / "report")
    notes = " ".join(numbers["notes"])
    assert "B used seed 9, A seed 0" in notes and "task files differ" in notes
    assert "B: task4 is incomplete (4 of 5 trials scored)" in notes
    assert numbers["runs"][1]["tasks"]["task4"] == {**numbers["runs"][1]["tasks"]["task4"], "trials": 4,
                                                   "complete": False}


def test_cli_report_prints_the_summary_and_refuses_bad_input(paper_runs, tmp_path, capsys):
    assert main(["eval", "report", *map(str, paper_runs), "--out", str(tmp_path / "r"), "--names", "sft,fan"]) == 0
    printed = capsys.readouterr().out
    assert "sft: task1 19/30, task2 7/30, task3 7/30, task4 1/30" in printed
    assert "significant: task3 fan vs sft (p = 0.0169)" in printed and "significant: task1" not in printed
    assert main(["eval", "report", str(tmp_path), "--out", str(tmp_path / "r2")]) == 2
    assert "not an evaluation run: no run.json" in capsys.readouterr().err
    assert main(["eval", "report", *map(str, paper_runs), "--out", str(tmp_path / "r3"), "--names", "one"]) == 2
    assert "--names gives 1 names for 2 runs" in capsys.readouterr().err
    with pytest.raises(ValueError, match="significance level must be between 0 and 1"):
        write_report([paper_runs[0]], tmp_path / "r4", significance=1.5)
    with pytest.raises(RunDirError, match="no task with scored trials in common"):
        write_report([paper_runs[0], make_run(tmp_path / "empty", "E", [0, 0, 0, 0], trials=0)], tmp_path / "r5")
