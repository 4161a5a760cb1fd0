"""The part minGRU and minLSTM share (Feng et al. 2024, "Were RNNs All We Needed?", arXiv 2410.01201).

Both are h_t = (1 - s_t) * h_{t-1} + s_t * g(h~_t), a convex mix of the state and a positive candidate
whose share s_t = sigmoid(u_t) depends on x_t only (each backbone defines its logit u_t), so all T steps
run as one scan of h_t = a_t * h_{t-1} + b_t. `scan` picks how:
- "linear" (default): the scan in linear space, on a_t = 1 - sigmoid(u_t), b_t = sigmoid(u_t) * g: the
  Triton kernel for CUDA tensors when Triton imports, else the torch scan (`scan.py` says what runs where).
- "triton": the same, always through the Triton kernel (CPU tensors only under TRITON_INTERPRET=1).
- "log": the paper's App. B, Heinsen's scan in log space, on log a_t = -softplus(u_t) and
  log b_t = -softplus(-u_t) + log g, the forms that stay finite for any input.
All compute the same recurrence, and `step` runs it one update at a time.

Precision: the gates and the scan run in float32 (float64 in a float64 module) whatever the autocast
dtype, as in Mamba and flash-linear-attention: the in-projection's output is upcast and autocast is off
from there to the scan's end; h goes back to the input's dtype before the out-projection. In bf16 a
gate of 0.99 is 0.988, and 1000 steps of h = 0.99 h + 1 end at 85.5 instead of 100.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone
from .scan import cast, compute_dtype, float32_region, linear_scan, log_linear_scan, upcast

SCANS = ("linear", "log", "triton")


def g(x: torch.Tensor) -> torch.Tensor:
    """The paper's positive activation for the candidate state: x + 0.5 for x >= 0, sigmoid(x) below."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: torch.Tensor) -> torch.Tensor:
    """log g(x), finite for any x: log(x + 0.5) for x >= 0, -softplus(-x) below (the paper's App. B)."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))  # relu: no log of < 0.5


class _Coefficients(torch.autograd.Function):
    """(a, b) = (1 - s, s * g(k_h)), s = sigmoid(u), from the in-projection's output k (..., n * hidden),
    with a hand-written backward. u is minGRU's k_z (n = 2: k = [k_z | k_h]) or minLSTM's
    softplus(-k_f) - softplus(-k_i) (n = 3: k = [k_f | k_i | k_h]), as their `logits` define it.

    a = 1 - s is within eps/2 of `coefficients`' sigmoid(-u) (what rounding loses is a's relative precision
    where a ~ 0, where a * h_{t-1} ~ 0 too), and one tensor fewer.
    d a / d u = -s a, d b / d u = s a g, d b / d k_h = s g'(k_h) with g' = 1 for k_h >= 0 and g (1 - g)
    below; minLSTM's d u / d k_f = -sigmoid(-k_f), d u / d k_i = sigmoid(-k_i). Written so, minGRU
    allocates 5 full-size tensors forward and one backward, the gradient of k itself (autograd through
    the same ops takes about three times as many, plus a copy to join the gradients of k's chunks): on CPU
    a fresh tensor's first touch costs about as much as an elementwise pass over it.
    """

    @staticmethod
    def forward(ctx, k, n):
        *gates, k_h = k.chunk(n, dim=-1)
        if n == 2:
            s, extra = torch.sigmoid(gates[0]), ()
        else:
            neg_f, neg_i = torch.neg(gates[0]), torch.neg(gates[1])
            s = F.softplus(neg_f).sub_(F.softplus(neg_i)).sigmoid_()  # u = log i - log f, then s
            extra = (neg_f.sigmoid_(), neg_i.sigmoid_())  # sigmoid(-k_f), sigmoid(-k_i)
        a = 1 - s
        g_h = k_h.clamp(min=0)
        dg = k_h.clamp(max=0).sigmoid_()  # c = sigmoid(min(k, 0)): g = max(k, 0) + c exactly (c = 0.5 at k >= 0)
        g_h.add_(dg)
        b = torch.ge(k_h, 0, out=torch.empty_like(s))  # 1.0 where k >= 0 (b's buffer, until b is computed)
        dg.addcmul_(dg, dg, value=-1).add_(b, alpha=0.75)  # g' = c (1 - c), + 0.75 where k >= 0 (c (1 - c) = 0.25)
        ctx.save_for_backward(s, a, g_h, dg, *extra)
        return a, torch.mul(s, g_h, out=b)

    @staticmethod
    def backward(ctx, grad_a, grad_b):
        s, a, g_h, dg, *extra = ctx.saved_tensors
        n = 3 if extra else 2
        grad = torch.empty(*s.shape[:-1], n * s.shape[-1], dtype=s.dtype, device=s.device)
        *grad_gates, grad_k = grad.chunk(n, dim=-1)
        grad_u = torch.mul(grad_b, g_h, out=grad_gates[-1]).sub_(grad_a).mul_(s).mul_(a)
        if extra:  # minLSTM: from u to k_f and k_i
            torch.mul(grad_u, extra[0], out=grad_gates[0]).neg_()
            grad_u.mul_(extra[1])
        torch.mul(grad_b, s, out=grad_k).mul_(dg)
        return grad, None


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
        k = self.in_proj(x)  # (B, T, n_branches * hidden)
        with float32_region(k):
            k = k.to(compute_dtype(k, h0))
            if self.scan == "log":
                h = log_linear_scan(*self.log_coefficients(*k.chunk(self.n_branches, dim=-1)), h0.to(k.dtype))
            else:
                if torch.compiler.is_compiling():  # the compiler fuses plain ops; it cannot trace the in-place ones
                    a, b = self.coefficients(*k.chunk(self.n_branches, dim=-1))
                else:
                    a, b = _Coefficients.apply(k, self.n_branches)  # (B, T, hidden) each
                h = linear_scan(a, b, h0, backend="triton" if self.scan == "triton" else "auto")
        # the state: a copy (a view would keep all of h alive), in the state's dtype
        return self.out_proj(h.to(x.dtype)), (h[:, -1].to(h0.dtype, copy=True),)

    def step(self, x: torch.Tensor, state: tuple[torch.Tensor]):
        (h,) = state  # (B, hidden)
        k, h_prev = upcast(self.in_proj(x), h)  # no autocast region needed: autocast lowers none of the ops below
        a, b = self.coefficients(*k.chunk(self.n_branches, dim=-1))  # (B, hidden)
        h_new = a * h_prev + b
        return self.out_proj(cast(h_new, x.dtype)), (cast(h_new, h.dtype),)


class MinRNN(Backbone):
    """Residual stack of `mixer_cls` mixers. State: (h_1, ..., h_L), h_l: (B, expansion * dim)."""

    mixer_cls: type[MinRNNMixer]

    def __init__(self, dim: int, n_layers: int, *, expansion: int = 2, mlp_expansion: int = 4,
                 dropout: float = 0.0, activation: str = "relu", scan: str = "linear"):
        """`expansion`: recurrent width / dim (the paper leaves the hidden size free; 2 here).
        `mlp_expansion`: MLP width / dim (GPT-2 and DT: 4). `dropout`: on the residual branches.
        `activation`: the MLP's, "gelu" or "relu".
        `scan`: how `forward` runs the recurrence: "linear" (default), "triton" or "log" (Heinsen, the
        paper's App. B); the module docstring says more."""
        super().__init__(dim, n_layers, lambda: self.mixer_cls(dim, expansion * dim, scan),
                         mlp_expansion=mlp_expansion, dropout=dropout, activation=activation)
