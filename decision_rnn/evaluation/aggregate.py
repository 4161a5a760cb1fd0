"""Scores across datasets and seeds with confidence intervals: Agarwal et al. 2021, "Deep Reinforcement
Learning at the Edge of the Statistical Precipice" (NeurIPS; arXiv 2108.13264).

With 3 seeds per dataset a mean is noisy, and a table of means invites reading noise as a ranking. The
paper's remedies, computed here:
- the interquartile mean (IQM) of all runs pooled: the mean of the middle 50%, robust to one collapsed
  seed and less noisy than the median;
- the probability of improvement P(X > Y): over datasets, the mean chance that a run of X scores above a
  run of Y on the same dataset (ties count half; the Mann-Whitney U statistic over all run pairs);
- 95% percentile intervals from a stratified bootstrap: runs are resampled with replacement within each
  dataset, so every resample keeps every dataset.

rliable, the paper's library, computes the same point estimates (`rliable.metrics`; tests/test_aggregate.py checks
ours against it on fixed scores). Its interval estimates (`rliable.library`) are not used: they need `arch`, which
does not import under pandas 3 (arch 7.2) or rejects rliable's `random_state` argument (arch 8.0); the resampling
here is the one its `StratifiedBootstrap` does.
Scores are given per dataset as 1-D arrays of runs; datasets may have different numbers of runs.
With few runs per dataset the percentile intervals come out too narrow rather than too wide: a
resample can only hold values the runs took.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

Scores = Mapping[str, np.ndarray]
"""Dataset name -> the normalized scores of its runs (one per seed), 1-D."""


def iqm(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean along `axis`: drop the lowest and highest floor(n / 4) values, average the rest
    (scipy.stats.trim_mean(x, 0.25), rliable's `aggregate_iqm`)."""
    x = np.sort(np.asarray(scores, dtype=float), axis=axis)
    n = x.shape[axis]
    cut = int(0.25 * n)
    return np.take(x, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def probability_of_improvement(x: Scores, y: Scores) -> float:
    """P(X > Y): over the datasets both have, the fraction of (run of X, run of Y) pairs where X's run scores
    higher, ties counting half; averaged over datasets."""
    x, y = _overlap(x, y)
    return float(_improvement(_as_one(x), _as_one(y))[0])


def _improvement(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> np.ndarray:
    """{dataset: (reps, n)} twice -> (reps,): P(X > Y) averaged over datasets."""
    return np.mean([_u_statistic(x[d], y[d]) for d in x], axis=0)


def _u_statistic(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(reps, n) and (reps, m) -> (reps,): P(a run of x > a run of y), ties half."""
    diff = x[:, :, None] - y[:, None, :]
    return ((diff > 0) + 0.5 * (diff == 0)).mean(axis=(1, 2))


def _overlap(x: Scores, y: Scores) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`x` and `y` on the datasets both have, checked."""
    common = [d for d in x if d in y]
    if not common:
        raise ValueError(f"no dataset in common: {sorted(x)} against {sorted(y)}")
    return _check({d: x[d] for d in common}), _check({d: y[d] for d in common})


def _check(scores: Scores) -> dict[str, np.ndarray]:
    checked = {}
    for d, v in scores.items():
        v = np.asarray(v, dtype=float)
        if v.ndim != 1 or v.size == 0:
            raise ValueError(f"scores of {d!r}: expected a non-empty 1-D array of runs, got shape {v.shape}")
        if not np.isfinite(v).all():
            raise ValueError(f"scores of {d!r} hold NaN or inf: {v.tolist()}")
        checked[d] = v
    if not checked:
        raise ValueError("no dataset given")
    return checked


def _as_one(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The data itself as a single resample: {dataset: (1, n)}."""
    return {d: v[None] for d, v in scores.items()}


def _resample(scores: dict[str, np.ndarray], reps: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Stratified bootstrap: per dataset, `reps` resamples of its runs with replacement, (reps, n)."""
    return {d: v[rng.integers(0, v.size, size=(reps, v.size))] for d, v in scores.items()}


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


Interval = tuple[float, float, float]
"""(point estimate, lower, upper)."""


def bootstrap_interval(scores: Scores, statistic: Callable[[dict[str, np.ndarray]], np.ndarray], *,
                       reps: int = 10_000, level: float = 0.95, seed: int = 0) -> Interval:
    """`statistic` of `scores` and its percentile interval over `reps` stratified resamples.

    `statistic` takes {dataset: (reps, n) runs} and returns (reps,); it sees the data itself as reps=1."""
    checked = _check(scores)
    samples = statistic(_resample(checked, reps, np.random.default_rng(seed)))
    return (float(statistic(_as_one(checked))[0]), *_interval(samples, level))


def _mean_over_datasets(runs: dict[str, np.ndarray]) -> np.ndarray:
    return np.mean([v.mean(axis=1) for v in runs.values()], axis=0)


def _pooled_iqm(runs: dict[str, np.ndarray]) -> np.ndarray:
    return iqm(np.concatenate(list(runs.values()), axis=1), axis=1)


def aggregate(scores: Scores, *, reps: int = 10_000, level: float = 0.95, seed: int = 0) -> dict[str, Interval]:
    """{"mean": the mean over datasets, "iqm": the IQM of all runs}, each with its stratified-bootstrap
    interval (both from the same resamples)."""
    checked = _check(scores)
    resampled = _resample(checked, reps, np.random.default_rng(seed))
    return {name: (float(statistic(_as_one(checked))[0]), *_interval(statistic(resampled), level))
            for name, statistic in (("mean", _mean_over_datasets), ("iqm", _pooled_iqm))}


def improvement_interval(x: Scores, y: Scores, *, reps: int = 10_000, level: float = 0.95,
                         seed: int = 0) -> Interval:
    """P(X > Y) over the datasets both have, with an interval from resampling X's and Y's runs
    independently within each dataset."""
    x, y = _overlap(x, y)
    rng = np.random.default_rng(seed)
    samples = _improvement(_resample(x, reps, rng), _resample(y, reps, rng))
    return (float(_improvement(_as_one(x), _as_one(y))[0]), *_interval(samples, level))
