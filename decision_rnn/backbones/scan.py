"""Parallel scans for the first-order linear recurrence h_t = a_t * h_{t-1} + b_t.

Every function takes the time axis as dim 1, (B, T, ...), and a starting state h0 (B, ...) of any sign,
and returns every h_t. The starting state enters linearly (folded into b_0 or added as
prod(a_1..a_t) * h0), so it is never passed through an activation: the parallel result equals the
step-by-step loop whatever h0 is.

- `linear_scan`: real a_t, b_t. Hillis & Steele (1986) doubling: log2(T) rounds of elementwise ops.
- `complex_linear_scan`: a fixed complex a (the LRU's diagonal lambda), in real arithmetic, with a
  hand-written backward (the adjoint recurrence runs backwards in time), so training keeps O(T) memory
  instead of autograd's O(T log T) copies.
- `log_linear_scan`: a_t > 0 and b_t > 0 given as logs (the min-RNN gates). Heinsen's log-space scan
  (Heinsen 2023, arXiv 2311.06281): log h_t = a*_t + logcumsumexp(log b - a*)_t with a* = cumsum(log a).
  a* + logcumsumexp cancels two numbers of size |a*|, so the error grows like eps * |a*|; we bound |a*|
  by scanning chunks of `chunk` steps and chaining the chunks with `linear_scan`.

On CUDA with float32, `log_linear_scan` uses the `accelerated-scan` package's kernel when it is
installed (optional, found at first use). That path is untested here: this project has no GPU.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t for t = 0..T-1, from h_{-1} = h0. a, b: (B, T, ...), h0: (B, ...)."""
    b = torch.cat([b[:, :1] + a[:, :1] * h0.unsqueeze(1), b[:, 1:]], dim=1)
    T, d = b.shape[1], 1
    while d < T:
        # after this round, position t holds the recurrence over steps (t - 2d, t] (Hillis-Steele)
        b = torch.cat([b[:, :d], b[:, d:] + a[:, d:] * b[:, :-d]], dim=1)
        if 2 * d < T:
            a = torch.cat([a[:, :d], a[:, d:] * a[:, :-d]], dim=1)
        d *= 2
    return b


def cmul(a_re, a_im, b_re, b_im) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_re + i a_im) * (b_re + i b_im) as a (real, imaginary) pair."""
    return a_re * b_re - a_im * b_im, a_re * b_im + a_im * b_re


def _complex_doubling_(lam_re, lam_im, h_re, h_im) -> tuple[torch.Tensor, torch.Tensor]:
    """In place: Hillis-Steele scan from zero with a time-invariant complex lambda (N,); h: (B, T, N)."""
    p_re, p_im = lam_re, lam_im  # lambda^d
    T, d = h_re.shape[1], 1
    while d < T:
        # both products read h[:, :-d] before either in-place add overwrites the overlapping part
        r, i = cmul(p_re, p_im, h_re[:, :-d], h_im[:, :-d])
        h_re[:, d:] += r
        h_im[:, d:] += i
        p_re, p_im = cmul(p_re, p_im, p_re, p_im)
        d *= 2
    return h_re, h_im


class _ComplexScan(torch.autograd.Function):
    """h_t = lambda * h_{t-1} + b_t from h_{-1} = 0, with the adjoint recurrence as backward."""

    @staticmethod
    def forward(ctx, lam_re, lam_im, b_re, b_im):
        h_re, h_im = _complex_doubling_(lam_re, lam_im, b_re.clone(), b_im.clone())
        ctx.save_for_backward(lam_re, lam_im, h_re, h_im)
        return h_re, h_im

    @staticmethod
    def backward(ctx, g_re, g_im):
        lam_re, lam_im, h_re, h_im = ctx.saved_tensors
        # dL/db_t = g_t + conj(lambda) * dL/db_{t+1}: the same scan, reversed in time, with conj(lambda)
        gb_re, gb_im = _complex_doubling_(lam_re, -lam_im, g_re.flip(1), g_im.flip(1))
        gb_re, gb_im = gb_re.flip(1), gb_im.flip(1)  # (B, T, N)
        # dL/dlambda = sum_t dL/db_t * conj(h_{t-1}), with h_{-1} = 0
        nxt_re, nxt_im, prev_re, prev_im = gb_re[:, 1:], gb_im[:, 1:], h_re[:, :-1], h_im[:, :-1]
        dims = tuple(range(h_re.dim() - 1))
        g_lam_re = (nxt_re * prev_re + nxt_im * prev_im).sum(dims)
        g_lam_im = (nxt_im * prev_re - nxt_re * prev_im).sum(dims)
        return g_lam_re, g_lam_im, gb_re, gb_im


def complex_linear_scan(lam_re, lam_im, b_re, b_im, h0_re, h0_im) -> tuple[torch.Tensor, torch.Tensor]:
    """h_t = lambda * h_{t-1} + b_t in complex numbers held as real pairs.

    lam_*: (N,) time-invariant; b_*: (B, T, N); h0_*: (B, N). Returns (h_re, h_im), each (B, T, N).
    """
    r, i = cmul(lam_re, lam_im, h0_re, h0_im)  # lambda * h0 enters through b_0
    b_re = torch.cat([b_re[:, :1] + r.unsqueeze(1), b_re[:, 1:]], dim=1)
    b_im = torch.cat([b_im[:, :1] + i.unsqueeze(1), b_im[:, 1:]], dim=1)
    return _ComplexScan.apply(lam_re, lam_im, b_re, b_im)


def log_linear_scan(log_a: torch.Tensor, log_b: torch.Tensor, h0: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t with a_t = exp(log_a_t), b_t = exp(log_b_t); log_*: (B, T, H), h0: (B, H)."""
    if log_a.is_cuda and log_a.dtype == torch.float32 and (cuda_scan := _cuda_scan()) is not None:
        return _accelerated_linear_scan(cuda_scan, log_a.exp(), log_b.exp(), h0)
    B, T, H = log_a.shape
    C = min(chunk, T)
    n = -(-T // C)  # number of chunks
    # pad the end to whole chunks; padded steps come after every real one, so they change nothing
    pad = (0, 0, 0, n * C - T)
    log_a = F.pad(log_a, pad).view(B, n, C, H)
    log_b = F.pad(log_b, pad).view(B, n, C, H)
    a_star = log_a.cumsum(dim=2)  # (B, n, C, H): log of prod(a) since the chunk start
    # Heinsen's scan inside every chunk at once, from a zero state at the chunk start
    h_local = torch.exp(a_star + torch.logcumsumexp(log_b - a_star, dim=2))  # (B, n, C, H)
    decay = a_star.exp()  # (B, n, C, H)
    # chain the chunks: the state at each chunk's end, from h0
    h_end = linear_scan(decay[:, :, -1], h_local[:, :, -1], h0)  # (B, n, H)
    h_enter = torch.cat([h0.unsqueeze(1), h_end[:, :-1]], dim=1)  # (B, n, H): state entering each chunk
    h = h_local + decay * h_enter.unsqueeze(2)  # (B, n, C, H)
    return h.reshape(B, n * C, H)[:, :T]


@functools.cache
def _cuda_scan():
    """`accelerated_scan.warp.scan` if it is installed and builds, else None (looked up once)."""
    try:
        from accelerated_scan.warp import scan
    except Exception as e:  # not installed, or its CUDA extension failed to build
        logger.info("accelerated-scan unavailable (%s): using the torch scan on CUDA", e)
        return None
    logger.info("using accelerated-scan's CUDA kernel for the min-RNN scans")
    return scan


def _accelerated_linear_scan(scan, a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """linear_scan through accelerated-scan, which wants (B, H, T) with T a power of two >= 32. Untested."""
    T = a.shape[1]
    b = torch.cat([b[:, :1] + a[:, :1] * h0.unsqueeze(1), b[:, 1:]], dim=1)
    pad = (0, max(32, 1 << (T - 1).bit_length()) - T)
    a = F.pad(a.transpose(1, 2), pad).contiguous()  # (B, H, T')
    b = F.pad(b.transpose(1, 2), pad).contiguous()
    return scan(a, b)[:, :, :T].transpose(1, 2)
