"""Typed configs. Defaults follow the Decision Transformer paper and code unless noted.

Source of the DT defaults: Chen et al. 2021, "Decision Transformer", Table 8 (gym experiments) and
`kzl/decision-transformer/gym/experiment.py` (argparse defaults: K=20, embed_dim=128, n_layer=3,
n_head=1, activation_function=relu, dropout=0.1, learning_rate=1e-4, weight_decay=1e-4,
warmup_steps=10000, batch_size=64, scale=1000, max_ep_len=1000, grad clip 0.25 in trainer.py).
The N(0, 0.02) init of the blocks and of the timestep embedding is GPT-2's, as d3rlpy's DecisionTransformer
applies it. Named recipes over these defaults are in `decision_rnn.presets`.
Configs are plain data: no side effects, serialisable with `dataclasses.asdict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

import torch

Tokens = Literal["interleaved", "compact", "split"]
Activation = Literal["gelu", "relu"]
Context = Literal["window", "episode", "stream"]
WindowAlign = Literal["start", "end", "uniform"]
LrDecay = Literal["none", "cosine"]
GradClipPer = Literal["total", "action_dim"]
TOKENIZATIONS, ACTIVATIONS, CONTEXTS, WINDOW_ALIGNS, LR_DECAYS, GRAD_CLIP_PER = (
    get_args(t) for t in (Tokens, Activation, Context, WindowAlign, LrDecay, GradClipPer))

OBS_BOUND = 1e4
"""The model clamps each normalized observation, (obs - obs_mean) / obs_std, to [-OBS_BOUND, OBS_BOUND] before
embedding it, in training and in every runtime (torch, the exported step, the fused step). A real observation lies
within a few dozen stds of the data's mean; a huge finite one (1e20, say) would otherwise overflow the embedding's
LayerNorm to NaN, which the recurrent state then carries to the end of the episode. Saturated, it gives the same
finite action in every runtime."""


@dataclass
class ModelConfig:
    """Shape of the return-conditioned agent. Sizes only; no env objects."""

    obs_dim: int
    """Observation size (Hopper: 11, Walker2d: 17)."""
    act_dim: int
    """Action size; actions are assumed to lie in [-1, 1] (tanh head), as in the MuJoCo tasks."""
    backbone: str = "mingru"
    """Sequence model: a name in `decision_rnn.backbones.BACKBONES`."""
    embed_dim: int = 128
    """Token width. DT: embed_dim=128."""
    n_layers: int = 3
    """Residual blocks in the backbone. DT: n_layer=3."""
    dropout: float = 0.1
    """Dropout in the backbone and on embeddings. DT: dropout=0.1."""
    tokens: Tokens = "interleaved"
    """`interleaved`: DT's (return, state, action) tokens, 3 per step. `compact`: one token per step,
    the sum of return, state and previous-action embeddings (3x shorter sequences). `split`: two per
    step, the return's own token and the sum of state and previous-action embeddings."""
    context_len: int = 20
    """K, the window of steps the transformer attends over at rollout (and the training window in
    `window` context). DT: K=20."""
    max_timestep: int = 1000
    """Size of the timestep embedding table; later timesteps are clamped. DT: max_ep_len=1000."""
    timestep_init_std: float | None = 0.02
    """Std of the timestep embedding's initial weights. 0.02: GPT-2's init, which d3rlpy's
    DecisionTransformer applies to its timestep embedding. None: nn.Embedding's N(0, 1), as DT's code
    (its timestep embedding starts ~10x larger than the other embeddings in each token)."""
    block_init_std: float | None = 0.02
    """Std of a normal init of every nn.Linear weight inside the backbone (biases zero). 0.02: GPT-2's
    init, which DT's HuggingFace GPT-2 and d3rlpy's DT give their transformer blocks (the LRU's own
    recurrence parameters are not nn.Linear and keep its ring init). None: PyTorch's default."""
    activation: Activation = "relu"
    """Nonlinearity of the blocks' MLPs. DT's gym code passes `activation_function="relu"` to its GPT-2
    (d3rlpy's DT too); "gelu" is GPT-2's own."""
    return_scale: float = 1000.0
    """Returns-to-go are divided by this before embedding. DT: scale=1000 for MuJoCo."""
    prev_action: bool = True
    """Compact and split tokens add the previous action's embedding (ours; DT sees past actions as tokens).
    False: the agent never sees an action, pi(a_t | R_<=t, s_<=t), and cannot lean on copying a_{t-1}
    (the "copycat" shortcut of behaviour cloning from histories, Wen et al. 2020). Interleaved tokens need
    their action tokens."""
    return_ln: bool = False
    """LayerNorm the return embedding on its own before it joins a token (ours). The embedding is linear in
    the return, so in a compact token a target far above the data's returns outweighs the state and action
    parts, which the token's LayerNorm then scales down: at DT's Hopper target 3600 a compact transformer
    trained on hopper-mixed kept a cosine of 0.27 between its normalized token and the state-action part
    (0.76 at the data's median return-to-go, 499; experiments/studies/return_dominance.py). Normalized alone, the
    return part has a bounded norm whatever the target."""
    backbone_options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword options for `decision_rnn.backbones.build` (expansion, n_heads, state_dim, ...)."""


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping. DT defaults unless noted."""

    steps: int = 100_000
    """Gradient updates. DT: 10 iterations x 10k steps = 100k."""
    batch_size: int = 64
    """Sequences per update in `window` context. DT: batch_size=64."""
    context: Context = "window"
    """`window`: DT's K-step windows from random starts (`batch_size` of them), for every backbone (acting still
    runs a recurrent state over whole episodes; docs/results.md compares the three contexts). `episode`: whole episodes
    from their start (`episode_batch_size`), so the recurrent state seen in training is the one it has at
    rollout. `stream` (recurrent backbones): `batch_size` streams walk whole episodes in consecutive
    K-step chunks, each chunk starting from the state the previous one ended in (truncated BPTT): the
    rollout's state, with a window batch's variety and cost."""
    window_align: WindowAlign = "start"
    """`window` context: `start` draws each window's first step (DT's gym code), `end` its last step
    (d3rlpy's trajectory slicer), `uniform` one of the K-step windows overlapping an episode, so that an
    episode's first and last steps are trained as often as the rest (ours); see
    `decision_rnn.data.WindowSampler`."""
    episode_batch_size: int = 16
    """Episodes per update in `episode` context (each is up to 1000 steps: ~16x a window batch's steps)."""
    episode_max_len: int | None = None
    """Crop episodes to their first N steps in `episode` context (None: whole episodes)."""
    lr: float = 1e-4
    """AdamW learning rate. DT: 1e-4."""
    weight_decay: float = 1e-4
    """AdamW weight decay. DT: 1e-4."""
    decay_all: bool = True
    """True: weight decay on every parameter, as DT's gym code (`AdamW(model.parameters(), ...)`). False: on the
    weights of linear maps only; LayerNorms, biases, the timestep embedding table and the LRU's nu_log, theta_log
    and gamma_log get none, as in minGPT's and nanoGPT's parameter groups (`decision_rnn.training.optim`).
    Measured on the results grid against True and not adopted by any preset (docs/results.md)."""
    warmup_steps: int = 10_000
    """Linear warm-up of the learning rate. DT: warmup_steps=10000."""
    lr_decay: LrDecay = "none"
    """After the warm-up: `none` keeps the rate (DT), `cosine` lowers it to lr / 10 at the last update
    (nanoGPT's schedule), so the last checkpoint is not taken mid-stride at the full rate."""
    ema_decay: float | None = None
    """Checkpoints hold an exponential moving average of the weights with this decay per update (0.999:
    about the last 1000 updates; `torch.optim.swa_utils`), and the policy acts with it; the raw weights
    are kept for resume. None: the last weights, as DT. Damps the update-to-update swings of a short
    budget at a high rate, which the last checkpoint would otherwise land on."""
    grad_clip: float = 0.25
    """Global gradient-norm clip. DT trainer.py: 0.25. `grad_clip_per` says what it clips."""
    grad_clip_per: GradClipPer = "total"
    """`total`: `grad_clip` bounds the norm of the gradient of our loss, the squared error averaged over the action
    dimensions (DT). `action_dim`: `grad_clip` is d3rlpy's, which clips the gradient of the squared error summed
    over the action dimensions, act_dim times ours; the norm is clipped at grad_clip / act_dim
    (`decision_rnn.training.optim.grad_clip_norm`), so one value means the same on every task: 0.25 clips at
    0.25 / 3 on Hopper (3 action dimensions) as `total` with 0.25 / 3 does, and at 0.25 / 6 on Walker2d (6),
    where `total` with 0.25 / 3 clips twice as loosely as d3rlpy. Measured on the walker2d datasets against the
    CPU protocol's 0.25 / 3 and not adopted by any preset (docs/results.md)."""
    seed: int = 0
    """Seed of the initial weights, the batches drawn and dropout: a run is reproduced by its seed (on the CPU)."""
    device: str = "cpu"
    """`cpu`, `cuda` or `auto` (cuda when available)."""
    compile: bool = False
    """Wrap the model in `torch.compile` for training (mostly useful on CUDA)."""
    skip_nonfinite: bool = False
    """False: a NaN or infinite loss or gradient norm stops training with `NonFiniteError`, naming the step; the
    last checkpoint stays intact. True: skip such a batch (no optimizer step) and go on, counting the skips in
    the log (`skipped`). On CUDA the skip costs a host sync per update."""
    log_every: int = 100
    """Write a CSV log row every N updates."""
    checkpoint_every: int = 5_000
    """Write a checkpoint every N updates (and always at the end)."""
    eval_every: int = 0
    """Run the periodic evaluation hook every N updates (0: never)."""
    eval_episodes: int = 10
    """Episodes per periodic evaluation."""
    target_return: float | None = None
    """Return-to-go the agent is conditioned on at evaluation (None: the env's DT default)."""


def model_config_from_saved(data: dict[str, Any]) -> ModelConfig:
    """The ModelConfig a checkpoint or run directory saved. Every field must be there: a field filled with
    today's default could build another network than the one the weights were trained in."""
    missing = [f.name for f in fields(ModelConfig) if f.name not in data]
    if missing:
        from . import __version__

        raise ValueError(f"the saved model config lacks {missing}: it was written by a decision-rnn older than the "
                         f"one installed ({__version__}), whose defaults differ; retrain it with this version")
    return config_from_dict(ModelConfig, data)


def config_from_dict(cls, data: dict[str, Any]):
    """Build a config dataclass from a dict, rejecting unknown keys with a clear message."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**data)


def validate(model: ModelConfig, train: TrainConfig | None = None) -> None:
    """Check choices that would otherwise fail deep inside training."""
    if model.tokens not in TOKENIZATIONS:
        raise ValueError(f"tokens must be one of {TOKENIZATIONS}, got {model.tokens!r}")
    if not model.prev_action and model.tokens == "interleaved":
        raise ValueError("prev_action=False needs compact or split tokens: interleaved tokens are built from the "
                         "actions (set tokens='compact' or prev_action=True)")
    if model.activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {model.activation!r}")
    if model.obs_dim < 1 or model.act_dim < 1:
        raise ValueError(f"obs_dim and act_dim must be positive, got {model.obs_dim}, {model.act_dim}")
    if train is not None and train.context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {train.context!r}")
    if train is not None and train.window_align not in WINDOW_ALIGNS:
        raise ValueError(f"window_align must be one of {WINDOW_ALIGNS}, got {train.window_align!r}")
    if train is not None and train.lr_decay not in LR_DECAYS:
        raise ValueError(f"lr_decay must be one of {LR_DECAYS}, got {train.lr_decay!r}")
    if train is not None and train.grad_clip_per not in GRAD_CLIP_PER:
        raise ValueError(f"grad_clip_per must be one of {GRAD_CLIP_PER}, got {train.grad_clip_per!r}")
    if train is not None and train.ema_decay is not None and not 0.0 < train.ema_decay < 1.0:
        raise ValueError(f"ema_decay must lie in (0, 1), e.g. 0.999 (or None for the last weights), got "
                         f"{train.ema_decay!r}")
    if model.context_len < 1 or model.embed_dim < 1 or model.n_layers < 1:
        raise ValueError(f"context_len, embed_dim and n_layers must be positive, got {model.context_len}, "
                         f"{model.embed_dim}, {model.n_layers}")
    if train is not None:
        positive = {name: getattr(train, name) for name in
                    ("steps", "batch_size", "episode_batch_size", "log_every", "checkpoint_every", "eval_episodes")}
        bad = {name: value for name, value in positive.items() if value < 1}
        if bad:
            raise ValueError(f"these TrainConfig fields must be >= 1: {bad}")
        if not train.lr > 0 or train.warmup_steps < 0 or train.eval_every < 0 or not train.grad_clip > 0:
            raise ValueError(f"need lr > 0, warmup_steps >= 0, eval_every >= 0 (0: off) and grad_clip > 0 (inf: off), "
                             f"got lr={train.lr}, warmup_steps={train.warmup_steps}, eval_every={train.eval_every}, "
                             f"grad_clip={train.grad_clip}")
    if train is not None and train.context == "stream" and model.backbone == "transformer":
        raise ValueError("context 'stream' carries a recurrent state between chunks; the transformer has a "
                         "window, not a state: use context 'window' for it")


__all__ = ["ACTIVATIONS", "CONTEXTS", "GRAD_CLIP_PER", "LR_DECAYS", "OBS_BOUND", "TOKENIZATIONS", "WINDOW_ALIGNS",
           "ModelConfig", "TrainConfig", "config_from_dict", "model_config_from_saved", "validate"]


def resolve_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device ("auto": CUDA when available); a ValueError saying what to use instead for an
    unknown name or CUDA on a machine without it."""
    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device 'cpu' (--device cpu)")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from None
