"""Paired differences: hand-computed values and scipy's own paired t-test."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from mpvgbench.stats import TEST_NAME, paired_difference


def test_three_seeds_against_hand_computed_values() -> None:
    # d = (2, 4, 6): mean 4, sd 2, se 2/sqrt(3); t_{0.975,2} = 4.302652729911275
    result = paired_difference({0: 12.0, 1: 14.0, 2: 16.0}, {0: 10.0, 1: 10.0, 2: 10.0})
    assert result is not None and result.n == 3 and result.mean == pytest.approx(4.0)
    half = 4.302652729911275 * 2 / math.sqrt(3)
    assert (result.low, result.high) == (pytest.approx(4 - half), pytest.approx(4 + half))
    assert not result.significant  # half = 4.968 > 4: the interval [-0.97, 8.97] contains 0
    # the p-value of t = 4 / (2/sqrt 3) = 3.4641 with 2 degrees of freedom
    assert result.p_value == pytest.approx(2 * scipy_stats.t.sf(4 / (2 / math.sqrt(3)), 2))


def test_interval_and_test_agree_with_scipy() -> None:
    values = {0: 73.1, 1: 73.9, 2: 73.4, 3: 74.2, 4: 73.6}
    base = {0: 72.5, 1: 73.0, 2: 73.1, 3: 73.2, 4: 72.9}
    result = paired_difference(values, base)
    assert result is not None
    diffs = [values[s] - base[s] for s in values]
    expected = scipy_stats.ttest_rel(list(values.values()), list(base.values()))
    assert result.p_value == pytest.approx(expected.pvalue)
    low, high = scipy_stats.t.interval(0.95, len(diffs) - 1, loc=sum(diffs) / 5, scale=scipy_stats.sem(diffs))
    assert (result.low, result.high) == (pytest.approx(low), pytest.approx(high))
    assert result.low > 0 and result.significant
    doc = result.as_dict()
    assert doc["test"] == TEST_NAME and doc["excludes_zero"] is True
    assert [row["seed"] for row in doc["per_seed"]] == [0, 1, 2, 3, 4]
    assert doc["per_seed"][0]["diff"] == pytest.approx(0.6)


def test_only_shared_seeds_are_paired_and_small_cases() -> None:
    result = paired_difference({0: 5.0, 1: 7.0, 5: 100.0}, {0: 4.0, 1: 4.0, 2: 0.0})
    assert result is not None and [p.seed for p in result.pairs] == [0, 1] and result.mean == 2.0
    assert not result.significant  # t_{0.975,1} = 12.7: [-10.7, 14.7]
    assert result.low == pytest.approx(2.0 - 12.706204736174698 * 1.0)
    one = paired_difference({0: 5.0}, {0: 4.0})
    assert one is not None and one.mean == 1.0 and one.low is None and one.p_value is None
    assert not one.significant
    assert paired_difference({0: 5.0}, {1: 4.0}) is None
    same = paired_difference({0: 5.0, 1: 6.0}, {0: 4.0, 1: 5.0})  # sd 0: no t statistic
    assert same is not None and same.low == same.high == 1.0 and same.p_value is None and same.significant
