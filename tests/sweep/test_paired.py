"""The paired fold statistics against values computed by hand. With J = 3 paired folds the t
distribution has 2 degrees of freedom, whose CDF and quantile have closed forms:
F(t) = 1/2 + t / (2 sqrt(2 + t²)) and t_p = (2p − 1) / sqrt(2p(1 − p))."""

import math

import pytest

from sft_tune.sweep.paired import compare, held_out_ratio, paired_differences


def _cdf2(t):
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


def test_three_folds_by_hand():
    # differences 0.02, 0.01, 0.03: mean 0.02, sample variance 0.0001; 3-fold CV: n_test/n_train 1/2
    a, b = [0.62, 0.51, 0.73], [0.60, 0.50, 0.70]
    result = compare(a, b, "max", rope=0.01, ratio=held_out_ratio(3))
    se = math.sqrt(0.0001 * (1 / 3 + 1 / 2))
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) * se  # t_0.975 with 2 degrees of freedom: 4.3027
    assert result.folds == 3
    assert result.mean == pytest.approx(0.02)
    assert result.se == pytest.approx(se)
    assert (result.low, result.high) == pytest.approx((0.02 - half, 0.02 + half))
    p_better = 1 - _cdf2((0.01 - 0.02) / se)
    p_worse = _cdf2((-0.01 - 0.02) / se)
    assert result.p_better == pytest.approx(p_better)  # 0.8062
    assert result.p_worse == pytest.approx(p_worse)  # 0.0407
    assert result.p_equivalent == pytest.approx(1 - p_better - p_worse)
    assert result.outcome == "unclear"  # [-0.019, 0.059]: spans 0 and is wider than ±0.01
    # 4 more folds: at J = 7, se = 0.01 sqrt(1/7 + 1/2) = 0.00802, t_0.975,6 = 2.447, and the
    # interval [0.0004, 0.0396] lies above 0; at J = 6 it is [-0.0010, 0.0410]
    assert result.more_folds == 4
    assert result.differences == pytest.approx((0.02, 0.01, 0.03))


def test_a_min_metric_counts_the_lower_score_as_better():
    result = compare([1.0, 2.0, 3.0], [1.5, 2.4, 3.6], "min", rope=0.01, ratio=0.5)
    assert result.mean == pytest.approx(0.5)
    assert result.differences == pytest.approx((0.5, 0.4, 0.6))
    assert result.outcome == "better" and result.p_better > 0.95


def test_two_folds_use_one_degree_of_freedom():
    # differences 0.1 and 0.3: mean 0.2, variance 0.02; t_0.975 with 1 degree of freedom is
    # tan(pi (0.975 - 1/2)) = 12.706
    result = compare([0.5, 0.7], [0.4, 0.4], "max", rope=0.01, ratio=1.0)
    se = math.sqrt(0.02 * (1 / 2 + 1))
    half = math.tan(math.pi * 0.475) * se
    assert (result.low, result.high) == pytest.approx((0.2 - half, 0.2 + half))
    # Cauchy CDF: 1/2 + atan(t)/pi
    assert result.p_better == pytest.approx(0.5 - math.atan((0.01 - 0.2) / se) / math.pi)


def test_zero_variance_puts_all_the_mass_where_the_mean_is():
    same = compare([0.5, 0.6, 0.7], [0.48, 0.58, 0.68], "max", rope=0.01, ratio=0.5)
    assert same.se == 0 and same.low == same.high == pytest.approx(0.02)
    assert (same.p_better, same.p_equivalent, same.p_worse) == (1.0, 0.0, 0.0)
    assert same.outcome == "better"
    tiny = compare([0.5, 0.6, 0.7], [0.495, 0.595, 0.695], "max", rope=0.01, ratio=0.5)
    assert (tiny.p_better, tiny.p_equivalent, tiny.p_worse) == (0.0, 1.0, 0.0)
    assert tiny.outcome == "equivalent"


def test_nan_folds_and_unpaired_folds_drop_out():
    assert paired_differences([0.5, math.nan, 0.7, 0.9], [0.4, 0.5, math.inf], "max") == (
        pytest.approx([0.1])
    )
    one = compare([0.5, math.nan, 0.7], [0.4, 0.5, math.inf], "max", rope=0.01, ratio=0.5)
    assert one.folds == 1 and one.se is None and one.low is None and one.p_better is None
    assert one.outcome == "unclear"
    none = compare([math.nan], [0.4], "max", rope=0.01, ratio=0.5)
    assert none.folds == 0 and none.mean is None and none.outcome == "unclear"


def test_the_four_outcomes_and_how_many_folds_would_decide():
    assert compare([0.60, 0.61, 0.60], [0.60, 0.60, 0.601], "max", 0.05, 0.5).outcome == (
        "equivalent"
    )
    assert compare([0.7, 0.71, 0.69], [0.5, 0.52, 0.5], "max", 0.01, 0.5).outcome == "better"
    assert compare([0.5, 0.52, 0.5], [0.7, 0.71, 0.69], "max", 0.01, 0.5).outcome == "worse"
    # Ten folds: mean 0.05, sd 0.0527 (differences alternate), 10-fold CV: n_test/n_train 1/9;
    # the interval [-0.005, 0.105] spans 0, and more folds narrow it towards its floor
    # 1.96 * 0.0527 / 3 = 0.034 < 0.05: it decides.
    diffs = [0.05 + (0.05 if j % 2 else -0.05) for j in range(10)]
    unclear = compare(diffs, [0.0] * 10, "max", 0.01, held_out_ratio(10))
    assert unclear.outcome == "unclear" and unclear.more_folds is not None
    more = unclear.more_folds
    longer = [0.05 + (0.05 if j % 2 else -0.05) for j in range(10 + more + (more % 2))]
    decided = compare(longer, [0.0] * len(longer), "max", 0.01, held_out_ratio(10))
    assert decided.outcome == "better"
    # At mean 0.03 the floor (0.034) stays above the mean: no number of folds decides.
    never = [0.03 + (0.05 if j % 2 else -0.05) for j in range(10)]
    assert compare(never, [0.0] * 10, "max", 0.01, held_out_ratio(10)).more_folds is None


def test_held_out_ratio():
    assert held_out_ratio(5) == pytest.approx(1 / 4)
    assert held_out_ratio(1, 0.2) == pytest.approx(0.25)
