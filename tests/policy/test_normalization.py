from __future__ import annotations

import json

import numpy as np
import pytest

from policy.normalization import (
    ActionStats,
    DatasetStatistics,
    StatisticsError,
    compute_stats,
    load_dataset_statistics,
    normalize,
    save_dataset_statistics,
    select_unnorm_key,
    unnormalize,
)


def _stats(q01, q99, mask) -> ActionStats:
    q01, q99 = np.asarray(q01, float), np.asarray(q99, float)
    return ActionStats(q01=q01, q99=q99, mask=np.asarray(mask), mean=(q01 + q99) / 2, std=q99 - q01, min=q01, max=q99)


def test_masked_dims_scale_unmasked_pass_through():
    stats = _stats([-2.0, 0.0, 0.0], [2.0, 10.0, 1.0], [True, True, False])
    normalized = normalize([[0.0, 10.0, 0.7], [-2.0, 5.0, 1.0]], stats)
    np.testing.assert_allclose(normalized, [[0.0, 1.0, 0.7], [-1.0, 0.0, 1.0]], atol=1e-8)
    np.testing.assert_allclose(unnormalize(normalized, stats), [[0.0, 10.0, 0.7], [-2.0, 5.0, 1.0]], atol=1e-6)


def test_values_outside_q01_q99_are_clipped():
    stats = _stats([0.0], [1.0], [True])
    np.testing.assert_allclose(normalize([[3.0], [-3.0]], stats), [[1.0], [-1.0]])


def test_degenerate_dimension_normalises_to_zero_and_back_to_constant():
    stats = _stats([0.5, -1.0], [0.5, 1.0], [True, True])
    normalized = normalize([[0.5, 0.0]], stats)
    assert normalized[0, 0] == 0.0 and np.isfinite(normalized).all()
    np.testing.assert_allclose(unnormalize([[0.3, 0.0]], stats)[0, 0], 0.5)


def test_fixture_actions_unnormalise_like_upstream(fixture_reference, openvla_fixtures):
    stats = load_dataset_statistics(openvla_fixtures / "tiny")["fixture"].action
    for index in (0, 1):
        np.testing.assert_allclose(unnormalize(fixture_reference[f"normalized_action_{index}"], stats),
                                   fixture_reference[f"action_{index}"], rtol=0, atol=1e-12)


def test_nan_and_wrong_dimension_are_rejected():
    stats = _stats([0.0, 0.0], [1.0, 1.0], [True, True])
    with pytest.raises(StatisticsError, match="NaN"):
        normalize([[np.nan, 0.0]], stats)
    with pytest.raises(StatisticsError, match="last dimension"):
        normalize([[0.0, 0.0, 0.0]], stats)


def test_compute_stats_percentiles_and_mask():
    actions = np.column_stack([np.arange(101.0), np.full(101, 3.0)])
    stats = compute_stats(actions, mask=[True, False])
    np.testing.assert_allclose(stats.q01, [1.0, 3.0])
    np.testing.assert_allclose(stats.q99, [99.0, 3.0])
    assert stats.mask.tolist() == [True, False]
    assert stats.min.tolist() == [0.0, 3.0] and stats.max.tolist() == [100.0, 3.0]
    with pytest.raises(StatisticsError, match="NaN"):
        compute_stats([[0.0], [np.nan]])


def test_dataset_statistics_file_round_trip(tmp_path, openvla_fixtures):
    original = json.loads((openvla_fixtures / "tiny" / "dataset_statistics.json").read_text())
    loaded = load_dataset_statistics(openvla_fixtures / "tiny" / "dataset_statistics.json")
    save_dataset_statistics(tmp_path / "dataset_statistics.json", loaded)
    assert json.loads((tmp_path / "dataset_statistics.json").read_text()) == original


def test_missing_mask_means_all_dimensions_and_bad_files_are_reported(tmp_path):
    entry = {"action": {k: [0.0, 1.0] for k in ("mean", "std", "min", "max", "q01")} | {"q99": [1.0, 2.0]}}
    (tmp_path / "dataset_statistics.json").write_text(json.dumps({"a": entry}))
    assert load_dataset_statistics(tmp_path)["a"].action.mask.tolist() == [True, True]
    del entry["action"]["q99"]
    (tmp_path / "dataset_statistics.json").write_text(json.dumps({"a": entry}))
    with pytest.raises(StatisticsError, match=r"'a'.*q99"):
        load_dataset_statistics(tmp_path)
    with pytest.raises(StatisticsError, match="does not exist"):
        load_dataset_statistics(tmp_path / "nowhere")


def test_select_unnorm_key():
    entry = DatasetStatistics(action=_stats([0.0], [1.0], [True]))
    assert select_unnorm_key({"only": entry}, None) == "only"
    with pytest.raises(StatisticsError, match="several"):
        select_unnorm_key({"a": entry, "b": entry}, None)
    with pytest.raises(StatisticsError, match="available"):
        select_unnorm_key({"a": entry}, "c")
