"""Anatomy of a fall: what tells a walker2d-mixed run that walks from one that falls.

    python experiments/studies/fall_anatomy.py [--agent minlstm-return-ln] [--dataset walker2d-mixed] [--seeds 0 1]

On walker2d-mixed the grid's runs either walk (~80-88) or fall (~2-16) by training seed, for every DT-style agent
(results/grid_cpu.md). This trains (or resumes) the grid's agent at each seed under runs/fall_anatomy/ with the
CPU protocol and checks the score against the grid's row (training on CPU is deterministic, so they must match),
then writes results/fall_anatomy_cpu.md:
- each run's score and episode lengths at DT's target and at lower ones (the grid's evaluation seeds);
- the first action (t = 0) against the data's first actions in its good (return > 3000) and failed (< 500)
  episodes, at several targets: does the return steer the start?
- the torso height (observation 0) over the first steps, every run from the same 10 start states, and how far
  apart the runs' actions are: where do a walking and a falling run part?
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from decision_rnn import Policy
from decision_rnn.data import load_dataset
from decision_rnn.evaluation.rollout import default_target_return, make_envs, rollout

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))  # the grid's modules: protocol.py, results_grid.py
from protocol import train_and_evaluate  # noqa: E402
from results_grid import AGENTS, DATASETS, agent_spec, current, eval_seed  # noqa: E402

TARGETS = (1.0, 0.6, 0.2)  # x DT's target return
START_TARGETS = (0.0, 0.2, 0.6, 1.0, 1.6)
EPISODES = 10
TRACE_STEPS = 150
TRACE_EVERY = 10


def first_actions(data, good: float = 3000.0, failed: float = 500.0) -> dict[str, np.ndarray]:
    """A TrajectoryDataset's mean first action over its episodes returning more than `good` and less than
    `failed`."""
    returns = np.asarray(data.episode_returns)
    first = np.asarray(data.actions)[np.asarray(data.offsets)[:-1]]  # (episodes, act_dim)
    for name, keep in (("good", returns > good), ("failed", returns < failed)):
        if not keep.any():
            raise ValueError(f"no {name} episode (returns span {returns.min():.0f} to {returns.max():.0f}); "
                             f"choose other thresholds than good > {good:.0f}, failed < {failed:.0f}")
    return {"good": first[returns > good].mean(0), "failed": first[returns < failed].mean(0)}


def trace(policy: Policy, env_id: str, target: float) -> tuple[np.ndarray, np.ndarray]:
    """Torso height (TRACE_STEPS, EPISODES) and actions (TRACE_STEPS, EPISODES, act_dim) from env seeds 0-9;
    NaN after an episode ends."""
    envs = make_envs(env_id, EPISODES)
    try:
        obs, _ = envs.reset(seed=0)
        policy.reset(target, batch_size=EPISODES)
        heights = np.full((TRACE_STEPS, EPISODES), np.nan)
        actions = np.full((TRACE_STEPS, EPISODES, policy.act_dim), np.nan)
        running, reward = np.ones(EPISODES, dtype=bool), None
        for t in range(TRACE_STEPS):
            action = policy.act(obs, reward)
            heights[t, running] = obs[running, 0]
            actions[t, running] = action[running]
            obs, reward, terminated, truncated, _ = envs.step(action)
            running &= ~(terminated | truncated)
    finally:
        envs.close()
    return heights, actions


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agent", default="minlstm-return-ln", choices=[a for a in AGENTS if a != "d3rlpy-dt"])
    p.add_argument("--dataset", default="walker2d-mixed", choices=sorted(DATASETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ids = DATASETS[args.dataset]
    backbone, tokens, model_options, train_options = agent_spec(args.agent)
    grid_csv = ROOT / "results" / "grid_cpu.csv"
    if not grid_csv.exists():
        raise SystemExit(f"no {grid_csv}: run experiments/results_grid.py first (this checks its runs)")
    grid = current(pd.read_csv(grid_csv))
    grid = grid[(grid.dataset == args.dataset) & (grid.agent == args.agent)].set_index("seed").score

    runs, lines = {}, []
    for seed in args.seeds:
        out = ROOT / "runs" / "fall_anatomy" / args.dataset / f"{args.agent}-s{seed}"
        row = train_and_evaluate(ids, backbone, out, protocol="cpu", tokens=tokens, context="window", seed=seed,
                                 model_options=model_options, train_options=train_options)
        if seed in grid.index and not np.isclose(row["score"], grid[seed], atol=1e-6):
            raise SystemExit(f"seed {seed}: scored {row['score']:.4f}, the grid's row {grid[seed]:.4f}: "
                             "the training is not the grid's (another code version?)")
        runs[seed] = (Policy.load(out), row["env_id"])

    env_id = next(iter(runs.values()))[1]
    target = default_target_return(env_id)
    lines += [f"# Anatomy of a fall: {args.agent} on {args.dataset} (CPU protocol, last checkpoint)", "",
              "From `python experiments/studies/fall_anatomy.py` (its docstring says what each part shows). Every run "
              "below re-trained to the grid's score to all printed digits (checked).", "",
              f"Scores and episode lengths ({EPISODES} episodes at the grid's evaluation seeds):", "",
              "| seed | target | score | episode lengths |", "|---:|---:|---:|---|"]
    for seed, (policy, _) in runs.items():
        for f in TARGETS:
            ep = rollout(policy, env_id, EPISODES, f * target, seed=eval_seed(seed))
            lines.append(f"| {seed} | {f * target:.0f} | {ep.normalized_score.mean():.1f} | "
                         f"{', '.join(str(n) for n in ep.length)} |")

    data = first_actions(load_dataset(ids if len(ids) > 1 else ids[0]))
    envs = make_envs(env_id, EPISODES)
    start, _ = envs.reset(seed=0)
    envs.close()
    lines += ["", "First action (mean over 10 start states) and its distance to the data's mean first action in "
              "good episodes (return > 3000) and failed ones (return < 500):", "",
              "| | target | first action | to good | to failed |", "|---|---:|---|---:|---:|"]
    for name, a in data.items():
        lines.append(f"| data, {name} episodes | | {np.array2string(a, precision=2)} | "
                     f"{np.linalg.norm(a - data['good']):.2f} | {np.linalg.norm(a - data['failed']):.2f} |")
    for seed, (policy, _) in runs.items():
        for f in START_TARGETS:
            policy.reset(f * target, batch_size=EPISODES)
            a = policy.act(start).mean(0)
            lines.append(f"| seed {seed} | {f * target:.0f} | {np.array2string(a, precision=2)} | "
                         f"{np.linalg.norm(a - data['good']):.2f} | {np.linalg.norm(a - data['failed']):.2f} |")

    traces = {seed: trace(policy, env_id, target) for seed, (policy, _) in runs.items()}
    seeds = list(traces)
    steps = range(0, TRACE_STEPS, TRACE_EVERY)
    head = " | ".join(f"seed {s} height (min-max over episodes)" for s in seeds)
    gap = len(seeds) == 2
    lines += ["", f"From the same 10 start states (env seeds 0-9) at target {target:.0f}: torso height by step "
              "(blank once every episode has ended)" + (", and the distance between the two runs' actions "
                                                        "(mean over episodes)" if gap else "") + ":", "",
              f"| step | {head} |" + (" action distance |" if gap else ""),
              "|---:|" + "---|" * len(seeds) + ("---:|" if gap else "")]
    for t in steps:
        cells = []
        for s in seeds:
            h = traces[s][0][t]
            cells.append("" if np.isnan(h).all() else f"{np.nanmean(h):.2f} ({np.nanmin(h):.2f}-{np.nanmax(h):.2f})")
        row = f"| {t} | {' | '.join(cells)} |"
        if gap:
            d = np.linalg.norm(traces[seeds[0]][1][t] - traces[seeds[1]][1][t], axis=-1)
            row += f" {np.nanmean(d):.2f} |" if np.isfinite(d).any() else " |"
        lines.append(row)
    out = ROOT / "results" / "fall_anatomy_cpu.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
