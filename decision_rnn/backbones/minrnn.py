"""The part minGRU and minLSTM share (Feng et al. 2024, "Were RNNs All We Needed?", arXiv 2410.01201).

Both are h_t = a_t * h_{t-1} + b_t where a_t, b_t depend on x_t only, so all T steps run as one scan.
The paper runs that scan in log space (its Appendix B, Heinsen's scan); we run it in linear space
(`scan.py` says why), which computes the same recurrence. The coefficients use the forms that the
paper's log-space derivation gives (sigmoid of a softplus difference for minLSTM), which stay finite
for any input, and its positive candidate activation g.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Backbone
from .scan import linear_scan


def g(x: torch.Tensor) -> torch.Tensor:
    """The paper's positive activation for the candidate state: x + 0.5 for x >= 0, sigmoid(x) below."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


class MinRNNMixer(nn.Module):
    """in-proj to `hidden` -> h_t = a_t * h_{t-1} + b_t -> out-proj back to `dim`.

    Subclasses set `n_branches` (how many hidden-wide linear maps of x the coefficients are made of)
    and define `coefficients`, used by both `forward` (scan) and `step` (one update).
    State: (h,), h: (B, hidden), the hidden state itself (not its log, and never re-activated).
    """

    n_branches: int

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.in_proj = nn.Linear(dim, self.n_branches * hidden)
        self.out_proj = nn.Linear(hidden, dim)

    def coefficients(self, *k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_t, b_t) from the `n_branches` projections of x_t, each (..., hidden); 0 <= a_t <= 1."""
        raise NotImplementedError

    def state_shapes(self, batch_size: int) -> list[tuple[int, ...]]:
        return [(batch_size, self.hidden)]

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor]):
        (h0,) = state  # (B, hidden)
        a, b = self.coefficients(*self.in_proj(x).chunk(self.n_branches, dim=-1))  # (B, T, hidden)
        h = linear_scan(a, b, h0)  # (B, T, hidden)
        return self.out_proj(h), (h[:, -1].clone(),)  # a copy: a view would keep all of h alive

    def step(self, x: torch.Tensor, state: tuple[torch.Tensor]):
        (h,) = state  # (B, hidden)
        a, b = self.coefficients(*self.in_proj(x).chunk(self.n_branches, dim=-1))  # (B, hidden)
        h = a * h + b
        return self.out_proj(h), (h,)


class MinRNN(Backbone):
    """Residual stack of `mixer_cls` mixers. State: (h_1, ..., h_L), h_l: (B, expansion * dim)."""

    mixer_cls: type[MinRNNMixer]

    def __init__(self, dim: int, n_layers: int, *, expansion: int = 2, mlp_expansion: int = 4,
                 dropout: float = 0.0):
        """`expansion`: recurrent width / dim (the paper leaves the hidden size free; 2 here).
        `mlp_expansion`: MLP width / dim (GPT-2 and DT: 4). `dropout`: on the residual branches."""
        super().__init__(dim, n_layers, lambda: self.mixer_cls(dim, expansion * dim),
                         mlp_expansion=mlp_expansion, dropout=dropout)
