"""Training updates/s, side by side in one run: our agents vs d3rlpy's DecisionTransformer.

Same data (zoo/hopper/medium-v0), same model size (DT's: embed 128, 3 layers, K=20, batch 64),
same thread count. d3rlpy runs from its own venv (`bash experiments/setup_d3rlpy.sh`).

    python experiments/bench_train_speed.py [--threads 2] [--updates 100] [--skip-d3rlpy]

Writes results/bench_train_speed_<device>.csv and .md.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from decision_rnn import ModelConfig, TrainConfig
from decision_rnn.data import load_dataset
from decision_rnn.training import Trainer, build_model

ROOT = Path(__file__).resolve().parents[1]


def ours(dataset, backbone, tokens, context, updates, device):
    model_cfg = ModelConfig(obs_dim=dataset.obs_dim, act_dim=dataset.act_dim, backbone=backbone, tokens=tokens)
    train_cfg = TrainConfig(steps=10**9, context=context, device=device)
    trainer = Trainer(build_model(dataset, model_cfg), dataset, train_cfg, "/tmp/bench-train-speed")
    for _ in range(5):  # warm-up
        trainer.update()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(updates):
        trainer.update()  # .item() inside syncs each update
    wall = time.perf_counter() - t0
    steps_per_update = train_cfg.batch_size * model_cfg.context_len if context == "window" else None
    return {"impl": f"decision-rnn {backbone}", "tokens": tokens, "context": context,
            "updates_per_s": updates / wall, "env_steps_per_update": steps_per_update}


def d3rlpy(threads, updates):
    python = ROOT / ".venv-d3rlpy" / "bin" / "python"
    if not python.exists():
        print("skipping d3rlpy: run `bash experiments/setup_d3rlpy.sh` first", file=sys.stderr)
        return None
    out = subprocess.run([str(python), str(ROOT / "experiments" / "d3rlpy_baseline.py"), "speed",
                          "--steps", str(updates), "--threads", str(threads)],
                         capture_output=True, text=True, check=True, env=os.environ)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return {"impl": row["impl"], "tokens": "interleaved", "context": "window", "updates_per_s": row["updates_per_s"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--updates", type=int, default=100)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-d3rlpy", action="store_true")
    p.add_argument("--episode", action="store_true", help="also time `episode` context (whole episodes)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset("zoo/hopper/medium-v0")
    load = os.getloadavg()
    rows = []
    if not args.skip_d3rlpy:
        base = d3rlpy(args.threads, args.updates)
        if base:
            rows.append(base)
    contexts = ["window", "episode"] if args.episode or args.device == "cuda" else ["window"]
    for backbone in ["mingru", "minlstm", "lru", "transformer"]:
        for tokens in ["interleaved", "compact"]:
            for context in contexts:
                if backbone == "transformer" and context == "episode":
                    continue
                rows.append(ours(dataset, backbone, tokens, context, args.updates, args.device))
                print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    base = frame[frame.impl.str.startswith("d3rlpy")].updates_per_s
    if len(base):
        frame["vs_d3rlpy"] = frame.updates_per_s / base.iloc[0]
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({args.threads} threads)"
    header = (f"device: {device}; torch {torch.__version__}; {args.updates} timed updates after 5 warm-up; "
              f"load average at start {load[0]:.2f}")
    print(header)
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    out = ROOT / "results" / f"bench_train_speed_{args.device}"
    frame.to_csv(out.with_suffix(".csv"), index=False)
    out.with_suffix(".md").write_text(f"{header}\n\n{frame.to_markdown(index=False, floatfmt='.2f')}\n")


if __name__ == "__main__":
    main()
