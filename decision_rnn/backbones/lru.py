"""Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for Long
Sequences", arXiv 2303.06349; Sec. 3 and the JAX code of its Appendix A).

    lambda = exp(-exp(nu_log) + i exp(theta_log))              complex, diagonal, |lambda| < 1
    h_t = lambda * h_{t-1} + exp(gamma_log) * (B x_t)          h: complex (state_dim,)
    y_t = Re(C h_t) + D * x_t

Ring initialisation: |lambda| uniform on the ring [r_min, r_max] (area-uniform), phase uniform in
[0, max_phase]; gamma_log starts at log sqrt(1 - |lambda|^2), which keeps E|h|^2 at the scale of the
input (Sec. 3.3). The state is the (real, imaginary) pair of h as two real tensors, and `step` computes
in real arithmetic on such pairs (exportable to ONNX); `forward` runs the scan on complex tensors, with
the in- and out-projections' real and imaginary rows interleaved so that one matmul each side fills or
reads the complex view of a real tensor (`torch.view_as_complex`): no copies of activations.

Precision: lambda, gamma * (B x) and the scan run in float32 (float64 in a float64 module) whatever the
autocast dtype; |lambda| near 1 is where bf16 would lose the state (`scan.py`). `scan` picks the
scan's backend: "linear" (default: the Triton kernel for CUDA tensors when Triton imports, else torch)
or "triton" (always the kernel).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone
from .scan import cast, cmul, complex_linear_scan, float32_region, upcast

SCANS = ("linear", "triton")


class LRUMixer(nn.Module):
    """The LRU recurrence. State: (h_re, h_im), each (B, state_dim)."""

    def __init__(self, dim: int, state_dim: int, r_min: float, r_max: float, max_phase: float,
                 scan: str = "linear"):
        super().__init__()
        if scan not in SCANS:
            raise ValueError(f"unknown scan {scan!r}; choices: {list(SCANS)}")
        self.state_dim, self.scan = state_dim, scan
        u1, u2 = torch.rand(state_dim).clamp_min(1e-12), torch.rand(state_dim)  # u1 = 0 and r_min = 0: log(0)
        nu_log = torch.log(-0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2))
        self.nu_log = nn.Parameter(nu_log)  # (N,)
        self.theta_log = nn.Parameter(torch.log(max_phase * u2))  # (N,)
        self.gamma_log = nn.Parameter(torch.log(torch.sqrt(1 - torch.exp(-2 * torch.exp(nu_log)))))  # (N,)
        self.B_re = nn.Parameter(torch.randn(state_dim, dim) / math.sqrt(2 * dim))  # (N, dim)
        self.B_im = nn.Parameter(torch.randn(state_dim, dim) / math.sqrt(2 * dim))
        self.C_re = nn.Parameter(torch.randn(dim, state_dim) / math.sqrt(state_dim))  # (dim, N)
        self.C_im = nn.Parameter(torch.randn(dim, state_dim) / math.sqrt(state_dim))
        self.D = nn.Parameter(torch.randn(dim))  # (dim,)

    def state_shapes(self, batch_size: int) -> list[tuple[int, ...]]:
        return [(batch_size, self.state_dim)] * 2

    def _lambda(self) -> tuple[torch.Tensor, torch.Tensor]:
        modulus, phase = torch.exp(-torch.exp(self.nu_log)), torch.exp(self.theta_log)  # (N,)
        return modulus * torch.cos(phase), modulus * torch.sin(phase)

    def _input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma * (B x): (..., dim) -> two (..., N)."""
        gamma = torch.exp(self.gamma_log).unsqueeze(-1)  # (N, 1)
        return F.linear(x, gamma * self.B_re), F.linear(x, gamma * self.B_im)

    def _output(self, h_re: torch.Tensor, h_im: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Re(C h) + D * x: (..., N) twice and (..., dim) -> (..., dim)."""
        return F.linear(h_re, self.C_re) - F.linear(h_im, self.C_im) + self.D * x

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        with float32_region(x):
            x_in, h0_re, h0_im = upcast(x, *state)  # (B, T, dim), (B, N), (B, N)
            gamma = torch.exp(self.gamma_log).unsqueeze(-1)  # (N, 1)
            w_in = torch.stack([gamma * self.B_re, gamma * self.B_im], dim=1).flatten(0, 1)  # (2N, dim): re, im rows
            u = torch.view_as_complex(F.linear(x_in, cast(w_in, x_in.dtype)).unflatten(-1, (-1, 2)))  # (B, T, N)
            h = complex_linear_scan(torch.complex(*self._lambda()), u, torch.complex(h0_re, h0_im),
                                    backend="triton" if self.scan == "triton" else "auto")  # (B, T, N)
        w_out = torch.stack([self.C_re, -self.C_im], dim=2).flatten(1, 2)  # (dim, 2N): Re(C h) on re, im pairs
        y = F.linear(cast(torch.view_as_real(h).flatten(-2), x.dtype), w_out) + self.D * x
        last = h[:, -1]  # copies (views would keep all of h alive), in the state's dtype
        return y, (last.real.to(state[0].dtype, copy=True), last.imag.to(state[1].dtype, copy=True))

    def step(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        with float32_region(x):
            x_in, h_re, h_im = upcast(x, *state)  # (B, dim), (B, N), (B, N)
            u_re, u_im = self._input(x_in)
            h_re, h_im = cmul(*self._lambda(), h_re, h_im)
            h_re, h_im = h_re + u_re, h_im + u_im
        y = self._output(cast(h_re, x.dtype), cast(h_im, x.dtype), x)
        return y, (cast(h_re, state[0].dtype), cast(h_im, state[1].dtype))


class LRU(Backbone):
    """Residual stack of LRU mixers. State: (h_re_1, h_im_1, ..., h_re_L, h_im_L), each (B, state_dim)."""

    def __init__(self, dim: int, n_layers: int, *, state_dim: int | None = None, r_min: float = 0.0,
                 r_max: float = 0.999, max_phase: float = 2 * math.pi, mlp_expansion: int = 4,
                 dropout: float = 0.0, activation: str = "relu", scan: str = "linear"):
        """`state_dim`: complex state size N (default 2 * dim; the paper tunes it per task).
        `r_min`, `r_max`, `max_phase`: ring init. The paper trains most Long Range Arena tasks from the ring
        0.9 / 0.999 / 2 pi (Sec. 3.3, appendix hyper-parameters); its Appendix A code defaults to r_min=0,
        as here: from 0.9 up every channel averages over 10 steps or more, half of DT's 20-step window.
        `mlp_expansion`: MLP width / dim (GPT-2 and DT: 4). `dropout`: on the residual branches.
        `activation`: the MLP's, "gelu" or "relu". `scan`: the scan's backend (module docstring)."""
        N = state_dim or 2 * dim
        super().__init__(dim, n_layers, lambda: LRUMixer(dim, N, r_min, r_max, max_phase, scan),
                         mlp_expansion=mlp_expansion, dropout=dropout, activation=activation)
