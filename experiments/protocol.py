"""Training protocols shared by the experiment scripts, and one train-then-evaluate run.

- `paper`: the Decision Transformer's 100k updates, lr 1e-4, 10k warm-up (GPU machines).
- `cpu`: what fits 2 CPU cores — a few thousand updates, so a 10x larger learning rate and a
  warm-up of 10% of the updates. Since code v3 two changes against the short budget's swings, both
  measured in results/recipe_ablation_cpu.md before adoption: the rate decays (cosine, to lr / 10) so
  the last checkpoint is not taken at the full rate, and windows end at a drawn step (d3rlpy's
  slicer) so an episode's first K steps are trained as often as the rest. Since v4 the gradient clip is
  d3rlpy's effective one, 0.25 / 3 (d3rlpy sums the squared error over the action dimensions before
  clipping at 0.25; we average it), adopted with the model defaults of v4 (ReLU, N(0, 0.02) init; see
  decision_rnn/config.py) after the recipe ablation's `d3rlpy-model` runs. Everything else (model size,
  batch, dropout) is DT's; d3rlpy's DT keeps its own reproduction config.
Every number in results/ says which protocol and device produced it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from decision_rnn import ModelConfig, TrainConfig
from decision_rnn.config import default_context
from decision_rnn.data import load_dataset
from decision_rnn.evaluation import evaluate_run
from decision_rnn.training import train

PROTOCOLS = {
    "paper": TrainConfig(),
    "cpu": TrainConfig(steps=3000, lr=1e-3, warmup_steps=300, lr_decay="cosine", window_align="end",
                      grad_clip=0.25 / 3, episode_batch_size=4, checkpoint_every=1000),
}


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


def train_and_evaluate(
    datasets: list[str],
    backbone: str,
    out: Path,
    *,
    protocol: str = "cpu",
    steps: int | None = None,
    tokens: str = "interleaved",
    context: str | None = None,
    seed: int = 0,
    episodes: int = 10,
    device: str = "cpu",
    model_options: dict | None = None,
    train_options: dict | None = None,
) -> dict:
    """Train one agent (resuming if `out` has checkpoints) and evaluate its LAST checkpoint."""
    dataset = load_dataset(datasets if len(datasets) > 1 else datasets[0])
    model_cfg = ModelConfig(obs_dim=dataset.obs_dim, act_dim=dataset.act_dim, backbone=backbone, tokens=tokens,
                            **(model_options or {}))
    options = {"context": context or default_context(backbone), **(train_options or {})}  # options win
    train_cfg = replace(protocol_config(protocol, steps), seed=seed, device=device, **options)
    summary = train(dataset, model_cfg, train_cfg, out, resume=True, progress=False)
    result = evaluate_run(out, episodes=episodes, seeds=[seed], device=device)["results"][0]
    return {
        "datasets": "+".join(d.split("/")[-1].removesuffix("-v0") for d in datasets),
        "env_id": dataset.env_id,
        "agent": f"{backbone}",
        "tokens": tokens,
        "context": train_cfg.context,
        "seed": seed,
        "protocol": protocol,
        "updates": summary["steps"],
        "train_wall_s": training_seconds(out),
        "score": result["score_mean"],
        "score_std_episodes": result["score_std_episodes"],
        "return_mean": result["return_mean"],
        "episodes": result["episodes"],
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
    }
