"""``fanvla eval ab`` in the twin: both policies on every situation, the blinded console and terminal, the order
drawn and recorded per pair, resume pair by pair at every stage, sequential stopping, the unblinded paired report."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
import requests
from scipy import stats as sps

from eval_protocols.ab import AB_FILE, ABOptions, pair_order, read_design, run_ab
from eval_protocols.launch import RunOptions
from eval_protocols.results import RunDirError, RunStore
from eval_protocols.sequential import SequentialDesign
from eval_protocols.task_spec import resolve_tasks
from fanvla.cli import main

EXPERT, RANDOM = "scripted-expert", "random"


def _options(run_dir, tasks, pairs, a=EXPERT, b=RANDOM, **extra) -> ABOptions:
    sequential = extra.pop("sequential", False)
    return ABOptions(a, b, pairs, RunOptions("sim", "", tasks, pairs, 0, run_dir, **extra), sequential)


def _records(run_dir, arm):
    return {(r["task"], int(r["trial"])): r for r in RunStore.read(run_dir / arm).records()}


def _check_pairs(run_dir, pairs_per_task):
    """Every pair ran both policies on the same situation, in the order ab.json's order seed decides."""
    design = read_design(run_dir)
    a, b = _records(run_dir, "a"), _records(run_dir, "b")
    assert sorted(a) == sorted(b) and len(a) == sum(pairs_per_task.values())
    for (task, pair), record_a in a.items():
        record_b = b[(task, pair)]
        assert record_a["scene"] == record_b["scene"] and record_a["seed"] == record_b["seed"]
        order = pair_order(design["order_seed"], task, pair)
        assert record_a["ab"] == {"pair": pair, "slot": order.index("a") + 1}
        assert record_b["ab"] == {"pair": pair, "slot": order.index("b") + 1}
        assert (run_dir / "a" / record_a["step_log"]).exists() and (run_dir / "b" / record_b["step_log"]).exists()
    return a, b


def test_ab_cli_runs_both_policies_blinded_and_the_report_unblinds(tmp_path, capsys, task_file):
    task = task_file(name="short", max_duration_s=12)
    run_dir = tmp_path / "ab"
    argv = ["eval", "ab", "--backend", "sim", "--a", EXPERT, "--b", RANDOM, "--tasks", str(task), "--pairs", "4",
            "--out", str(run_dir)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    # The terminal names the slot, never the policy.
    assert EXPERT not in out and RANDOM not in out and "policy 1" in out and "policy 2" in out
    assert "short: 4 of 4 pairs scored" in out
    a, b = _check_pairs(run_dir, {"short": 4})
    assert all(r["success"] for r in a.values()) and not any(r["success"] for r in b.values())
    slots = [pair_order(read_design(run_dir)["order_seed"], "short", p)[0] for p in range(4)]
    assert [a[("short", p)]["ab"]["slot"] == 1 for p in range(4)] == [s == "a" for s in slots]

    # The order seed comes from the OS: another run draws other orders (two runs agree on all 64 by chance 2^-64).
    other = read_design(run_dir)["order_seed"]
    assert [pair_order(other, "t", p) for p in range(64)] != [pair_order(other + 1, "t", p) for p in range(64)]

    assert main(["eval", "report", str(run_dir), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    expected_p = sps.binomtest(0, 4, 0.5).pvalue  # 4 discordant pairs, all A-only: 0.125
    assert f"McNemar p = {expected_p:.4f}" in out
    numbers = json.loads((tmp_path / "report" / "results.json").read_text())
    row = numbers["paired"]["tasks"]["short"]
    assert (row["both"], row["only_a"], row["only_b"], row["neither"]) == (0, 4, 0, 0)
    assert row["mcnemar_p"] == pytest.approx(expected_p) and row["fisher_p"] == pytest.approx(
        sps.fisher_exact([[4, 0], [0, 4]]).pvalue)
    assert row["first"] == "".join(s.upper() for s in slots)
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "## Paired analysis (unblinded A/B)" in readme and "A: scripted-expert" in readme
    assert "detectable (80% power)" in readme and "Unblinding" in readme

    # Re-running the finished run does nothing; another design in the same folder is refused.
    assert main(argv) == 0
    assert "[" not in capsys.readouterr().out.split("execution")[-1].split("short:")[0]
    assert main([*argv[:-4], "--pairs", "5", "--out", str(run_dir)]) == 2
    assert "pairs: the run has 4, this command asks for 5" in capsys.readouterr().err
    swapped = [*argv]
    swapped[5], swapped[7] = RANDOM, EXPERT
    assert main(swapped) == 2
    assert "policy: the run evaluated 'scripted-expert'" in capsys.readouterr().err


class _Interrupt(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("stop_after", [0, 1, 2, 3])
def test_ab_resumes_pair_by_pair_at_every_stage(tmp_path, hardware_config, task_file, stop_after):
    """Interrupted inside the first trial (0), or after 1 (a pair half done), 2 (a pair done) or 3 trials: the re-run
    runs exactly the missing trials, each in its recorded slot, and the pairs end up as an uninterrupted run's."""
    tasks = resolve_tasks(str(task_file(name="short", max_duration_s=4)), hardware_config.scene)
    run_dir = tmp_path / "ab"
    seen = []

    def interrupt(report):
        seen.append(report.record)
        if len(seen) >= stop_after:
            raise _Interrupt()

    if stop_after == 0:  # a crash inside the first trial: ab.json, both run.json and a half-made trial folder
        with pytest.raises(_Interrupt):
            _crash_in_first_trial(hardware_config, run_dir, tasks)
        assert list((run_dir / "a" / "trials").rglob("*")) or list((run_dir / "b" / "trials").rglob("*"))
    else:
        with pytest.raises(_Interrupt):
            run_ab(hardware_config, _options(run_dir, tasks, 2, b="random"), on_trial=interrupt)
    design = json.loads((run_dir / AB_FILE).read_text())
    first_run = [(r["ab"]["pair"], r["ab"]["slot"]) for r in seen]
    assert first_run == [(p, s) for p in range(2) for s in (1, 2)][:stop_after]

    resumed = []
    summary = run_ab(hardware_config, _options(run_dir, tasks, 2, b="random"), on_trial=lambda r: resumed.append(r))
    assert summary == {"short": {"pairs": 2, "complete": 2, "stopped_early": False}}
    assert [(r.record["ab"]["pair"], r.record["ab"]["slot"]) for r in resumed] == \
        [(p, s) for p in range(2) for s in (1, 2)][stop_after:]
    assert [r.done for r in resumed] == list(range(stop_after + 1, 5))
    assert json.loads((run_dir / AB_FILE).read_text()) == design  # the order seed is kept
    _check_pairs(run_dir, {"short": 2})


def _crash_in_first_trial(hardware_config, run_dir, tasks):
    """ab.json and both arms' run.json written, then the process dies inside the first trial."""
    from eval_protocols import evaluation

    original = evaluation.TrialVideo

    class Dying(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            raise _Interrupt()

    evaluation.TrialVideo = Dying
    try:
        run_ab(hardware_config, _options(run_dir, tasks, 2, b="random"))
    finally:
        evaluation.TrialVideo = original


def test_the_console_shows_policy_1_and_2_only_and_the_operator_scores_each_trial(tmp_path, hardware_config,
                                                                                     task_file):
    tasks = resolve_tasks(str(task_file(name="short", max_duration_s=3)), hardware_config.scene)
    run_dir = tmp_path / "ab"
    urls, states, errors = [], [], []
    options = _options(run_dir, tasks, 3, a=EXPERT, b=RANDOM, console=True, console_port=0)
    runner = threading.Thread(target=lambda: _run_catching(errors, hardware_config, options, urls.append),
                              daemon=True)
    runner.start()
    deadline = time.monotonic() + 120
    while not urls:
        assert time.monotonic() < deadline and not errors, errors
        time.sleep(0.02)
    operator = requests.Session()
    page = operator.get(urls[0], timeout=10)
    csrf = re.search(r'name="fanvla-csrf" content="([^"]+)"', page.text).group(1)
    base = urls[0].split("?")[0].rstrip("/")
    page_text = page.text + operator.get(f"{base}/assets/console.js", timeout=10).text
    scored = 0
    while scored < 6:
        assert time.monotonic() < deadline and not errors, errors
        state = operator.get(f"{base}/api/state", timeout=10).json()
        if state["phase"] == "setup":
            states.append(state)
            operator.post(f"{base}/api/start", headers={"X-CSRF-Token": csrf}, timeout=10)
        elif state["phase"] == "scoring":
            # The operator calls it a success when "policy 1" ran: the scores must land on the right policy.
            operator.post(f"{base}/api/score", json={"success": state["policy_label"] == "policy 1", "note": ""},
                          headers={"X-CSRF-Token": csrf}, timeout=10)
            scored += 1
            while operator.get(f"{base}/api/state", timeout=10).json()["phase"] == "scoring":
                time.sleep(0.02)
        time.sleep(0.02)
    runner.join(timeout=60)
    assert not errors, errors
    assert [s["policy_label"] for s in states] == ["policy 1", "policy 2"] * 3
    assert [s["trial"] for s in states] == [0, 0, 1, 1, 2, 2]
    for state in states:  # nothing the console sends names a policy or its identity
        text = json.dumps(state)
        assert EXPERT not in text and RANDOM not in text and "fingerprint" not in text
        assert state["progress"]["short"]["trials"] == 3 and state["progress"]["short"]["successes"] == "blinded"
    assert EXPERT not in page_text and RANDOM not in page_text
    a, b = _check_pairs(run_dir, {"short": 3})
    for key in a:
        assert a[key]["scored_by"] == "operator"
        assert a[key]["success"] == (a[key]["ab"]["slot"] == 1) and b[key]["success"] == (b[key]["ab"]["slot"] == 1)


def _run_catching(errors, config, options, on_console):
    try:
        run_ab(config, options, on_console=on_console)
    except BaseException as error:
        errors.append(error)


def test_sequential_stopping_ends_a_decided_task_early_and_resume_stops_at_the_same_pair(tmp_path, hardware_config,
                                                                                         task_file):
    tasks = resolve_tasks(str(task_file(name="short", max_duration_s=12)), hardware_config.scene)
    design = SequentialDesign.create(30)
    decided_at = next(d for d in range(1, 31) if design.decide(d, 0, d).stop)  # A wins every pair: 8 pairs
    run_dir = tmp_path / "ab"
    stops, seen = [], []

    def interrupt_after_five(report):
        seen.append(report)
        if len(seen) == 5:  # mid-pair: pair 2's first trial
            raise _Interrupt()

    with pytest.raises(_Interrupt):
        run_ab(hardware_config, _options(run_dir, tasks, 30, sequential=True), on_trial=interrupt_after_five)
    summary = run_ab(hardware_config, _options(run_dir, tasks, 30, sequential=True),
                     on_stop=lambda task, decision: stops.append(decision))
    assert summary == {"short": {"pairs": 30, "complete": decided_at, "stopped_early": True}}
    assert [d.outcome.value for d in stops] == ["a better"] and stops[0].pairs == decided_at
    _check_pairs(run_dir, {"short": decided_at})
    # Once decided, a re-run runs nothing more.
    assert run_ab(hardware_config, _options(run_dir, tasks, 30, sequential=True),
                  on_trial=lambda r: pytest.fail("ran a trial after the decision")) == summary
    with pytest.raises(RunDirError, match="sequential"):
        run_ab(hardware_config, _options(run_dir, tasks, 30))


def test_ab_refuses_bad_input_before_anything_moves(tmp_path, hardware_config, task_file, capsys):
    tasks = resolve_tasks(str(task_file(name="short", max_duration_s=4)), hardware_config.scene)
    with pytest.raises(ValueError, match="--pairs must be"):
        run_ab(hardware_config, _options(tmp_path / "x", tasks, 0))
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="is not an A/B run"):
        run_ab(hardware_config, _options(tmp_path / "used", tasks, 2))
    assert main(["eval", "ab", "--backend", "real", "--a", EXPERT, "--b", RANDOM, "--out", str(tmp_path / "r")]) == 2
    assert "runs only with --backend sim" in capsys.readouterr().err


def test_report_takes_an_ab_run_on_its_own(tmp_path, capsys):
    from tests.eval.test_report import make_run

    ab_dir = tmp_path / "ab"
    ab_dir.mkdir()
    (ab_dir / AB_FILE).write_text("{}")
    other = make_run(tmp_path / "other", "SFT", [1, 2, 3, 4])
    assert main(["eval", "report", str(ab_dir), str(other), "--out", str(tmp_path / "r")]) == 2
    assert "is an A/B run ('fanvla eval ab'): report it on its own" in capsys.readouterr().err
    assert main(["eval", "report", str(ab_dir), "--out", str(tmp_path / "r")]) == 2
    assert "is not a fanvla A/B run file" in capsys.readouterr().err
