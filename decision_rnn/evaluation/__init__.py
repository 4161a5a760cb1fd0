"""Evaluation in the MuJoCo `-v5` envs: batched rollouts and D4RL-normalised scores."""

from .aggregate import aggregate, improvement_interval, iqm, probability_of_improvement
from .report import evaluate_run, format_summary, summarize
from .rollout import DEFAULT_TARGET_RETURNS, default_target_return, make_envs, make_eval_hook, rollout, rollouts, shards

__all__ = [
    "aggregate",
    "DEFAULT_TARGET_RETURNS",
    "default_target_return",
    "evaluate_run",
    "format_summary",
    "improvement_interval",
    "iqm",
    "make_envs",
    "make_eval_hook",
    "probability_of_improvement",
    "rollout",
    "rollouts",
    "shards",
    "summarize",
]
