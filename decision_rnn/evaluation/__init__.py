"""Evaluation in the MuJoCo `-v5` envs: batched rollouts and D4RL-normalised scores."""

from .report import evaluate_run, format_summary, summarize
from .rollout import DEFAULT_TARGET_RETURNS, default_target_return, make_envs, make_eval_hook, rollout

__all__ = [
    "DEFAULT_TARGET_RETURNS",
    "default_target_return",
    "evaluate_run",
    "format_summary",
    "make_envs",
    "make_eval_hook",
    "rollout",
    "summarize",
]
