"""The part minGRU and minLSTM share (Feng et al. 2024, "Were RNNs All We Needed?", arXiv 2410.01201).

Both are h_t = (1 - s_t) * h_{t-1} + s_t * g(h~_t), a convex mix of the state and a positive candidate
whose share s_t = sigmoid(u_t) depends on x_t only (each backbone defines its logit u_t), so all T steps
run as one scan of h_t = a_t * h_{t-1} + b_t. `scan` picks how:
- "linear" (default): Blelloch's scan in linear space, on a_t = sigmoid(-u_t), b_t = sigmoid(u_t) * g.
  Faster on CPU (`scan.py` says why).
- "log": the paper's App. B, Heinsen's scan in log space, on log a_t = -softplus(u_t) and
  log b_t = -softplus(-u_t) + log g, the forms that stay finite for any input.
Both compute the same recurrence, and `step` runs it one update at a time for either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone
from .scan import linear_scan, log_linear_scan

SCANS = ("linear", "log")


def g(x: torch.Tensor) -> torch.Tensor:
    """The paper's positive activation for the candidate state: x + 0.5 for x >= 0, sigmoid(x) below."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: torch.Tensor) -> torch.Tensor:
    """log g(x), finite for any x: log(x + 0.5) for x >= 0, -softplus(-x) below (the paper's App. B)."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))  # relu: no log of < 0.5


class MinRNNMixer(nn.Module):
    """in-proj to `hidden` -> h_t = a_t * h_{t-1} + b_t -> out-proj back to `dim`.

    Subclasses set `n_branches` (how many hidden-wide linear maps of x the coefficients are made of)
    and define `logits`, from which `coefficients` (linear scan, `step`) and `log_coefficients` (log
    scan) follow. State: (h,), h: (B, hidden), the hidden state itself (not its log, never re-activated).
    """

    n_branches: int

    def __init__(self, dim: int, hidden: int, scan: str = "linear"):
        super().__init__()
        if scan not in SCANS:
            raise ValueError(f"unknown scan {scan!r}; choices: {list(SCANS)}")
        self.hidden, self.scan = hidden, scan
        self.in_proj = nn.Linear(dim, self.n_branches * hidden)
        self.out_proj = nn.Linear(hidden, dim)

    def logits(self, *k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u_t, k_h): the logit of the candidate's share and the candidate's pre-activation, each
        (..., hidden), from the `n_branches` projections of x_t."""
        raise NotImplementedError

    def coefficients(self, *k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_t, b_t), each (..., hidden); 0 <= a_t <= 1. sigmoid(-u), not 1 - sigmoid(u): no cancellation."""
        u, k_h = self.logits(*k)
        return torch.sigmoid(-u), torch.sigmoid(u) * g(k_h)

    def log_coefficients(self, *k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log a_t, log b_t), each (..., hidden), finite where log(sigmoid) would give -inf."""
        u, k_h = self.logits(*k)
        return -F.softplus(u), -F.softplus(-u) + log_g(k_h)

    def state_shapes(self, batch_size: int) -> list[tuple[int, ...]]:
        return [(batch_size, self.hidden)]

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor]):
        (h0,) = state  # (B, hidden)
        k = self.in_proj(x).chunk(self.n_branches, dim=-1)  # n_branches x (B, T, hidden)
        if self.scan == "log":
            h = log_linear_scan(*self.log_coefficients(*k), h0)  # (B, T, hidden)
        else:
            h = linear_scan(*self.coefficients(*k), h0)
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
                 dropout: float = 0.0, activation: str = "relu", scan: str = "linear"):
        """`expansion`: recurrent width / dim (the paper leaves the hidden size free; 2 here).
        `mlp_expansion`: MLP width / dim (GPT-2 and DT: 4). `dropout`: on the residual branches.
        `activation`: the MLP's, "gelu" or "relu".
        `scan`: how `forward` runs the recurrence, "linear" (Blelloch; default, faster on CPU) or "log"
        (Heinsen, the paper's App. B); the module docstring says more."""
        super().__init__(dim, n_layers, lambda: self.mixer_cls(dim, expansion * dim, scan),
                         mlp_expansion=mlp_expansion, dropout=dropout, activation=activation)
