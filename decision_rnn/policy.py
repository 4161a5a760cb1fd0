"""A deployable, stateful policy: numpy in, numpy out, constant cost per step.

    policy = Policy.load("runs/hopper")          # a run directory or a checkpoint folder
    policy.reset(target_return=3600)
    obs, _ = env.reset(seed=0)
    reward = None
    while True:
        action = policy.act(obs, reward)          # reward received since the previous act
        obs, reward, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break

Return conditioning follows the DT evaluation: the return-to-go starts at `target_return` and each
reward is subtracted from it (undiscounted). For recurrent backbones the policy holds only the
backbone's fixed-size state (no history buffer), so `act` costs the same at step 1 and step 10,000.
The transformer keeps DT's K-step window inside its state.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from .models import DecisionRNN

RUNTIMES = ("torch", "onnxruntime", "fused")
WEIGHTS = ("float32", "float16")  # the fused runtime's weight formats
FLOAT32_MAX = float(np.finfo(np.float32).max)
NO_REWARD = np.zeros(0, np.float32)  # the first act after reset: nothing received yet


class Policy:
    """Wraps a trained `DecisionRNN` for step-by-step control. Not thread-safe; one per control loop.

    Runtimes (results/bench_latency_cpu.md has their time per call):
    - `torch`: `DecisionRNN.step` in eager PyTorch, on `device` (CPU or CUDA).
    - `onnxruntime`: the exported step function (CPU; the `export` extra), every backbone.
    - `fused`: the whole step as one numba-compiled call (CPU; the `fast` extra), recurrent backbones
      only; the fastest at batch 1 and in batched evaluation (BLAS from batch 2).
    All give the same actions within 1e-5 (tested).

    `weights="float16"` (fused only): matrices rounded to float16, read at half the bytes — faster at batch 1
    for models whose weights outgrow the CPU cache, slower at larger batches, actions off by the rounding (see
    `decision_rnn.fused`).
    """

    def __init__(self, model: DecisionRNN, *, device: str | torch.device = "cpu", meta: dict | None = None,
                 runtime: str = "torch", threads: int = 1, weights: str = "float32"):
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; choices: {list(RUNTIMES)}")
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be 'float32' or 'float16' (fused runtime only), got {weights!r}")
        if weights != "float32" and runtime != "fused":
            raise ValueError(f"weights={weights!r} is an option of runtime='fused', got runtime={runtime!r}")
        self.device = torch.device(device)
        if runtime != "torch" and self.device.type != "cpu":
            raise ValueError(f"runtime={runtime!r} runs on the CPU, got device={device!r}; use runtime='torch'")
        self.model = model.to(self.device).eval()
        self.runtime = runtime
        self.weights = weights
        if runtime == "onnxruntime":
            from .export import OnnxStep

            self._step = OnnxStep(model, threads=threads)
        elif runtime == "fused":
            from .fused import FusedStep

            self._step = FusedStep(model, weights=weights)
        else:
            self._step = self._torch_step
        self.meta = meta or {}
        self.obs_dim = model.config.obs_dim
        self.act_dim = model.config.act_dim
        self.batch_size: int | None = None

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", runtime: str = "torch",
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
    def steps(self) -> int:
        """Number of `act` calls since the last `reset` (every batch element is at the same step)."""
        return 0 if self.batch_size is None else int(self._timestep[0])

    def reset(self, target_return: float, batch_size: int = 1) -> None:
        """Start new episode(s) conditioned on `target_return` (a float or one per batch element)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        target = np.asarray(target_return, dtype=np.float32)
        if target.shape not in ((), (1,), (batch_size,)):
            raise ValueError(f"target_return must be a float or one per batch element ({batch_size}), "
                             f"got shape {target.shape}")
        target = np.broadcast_to(target, (batch_size,))
        if not np.all(np.isfinite(target)):
            raise ValueError(f"target_return must be finite, got {target_return}")
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

    def act(self, obs, reward=None) -> np.ndarray:
        """Action for `obs` ((obs_dim,) or (batch, obs_dim)); `reward`: received since the previous act."""
        if self.batch_size is None:
            raise RuntimeError("call policy.reset(target_return) before policy.act(obs)")
        if self._timestep[0] > 0:
            if reward is None:
                raise ValueError(
                    "act() after the first step needs the reward received since the previous act "
                    "(it updates the return-to-go); pass reward=0.0 to keep the target unchanged"
                )
            reward_b = self._as_batch(reward, "reward", None)
        elif reward is not None:
            raise ValueError("the first act() after reset() takes no reward: nothing was received yet")
        else:
            reward_b = NO_REWARD
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
