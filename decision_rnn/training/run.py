"""Dataset + configs -> a trained run directory. The one function the CLI and the experiments call."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from ..config import ModelConfig, TrainConfig
from ..models import DecisionRNN
from .trainer import EvalHook, Trainer, seed_everything

log = logging.getLogger(__name__)


def build_model(dataset, config: ModelConfig) -> DecisionRNN:
    """A fresh agent for `dataset`, its observation statistics stored inside the model."""
    if (config.obs_dim, config.act_dim) != (dataset.obs_dim, dataset.act_dim):
        raise ValueError(
            f"model expects obs_dim={config.obs_dim}, act_dim={config.act_dim} but the dataset "
            f"({dataset.env_id}) has obs_dim={dataset.obs_dim}, act_dim={dataset.act_dim}"
        )
    model = DecisionRNN(config)
    model.set_normalization(dataset.obs_mean, dataset.obs_std)
    return model


def train(
    dataset,
    model_config: ModelConfig,
    train_config: TrainConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    eval_hook: EvalHook | None = None,
    progress: bool = True,
) -> dict:
    """Train (or, with `resume`, continue) a run in `out`; returns the trainer's summary."""
    out = Path(out)
    if not resume and (out / "checkpoints").exists() and any((out / "checkpoints").glob("step_*")):
        raise FileExistsError(f"{out} already holds checkpoints: pass --resume to continue it, or pick a new --out")
    meta = {
        "env_id": dataset.env_id,
        "datasets": list(dataset.ids),
        "sources": list(dataset.sources),
        "dataset_steps": int(dataset.num_steps),
        "dataset_episodes": int(dataset.num_episodes),
        "ref_min_score": dataset.ref_min_score,  # floats, or None where the data has no reference returns
        "ref_max_score": dataset.ref_max_score,
    }
    seed_everything(train_config.seed)  # the same seed gives the same initial weights
    trainer = Trainer(build_model(dataset, model_config), dataset, train_config, out, eval_hook=eval_hook, meta=meta)
    if resume and not trainer.resume():
        log.info("--resume: no checkpoint in %s yet, starting fresh", out)
    elif not resume:  # rows a run that died before its first checkpoint left would precede this one's
        trainer.truncate_logs(0)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(
        json.dumps({"model": asdict(model_config), "train": asdict(train_config), **meta}, indent=2)
    )
    summary = trainer.fit(progress=progress)
    log.info("trained %s: %s", out, summary)
    return summary
