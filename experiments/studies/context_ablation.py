"""Window vs episode vs stream context for the recurrent agents, scored under true O(1) rollout.

At rollout a recurrent agent's state runs over the whole episode. `window` training (DT's K-step
windows from random starts, fresh state each) never shows the model such a state; `episode`
training (whole episodes from their first step) does, with few episodes per update; `stream`
(K-step chunks of whole episodes, the state carried between chunks) does, with a window batch's
64 episodes per update. This script trains them on the same data with the same protocol and
evaluates each agent's last checkpoint by stepping it through full episodes (constant cost per step).

    python experiments/studies/context_ablation.py [--dataset ID] [--backbone mingru ...] [--contexts window stream]
                                           [--steps 3000] [--seeds 0 1]

Appends to results/context_ablation.csv (a (dataset, agent, tokens, context, seed) row of the current
`results_grid.CODE_VERSION` already there is not run again) and rewrites results/context_ablation.md from
all of its rows.
"""

import argparse
import os
import sys
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))  # the grid's modules: protocol.py, results_grid.py
from protocol import train_and_evaluate  # noqa: E402
from results_grid import CODE_VERSION  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="zoo/hopper/medium-v0")
    p.add_argument("--backbone", action="append")
    p.add_argument("--tokens", default="compact")
    p.add_argument("--contexts", nargs="+", default=["window", "episode", "stream"])
    p.add_argument("--protocol", default="cpu")
    p.add_argument("--steps", type=int)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    path = ROOT / "results" / "context_ablation.csv"
    frame = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["dataset", "agent", "tokens", "context",
                                                                          "seed"])
    frame["dataset"] = frame["dataset"].fillna("zoo/hopper/medium-v0")  # the first rows predate the column
    for backbone in args.backbone or ["mingru"]:
        for context in args.contexts:
            for seed in args.seeds:
                key = {"dataset": args.dataset, "agent": backbone, "tokens": args.tokens, "context": context,
                       "seed": seed, "version": CODE_VERSION}
                if (frame[list(key)] == pd.Series(key)).all(axis=1).any():
                    continue
                name = f"{backbone}-{args.tokens}-{context}-{args.protocol}-s{seed}"
                out = ROOT / "runs" / "ablation" / args.dataset.replace("/", "_") / name
                row = train_and_evaluate([args.dataset], backbone, out, protocol=args.protocol, steps=args.steps,
                                         tokens=args.tokens, context=context, seed=seed, episodes=args.episodes,
                                         device=args.device)
                row.update(dataset=args.dataset, load_avg=os.getloadavg()[0], version=CODE_VERSION)
                print(row, flush=True)
                frame = pd.concat([pd.read_csv(path) if path.exists() else None, pd.DataFrame([row])],
                                  ignore_index=True)  # re-read: another process may have appended
                frame["dataset"] = frame["dataset"].fillna("zoo/hopper/medium-v0")
                frame.to_csv(path, index=False)
    table = (frame.groupby(["dataset", "agent", "tokens", "context", "version"])
             .agg(score=("score", "mean"), score_std_seeds=("score", "std"), seeds=("seed", "count"),
                  updates=("updates", "first"), train_wall_s=("train_wall_s", "mean"))
             .reset_index())
    header = (f"# Context ablation: protocol {args.protocol}, {args.episodes} episodes per seed, last checkpoint, "
              "mean and std over seeds; train_wall_s per run, on a machine shared with other jobs")
    print(table.to_string(index=False))
    (ROOT / "results" / "context_ablation.md").write_text(
        f"{header}\n\n{table.to_markdown(index=False, floatfmt='.1f')}\n")

if __name__ == "__main__":
    main()
