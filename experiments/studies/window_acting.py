"""Is a recurrent agent's rollout state the problem? Act from the carried state, and from DT's window.

    python experiments/studies/window_acting.py RUN_DIR [RUN_DIR ...] [--episodes 10] [--seed S]

Our recurrent agents train on K-step windows, each from a zero state, but act from one state carried over
the whole episode (up to 1000 steps, 2000-3000 tokens with split or interleaved tokens): states no
training sequence reached. This evaluates each run's last checkpoint twice on the same start states:
- `state`: the agent as deployed (`Policy`, O(1) per step): the grid's own score when `--seed` is the
  run's seed;
- `window`: each action from the parallel forward over the last K steps from a zero state, with the true
  a_{t-1} before the window: exactly what a training window shows in `window` context, the grid's
  (O(K) per step).
`window` far above `state` says the carried state drifts where training never took it; level says the
policy itself is what fails. Writes results/window_acting_cpu.{csv,md} (rows of other runs are kept).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from decision_rnn import Policy
from decision_rnn.evaluation import default_target_return, rollout

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))  # the grid's modules: protocol.py, results_grid.py
from results_grid import eval_seed, locked  # noqa: E402


class WindowActor:
    """`Policy`'s reset/act, each action from the model's parallel forward over the last K steps."""

    def __init__(self, model):
        self.model = model.eval()
        self.K = model.config.context_len

    def reset(self, target_return: float, batch_size: int = 1) -> None:
        self.rtg = np.full(batch_size, target_return, np.float64)
        self.obs, self.actions, self.rtgs = [], [], []
        self.prev = np.zeros((batch_size, self.model.config.act_dim), np.float32)  # a_{t-1} before the window
        self.t = -1

    @torch.no_grad()
    def act(self, obs, reward=None):
        self.t += 1
        if reward is not None:
            self.rtg = self.rtg - reward
        self.obs.append(np.asarray(obs, np.float32))
        self.rtgs.append(self.rtg.astype(np.float32))
        self.actions.append(np.zeros_like(self.prev))  # a_t: a placeholder, after s_t (causal: not seen)
        if len(self.obs) > self.K:  # slide: the dropped step's action is the window's a_{t-1}
            self.prev = self.actions[0]
            del self.obs[0], self.actions[0], self.rtgs[0]
        T = len(self.obs)
        actions = torch.from_numpy(np.stack(self.actions, axis=1))  # (B, T, act)
        prev = torch.cat([torch.from_numpy(self.prev)[:, None], actions[:, :-1]], dim=1)
        timesteps = torch.arange(self.t - T + 1, self.t + 1).repeat(len(self.rtg), 1)
        pred, _ = self.model(torch.from_numpy(np.stack(self.obs, axis=1)), actions,
                             torch.from_numpy(np.stack(self.rtgs, axis=1)), timesteps, prev_actions=prev)
        self.actions[-1] = pred[:, -1].numpy()
        return self.actions[-1]


def tokens_label(config) -> str:
    """The tokenization and the token options that differ from the defaults."""
    extras = ["return_ln"] * config.return_ln + ["no prev_action"] * (not config.prev_action)
    return ", ".join([config.tokens, *extras])


def evaluate(run: Path, seed: int, episodes: int) -> list[dict]:
    policy = Policy.load(run)
    env_id, meta = policy.env_id, policy.meta
    target = default_target_return(env_id)
    ref = meta.get("ref_min_score"), meta.get("ref_max_score")
    rows = []
    for acting, actor in (("state", policy), ("window", WindowActor(policy.model))):
        frame = rollout(actor, env_id, episodes, target, seed=eval_seed(seed), ref=ref)
        rows.append({"run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run),
                     "backbone": policy.model.config.backbone, "tokens": tokens_label(policy.model.config),
                     "seed": seed, "acting": acting, "target_return": target, "episodes": episodes,
                     "score": frame.normalized_score.mean(), "length": frame.length.mean()})
        print(f"{rows[-1]['run']}: {acting:6s} {rows[-1]['score']:6.1f} (mean length {rows[-1]['length']:.0f})")
    return rows


def write_report(frame: pd.DataFrame, path: Path) -> None:
    table = frame.pivot_table(index=["run", "tokens", "seed"], columns="acting", values="score").reset_index()
    gap = table["window - state"] = table["window"] - table["state"]
    path.with_suffix(".md").write_text(
        "# Acting from the carried state or from DT's window (CPU, last checkpoint, DT's target)\n\n"
        "`state`: the deployed O(1) policy; `window`: each action from the parallel forward over the last K steps "
        "from a zero state, as in training (experiments/studies/window_acting.py). Same start states for both.\n\n"
        + table.to_markdown(index=False, floatfmt=".1f")
        + f"\n\nwindow - state over {len(table)} runs: mean {gap.mean():+.1f}, within ±5 on {(gap.abs() <= 5).sum()}, "
        f"window higher by more than 5 on {(gap > 5).sum()}, lower by more than 5 on {(gap < -5).sum()}.\n")


def per_run_study(doc: str, path: Path, evaluate: Callable[[Path, int, int], list[dict]],
                  write_report: Callable[[pd.DataFrame, Path], None]) -> None:
    """The command line the per-run studies share: `evaluate(run, seed, episodes)` each RUN_DIR's last
    checkpoint (seed: the run's training seed unless --seed), merge the rows into the CSV at `path` (rows of
    other runs kept) and rewrite its report; --report only rewrites the report."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("runs", nargs="*", type=Path)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=None, help="evaluation seed (default: the run's training seed)")
    p.add_argument("--report", action="store_true", help="only rewrite the markdown from the CSV")
    args = p.parse_args()
    if args.report:
        write_report(pd.read_csv(path), path)
        return
    torch.set_num_threads(1)
    rows = []
    for run in args.runs:
        run = run.resolve()
        seed = args.seed if args.seed is not None else Policy.load(run).meta["train_config"]["seed"]
        rows += evaluate(run, seed, args.episodes)
    with locked(path):
        frame = pd.DataFrame(rows)
        if path.exists():
            old = pd.read_csv(path)
            frame = pd.concat([old[~old.run.isin(set(frame.run))], frame], ignore_index=True)
        frame.to_csv(path, index=False)
    write_report(frame, path)


def main():
    per_run_study(__doc__, ROOT / "results" / "window_acting_cpu.csv", evaluate, write_report)


if __name__ == "__main__":
    main()
