"""``fanvla eval report ... --seeds-per-method N``: per seed, pooled, spread, and tests stratified by training seed;
and the detectable difference every comparison of the ordinary report states."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from scipy import stats as sps

from eval_protocols.power import fisher_power
from eval_protocols.seeds_report import write_seeds_report
from fanvla.cli import main
from tests.eval.test_comparison_stats import _brute_force_exact_stratified, _stratum
from tests.eval.test_report import make_run

SFT = [[26, 7, 7, 1], [22, 9, 5, 2], [24, 6, 8, 0]]  # successes of 30 per task, one list per training seed
FAN = [[16, 12, 17, 7], [25, 10, 12, 5], [19, 13, 15, 6]]


@pytest.fixture()
def seed_runs(tmp_path):
    runs = [make_run(tmp_path / "runs" / f"sft-{k}", "SFT", s) for k, s in enumerate(SFT)]
    return runs + [make_run(tmp_path / "runs" / f"fan-{k}", "FAN-SFT", s) for k, s in enumerate(FAN)]


def test_seeds_report_pools_spreads_and_stratifies_by_seed(seed_runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["eval", "report", *map(str, seed_runs), "--seeds-per-method", "3", "--names", "SFT,FAN-SFT",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    numbers = json.loads((out / "results.json").read_text())
    seeds = numbers["seeds"]
    assert seeds["methods"] == ["SFT", "FAN-SFT"] and seeds["seeds"] == 3
    task1 = seeds["per_method"]["FAN-SFT"]["task1"]
    assert task1["per_seed"] == [[16, 30], [25, 30], [19, 30]] and task1["pooled"] == [60, 90]
    assert (task1["seed_low"], task1["seed_high"]) == pytest.approx((16 / 30, 25 / 30))
    assert task1["seed_std"] == pytest.approx(sps.tstd([16 / 30, 25 / 30, 19 / 30]))
    for index, task in enumerate(["task1", "task2", "task3", "task4"]):
        strata = [_stratum(SFT[k][index], 30, FAN[k][index], 30) for k in range(3)]
        row = next(c for c in seeds["comparisons"] if c["task"] == task)
        assert row["exact_p"] == pytest.approx(_brute_force_exact_stratified(strata), rel=1e-7)
        assert row["pooled_a"] == f"{sum(s[index] for s in SFT)}/90"
    task3 = next(c for c in seeds["comparisons"] if c["task"] == "task3")
    assert task3["exact_p"] < 0.001 and task3["cmh_p"] < 0.001
    assert "over seeds task3 FAN-SFT vs SFT: pooled 44/90 vs 20/90" in printed
    readme = (out / "README.md").read_text()
    assert "## Over training seeds (3 per method)" in readme
    assert "| FAN-SFT | task1 | 16/30, 25/30, 19/30 | 60/90 (67%" in readme
    assert readme.index("## Over training seeds") < readme.index("## Runs")
    assert "| SFT, seed 2 |" in readme and "| FAN-SFT, seed 3 |" in readme
    with Image.open(out / "seeds.png") as chart:
        assert chart.format == "PNG"


def test_seeds_report_refuses_runs_that_do_not_split_into_methods(seed_runs, tmp_path):
    with pytest.raises(ValueError, match="cannot be split into methods of 4 seeds"):
        write_seeds_report(seed_runs, 4, tmp_path / "r")
    with pytest.raises(ValueError, match="--names names the methods: 2 expected"):
        write_seeds_report(seed_runs, 3, tmp_path / "r", ["a", "b", "c", "d", "e", "f"])


def test_every_comparison_states_the_difference_it_could_detect(seed_runs, tmp_path):
    out = tmp_path / "plain"
    assert main(["eval", "report", str(seed_runs[0]), str(seed_runs[3]), "--out", str(out)]) == 0
    numbers = json.loads((out / "results.json").read_text())
    task1 = next(c for c in numbers["comparisons"] if c["task"] == "task1")
    detectable = task1["detectable"]
    assert detectable["base_rate"] == pytest.approx(26 / 30) and detectable["test"] == "fisher"
    assert fisher_power(30, 30, 26 / 30, 26 / 30 + detectable["down"]) >= 0.8
    assert detectable["up"] is None  # from 87% no increase is detectable with 30 trials
    readme = (out / "README.md").read_text()
    assert f"| {round(100 * detectable['down']):+d} / none pts |" in readme and "detectable (80% power)" in readme
