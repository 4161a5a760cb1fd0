"""What float16 weights cost a trained policy: scores and per-step action differences against float32.

    python experiments/studies/half_weights.py RUN_DIR [RUN_DIR ...] [--episodes 10] [--seed S]
    python experiments/studies/half_weights.py --report

`FusedStep(weights="float16")` rounds the weight matrices to float16 to halve the bytes a batch-1 step streams
(results/bench_latency_cpu.md). For each run's last checkpoint, on the same start states (DT's target):
- the score with float32 and with float16 weights (each policy acting on its own rollout);
- along the float32 policy's rollout, the float16 step fed the same inputs (obs, a_{t-1}, return-to-go,
  timestep; its own carried state): the largest and the mean absolute action difference over every step of
  every episode (the batched rollout's steps after an episode ended are left out).
Writes results/half_weights_cpu.{csv,md} (rows of other runs are kept).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from decision_rnn import Policy
from decision_rnn.evaluation import default_target_return, rollout
from decision_rnn.fused import FusedStep

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))  # the grid's modules: protocol.py, results_grid.py
from results_grid import eval_seed  # noqa: E402
from window_acting import per_run_study, tokens_label  # noqa: E402


class Shadowed:
    """Acts with float32 weights and runs the float16 step beside it on the same inputs, recording the gap."""

    def __init__(self, model):
        self.steps = {w: FusedStep(model, weights=w) for w in ("float32", "float16")}
        self.gaps: list[np.ndarray] = []

    def reset(self, target_return: float, batch_size: int = 1) -> None:
        self.states = {w: f.initial_state(batch_size) for w, f in self.steps.items()}
        self.rtg = np.full(batch_size, target_return, np.float32)
        self.prev = np.zeros((batch_size, self.steps["float32"].act_dim), np.float32)
        self.t = np.zeros(batch_size, np.int64)

    def act(self, obs, reward=None):
        if reward is not None:
            self.rtg -= np.asarray(reward, np.float32)
        obs = np.asarray(obs, np.float32)
        actions = {w: f(obs, self.prev, self.rtg, self.t, self.states[w])[0] for w, f in self.steps.items()}
        self.gaps.append(np.abs(actions["float16"] - actions["float32"]).max(axis=1))
        self.prev, self.t = actions["float32"], self.t + 1
        return self.prev.copy()  # the caller may change the action; prev is the next step's input


def evaluate(run: Path, seed: int, episodes: int) -> list[dict]:
    policies = {w: Policy.load(run, runtime="fused", weights=w) for w in ("float32", "float16")}
    meta = policies["float32"].meta
    env_id, config = meta["env_id"], policies["float32"].model.config
    target = default_target_return(env_id)
    ref = meta.get("ref_min_score"), meta.get("ref_max_score")
    row = {"run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run), "backbone": config.backbone,
           "tokens": tokens_label(config), "seed": seed, "target_return": target, "episodes": episodes}
    for weights, policy in policies.items():
        row[f"score_{weights}"] = rollout(policy, env_id, episodes, target, seed=eval_seed(seed),
                                          ref=ref).normalized_score.mean()
    shadow = Shadowed(policies["float32"].model)
    lengths = rollout(shadow, env_id, episodes, target, seed=eval_seed(seed), ref=ref).length.to_numpy()
    gaps = np.stack(shadow.gaps)  # (steps, episodes): the env steps after an episode's end are not its own
    gaps = gaps[np.arange(len(gaps))[:, None] < lengths[None]]
    row.update(action_gap_max=float(gaps.max()), action_gap_mean=float(gaps.mean()))
    print(f"{row['run']}: float32 {row['score_float32']:6.1f}, float16 {row['score_float16']:6.1f}, "
          f"action gap max {row['action_gap_max']:.2e} mean {row['action_gap_mean']:.2e}")
    return [row]


def write_report(frame: pd.DataFrame, path: Path) -> None:
    frame = frame.assign(difference=frame.score_float16 - frame.score_float32)
    table = frame[["run", "tokens", "seed", "score_float32", "score_float16", "difference", "action_gap_max",
                   "action_gap_mean"]]
    lines = []
    for name, group in [*frame.groupby("backbone"), ("all", frame)]:
        d = group.difference
        std = f" (std {d.std(ddof=1):.1f})" if len(d) > 1 else ""
        lines.append(f"- {name}: float16 - float32 over {len(group)} runs: mean {d.mean():+.1f}{std}, within ±5 on "
                     f"{(d.abs() <= 5).sum()}; largest action gap {group.action_gap_max.max():.1e}, mean gap "
                     f"{group.action_gap_mean.mean():.1e}")
    path.with_suffix(".md").write_text(
        "# float16 weights against float32 (fused runtime, CPU, last checkpoint, DT's target)\n\n"
        "Scores: each weight format acting on its own rollout from the same start states. Action gap: along the "
        "float32 rollout, the float16 step on the same inputs; largest and mean |difference| over every step and "
        "action dimension's max (actions lie in [-1, 1]). experiments/studies/half_weights.py.\n\n"
        + table.to_markdown(index=False, floatfmt=("", "", "", ".1f", ".1f", "+.1f", ".1e", ".1e"))
        + "\n\n" + "\n".join(lines) + "\n")


def main():
    per_run_study(__doc__, ROOT / "results" / "half_weights_cpu.csv", evaluate, write_report)


if __name__ == "__main__":
    main()
