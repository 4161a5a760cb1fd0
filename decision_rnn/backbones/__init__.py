"""Sequence backbones behind one contract (see `base.py`): `forward(x, state)` runs a whole sequence in
parallel, `step(x, state)` runs one step, `initial_state(batch_size)` starts fresh; the state is a flat
tuple of batch-first tensors.

    backbone = build("mingru", dim=128, n_layers=3)
    y, state = backbone(x)                    # x: (B, T, 128)
    y_t, state = backbone.step(x_t, state)    # x_t: (B, 128), continues where forward stopped
"""

from __future__ import annotations

from torch import nn

from .base import Backbone, State
from .lru import LRU
from .mingru import MinGRU
from .minlstm import MinLSTM
from .rnn import GRU, LSTM
from .transformer import Transformer

BACKBONES: dict[str, type[Backbone]] = {
    "mingru": MinGRU,
    "minlstm": MinLSTM,
    "lru": LRU,
    "transformer": Transformer,
    "gru": GRU,
    "lstm": LSTM,
}


def build(name: str, dim: int, n_layers: int, **options) -> nn.Module:
    """The backbone `name` with width `dim`, `n_layers` blocks, and its keyword `options`."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {sorted(BACKBONES)}")
    return BACKBONES[name](dim, n_layers, **options)


__all__ = ["BACKBONES", "GRU", "LRU", "LSTM", "Backbone", "MinGRU", "MinLSTM", "State", "Transformer", "build"]
