"""Training protocols shared by the experiment scripts, and one train-then-evaluate run.

- `paper`: the Decision Transformer's 100k updates, lr 1e-4, 10k warm-up (GPU machines): the `dt` preset's
  training.
- `cpu`: what fits 2 CPU cores: `decision_rnn.presets.CPU_PROTOCOL` (3000 updates, a 10x learning rate, a warm-up
  over 10% of the updates, cosine decay, end-aligned windows, clip 0.25 / 3), the training of the `fast` preset
  and of every grid agent's preset. Its docstring says where each choice comes from.
Every number in results/ says which protocol and device produced it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from decision_rnn import ModelConfig, TrainConfig
from decision_rnn.data import load_dataset
from decision_rnn.evaluation import evaluate_run
from decision_rnn.presets import CPU_PROTOCOL, train_config
from decision_rnn.training import train

PROTOCOLS = {"paper": train_config("dt"), "cpu": TrainConfig(**CPU_PROTOCOL)}


def protocol_config(protocol: str, steps: int | None = None) -> TrainConfig:
    """The protocol's TrainConfig, with `steps` overridden; the CPU protocol warms up over 10% of them."""
    cfg = PROTOCOLS[protocol]
    cfg = replace(cfg, steps=steps or cfg.steps)
    if protocol == "cpu":
        cfg = replace(cfg, warmup_steps=max(cfg.steps // 10, 1))
    return cfg


def training_seconds(run_dir: Path) -> float:
    """Wall-clock training time of a run from its log.csv, summed over resumed segments.

    `elapsed_s` restarts at every resume, so each drop starts a new segment. Time after the last
    logged row of an interrupted segment is not counted.
    """
    elapsed = pd.read_csv(run_dir / "log.csv").elapsed_s.to_numpy()
    ends = [i for i in range(len(elapsed)) if i == len(elapsed) - 1 or elapsed[i + 1] < elapsed[i]]
    return float(sum(elapsed[i] for i in ends))


def run_configs(
    obs_dim: int,
    act_dim: int,
    backbone: str,
    *,
    protocol: str = "cpu",
    steps: int | None = None,
    tokens: str = "interleaved",
    context: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    model_options: dict | None = None,
    train_options: dict | None = None,
) -> tuple[ModelConfig, TrainConfig]:
    """The configs `train_and_evaluate` trains: the protocol's training with `train_options` over it."""
    model_cfg = ModelConfig(obs_dim=obs_dim, act_dim=act_dim, backbone=backbone, tokens=tokens, **(model_options or {}))
    options = {**({"context": context} if context else {}), **(train_options or {})}  # options win
    return model_cfg, replace(protocol_config(protocol, steps), seed=seed, device=device, **options)


def train_and_evaluate(datasets: list[str], backbone: str, out: Path, *, episodes: int = 10, **options) -> dict:
    """Train one agent (resuming if `out` has checkpoints) and evaluate its LAST checkpoint. `options`: those of
    `run_configs`."""
    dataset = load_dataset(datasets if len(datasets) > 1 else datasets[0])
    model_cfg, train_cfg = run_configs(dataset.obs_dim, dataset.act_dim, backbone, **options)
    summary = train(dataset, model_cfg, train_cfg, out, resume=True, progress=False)
    result = evaluate_run(out, episodes=episodes, seeds=[train_cfg.seed], device=train_cfg.device,
                          runtime="torch")["results"][0]
    return {
        "datasets": "+".join(d.split("/")[-1].removesuffix("-v0") for d in datasets),
        "env_id": dataset.env_id,
        "agent": f"{backbone}",
        "tokens": model_cfg.tokens,
        "context": train_cfg.context,
        "seed": train_cfg.seed,
        "protocol": options.get("protocol", "cpu"),
        "updates": summary["steps"],
        "train_wall_s": training_seconds(out),
        "score": result["score_mean"],
        "score_std_episodes": result["score_std_episodes"],
        "return_mean": result["return_mean"],
        "episodes": result["episodes"],
        "device": torch.cuda.get_device_name() if train_cfg.device == "cuda" else "cpu",
    }
