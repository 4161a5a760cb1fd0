"""The headline grid: normalized scores on Hopper and Walker2d for our agents and d3rlpy's DT.

    python experiments/results_grid.py --protocol cpu   [--seeds 0 1 2] [--episodes 10]
    python experiments/results_grid.py --protocol paper --device cuda --seeds 0 1 2 --episodes 100

Each (dataset, agent, seed) trains into runs/grid/..., resumes if interrupted, and is skipped when its
result row already exists in results/grid_<protocol>.csv (so the grid can be filled over several
sessions). Scores are from the LAST checkpoint. Writes results/grid_<protocol>.{csv,md}.
"""

import argparse
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from protocol import PROTOCOLS, train_and_evaluate

from decision_rnn.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {
    "hopper-medium": ["zoo/hopper/medium-v0"],
    "hopper-mixed": ["zoo/hopper/mixed-v0"],
    "hopper-medium-expert": ["zoo/hopper/medium-v0", "zoo/hopper/expert-v0"],
    "walker2d-medium": ["zoo/walker2d/medium-v0"],
    "walker2d-mixed": ["zoo/walker2d/mixed-v0"],
    "walker2d-medium-expert": ["zoo/walker2d/medium-v0", "zoo/walker2d/expert-v0"],
}
AGENTS = ["mingru", "minlstm", "lru", "transformer", "d3rlpy-dt"]


def d3rlpy_run(ids, protocol, seed, episodes, device):
    """d3rlpy's DT with the same number of updates, learning rate and warm-up as our agents get."""
    cfg = PROTOCOLS[protocol]
    steps, warmup = cfg.steps, cfg.warmup_steps
    python = ROOT / ".venv-d3rlpy" / "bin" / "python"
    cmd = [str(python), str(ROOT / "experiments" / "d3rlpy_baseline.py"), "train", "--steps", str(steps),
           "--seed", str(seed), "--episodes", str(episodes), "--lr", str(cfg.lr), "--warmup", str(warmup),
           "--device", "cuda:0" if device == "cuda" else "cpu:0"]
    for i in ids:
        cmd += ["--dataset", i]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    return {"agent": "d3rlpy-dt", "tokens": "interleaved", "context": "window", "seed": seed, "updates": steps,
            "train_wall_s": out["train_wall_s"], "score": out["score_mean"], "score_std_episodes": out["score_std"],
            "return_mean": out["return_mean"], "episodes": episodes}


def dataset_reference(ids):
    """What the data itself reaches: mean and max normalized episode return."""
    scores = load_dataset(ids if len(ids) > 1 else ids[0]).normalized_returns()
    return float(np.mean(scores)), float(np.max(scores))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu")
    p.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS))
    p.add_argument("--agents", nargs="+", choices=AGENTS, default=AGENTS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--tokens", default="compact", help="tokenization of our agents")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    csv_path = ROOT / "results" / f"grid_{args.protocol}.csv"
    done = pd.read_csv(csv_path) if csv_path.exists() else pd.DataFrame(columns=["dataset", "agent", "seed"])
    for name in args.datasets:
        ids = DATASETS[name]
        for agent in args.agents:
            for seed in args.seeds:
                if ((done.dataset == name) & (done.agent == agent) & (done.seed == seed)).any():
                    continue
                if agent == "d3rlpy-dt":
                    row = d3rlpy_run(ids, args.protocol, seed, args.episodes, args.device)
                else:
                    out = ROOT / "runs" / "grid" / args.protocol / name / f"{agent}-s{seed}"
                    row = train_and_evaluate(ids, agent, out, protocol=args.protocol, tokens=args.tokens,
                                             seed=seed, episodes=args.episodes, device=args.device)
                row.update(dataset=name, protocol=args.protocol, load_avg=os.getloadavg()[0])
                done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
                done.to_csv(csv_path, index=False)  # after every run: an interrupted grid loses nothing
                print(row, flush=True)
    write_report(done, args.protocol)


def write_report(frame, protocol):
    stats = frame.groupby(["dataset", "agent"]).score.agg(["mean", "std", "count"])
    agents = [a for a in AGENTS if a in set(frame.agent)]
    lines = [f"# Normalized scores, protocol `{protocol}` (last checkpoint, mean ± std over seeds)", "",
             "| dataset | data mean / max | " + " | ".join(agents) + " |",
             "|---|---|" + "---|" * len(agents)]
    for name in DATASETS:
        if name not in stats.index.get_level_values("dataset"):
            continue
        mean, best = dataset_reference(DATASETS[name])
        cells = []
        for agent in agents:
            if (name, agent) not in stats.index:
                cells.append("—")
                continue
            m, sd, n = stats.loc[(name, agent)]
            cells.append(f"{m:.1f}" + (f" ± {sd:.1f}" if n > 1 else "") + f" (n={int(n)})")
        lines.append(f"| {name} | {mean:.1f} / {best:.1f} | " + " | ".join(cells) + " |")
    wall = frame.groupby("agent").train_wall_s.mean()
    lines += ["", "Mean training wall-clock per run (s): " + ", ".join(f"{a} {wall[a]:.0f}" for a in agents)]
    (ROOT / "results" / f"grid_{protocol}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
