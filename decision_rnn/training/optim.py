"""The optimizer and the gradient clip a `TrainConfig` asks for.

`make_optimizer` builds AdamW. With `decay_all=True` every parameter decays, as DT's gym code does. With
`decay_all=False` the parameters split into two groups as in minGPT's `configure_optimizers` (which nanoGPT
follows): by module type and parameter name, every parameter in exactly one group, and a parameter no rule
covers is an error rather than a guess. Decay: the weights of linear maps (`nn.Linear`, the LRU's B, C and D,
the input and hidden weights of torch's RNN modules). No decay: LayerNorms, biases, `nn.Embedding` tables
(the timestep embedding) and the LRU's nu_log, theta_log and gamma_log, which parameterize its eigenvalues and
input scale (pulling them to 0 would move |lambda| towards exp(-1), not towards a smaller model).
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones.lru import LRUMixer
from ..config import TrainConfig

NO_DECAY_MODULES = (nn.LayerNorm, nn.Embedding)
LRU_NO_DECAY = ("nu_log", "theta_log", "gamma_log")
LRU_DECAY = ("B_re", "B_im", "C_re", "C_im", "D")


def decays(module: nn.Module, name: str) -> bool:
    """Whether parameter `name` of `module` (its own, not a submodule's) takes weight decay."""
    if isinstance(module, NO_DECAY_MODULES) or name == "bias" or name.startswith("bias_"):
        return False
    if isinstance(module, LRUMixer) and name in LRU_NO_DECAY + LRU_DECAY:
        return name in LRU_DECAY
    if (isinstance(module, nn.Linear) and name == "weight") or (
            isinstance(module, nn.RNNBase) and name.startswith("weight_")):
        return True
    raise ValueError(f"no weight-decay rule for parameter {name!r} of {type(module).__name__}; add one to "
                     f"decision_rnn.training.optim.decays")


def parameter_groups(model: nn.Module) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """(decayed, not decayed): the model's parameters by full name (shared ones once)."""
    groups: tuple[dict, dict] = ({}, {})
    seen = set()
    for prefix, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            groups[0 if decays(module, name) else 1][f"{prefix}.{name}" if prefix else name] = param
    return groups


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW at `config.lr` with `config.weight_decay` on every parameter (`decay_all`) or on the decayed group
    only (see the module docstring)."""
    if config.decay_all:
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    decay, no_decay = parameter_groups(model)
    return torch.optim.AdamW([{"params": list(decay.values()), "weight_decay": config.weight_decay},
                              {"params": list(no_decay.values()), "weight_decay": 0.0}], lr=config.lr)


def grad_clip_norm(config: TrainConfig, act_dim: int) -> float:
    """The gradient-norm bound: `grad_clip`, or with `grad_clip_per="action_dim"` grad_clip / act_dim (d3rlpy's
    clip of the summed squared error, on our averaged one; see `TrainConfig.grad_clip_per`)."""
    return config.grad_clip / act_dim if config.grad_clip_per == "action_dim" else config.grad_clip


__all__ = ["grad_clip_norm", "make_optimizer", "parameter_groups"]
