"""Named recipes: a preset is a set of `ModelConfig` and `TrainConfig` fields over the dataclass defaults.

    from decision_rnn.presets import model_config, train_config
    model_cfg = model_config("fast", obs_dim=11, act_dim=3)
    train_cfg = train_config("fast", seed=1)            # any field overrides the preset's

    decision-rnn train --preset fast --dataset zoo/hopper/medium-v0 --out runs/hopper

`dt` is the Decision Transformer's configuration, for GPUs. The other presets are the agents of the results
grid (experiments/results_grid.py) under the CPU protocol (`CPU_PROTOCOL`); `fast` is the plain minGRU agent:
the grid cannot tell its score from the best mean's (`minlstm-return-ln`) and that pick does not hold out of sample
(results/selection_check_cpu.md), so the simplest agent of the leading group is the default.
docs/results.md has every agent's scores and the comparisons behind each choice of the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig, TrainConfig, config_from_dict


@dataclass(frozen=True)
class Preset:
    """A named recipe: `model` and `train` are field overrides of `ModelConfig` and `TrainConfig`."""

    name: str
    doc: str
    model: dict
    train: dict


CPU_PROTOCOL = {"steps": 3000, "lr": 1e-3, "warmup_steps": 300, "lr_decay": "cosine", "window_align": "end",
                "grad_clip": 0.25 / 3, "episode_batch_size": 4, "checkpoint_every": 1000}
"""The training of the grid's CPU protocol: what fits 2 CPU cores. 3000 updates, so a learning rate 10x DT's
with a warm-up over the first 10% of them; the rate decays along a cosine to lr / 10 so that the last checkpoint
is not taken at the full rate; windows end at a drawn step (d3rlpy's slicer) so that an episode's first K steps
are trained as often as the rest; the gradient norm is clipped at 0.25 / 3, d3rlpy's clip on Hopper's 3 action
dimensions (`TrainConfig.grad_clip_per` has the per-dimension form). Model size, batch and dropout are DT's.
Decay, window alignment and clip were each measured against the alternative before adoption (docs/results.md,
recipe ablation)."""

_CPU_DOC = "CPU protocol (`CPU_PROTOCOL`: 3000 updates, lr 1e-3, cosine decay, end-aligned windows, clip 0.25 / 3)"


def _agent(name: str, what: str, model: dict, train: dict | None = None) -> Preset:
    protocol = "otherwise the CPU protocol (`CPU_PROTOCOL`)" if train else _CPU_DOC
    return Preset(name, f"{what}; {protocol}. Scores: docs/results.md (results grid, agent `{name}`).",
                  dict(model), {**CPU_PROTOCOL, **(train or {})})


_MINGRU = {"backbone": "mingru", "tokens": "compact"}
_RETURN_LN = {"backbone": "minlstm", "tokens": "compact", "return_ln": True}
_GRID = [
    _agent("mingru", "minGRU, compact tokens (one token per step)", _MINGRU),
    _agent("minlstm", "minLSTM, compact tokens", {"backbone": "minlstm", "tokens": "compact"}),
    _agent("lru", "LRU, compact tokens", {"backbone": "lru", "tokens": "compact"}),
    _agent("transformer", "our transformer (DT's causal attention over its K-step window), compact tokens",
           {"backbone": "transformer", "tokens": "compact"}),
    _agent("gru", "GRU (torch's nn.GRU, sequential in time), compact tokens: the classic baseline the min-RNNs "
           "simplify", {"backbone": "gru", "tokens": "compact"}),
    _agent("lstm", "LSTM (torch's nn.LSTM, sequential in time), compact tokens: the classic baseline the min-RNNs "
           "simplify", {"backbone": "lstm", "tokens": "compact"}),
    _agent("mingru-interleaved", "minGRU on DT's interleaved (return, state, action) tokens: 3 steps of the "
           "backbone per env step", {"backbone": "mingru", "tokens": "interleaved"}),
    _agent("mingru-return-ln", "minGRU, compact tokens with the return embedding LayerNormed alone",
           {"backbone": "mingru", "tokens": "compact", "return_ln": True}),
    _agent("minlstm-return-ln", "minLSTM, compact tokens with the return embedding LayerNormed alone", _RETURN_LN),
    _agent("minlstm-return-ln-constant-lr", "minlstm-return-ln with the rate kept at its peak after the warm-up "
           "(DT's and d3rlpy's schedule) instead of the cosine decay", _RETURN_LN, {"lr_decay": "none"}),
    _agent("lru-constant-lr", "lru with the rate kept at its peak after the warm-up", {"backbone": "lru",
           "tokens": "compact"}, {"lr_decay": "none"}),
    _agent("mingru-clip-per-dim", "mingru with d3rlpy's clip per action dimension (grad_clip 0.25, "
           "grad_clip_per='action_dim'): the same clip on Hopper, 0.25 / 6 instead of 0.25 / 3 on Walker2d",
           _MINGRU, {"grad_clip": 0.25, "grad_clip_per": "action_dim"}),
    _agent("mingru-no-decay-groups", "mingru without weight decay on LayerNorms, biases, the timestep table "
           "(decay_all=False, minGPT's parameter groups)", _MINGRU, {"decay_all": False}),
]

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("dt", "The Decision Transformer's gym configuration, the dataclass defaults (Chen et al. 2021, Table 8; "
           "kzl/decision-transformer gym/experiment.py): width 128, 3 layers, K = 20, interleaved tokens, dropout "
           "0.1, 100k updates of 64 windows at lr 1e-4 after a 10k-update warm-up, clip 0.25, on the default "
           "backbone. Hours on a CPU: meant for GPUs (the grid's `paper` protocol).", {}, {}),
    Preset("fast", "The CPU-budget recipe: minGRU, compact tokens (the grid's `mingru`: in its leading group, "
           "level with the best mean, the simplest recipe), "
           f"{_CPU_DOC}. Scores and training times: docs/results.md.", dict(_MINGRU), dict(CPU_PROTOCOL)),
    *_GRID,
]}


def get_preset(name: str) -> Preset:
    """The preset `name`; a ValueError listing the presets for an unknown name."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def model_config(name: str, obs_dim: int, act_dim: int, **overrides) -> ModelConfig:
    """The preset's ModelConfig for a task's sizes; `overrides` (ModelConfig fields) win."""
    return config_from_dict(ModelConfig, {"obs_dim": obs_dim, "act_dim": act_dim, **get_preset(name).model,
                                          **overrides})


def train_config(name: str, **overrides) -> TrainConfig:
    """The preset's TrainConfig; `overrides` (TrainConfig fields) win."""
    return config_from_dict(TrainConfig, {**get_preset(name).train, **overrides})


__all__ = ["CPU_PROTOCOL", "PRESETS", "Preset", "get_preset", "model_config", "train_config"]
