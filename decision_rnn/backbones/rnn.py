"""The classic gated RNNs, GRU (Cho et al. 2014) and LSTM (Hochreiter & Schmidhuber 1997), through torch's
`nn.GRU` / `nn.LSTM` (cuDNN on a GPU): the sequential baselines the min-RNN paper measures against
(Feng et al. 2024, arXiv 2410.01201), behind the same contract as every backbone here.

    GRU:  h_t = (1 - z_t) * n_t + z_t * h_{t-1},  z_t, r_t, n_t from x_t AND h_{t-1}
    LSTM: c_t = f_t * c_{t-1} + i_t * g_t,  h_t = o_t * tanh(c_t),  gates from x_t AND h_{t-1}

The gates read h_{t-1}, so `forward` runs the T steps one after another (training backpropagates
through the whole window), where the min-RNNs run one parallel scan. `step` is the same module on a
one-step sequence, so forward and a loop of steps compute the same thing.

The recurrence runs in float32 (or the module's float64) whatever the autocast dtype, as the min-RNNs'
scan does: gates near 1 lose the state in bf16, and oneDNN's CPU LSTM refuses bf16 autocast outright.
Under `torch.compile` the nn.GRU / nn.LSTM call stays eager (dynamo's default for RNN modules,
`torch._dynamo.config.allow_rnn = False`; its CPU LSTM does not compile): the graph breaks around each layer's
fused RNN kernel.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Backbone
from .scan import float32_region

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


class RNNMixer(nn.Module):
    """`nn.GRU` / `nn.LSTM` from `dim` to `hidden` -> out-proj back to `dim`.

    State: (h,) for a GRU, (h, c) for an LSTM, each (B, hidden); batch first, unlike torch's (1, B, hidden).
    """

    def __init__(self, dim: int, hidden: int, cell: str):
        super().__init__()
        self.hidden, self.cell = hidden, cell
        self.rnn = CELLS[cell](dim, hidden, batch_first=True)
        self.out_proj = nn.Linear(hidden, dim)

    def state_shapes(self, batch_size: int) -> list[tuple[int, ...]]:
        return [(batch_size, self.hidden)] * (2 if self.cell == "lstm" else 1)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, ...]):
        dtype = self.rnn.weight_hh_l0.dtype  # float32 under autocast too (module docstring)
        with float32_region(x):
            hx = tuple(s.to(dtype).unsqueeze(0).contiguous() for s in state)  # (1, B, hidden) each
            h, hx = self.rnn(x.to(dtype), hx if self.cell == "lstm" else hx[0])  # h: (B, T, hidden)
        hx = hx if self.cell == "lstm" else (hx,)
        return self.out_proj(h), tuple(s.squeeze(0) for s in hx)

    def step(self, x: torch.Tensor, state: tuple[torch.Tensor, ...]):
        y, state = self.forward(x.unsqueeze(1), state)  # (B, 1, dim)
        return y[:, 0], state


class RNN(Backbone):
    """Residual stack of `RNNMixer`s of the class's `cell`. State: the layers' states, each (B, expansion * dim)."""

    cell: str

    def __init__(self, dim: int, n_layers: int, *, expansion: int = 2, mlp_expansion: int = 4,
                 dropout: float = 0.0, activation: str = "relu"):
        """`expansion`: hidden width / dim (2: the min-RNNs' default, so states are the same size).
        `mlp_expansion`: MLP width / dim (GPT-2 and DT: 4). `dropout`: on the residual branches.
        `activation`: the MLP's, "gelu" or "relu". The nn.GRU / nn.LSTM weights keep torch's init
        (`ModelConfig.block_init_std` re-initialises nn.Linear layers only)."""
        super().__init__(dim, n_layers, lambda: RNNMixer(dim, expansion * dim, self.cell),
                         mlp_expansion=mlp_expansion, dropout=dropout, activation=activation)


class GRU(RNN):
    """Residual stack of `nn.GRU` mixers. State: (h_1, ..., h_L), h_l: (B, expansion * dim)."""

    cell = "gru"


class LSTM(RNN):
    """Residual stack of `nn.LSTM` mixers. State: (h_1, c_1, ..., h_L, c_L), each (B, expansion * dim)."""

    cell = "lstm"
