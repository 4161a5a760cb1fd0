"""Training updates/s, side by side in one run: every backbone and token layout, and d3rlpy's DecisionTransformer.

Same data (zoo/hopper/medium-v0), same model size (DT's: embed 128, 3 layers, K=20, batch 64), same thread count.
An update is what `Trainer.update` does: sample a batch, forward, backward, clip, AdamW step. The classic `gru` and
`lstm` run their steps in order (cuDNN on a GPU); the min-RNNs and the LRU run one parallel scan. d3rlpy runs from
its own venv (`bash experiments/setup_d3rlpy.sh`) and is skipped without it.

    python experiments/bench_train_speed.py [--threads 1] [--updates 100] [--rounds 5] [--skip-d3rlpy] [--compile]

Writes results/bench_train_speed_<device>.csv and .md.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from decision_rnn import ModelConfig, TrainConfig
from decision_rnn.backbones import BACKBONES
from decision_rnn.data import load_dataset
from decision_rnn.models.agent import TOKENS_PER_STEP
from decision_rnn.training import Trainer, build_model

ROOT = Path(__file__).resolve().parents[1]


def make_trainer(dataset, backbone, tokens, context, device, run_dir, *, compile=False, model_options=None,
                 train_options=None) -> Trainer:
    """A trainer of `backbone` with `tokens` at DT's size unless `model_options` / `train_options` say."""
    model_cfg = ModelConfig(obs_dim=dataset.obs_dim, act_dim=dataset.act_dim, backbone=backbone, tokens=tokens,
                            **(model_options or {}))
    train_cfg = TrainConfig(steps=10**9, context=context, device=device, compile=compile, **(train_options or {}))
    return Trainer(build_model(dataset, model_cfg), dataset, train_cfg, run_dir)  # writes nothing before `fit`


def timed_updates(trainer: Trainer, updates: int) -> float:
    """Seconds for `updates` calls of `Trainer.update`, the device synchronised before and after."""
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else lambda: None
    sync()
    t0 = time.perf_counter()
    for _ in range(updates):
        trainer.update()
    sync()  # the last update's kernels are part of its time
    return time.perf_counter() - t0


def row(trainer: Trainer, rate: float) -> dict:
    model, train = trainer.model.config, trainer.config
    window = train.context == "window"
    return {"impl": f"decision-rnn {model.backbone}" + (" (compiled)" if train.compile else ""), "tokens": model.tokens,
            "context": train.context, "updates_per_s": rate,
            "env_steps_per_update": train.batch_size * model.context_len if window else None,
            "seq_len": TOKENS_PER_STEP[model.tokens] * model.context_len if window else None}


def ours(dataset, backbone, tokens, context, updates, device, *, compile=False, model_options=None,
         train_options=None, warmup=5) -> dict:
    """One row: updates/s over `updates` updates after `warmup` untimed ones (which hold torch.compile's work)."""
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = make_trainer(dataset, backbone, tokens, context, device, run_dir, compile=compile,
                               model_options=model_options, train_options=train_options)
        timed_updates(trainer, warmup)
        return row(trainer, updates / timed_updates(trainer, updates))


def interleaved_rows(dataset, configs, updates, device, rounds, warmup=5) -> list[dict]:
    """Rows for every (backbone, tokens, context, compile) in `configs`, timed in `rounds` blocks of updates taken
    in turn across the configurations, so that a burst of load on a shared machine falls on all of them alike; the
    rate is the median over a row's blocks."""
    with tempfile.TemporaryDirectory() as tmp:
        trainers = [make_trainer(dataset, b, t, c, device, Path(tmp) / str(i), compile=compiled)
                    for i, (b, t, c, compiled) in enumerate(configs)]
        for trainer in trainers:
            timed_updates(trainer, warmup)
        block = max(1, updates // rounds)
        rates = [[] for _ in trainers]
        for r in range(rounds):
            for trainer, rate in zip(trainers, rates):
                rate.append(block / timed_updates(trainer, block))
            print(f"round {r + 1}/{rounds} done", flush=True)
        return [row(trainer, statistics.median(rate)) for trainer, rate in zip(trainers, rates)]


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
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--updates", type=int, default=100, help="timed updates per row")
    p.add_argument("--rounds", type=int, default=5, help="blocks the timed updates are taken in, rows in turn")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    p.add_argument("--tokens", nargs="+", default=list(TOKENS_PER_STEP), choices=list(TOKENS_PER_STEP))
    p.add_argument("--skip-d3rlpy", action="store_true")
    p.add_argument("--compile", action="store_true", help="also time each row with TrainConfig.compile")
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
    configs = [(backbone, tokens, context, compile) for backbone in args.backbones for tokens in args.tokens
               for context in contexts for compile in ([False, True] if args.compile else [False])
               if BACKBONES[backbone].recurrent or context == "window"]
    rows += interleaved_rows(dataset, configs, args.updates, args.device, args.rounds)
    frame = pd.DataFrame(rows)
    base = frame[frame.impl.str.startswith("d3rlpy")].updates_per_s
    if len(base):
        frame["vs_d3rlpy"] = frame.updates_per_s / base.iloc[0]
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({args.threads} threads)"
    header = (f"device: {device}; torch {torch.__version__}; {args.updates} timed updates per row after 5 warm-up, "
              f"in {args.rounds} blocks taken in turn across the rows (updates/s: the median block); "
              f"load average at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f}")
    print(header)
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    out = ROOT / "results" / f"bench_train_speed_{args.device}"
    frame.to_csv(out.with_suffix(".csv"), index=False)
    out.with_suffix(".md").write_text(f"{header}\n\n{frame.to_markdown(index=False, floatfmt='.2f')}\n")


if __name__ == "__main__":
    main()
