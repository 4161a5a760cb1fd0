"""Aggregate scores with bootstrap intervals (decision_rnn.evaluation.aggregate), against plain loops, scipy and
rliable."""

import numpy as np
import pytest
from scipy import stats

from decision_rnn.evaluation.aggregate import (
    aggregate,
    bootstrap_interval,
    improvement_interval,
    iqm,
    probability_of_improvement,
)


@pytest.mark.parametrize("n", [1, 3, 4, 7, 18, 101])
def test_iqm_is_scipy_trim_mean(n):
    x = np.random.default_rng(n).normal(size=n)
    assert iqm(x) == pytest.approx(stats.trim_mean(x, 0.25))


def test_iqm_ignores_how_deep_one_run_of_eight_collapsed():
    x = np.array([80.0, 82, 84, 86, 88, 90, 92])
    assert iqm(np.r_[x, 5.0]) == iqm(np.r_[x, -50.0]) == pytest.approx(np.mean([82, 84, 86, 88]))
    assert np.mean(np.r_[x, 5.0]) != np.mean(np.r_[x, -50.0])


def test_iqm_along_an_axis():
    x = np.random.default_rng(0).normal(size=(5, 9))
    assert np.allclose(iqm(x, axis=1), [stats.trim_mean(r, 0.25) for r in x])


def plain_improvement(x, y):
    per = []
    for d in x:
        wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a in x[d] for b in y[d]]
        per.append(sum(wins) / len(wins))
    return sum(per) / len(per)


def test_probability_of_improvement_against_a_plain_loop():
    rng = np.random.default_rng(1)
    x = {"a": rng.integers(0, 5, 3).astype(float), "b": rng.normal(size=4)}
    y = {"a": rng.integers(0, 5, 5).astype(float), "b": rng.normal(size=2), "c": rng.normal(size=3)}
    assert probability_of_improvement(x, y) == pytest.approx(plain_improvement(x, {d: y[d] for d in x}))
    assert probability_of_improvement(x, y) + probability_of_improvement(y, x) == pytest.approx(1.0)


def test_clearly_better_agent_wins_with_certainty():
    x, y = {"a": np.array([90.0, 91, 92])}, {"a": np.array([10.0, 11, 12])}
    assert improvement_interval(x, y, reps=500) == (1.0, 1.0, 1.0)


def test_same_distribution_is_a_coin_flip_inside_the_interval():
    rng = np.random.default_rng(2)
    x = {d: rng.normal(size=10) for d in "abc"}
    y = {d: rng.normal(size=10) for d in "abc"}
    point, low, high = improvement_interval(x, y, reps=2000)
    assert low < 0.5 < high and low <= point <= high


def test_aggregate_mean_is_the_tables_mean_over_datasets_and_brackets_it():
    scores = {"a": np.array([10.0, 20, 90]), "b": np.array([50.0, 60]), "c": np.array([70.0])}
    result = aggregate(scores, reps=2000)
    point, low, high = result["mean"]
    assert point == pytest.approx(np.mean([40.0, 55.0, 70.0]))
    assert low <= point <= high and low < high
    assert result["iqm"][0] == pytest.approx(stats.trim_mean([10, 20, 90, 50, 60, 70], 0.25))


def test_stratified_resampling_keeps_every_dataset():
    """One run per dataset: every resample is the data itself, so the interval has no width."""
    assert aggregate({"a": np.array([1.0]), "b": np.array([3.0])}, reps=300)["mean"] == (2.0, 2.0, 2.0)


def test_interval_is_reproducible_and_narrows_with_more_runs():
    rng = np.random.default_rng(3)
    few, many = {"a": rng.normal(size=3)}, {"a": rng.normal(size=300)}
    assert bootstrap_interval(few, lambda r: r["a"].mean(axis=1)) == bootstrap_interval(
        few, lambda r: r["a"].mean(axis=1))
    width = {k: np.subtract(*aggregate(s, reps=2000)["mean"][:0:-1]) for k, s in [("few", few), ("many", many)]}
    assert width["many"] < width["few"]


@pytest.mark.parametrize("scores, message", [
    ({}, "no dataset"),
    ({"a": np.array([])}, "non-empty 1-D"),
    ({"a": np.ones((2, 2))}, "non-empty 1-D"),
    ({"a": np.array([1.0, np.nan])}, "NaN"),
])
def test_bad_scores_are_refused(scores, message):
    with pytest.raises(ValueError, match=message):
        aggregate(scores, reps=10)


def test_no_common_dataset_is_refused():
    with pytest.raises(ValueError, match="no dataset in common"):
        probability_of_improvement({"a": np.ones(2)}, {"b": np.ones(2)})


def test_point_estimates_equal_rliables_on_fixed_scores():
    """rliable (Agarwal et al.'s library) on the same runs: its mean of per-task means, IQM and probability of
    improvement. rliable takes a (runs x tasks) matrix; ties and a collapsed run included."""
    from rliable import metrics

    x = np.array([[80.0, 55.0, 12.0], [91.5, 55.0, 70.0], [77.0, 61.0, 68.0], [3.0, 58.5, 71.0]])
    y = np.array([[80.0, 40.0, 70.0], [60.0, 55.0, 70.0], [85.0, 62.0, 69.5]])
    per_task = lambda m: {f"task{k}": m[:, k] for k in range(m.shape[1])}  # noqa: E731
    result = aggregate(per_task(x), reps=100)
    assert result["mean"][0] == pytest.approx(metrics.aggregate_mean(x))
    assert result["iqm"][0] == pytest.approx(metrics.aggregate_iqm(x))
    assert probability_of_improvement(per_task(x), per_task(y)) == pytest.approx(
        metrics.probability_of_improvement(x, y))
    assert improvement_interval(per_task(y), per_task(x), reps=100)[0] == pytest.approx(
        metrics.probability_of_improvement(y, x))
