"""A small, model-agnostic supervised trainer with exact resume, on one process or data parallel.

The model only needs `loss(batch)`; the sampler only needs `sample()` and a numpy `rng`.
Logs go to `log.csv` / `eval.csv` in the run directory, and to TensorBoard when it is installed.
Resume restores weights, optimizer, scheduler, the torch RNG (dropout) and the sampler's RNG, so on
CPU an interrupted-and-resumed run reproduces the uninterrupted one exactly (tested). With
`ema_decay`, checkpoints hold the averaged weights (what is evaluated and acted with) and trainer.pt
the raw ones.

Under a process group (`torchrun`, see `decision_rnn.training.distributed`) the model is wrapped in
`DistributedDataParallel`: each rank computes the loss on its shard of the global batch and the gradients are
averaged over the ranks before every step, so all ranks hold the same weights. Rank 0 alone writes logs and
checkpoints and runs the periodic evaluation; the others wait for it at a barrier.

The loop does not wait for the device between updates: loss and gradient norm stay tensors and are read (a
host sync) only every `log_every` updates, at checkpoints and at evaluations.
"""

from __future__ import annotations

import copy
import csv
import io
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
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..config import TrainConfig, resolve_device, validate
from ..data import EpisodeSampler, StreamSampler, WindowSampler
from ..models import DecisionRNN
from . import distributed
from .checkpoint import (
    CheckpointError,
    find_checkpoint,
    load_model,
    load_trainer_state,
    save_checkpoint,
    write_text_atomic,
)
from .optim import grad_clip_norm, make_optimizer

log = logging.getLogger(__name__)

EvalHook = Callable[[DecisionRNN, int], dict[str, float]]
LOG_FIELDS = ["step", "loss", "lr", "grad_norm", "updates_per_s", "elapsed_s"]


class ExponentialAverage:
    """The exponential moving average of a model's parameters and buffers, updated on the device.

    The first update copies the weights; each later one moves the average a fraction 1 - decay towards them, as
    torch's `AveragedModel` with `get_ema_multi_avg_fn` does. That class keeps its update count in a tensor and
    reads it on the host every update, a device sync on CUDA; here the count is a Python int.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        self.n_averaged = 0

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        average = [*self.module.parameters(), *self.module.buffers()]
        current = [*model.parameters(), *model.buffers()]
        if self.n_averaged == 0:
            torch._foreach_copy_(average, current)
        else:
            torch._foreach_lerp_(average, current, 1.0 - self.decay)
        self.n_averaged += 1


class NonFiniteError(RuntimeError):
    """The loss, the gradient norm or the weights went NaN or infinite; training stopped without saving them."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_sampler(dataset, model: DecisionRNN, config: TrainConfig, device: torch.device, rank: int = 0,
                 world_size: int = 1):
    """`window`: DT's K-step windows; `episode`: whole episodes from their first step; `stream`: K-step
    chunks of whole episodes with the state carried between them (see `TrainConfig.context`). With several
    ranks, this rank's shard of each global batch (see `decision_rnn.data.samplers`)."""
    shard = {"seed": config.seed, "device": device, "rank": rank, "world_size": world_size}
    if config.context == "window":
        return WindowSampler(dataset, model.config.context_len, config.batch_size, align=config.window_align,
                             **shard)
    if config.context == "stream":
        return StreamSampler(dataset, model.config.context_len, config.batch_size, **shard)
    return EpisodeSampler(dataset, config.episode_batch_size, max_len=config.episode_max_len, **shard)


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


class _Loss(nn.Module):
    """`model.loss` as a module's forward: what `torch.compile` compiles once and `DistributedDataParallel` wraps
    (DDP synchronizes gradients only for work done through its own forward)."""

    def __init__(self, model: DecisionRNN):
        super().__init__()
        self.model = model

    def forward(self, batch, return_state: bool = False):
        return self.model.loss(batch, return_state=return_state)


class Trainer:
    """Runs `config.steps` AdamW updates of `model.loss`, logging and checkpointing into `run_dir`.

    Under a torch.distributed process group, one rank of a data-parallel run (see the module docstring)."""

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
        device = resolve_device(config.device)
        distributed.init(device)  # under torchrun: join its process group (nothing otherwise)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        self.device = distributed.device_for_rank(device)
        self.model = model.to(self.device)
        self.run_dir = Path(run_dir)
        self.eval_hook = eval_hook
        self.meta = {"train_config": asdict(config), **(meta or {})}
        # the initial weights come from the caller's seed, the same on every rank; from here each rank has its own
        # stream (dropout), and the sampler its own generator, seeded alike on every rank
        seed_everything(config.seed + self.rank)
        self.sampler = make_sampler(dataset, model, config, self.device, self.rank, self.world_size)
        self._stream = isinstance(self.sampler, StreamSampler)  # carries the backbone state between updates
        self.optimizer = make_optimizer(model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, partial(lr_factor, config))
        self.ema = None if config.ema_decay is None else ExponentialAverage(model, config.ema_decay)
        self.clip = grad_clip_norm(config, model.config.act_dim)
        self.step = 0
        self.skipped = 0  # batches skipped for a non-finite loss or gradient (`skip_nonfinite`)
        # Whether `update` reads its finiteness flag on the host each update: free on the CPU; on CUDA a sync, paid
        # only with `skip_nonfinite` (otherwise the first bad update is kept on the device, see `update`)
        self._check_each_update = self.device.type == "cpu" or config.skip_nonfinite
        self._first_bad = torch.zeros((), dtype=torch.long, device=self.device)
        self._tensorboard = None
        loss = _Loss(model)
        if config.compile:  # compiled once, here; eager and compiled losses agree (tests/test_gpu_path.py)
            loss = torch.compile(loss)
        if distributed.active():
            loss = DistributedDataParallel(loss, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self._loss = loss

    # ---- state ----------------------------------------------------------------------------------------
    @property
    def acting_model(self) -> DecisionRNN:
        """The weights checkpoints store and evaluations act with: the average with `ema_decay`."""
        return self.model if self.ema is None else self.ema.module

    def _rng_state(self) -> dict[str, Any]:
        # the training device's generator alone: a run resumes on a machine that sees fewer GPUs
        return {"torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}

    def state_dict(self) -> dict[str, Any] | None:
        """What resume needs beside the weights. Under a process group every rank must call it (the ranks' RNG
        states and carried stream states are gathered): rank 0 gets the state, the others None."""
        sampler = self.sampler.state_dict()
        ranks = distributed.gather({**self._rng_state(), "stream_state": sampler.get("state")})
        if not self.is_main:
            return None
        if self._stream and sampler["state"] is not None:  # every rank's streams, in global batch order
            sampler["state"] = [torch.cat(parts) for parts in zip(*(r["stream_state"] for r in ranks))]
        ema = {} if self.ema is None else {"weights": self.model.state_dict(), "ema_n_averaged": self.ema.n_averaged}
        state = {
            **ema,
            "step": self.step,
            "skipped": self.skipped,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **self._rng_state(),
            "sampler": sampler,
        }
        if self.world_size > 1:
            state["world_size"] = self.world_size
            state["rank_rngs"] = [{k: r[k] for k in ("torch_rng", "cuda_rng")} for r in ranks]
        return state

    def resume(self) -> bool:
        """Load the newest checkpoint in `run_dir` if there is one. Returns whether it resumed.

        Without one, log rows of an earlier start that died before its first checkpoint are dropped:
        that training is lost, and its rows would otherwise count in the run's wall-clock.
        A run may resume on another number of ranks than it was trained on (see `_restore_rng`)."""
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
            self.ema.n_averaged = int(state["ema_n_averaged"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.skipped = state.get("skipped", 0)
        self._restore_rng(state)
        self.sampler.load_state_dict(state["sampler"])
        self.truncate_logs(self.step)
        if self.is_main:
            log.info("resumed from %s at step %d", ckpt, self.step)
        return True

    def _restore_rng(self, state: dict[str, Any]) -> None:
        """This rank's torch RNG as saved. On another number of ranks than the checkpoint's, the data stays the
        same (the samplers' one global stream, whose state every rank has), but the ranks' own streams (dropout)
        cannot continue as they would have: rank r takes rank r's saved stream where there is one, else a fresh
        one seeded by (seed, rank, step)."""
        saved_world = state.get("world_size", 1)
        rngs = state.get("rank_rngs") or [{"torch_rng": state["torch_rng"], "cuda_rng": state.get("cuda_rng")}]
        if saved_world != self.world_size and self.is_main:
            log.warning("%s was trained on %d rank(s) and resumes on %d at step %d: the batches stay the same, but "
                        "dropout masks (each rank's random stream) and the order in which gradients are summed "
                        "differ, so the weights will not match a run that kept %d rank(s) exactly", self.run_dir,
                        saved_world, self.world_size, self.step, saved_world)
        if self.rank >= len(rngs):
            seed = np.random.SeedSequence([self.config.seed, self.rank, self.step]).generate_state(1)[0]
            torch.manual_seed(int(seed))
            return
        torch.set_rng_state(rngs[self.rank]["torch_rng"])
        if rngs[self.rank].get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(rngs[self.rank]["cuda_rng"], self.device)

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
        saved = {**{f"model.{k}": v for k, v in meta.get("model_config", {}).items()},
                 **{f"train.{k}": v for k, v in meta.get("train_config", {}).items() if k not in self.RESUMABLE},
                 "datasets": meta.get("datasets")}
        now = {**{f"model.{k}": v for k, v in asdict(self.model.config).items()},
               **{f"train.{k}": v for k, v in asdict(self.config).items() if k not in self.RESUMABLE},
               "datasets": self.meta.get("datasets")}
        differ = [f"{k}: checkpoint {saved[k]!r}, now {now.get(k)!r}" for k in sorted(saved) if saved[k] != now.get(k)]
        if differ:
            raise CheckpointError(f"{self.run_dir} was trained with another configuration; resuming would mix two "
                                  "runs. Differences:\n  " + "\n  ".join(differ) +
                                  "\nUse a new --out, or resume with the original settings.")

    def save(self) -> Path | None:
        """Checkpoint the current step: every rank calls it, rank 0 writes (and returns the path). Weights that are
        not finite are never saved: NonFiniteError instead, and the previous checkpoints stay as they are."""
        models = [self.model] if self.ema is None else [self.model, self.ema.module]
        if not torch.stack([torch.isfinite(p).all() for m in models for p in m.parameters()]).all():
            raise NonFiniteError(f"the weights are not finite at step {self.step}; they were not saved. "
                                 + self._fallback_hint())
        state = self.state_dict()
        if not self.is_main:
            return None
        return save_checkpoint(self.run_dir, self.acting_model, self.step, meta=self.meta, trainer_state=state)

    # ---- logging --------------------------------------------------------------------------------------
    def truncate_logs(self, step: int) -> None:
        """Drop log rows written after the checkpoint we resume from, so the log has no duplicates."""
        if not self.is_main:
            return
        for name in ("log.csv", "eval.csv"):
            path = self.run_dir / name
            if not path.exists():
                continue
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            fields = list(rows[0]) if rows else None
            kept = [r for r in rows if int(float(r["step"])) <= step]
            text = io.StringIO()
            if fields:
                writer = csv.DictWriter(text, fieldnames=fields)
                writer.writeheader()
                writer.writerows(kept)
            write_text_atomic(path, text.getvalue())  # a kill meanwhile leaves the whole log, never part of it

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
    def update(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One gradient update. Returns (loss, gradient norm before clipping) as 0-d tensors on the device, not
        read: reading them waits for the device. With several ranks, the loss is this rank's share (its mean over
        the ranks is the global batch's loss).

        A non-finite loss or gradient norm raises NonFiniteError, or with `skip_nonfinite` skips the batch: no
        optimizer step, no average update (the learning-rate schedule and the data move on)."""
        self.model.train()
        batch = self.sampler.sample()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            loss = self._loss(batch, return_state=self._stream)
        if self._stream:
            loss, final_state = loss
            self.sampler.advance(final_state)
        if batch.global_real is not None:
            # the loss is this shard's mean over its real steps; weighted by its share of the global batch's real
            # steps (times the ranks, which DDP's gradient average divides by), the ranks' averaged gradient is
            # the gradient of the global batch's mean, whatever the padding in each shard
            loss = loss * (batch.mask.sum() * self.world_size / batch.global_real)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        loss = loss.detach()
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        if self.world_size > 1:  # a rank's loss is its own: the ranks agree to step or not
            finite = finite.to(torch.int32)
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            finite = finite.bool()
        if self._check_each_update:
            # The host reads the flag before stepping. A true skip (Adam's moments and step count untouched) must be
            # decided before `optimizer.step`, so on CUDA `skip_nonfinite` waits for the device once per update.
            if not bool(finite):
                if not self.config.skip_nonfinite:
                    raise NonFiniteError(self._nonfinite_message(self.step + 1, loss, grad_norm))
                self.skipped += 1
                self.scheduler.step()
                self.step += 1
                return loss, grad_norm
        else:
            # No host sync (CUDA): remember the first update that was not finite, on the device; `_check_finite`
            # reads it at every log row, checkpoint and evaluation and raises there. The updates after it reach
            # only the weights in memory: nothing is logged, saved or evaluated past it.
            self._first_bad = torch.where(~finite & (self._first_bad == 0), self.step + 1, self._first_bad)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        return loss, grad_norm

    def _fallback_hint(self) -> str:
        try:
            last = f"The last good checkpoint, {find_checkpoint(self.run_dir)}, is intact: continue from it with "
            last += "--resume, "
        except CheckpointError:
            last = "No checkpoint was saved before it. Start again "
        return (last + "with a lower --lr or --grad-clip, or pass --skip-nonfinite to skip such batches "
                "(check the data for NaN or huge values)")

    def _nonfinite_message(self, step: int, loss: torch.Tensor | None = None,
                           grad_norm: torch.Tensor | None = None) -> str:
        values = "" if loss is None else f" (loss {loss.item():g}, gradient norm {grad_norm.item():g})"
        return f"non-finite loss or gradient norm at step {step}{values}: training stopped. " + self._fallback_hint()

    def _check_finite(self) -> None:
        """Raise NonFiniteError if an update since the last check was not finite (CUDA: read from the device)."""
        bad = int(self._first_bad)
        if bad:
            raise NonFiniteError(self._nonfinite_message(bad))

    def _mean_over_ranks(self, value: torch.Tensor) -> float:
        if self.world_size > 1:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world_size
        return value.item()

    def _evaluate(self) -> None:
        rng = torch.get_rng_state()  # evaluation must not shift the training RNG stream
        metrics = self.eval_hook(self.acting_model, self.step)
        torch.set_rng_state(rng)
        self._append("eval.csv", {"step": self.step, **metrics})
        log.info("step %d eval %s", self.step, metrics)

    def fit(self, *, progress: bool = True) -> dict[str, float]:
        """Train until `config.steps` updates; returns a summary (final loss, wall time, rate)."""
        c = self.config
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._tensorboard = _tensorboard_writer(self.run_dir / "tensorboard")
        start_step, t0 = self.step, time.perf_counter()
        last_t, last_step, loss = t0, self.step, math.nan
        bar = tqdm(total=c.steps, initial=self.step, disable=not (progress and self.is_main), unit="upd",
                   dynamic_ncols=True)
        try:
            while self.step < c.steps:
                loss_t, grad_norm = self.update()
                bar.update(1)
                at_log = self.step % c.log_every == 0 or self.step == c.steps
                at_checkpoint = self.step % c.checkpoint_every == 0 or self.step == c.steps
                # the same on every rank, whichever of them has a hook: the ranks meet at the barrier below
                at_eval = bool(c.eval_every) and self.step % c.eval_every == 0 and (
                    self.eval_hook is not None or self.world_size > 1)
                if at_log or at_checkpoint or at_eval:
                    self._check_finite()
                if at_log:
                    now = time.perf_counter()
                    rate = (self.step - last_step) / max(now - last_t, 1e-9)
                    last_t, last_step = now, self.step
                    loss = self._mean_over_ranks(loss_t)
                    if self.is_main:
                        bar.set_postfix(loss=f"{loss:.4f}")
                        row = dict(zip(LOG_FIELDS, [
                            self.step, loss, c.lr * lr_factor(c, self.step - 1), grad_norm.item(), rate, now - t0]))
                        self._append("log.csv", row | ({"skipped": self.skipped} if c.skip_nonfinite else {}))
                if at_checkpoint:  # before the evaluation, so that a failing evaluation loses no update
                    self.save()
                if at_eval and self.is_main and self.eval_hook is not None:
                    self._evaluate()
                if at_checkpoint or at_eval:
                    distributed.barrier()  # the other ranks wait for rank 0's checkpoint and evaluation
        finally:
            bar.close()
            if self._tensorboard is not None:
                self._tensorboard.close()
        wall = time.perf_counter() - t0
        done = self.step - start_step
        return {"steps": self.step, "final_loss": loss, "wall_s": wall, "updates_per_s": done / max(wall, 1e-9),
                **({"skipped": self.skipped} if c.skip_nonfinite else {})}
