"""Batched MuJoCo rollouts and D4RL-normalised scores.

N episodes run at once in a gymnasium vector env; each env step is one batched `Policy.act` (on the
policy's device: `cuda` puts the network on the GPU while MuJoCo steps on the CPU). Episodes end at
different times: an env's result is frozen at its first `terminated or truncated`, and whatever the
vector env does with it afterwards (autoreset) is ignored.

`rollouts` spreads the episodes over processes: worker processes it starts, or the ranks of a torchrun job.
Episode i is seeded `seed + i` wherever it runs, so the workers' episodes together are the one-process
evaluation's, with the same returns where the policy's arithmetic does not depend on the batch (`MIN_SHARD`).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

import gymnasium as gym
import numpy as np
import pandas as pd
import torch

from ..data.scores import normalized_score
from ..policy import Policy
from ..training import distributed

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
    first: int = 0,
) -> pd.DataFrame:
    """Run `episodes` episodes in parallel; one row per episode (return, length, normalized score).
    `ref`: the (min, max) returns that normalize the score (the dataset's); by default D4RL's for `env_id`,
    and where it has none, the score is NaN (the returns stay). `first`: the episodes are numbers
    first..first + episodes - 1 of a larger evaluation (episode i is seeded `seed + i`)."""
    envs = make_envs(env_id, episodes, vectorization)
    try:
        obs, _ = envs.reset(seed=seed + first)  # env j runs episode first + j, seeded seed + first + j
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
        "episode": first + np.arange(episodes),
        "seed": seed + first + np.arange(episodes),
        "target_return": target_return,
        "return": returns,
        "length": lengths,
        "normalized_score": score(env_id, returns, ref),
        "wall_s": wall,
    })


MIN_SHARD = 4
"""Fewest episodes a worker runs. A worker's episodes equal the one-process evaluation's only if the policy computes
a batch row the same whatever batch it is in: a difference in the last bit, over an episode, MuJoCo's dynamics
amplify into another return. PyTorch's CPU matmul takes another kernel, which rounds differently, for 1 to 3 rows;
from 4 on a row's result does not depend on its batch (the `torch` and `onnxruntime` runtimes, and the `fused`
runtime's compiled loops). The `fused` runtime's BLAS products, from `FusedStep.blas_from` rows, do depend on a
row's place in the batch (OpenBLAS): there, split evaluations agree to rounding, not bit for bit."""


def shards(episodes: int, parts: int) -> list[range]:
    """Episodes 0..episodes-1 in at most `parts` contiguous ranges of at least `MIN_SHARD` (one range when there
    are fewer than 2 * MIN_SHARD episodes), sizes within one of each other."""
    parts = max(1, min(parts, episodes // MIN_SHARD))
    bounds = [episodes * i // parts for i in range(parts + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def _rollout_shard(policy: Policy | Callable[[], Policy], env_id: str, runs: Sequence[tuple[float, int]],
                   episodes: range, ref, threads: int | None = None) -> list[pd.DataFrame]:
    """Episodes `episodes` of every (target_return, seed) in `runs`; `policy` may be a loader (a worker's)."""
    if threads is not None:
        torch.set_num_threads(threads)
    if not isinstance(policy, Policy):
        policy = policy()
    return [rollout(policy, env_id, len(episodes), t, seed=s, ref=ref, first=episodes.start) for t, s in runs]


def rollouts(
    policy: Policy,
    env_id: str,
    episodes: int,
    runs: Sequence[tuple[float, int]],
    *,
    ref: tuple[float, float] | None = None,
    workers: int = 1,
    load: Callable[[], Policy] | None = None,
) -> list[pd.DataFrame] | None:
    """`episodes` episodes at each (target_return, seed) in `runs`: one `rollout` frame per run, the same
    episodes whether they run in this process, in `workers` processes or on the ranks of a torchrun job (and the
    same returns, but with the fused runtime from `FusedStep.blas_from` episodes: see `MIN_SHARD`).

    `workers` > 1: the episodes are split (`shards`) over worker processes, each with its own vector env and
    its own policy from `load` (picklable, e.g. `functools.partial(Policy.load, run)`), each on
    `torch.get_num_threads() // workers` threads. Under torchrun the ranks share the episodes the same way;
    rank 0 returns the frames and the other ranks None."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    distributed.init("cpu")  # under torchrun: the ranks gather their episodes on rank 0 (gloo)
    if distributed.active():
        if workers > 1:
            raise ValueError("under torchrun the ranks share the episodes; leave --workers at 1")
        parts = shards(episodes, distributed.world_size())
        mine = _rollout_shard(policy, env_id, runs, parts[distributed.rank()], ref) \
            if distributed.rank() < len(parts) else None
        gathered = distributed.gather(mine)
        return None if gathered is None else _stack([g for g in gathered if g is not None])
    parts = shards(episodes, workers)
    if len(parts) == 1:
        return _rollout_shard(policy, env_id, runs, parts[0], ref)
    if load is None:
        raise ValueError("workers > 1 needs `load`, a picklable function that loads the policy in each worker")
    threads = max(1, torch.get_num_threads() // len(parts))
    spawn = multiprocessing.get_context("spawn")  # fork would copy this process's threads and open envs
    with ProcessPoolExecutor(len(parts), mp_context=spawn) as pool:
        n = len(parts)
        done = pool.map(_rollout_shard, [load] * n, [env_id] * n, [runs] * n, parts, [ref] * n, [threads] * n)
        return _stack(list(done))


def _stack(per_shard: list[list[pd.DataFrame]]) -> list[pd.DataFrame]:
    """Per run, the shards' frames in episode order."""
    return [pd.concat(frames, ignore_index=True) for frames in zip(*per_shard)]


def score(env_id: str, returns: np.ndarray, ref: tuple[float, float] | None) -> np.ndarray:
    """D4RL-normalized scores (x100) against `ref`, else D4RL's table for `env_id`, else NaN."""
    try:
        return normalized_score(env_id, returns, ref)
    except ValueError:  # no reference returns for this environment
        return np.full(len(returns), np.nan)


def make_eval_hook(env_id: str, episodes: int, target_return: float, seed: int = 10_000,
                   ref: tuple[float, float] | None = None):
    """A `Trainer` eval hook: the current model's normalized score on `episodes` fixed-seed episodes."""

    def hook(model, step: int) -> dict[str, float]:
        # Policy acts with an eval-mode copy: the model being trained keeps its mode and device
        frame = rollout(Policy(model, device=next(model.parameters()).device), env_id, episodes,
                        target_return, seed=seed, ref=ref)
        return {"score_mean": frame.normalized_score.mean(), "score_std": frame.normalized_score.std(ddof=0),
                "return_mean": frame["return"].mean()}

    return hook
