"""Training seeds as a dimension of ``fanvla demo --seeds N`` and ``fanvla sweep --seeds N``: each seed gets its own
initialisation, vision pretraining and data order, and the same recordings and trial situations; the sweep pools
the seeds and tests each alpha against SFT stratified by seed. (The quick demo gains a second training seed end
to end in ``tests/fanvla/test_demo.py::test_a_second_training_seed_reuses_the_first_and_reports_by_seed``.)"""

from __future__ import annotations

import pytest

from fanvla.demo import PRESETS, Demo
from fanvla.sweep import Cell, pool_seeds, stratified_against_sft
from tests.eval.test_comparison_stats import _brute_force_exact_stratified, _stratum


def _value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_each_training_seed_has_its_own_folders_init_and_seed(tmp_path):
    demo = Demo(tmp_path, PRESETS["quick"], 5, None, None, 2, seeds=3)
    assert demo.training_seeds == [5, 6, 7]
    # The first seed keeps the one-seed names, so an existing demo folder resumes as before.
    assert demo.train_dir("sft", 5) == tmp_path / "train-sft"
    assert demo.eval_dir("fan-sft", 5) == tmp_path / "eval-fan-sft"
    assert demo.train_dir("sft", 6) == tmp_path / "train-sft-seed6"
    assert demo.finetune_init_for(7) == tmp_path / "init-vision-seed7" and demo.init_dir(7) == tmp_path / "init-seed7"
    argvs = {seed: demo._train_argv("fan-sft", seed) for seed in demo.training_seeds}
    assert [_value(a, "--seed") for a in argvs.values()] == ["5", "6", "7"]
    assert [_value(a, "--init") for a in argvs.values()] == [str(tmp_path / n) for n in
                                                             ("init-vision", "init-vision-seed6", "init-vision-seed7")]
    assert {_value(a, "--out") for a in argvs.values()} == {str(tmp_path / n) for n in
                                                            ("train-fan-sft", "train-fan-sft-seed6",
                                                             "train-fan-sft-seed7")}
    # Same recordings for every seed.
    assert len({tuple(a[a.index("--data") + 1:a.index("--init")]) for a in argvs.values()}) == 1
    assert Cell(50, 0.05).name == "n50-a0.05" and Cell(50, 0.05, 6).name == "n50-a0.05-seed6"


def test_sweep_pools_seeds_and_tests_each_alpha_against_sft_by_seed():
    counts = {(0.0, 0): 20, (0.0, 1): 24, (0.0, 2): 18, (0.05, 0): 26, (0.05, 1): 27, (0.05, 2): 25}
    rows = [{"episodes": 150, "alpha": alpha, "training_seed": seed, "task": "task1", "successes": s, "trials": 30,
             "rate": s / 30, "ci_low": 0.0, "ci_high": 1.0} for (alpha, seed), s in counts.items()]
    pooled = {row["alpha"]: row for row in pool_seeds(rows)}
    assert (pooled[0.0]["successes"], pooled[0.0]["trials"], pooled[0.0]["seeds"]) == (62, 90, 3)
    assert pooled[0.05]["seed_rates"] == "0.867 0.900 0.833"
    (test,) = stratified_against_sft(rows)
    assert test["seeds"] == [0, 1, 2] and test["alpha"] == 0.05
    expected = _brute_force_exact_stratified([_stratum(counts[(0.0, s)], 30, counts[(0.05, s)], 30) for s in range(3)])
    assert test["exact_p"] == pytest.approx(expected, rel=1e-7)
