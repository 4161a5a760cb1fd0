"""Batched MuJoCo rollouts and D4RL-normalised scores.

N episodes run at once in a gymnasium vector env; each env step is one batched `Policy.act` (on the
policy's device: `cuda` puts the network on the GPU while MuJoCo steps on the CPU). Episodes end at
different times: an env's result is frozen at its first `terminated or truncated`, and whatever the
vector env does with it afterwards (autoreset) is ignored.
"""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
import pandas as pd

from ..data.scores import normalized_score
from ..policy import Policy

# Return-to-go targets used by the Decision Transformer for MuJoCo (experiment.py: env_targets[0]).
DEFAULT_TARGET_RETURNS = {"Hopper": 3600.0, "Walker2d": 5000.0, "HalfCheetah": 6000.0, "Ant": 6000.0}


def default_target_return(env_id: str) -> float:
    family = env_id.split("-")[0]
    if family not in DEFAULT_TARGET_RETURNS:
        raise ValueError(
            f"no default target return for {env_id!r}; pass one explicitly (known: {sorted(DEFAULT_TARGET_RETURNS)})"
        )
    return DEFAULT_TARGET_RETURNS[family]


def make_envs(env_id: str, num_envs: int, vectorization: str = "sync") -> gym.vector.VectorEnv:
    """`num_envs` copies of `env_id` (e.g. Hopper-v5) stepped together; `async` uses one process each."""
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=vectorization)


def rollout(
    policy: Policy,
    env_id: str,
    episodes: int,
    target_return: float,
    *,
    seed: int = 0,
    vectorization: str = "sync",
    ref: tuple[float, float] | None = None,
) -> pd.DataFrame:
    """Run `episodes` episodes in parallel; one row per episode (return, length, normalized score).
    `ref`: the (min, max) returns that normalize the score (the dataset's); by default D4RL's for `env_id`,
    and where it has none, the score is NaN (the returns stay)."""
    envs = make_envs(env_id, episodes, vectorization)
    try:
        obs, _ = envs.reset(seed=seed)  # env i is seeded with seed + i
        returns = np.zeros(episodes)
        lengths = np.zeros(episodes, dtype=np.int64)
        running = np.ones(episodes, dtype=bool)
        policy.reset(target_return, batch_size=episodes)
        reward = None
        t0 = time.perf_counter()
        while running.any():
            action = policy.act(obs, reward)
            obs, reward, terminated, truncated, _ = envs.step(action)
            returns += np.where(running, reward, 0.0)
            lengths += running
            running &= ~(terminated | truncated)
        wall = time.perf_counter() - t0
    finally:
        envs.close()
    return pd.DataFrame({
        "episode": np.arange(episodes),
        "seed": seed + np.arange(episodes),
        "target_return": target_return,
        "return": returns,
        "length": lengths,
        "normalized_score": score(env_id, returns, ref),
        "wall_s": wall,
    })


def score(env_id: str, returns: np.ndarray, ref: tuple[float, float] | None) -> np.ndarray:
    """D4RL-normalized scores (x100) against `ref`, else D4RL's table for `env_id`, else NaN."""
    if ref is None or None in ref:
        try:
            return normalized_score(env_id, returns)
        except ValueError:  # no reference returns for this environment
            return np.full(len(returns), np.nan)
    return 100.0 * (np.asarray(returns, np.float64) - ref[0]) / (ref[1] - ref[0])


def make_eval_hook(env_id: str, episodes: int, target_return: float, seed: int = 10_000,
                   ref: tuple[float, float] | None = None):
    """A `Trainer` eval hook: the current model's normalized score on `episodes` fixed-seed episodes."""

    def hook(model, step: int) -> dict[str, float]:
        was_training = model.training
        frame = rollout(Policy(model, device=next(model.parameters()).device), env_id, episodes,
                        target_return, seed=seed, ref=ref)
        model.train(was_training)
        return {"score_mean": frame.normalized_score.mean(), "score_std": frame.normalized_score.std(ddof=0),
                "return_mean": frame["return"].mean()}

    return hook
