"""A deployable, stateful policy: numpy in, numpy out, constant cost per step.

    policy = Policy.load("runs/hopper")          # a run directory or a checkpoint folder
    policy.reset()                               # the env's default target return (or reset(target_return=3600))
    obs, _ = env.reset(seed=0)
    reward = 0.0
    while True:
        action = policy.act(obs, reward)         # reward received since the previous act (ignored on the first)
        obs, reward, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break

A batch of envs (a gymnasium vector env) whose episodes end at different times restarts the finished rows
alone: `policy.reset_done(terminated | truncated)` before the next `act`.

Return conditioning follows the DT evaluation: the return-to-go starts at `target_return` and each
reward is subtracted from it (undiscounted). For recurrent backbones the policy holds only the
backbone's fixed-size state (no history buffer), so `act` costs the same at step 1 and step 10,000.
The transformer keeps DT's K-step window inside its state.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os

import numpy as np
import torch

from .config import resolve_device
from .models import DecisionRNN

RUNTIMES = ("auto", "torch", "onnxruntime", "fused")
WEIGHTS = ("float32", "float16")  # the fused runtime's weight formats
FLOAT32_MAX = float(np.finfo(np.float32).max)
NO_REWARD = np.zeros(0, np.float32)  # an act with nothing received yet: no row subtracts a reward


def auto_runtime(model: DecisionRNN, device: torch.device) -> str:
    """`runtime="auto"`: on the CPU the fused step when numba imports and it supports the backbone, else
    onnxruntime when installed, else torch; torch on a GPU."""
    if device.type != "cpu":
        return "torch"
    try:
        from .fused import supports
    except ImportError:  # numba or scipy missing
        supports = None
    if supports is not None and supports(model.config):
        return "fused"
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        return "onnxruntime"
    return "torch"


class Policy:
    """Wraps a trained `DecisionRNN` for step-by-step control. Not thread-safe; one per control loop.

    Runtimes (results/bench_latency_cpu.md has their time per call):
    - `auto` (default): the fastest available for the model and device (`auto_runtime`); `policy.runtime` says
      which was picked.
    - `torch`: `DecisionRNN.step` in eager PyTorch, on `device` (CPU or CUDA).
    - `onnxruntime`: the exported step function (CPU; the `export` extra), every backbone.
    - `fused`: the whole step as one numba-compiled call (CPU), the recurrent backbones `decision_rnn.fused`
      supports; the fastest at batch 1 and in batched evaluation (BLAS from batch 64).
    All give the same actions within 1e-5 (tested).

    The policy acts with its own copy of `model` (in eval mode, on `device`): the caller's module is never moved
    or switched to eval mode, and later changes to it do not reach the policy.

    `weights="float16"` (fused only): matrices rounded to float16, read at half the bytes — faster at batch 1
    for models whose weights outgrow the CPU cache, slower at larger batches, actions off by the rounding (see
    `decision_rnn.fused`).
    """

    def __init__(self, model: DecisionRNN, *, device: str | torch.device = "cpu", meta: dict | None = None,
                 runtime: str = "auto", threads: int = 1, weights: str = "float32"):
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; choices: {list(RUNTIMES)}")
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be 'float32' or 'float16' (fused runtime only), got {weights!r}")
        on_cpu = str(device).split(":")[0] in ("cpu", "auto")  # the pairing is refused before the device is sought
        if runtime not in ("auto", "torch") and (not on_cpu or resolve_device(device).type != "cpu"):
            raise ValueError(f"runtime={runtime!r} runs on the CPU, got device={device!r}; use runtime='torch'")
        self.device = resolve_device(device)
        self.model = copy.deepcopy(model).to(self.device).eval()
        if runtime == "auto":
            runtime = "fused" if weights != "float32" else auto_runtime(self.model, self.device)
        if weights != "float32" and runtime != "fused":
            raise ValueError(f"weights={weights!r} is an option of runtime='fused', got runtime={runtime!r}")
        self.runtime = runtime
        self.weights = weights
        if runtime == "onnxruntime":
            from .export import OnnxStep

            self._step = OnnxStep(self.model, threads=threads)
        elif runtime == "fused":
            from .fused import FusedStep

            self._step = FusedStep(self.model, weights=weights)
        else:
            self._step = self._torch_step
        self.meta = meta or {}
        self.obs_dim = model.config.obs_dim
        self.act_dim = model.config.act_dim
        self.batch_size: int | None = None

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", runtime: str = "auto",
             threads: int = 1, weights: str = "float32") -> Policy:
        """Load from a run directory (its latest checkpoint) or a checkpoint folder.

        `threads`: onnxruntime's intra-op threads (the other runtimes use torch's or one thread)."""
        from .training.checkpoint import load_model

        model, meta = load_model(path, device)
        return cls(model, device=device, meta=meta, runtime=runtime, threads=threads, weights=weights)

    @property
    def env_id(self) -> str | None:
        return self.meta.get("env_id")

    @property
    def timesteps(self) -> np.ndarray:
        """Per batch row, the number of `act` calls since the row was last reset."""
        if self.batch_size is None:
            raise RuntimeError("call policy.reset() first")
        return self._timestep.copy()

    def default_target(self) -> float:
        """DT's target return for the checkpoint's env (`decision_rnn.evaluation.default_target_return`)."""
        if self.env_id is None:
            raise ValueError("this policy knows no env (a model without checkpoint metadata): pass target_return, "
                             "or give Policy(model, meta={'env_id': 'Hopper-v5'})")
        from .evaluation.rollout import default_target_return

        return default_target_return(self.env_id)

    def reset(self, target_return=None, batch_size: int | None = None, *, indices=None) -> None:
        """Start new episode(s) conditioned on `target_return` (a float or one per batch element; None: the env's
        default, `default_target`).

        Without `indices`: every row starts over, `batch_size` rows (default 1). With `indices` (row numbers or a
        boolean mask of the batch): only those rows start over (state and previous action zeroed, timestep 0,
        return-to-go back to the target); the others go on, and the batch size stays."""
        if target_return is None:
            target_return = self.default_target()
        if indices is not None:
            self._reset_rows(target_return, batch_size, indices)
            return
        batch_size = 1 if batch_size is None else batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        target = self._targets(target_return, batch_size)
        self.batch_size = batch_size
        # Bookkeeping in numpy; the state stays in the runtime's own arrays (torch or numpy).
        if self.runtime == "fused":
            self._state = self._step.initial_state(batch_size)
        else:
            state = self.model.initial_state(batch_size, device=self.device)
            self._state = tuple(s.numpy() for s in state) if self.runtime == "onnxruntime" else state
        self._rtg = target.copy()
        self._prev_action = np.zeros((batch_size, self.act_dim), np.float32)
        self._timestep = np.zeros(batch_size, np.int64)
        self._fresh = np.ones(batch_size, bool)  # rows whose next act is their first: its reward is ignored

    def reset_done(self, done, target_return=None) -> None:
        """Restart the rows where `done` (a boolean per batch row, e.g. `terminated | truncated`) is True."""
        if self.batch_size is None:
            raise RuntimeError("call policy.reset(target_return, batch_size) before policy.reset_done(done)")
        done = np.asarray(done)
        if done.dtype != bool or done.shape != (self.batch_size,):
            raise ValueError(f"done must be a boolean array of shape ({self.batch_size},), got {done.dtype} "
                             f"{done.shape}")
        if done.any():
            self.reset(target_return, indices=done)

    def _reset_rows(self, target_return, batch_size, indices) -> None:
        if self.batch_size is None:
            raise RuntimeError("reset(indices=...) restarts rows of a running batch: call reset(target_return, "
                               "batch_size) first")
        if batch_size not in (None, self.batch_size):
            raise ValueError(f"reset(indices=...) keeps the batch size ({self.batch_size}), "
                             f"got batch_size={batch_size}")
        rows = np.zeros(self.batch_size, bool)
        index = np.asarray(indices)
        if index.dtype == bool:
            if index.shape != (self.batch_size,):
                raise ValueError(f"a boolean mask of rows must have shape ({self.batch_size},), got {index.shape}")
            rows = index.copy()
        elif index.dtype.kind in "iu" and index.ndim <= 1:
            if index.size and not (-self.batch_size <= index.min() and index.max() < self.batch_size):
                raise ValueError(f"row indices must lie in [0, {self.batch_size}), got {index.tolist()}")
            rows[index] = True
        else:
            raise ValueError(f"indices must be row numbers or a boolean mask, got {indices!r}")
        n = int(rows.sum())
        target = np.asarray(target_return, dtype=np.float32)
        if target.shape not in ((), (1,), (n,), (self.batch_size,)):
            raise ValueError(f"target_return must be a float, one per reset row ({n}) or one per batch row "
                             f"({self.batch_size}), got shape {target.shape}")
        target = self._targets(target if target.shape != (self.batch_size,) else target[rows], n)
        if self.runtime == "fused":
            self._state[:, rows] = 0.0
        elif self.runtime == "onnxruntime":
            for s in self._state:
                s[rows] = 0.0
        else:
            mask = torch.from_numpy(rows).to(self.device)
            self._state = tuple(torch.where(mask.view(-1, *[1] * (s.dim() - 1)), torch.zeros_like(s), s)
                                for s in self._state)
        self._rtg[rows] = target
        self._prev_action[rows] = 0.0
        self._timestep[rows] = 0
        self._fresh = rows if self._fresh is None else self._fresh | rows

    @staticmethod
    def _targets(target_return, n: int) -> np.ndarray:
        """`target_return` as n float32 targets, or a clear error."""
        target = np.asarray(target_return, dtype=np.float32)
        if target.shape not in ((), (1,), (n,)):
            raise ValueError(f"target_return must be a float or one per batch element ({n}), got shape {target.shape}")
        target = np.broadcast_to(target, (n,))
        if not np.all(np.isfinite(target)):
            raise ValueError(f"target_return must be finite, got {target_return}")
        return target

    def act(self, obs, reward=None) -> np.ndarray:
        """Action for `obs` ((obs_dim,) or (batch, obs_dim)); `reward`: received since the previous act (a float or
        one per row). A row's first act after its reset ignores its reward (0.0, None or the reward of the step
        that ended the previous episode: nothing was received yet)."""
        if self.batch_size is None:
            raise RuntimeError("call policy.reset() before policy.act(obs)")
        fresh = self._fresh
        if fresh is not None and fresh.all():
            reward_b = NO_REWARD
        elif reward is None:
            raise ValueError("act() after the first step needs the reward received since the previous act "
                             "(it updates the return-to-go); pass reward=0.0 to keep the target unchanged")
        else:
            reward_b = self._as_batch(reward, "reward", None)
            if fresh is not None:
                reward_b = np.where(fresh, np.float32(0.0), reward_b)
        fused = self.runtime == "fused"
        obs_b = self._as_batch(obs, "obs", self.obs_dim, check_finite=not fused)  # fused: checked inside
        if fused:  # the bookkeeping below, in the same compiled call as the step
            action = self._step.act(obs_b, reward_b, self._prev_action, self._rtg, self._timestep, self._state)
            if action is None:
                raise ValueError(f"obs contains NaN or inf (or values beyond float32's range): {obs}")
        else:
            if reward_b.size:
                self._rtg -= reward_b
            action, self._state = self._step(obs_b, self._prev_action, self._rtg, self._timestep, self._state)
            np.copyto(self._prev_action, action)  # a copy: the caller may change the action it gets
            self._timestep += 1
        self._fresh = None
        return action[0] if np.ndim(obs) == 1 else action

    @torch.inference_mode()
    def _torch_step(self, obs, prev_action, returns_to_go, timestep, state):
        """`DecisionRNN.step` on numpy inputs: numpy action, torch state."""
        d = self.device
        inputs = (torch.from_numpy(x).to(d) for x in (obs, prev_action, returns_to_go, timestep))
        action, state = self.model.step(*inputs, state)
        return action.float().cpu().numpy(), state

    def _as_batch(self, value, name: str, dim: int | None, check_finite: bool = True) -> np.ndarray:
        """`value` as a float32 (batch, dim) array ((batch,) if dim is None), or a clear error.

        Kept cheap (a Python-float reward skips numpy; one reduction decides finiteness): at batch 1 the
        checks are a sizeable part of a ~60 µs step (results/bench_latency_cpu.md). `check_finite=False`:
        the caller checks."""
        if type(value) is float and dim is None:  # a reward from env.step
            if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
                raise ValueError(f"{name} contains NaN or inf (or values beyond float32's range): {value}")
            return np.full(self.batch_size, value, np.float32)
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be a real number array, got dtype {arr.dtype}")
        expected = (self.batch_size,) if dim is None else (self.batch_size, dim)
        given = arr.shape
        if dim is not None and arr.ndim == 1 and self.batch_size == 1:
            arr = arr[None]
        elif dim is None and arr.ndim == 0:
            arr = np.full(expected, arr)
        if arr.shape != expected:
            hint = f"({dim},) or " if dim is not None and self.batch_size == 1 else ""
            raise ValueError(f"{name} must have shape {hint}{expected} (batch_size={self.batch_size}), got {given}")
        out = np.ascontiguousarray(arr, dtype=np.float32)
        # A sum is finite iff every term is (barring overflow, where the exact check decides): one reduction.
        if check_finite and not math.isfinite(out.sum()) and not np.all(np.isfinite(out)):
            raise ValueError(f"{name} contains NaN or inf (or values beyond float32's range): {arr}")
        return out
