"""Window vs episode context for the recurrent agents, scored under true O(1) rollout.

At rollout a recurrent agent's state runs over the whole episode. `window` training (DT's K-step
windows from random starts, fresh state each) never shows the model such a state; `episode`
training (whole episodes from their first step) does. This script trains both on the same data
with the same protocol and evaluates each agent's last checkpoint by stepping it through full
episodes (Policy.act, constant cost per step).

    python experiments/context_ablation.py [--backbone mingru ...] [--steps 3000] [--seeds 0 1]

Writes results/context_ablation.csv and .md (appends/reuses finished runs under runs/ablation/).
"""

import argparse
import os
from pathlib import Path

import pandas as pd
import torch
from protocol import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="zoo/hopper/medium-v0")
    p.add_argument("--backbone", action="append")
    p.add_argument("--tokens", default="compact")
    p.add_argument("--protocol", default="cpu")
    p.add_argument("--steps", type=int)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for backbone in args.backbone or ["mingru"]:
        for context in ["window", "episode"]:
            for seed in args.seeds:
                out = ROOT / "runs" / "ablation" / f"{backbone}-{args.tokens}-{context}-{args.protocol}-s{seed}"
                rows.append(train_and_evaluate([args.dataset], backbone, out, protocol=args.protocol,
                                               steps=args.steps, tokens=args.tokens, context=context, seed=seed,
                                               episodes=args.episodes, device=args.device))
                print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    table = (frame.groupby(["agent", "tokens", "context"])
             .agg(score=("score", "mean"), score_std_seeds=("score", "std"), seeds=("seed", "count"),
                  updates=("updates", "first"), train_wall_s=("train_wall_s", "mean"))
             .reset_index())
    header = (f"dataset {args.dataset}; protocol {args.protocol}; {args.episodes} episodes per seed; "
              f"device {frame.device.iloc[0]}; load average at end {os.getloadavg()[0]:.2f}")
    print(header)
    print(table.to_string(index=False))
    frame.to_csv(ROOT / "results" / "context_ablation.csv", index=False)
    (ROOT / "results" / "context_ablation.md").write_text(
        f"{header}\n\n{table.to_markdown(index=False, floatfmt='.1f')}\n")


if __name__ == "__main__":
    main()
