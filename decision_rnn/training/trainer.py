"""A small, model-agnostic supervised trainer with exact resume.

The model only needs `loss(batch)`; the sampler only needs `sample()` and a numpy `rng`.
Logs go to `log.csv` / `eval.csv` in the run directory, and to TensorBoard when it is installed.
Resume restores weights, optimizer, scheduler, the torch RNG (dropout) and the sampler's RNG, so on
CPU an interrupted-and-resumed run reproduces the uninterrupted one exactly (tested). With
`ema_decay`, checkpoints hold the averaged weights (what is evaluated and acted with) and trainer.pt
the raw ones.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ..config import LEGACY_MODEL_DEFAULTS, TrainConfig, default_context, validate
from ..data import EpisodeSampler, StreamSampler, WindowSampler
from ..models import DecisionRNN
from .checkpoint import CheckpointError, find_checkpoint, load_model, load_trainer_state, save_checkpoint

log = logging.getLogger(__name__)

EvalHook = Callable[[DecisionRNN, int], dict[str, float]]
LOG_FIELDS = ["step", "loss", "lr", "grad_norm", "updates_per_s", "elapsed_s"]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_sampler(dataset, model: DecisionRNN, config: TrainConfig, device: torch.device):
    """`window`: DT's K-step windows; `episode`: whole episodes from their first step; `stream`: K-step
    chunks of whole episodes with the state carried between them (see `TrainConfig.context`)."""
    context = config.context or default_context(model.config.backbone)
    if context == "window":
        return WindowSampler(dataset, model.config.context_len, config.batch_size, seed=config.seed, device=device,
                             align=config.window_align)
    if context == "stream":
        return StreamSampler(dataset, model.config.context_len, config.batch_size, seed=config.seed, device=device)
    return EpisodeSampler(
        dataset, config.episode_batch_size, max_len=config.episode_max_len, seed=config.seed, device=device
    )


def _tensorboard_writer(path: Path):
    """A TensorBoard writer when the `tensorboard` package is installed (optional), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path))


def lr_factor(config: TrainConfig, step: int) -> float:
    """The learning rate at update `step` (0-based) over `config.lr`: DT's linear warm-up, then constant
    or (`lr_decay="cosine"`) a half cosine from 1 down to 0.1 at the last update."""
    warmup = max(config.warmup_steps, 1)
    if step < warmup or config.lr_decay == "none":
        return min((step + 1) / warmup, 1.0)
    progress = min((step - warmup) / max(config.steps - 1 - warmup, 1), 1.0)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


class Trainer:
    """Runs `config.steps` AdamW updates of `model.loss`, logging and checkpointing into `run_dir`."""

    def __init__(
        self,
        model: DecisionRNN,
        dataset,
        config: TrainConfig,
        run_dir: str | os.PathLike,
        *,
        eval_hook: EvalHook | None = None,
        meta: dict[str, Any] | None = None,
    ):
        validate(model.config, config)
        self.config = config
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.run_dir = Path(run_dir)
        self.eval_hook = eval_hook
        self.meta = {"train_config": asdict(config), **(meta or {})}
        seed_everything(config.seed)
        self.sampler = make_sampler(dataset, model, config, self.device)
        self._stream = isinstance(self.sampler, StreamSampler)  # carries the backbone state between updates
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, partial(lr_factor, config))
        self.ema = None if config.ema_decay is None else AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
        self.step = 0
        self._tensorboard = None
        # compile the loss itself: `torch.compile(model).loss` would run the uncompiled module
        self._loss_fn = torch.compile(model.loss) if config.compile else model.loss

    # ---- state ----------------------------------------------------------------------------------------
    @property
    def acting_model(self) -> DecisionRNN:
        """The weights checkpoints store and evaluations act with: the average with `ema_decay`."""
        return self.model if self.ema is None else self.ema.module

    def state_dict(self) -> dict[str, Any]:
        ema = {} if self.ema is None else {"weights": self.model.state_dict(), "ema_n_averaged": self.ema.n_averaged}
        return {
            **ema,
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "sampler": self.sampler.state_dict(),
        }

    def resume(self) -> bool:
        """Load the newest checkpoint in `run_dir` if there is one. Returns whether it resumed.

        Without one, log rows of an earlier start that died before its first checkpoint are dropped:
        that training is lost, and its rows would otherwise count in the run's wall-clock."""
        try:
            ckpt = find_checkpoint(self.run_dir)
        except CheckpointError:
            self.truncate_logs(0)
            return False
        loaded, meta = load_model(ckpt, self.device)
        self._check_same_run(meta)
        self.acting_model.load_state_dict(loaded.state_dict())
        state = load_trainer_state(ckpt)
        if self.ema is not None:
            self.model.load_state_dict(state["weights"])
            self.ema.n_averaged.copy_(state["ema_n_averaged"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if "sampler" in state:
            self.sampler.load_state_dict(state["sampler"])
        else:  # checkpoints before stream context saved only the sampler's generator
            self.sampler.rng.bit_generator.state = state["sampler_rng"]
        self.step = state["step"]
        self.truncate_logs(self.step)
        log.info("resumed from %s at step %d", ckpt, self.step)
        return True

    # What may change when a run is resumed: how long it runs and how it logs, checkpoints and evaluates.
    RESUMABLE = {"steps", "log_every", "checkpoint_every", "eval_every", "eval_episodes", "target_return", "device",
                 "compile"}

    def _check_same_run(self, meta: dict[str, Any]) -> None:
        """Refuse to resume a checkpoint written with another model or training config (or dataset)."""
        steps = meta.get("train_config", {}).get("steps")
        if self.config.lr_decay == "cosine" and steps is not None and steps != self.config.steps:
            raise CheckpointError(f"{self.run_dir} decays its learning rate along a cosine over {steps} updates; "
                                  f"resuming with steps={self.config.steps} would make the rate jump. Resume with "
                                  f"--steps {steps}, or start a new run")
        model_config = {**LEGACY_MODEL_DEFAULTS, **meta.get("model_config", {})}  # what older runs were built with
        saved = {**{f"model.{k}": v for k, v in model_config.items()},
                 **{f"train.{k}": v for k, v in meta.get("train_config", {}).items() if k not in self.RESUMABLE},
                 "datasets": meta.get("datasets")}
        now = {**{f"model.{k}": v for k, v in asdict(self.model.config).items()},
               **{f"train.{k}": v for k, v in asdict(self.config).items() if k not in self.RESUMABLE},
               "datasets": self.meta.get("datasets")}
        # another field the checkpoint lacks was added later, with a default that keeps the old behaviour
        differ = [f"{k}: checkpoint {saved[k]!r}, now {now.get(k)!r}" for k in sorted(saved) if saved[k] != now.get(k)]
        if differ:
            raise CheckpointError(f"{self.run_dir} was trained with another configuration; resuming would mix two "
                                  "runs. Differences:\n  " + "\n  ".join(differ) +
                                  "\nUse a new --out, or resume with the original settings.")

    def save(self) -> Path:
        return save_checkpoint(
            self.run_dir, self.acting_model, self.step, meta=self.meta, trainer_state=self.state_dict()
        )

    # ---- logging --------------------------------------------------------------------------------------
    def truncate_logs(self, step: int) -> None:
        """Drop log rows written after the checkpoint we resume from, so the log has no duplicates."""
        for name in ("log.csv", "eval.csv"):
            path = self.run_dir / name
            if not path.exists():
                continue
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            fields = list(rows[0]) if rows else None
            kept = [r for r in rows if int(float(r["step"])) <= step]
            with open(path, "w", newline="") as f:
                if fields:
                    writer = csv.DictWriter(f, fieldnames=fields)
                    writer.writeheader()
                    writer.writerows(kept)

    def _append(self, name: str, row: dict[str, Any]) -> None:
        if self._tensorboard is not None:
            prefix = name.removesuffix(".csv")
            for key, value in row.items():
                if key != "step":
                    self._tensorboard.add_scalar(f"{prefix}/{key}", value, row["step"])
        path = self.run_dir / name
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    # ---- the loop -------------------------------------------------------------------------------------
    def update(self) -> tuple[float, float]:
        """One gradient update. Returns (loss, gradient norm before clipping)."""
        self.model.train()
        batch = self.sampler.sample()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            loss = self._loss_fn(batch, return_state=self._stream)
        if self._stream:
            loss, final_state = loss
            self.sampler.advance(final_state)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        return loss.item(), grad_norm.item()

    def _evaluate(self) -> None:
        rng = torch.get_rng_state()  # evaluation must not shift the training RNG stream
        metrics = self.eval_hook(self.acting_model, self.step)
        torch.set_rng_state(rng)
        self._append("eval.csv", {"step": self.step, **metrics})
        log.info("step %d eval %s", self.step, metrics)

    def fit(self, *, progress: bool = True) -> dict[str, float]:
        """Train until `config.steps` updates; returns a summary (final loss, wall time, rate)."""
        c = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._tensorboard = _tensorboard_writer(self.run_dir / "tensorboard")
        start_step, t0 = self.step, time.perf_counter()
        last_t, last_step, loss = t0, self.step, math.nan
        bar = tqdm(total=c.steps, initial=self.step, disable=not progress, unit="upd", dynamic_ncols=True)
        while self.step < c.steps:
            loss, grad_norm = self.update()
            bar.update(1)
            if self.step % c.log_every == 0 or self.step == c.steps:
                now = time.perf_counter()
                rate = (self.step - last_step) / max(now - last_t, 1e-9)
                last_t, last_step = now, self.step
                bar.set_postfix(loss=f"{loss:.4f}")
                self._append("log.csv", dict(zip(LOG_FIELDS, [
                    self.step, loss, self.scheduler.get_last_lr()[0], grad_norm, rate, now - t0
                ])))
            if self.eval_hook is not None and c.eval_every and self.step % c.eval_every == 0:
                self._evaluate()
            if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                self.save()
        bar.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        wall = time.perf_counter() - t0
        done = self.step - start_step
        return {"steps": self.step, "final_loss": loss, "wall_s": wall, "updates_per_s": done / max(wall, 1e-9)}
