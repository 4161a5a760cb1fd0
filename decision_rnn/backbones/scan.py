"""Parallel scans for the first-order linear recurrence h_t = a_t * h_{t-1} + b_t.

- `linear_scan`: real, time-varying a_t (the min-RNN gates).
- `complex_linear_scan`: complex, time-invariant a (the LRU's diagonal lambda), in real arithmetic.
- `log_linear_scan`: real a_t, b_t > 0 given as log a_t, log b_t: the min-RNN paper's log-space scan.

The first two run Blelloch's work-efficient scan (Blelloch 1990, "Prefix sums and their applications"):
an up-sweep and a down-sweep of log2(T) rounds each, ~2T elementwise updates in all, in place on a copy
zero-padded to a power of two. Their backward is the adjoint recurrence, the same scan run backwards
in time, so training keeps O(T) memory (autograd through the rounds would keep every round).
The starting state h0, of any sign, enters linearly through b_0 += a_0 * h0: it is never passed
through an activation, so the parallel result equals the step-by-step loop whatever h0 is.

`log_linear_scan` is Heinsen's scan (Heinsen 2023, arXiv 2311.06281), as the min-RNN paper runs it
(Feng et al. 2024, App. B): log h = a* + logcumsumexp(log b - a*), a* = cumsum(log a). That sum cancels
two numbers of size |a*|, the log-decay summed since the scan's start, so h's relative error grows like
eps * |a*|: over T=2049 steps of gates near 1/2, ~1400 eps, more than float32's test tolerance of 1e-4.
So it runs within chunks of `chunk` steps, where |a*| <= chunk * max |log a_t| (~50 eps for such gates),
and chains the chunks with `linear_scan`; h0 and each chunk's entering state, of any sign, are added
linearly (h = h_local + exp(a*) * h_enter), never through a log.

Why linear space by default: on CPU, torch's logcumsumexp made the log-space scan's forward ~6x slower
(B=64, T=1024, H=256, 2 threads). In linear space every |a_t| <= 1, so the scan only multiplies by
numbers of modulus <= 1: products may underflow to zero, their correct limit, and nothing overflows.

On CUDA with float32, `linear_scan` uses the `accelerated-scan` package's kernel when it is installed
(optional, looked up at first use). That path is untested here: this project has no GPU.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def cmul(a_re, a_im, b_re, b_im) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_re + i a_im) * (b_re + i b_im) as a (real, imaginary) pair."""
    return a_re * b_re - a_im * b_im, a_re * b_im + a_im * b_re


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t for t = 0..T-1 from h_{-1} = h0. a, b: (B, T, ...), h0: (B, ...)."""
    b = _add_to_first(b, a[:, 0] * h0)
    if a.is_cuda and a.dtype == torch.float32 and (cuda_scan := _cuda_scan()) is not None:
        return _accelerated_scan(cuda_scan, a, b)
    return _LinearScan.apply(a, b)


def complex_linear_scan(lam_re, lam_im, b_re, b_im, h0_re, h0_im) -> tuple[torch.Tensor, torch.Tensor]:
    """h_t = lambda * h_{t-1} + b_t in complex numbers held as (real, imaginary) pairs.

    lam_*: (N,), time-invariant; b_*: (B, T, N); h0_*: (B, N). Returns (h_re, h_im), each (B, T, N).
    """
    r, i = cmul(lam_re, lam_im, h0_re, h0_im)
    return _ComplexScan.apply(lam_re, lam_im, _add_to_first(b_re, r), _add_to_first(b_im, i))


def log_linear_scan(log_a: torch.Tensor, log_b: torch.Tensor, h0: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t from h_{-1} = h0, in log space within chunks (see the module docstring).

    log_a, log_b: (B, T, ...), the logs of a_t > 0 and b_t > 0; h0: (B, ...), any sign. Returns h (B, T, ...).
    """
    T = log_a.shape[1]
    n = -(-T // chunk)  # chunks; the padding (a = b = 1) comes after every real step, so changes none of them
    a_star = _padded(log_a, n * chunk).unflatten(1, (n, chunk)).cumsum(2)  # (B, n, chunk, ...), per chunk
    log_b = _padded(log_b, n * chunk).unflatten(1, (n, chunk))
    h_local = (a_star + (log_b - a_star).logcumsumexp(2)).exp()  # each chunk from a zero state
    decay = a_star.exp()  # prod of a from the chunk's start
    ends = linear_scan(decay[:, :, -1], h_local[:, :, -1], h0)  # (B, n, ...), the state after each chunk
    h_enter = torch.cat([h0.unsqueeze(1), ends[:, :-1]], dim=1)  # (B, n, ...), the state before each chunk
    return (h_local + decay * h_enter.unsqueeze(2)).flatten(1, 2)[:, :T]


def _add_to_first(b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """b with x added to its first step: how a_0 * h0 enters a scan that starts from zero."""
    return torch.cat([b[:, :1] + x.unsqueeze(1), b[:, 1:]], dim=1)


# ---- Blelloch's scan, in place --------------------------------------------------------------------


def _rounds(T: int) -> Iterator[tuple[int, bool]]:
    """(d, is_up_sweep) for each round on a power-of-two T: up d = 1, 2, .., T/2; down d = T/4, .., 1."""
    d = 1
    while 2 * d <= T:
        yield d, True
        d *= 2
    d = T // 4
    while d >= 1:
        yield d, False
        d //= 2


def _pairs(x: torch.Tensor, d: int, up: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(src, dst) views of x (B, T, ...) for one round, where dst absorbs src, d steps before it.

    Up-sweep: dst = 2d*m - 1, the end of each aligned block of 2d steps, which then holds the whole
    block. Down-sweep: dst = 2d*j + d - 1, src = 2d*j - 1, a position whose prefix is finished.
    """
    T = x.shape[1]
    if up:
        blocks = x.unflatten(1, (T // (2 * d), 2 * d))  # (B, T/2d, 2d, ...)
        return blocks[:, :, d - 1], blocks[:, :, 2 * d - 1]
    blocks = x[:, 2 * d - 1 : T - 1].unflatten(1, (T // (2 * d) - 1, 2 * d))  # (B, T/2d - 1, 2d, ...)
    return blocks[:, :, 0], blocks[:, :, d]


def _padded(x: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """A copy of x (B, T, ...) zero-padded in time to `length` (default: T rounded up to a power of two)."""
    T = x.shape[1]
    out = x.new_zeros(x.shape[0], length or 1 << (T - 1).bit_length(), *x.shape[2:])
    out[:, :T] = x
    return out


def _real_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t from zero; a, b: (B, T, ...). No autograd."""
    T = b.shape[1]
    a, h = _padded(a), _padded(b)
    for d, up in _rounds(h.shape[1]):
        (a_src, a_dst), (h_src, h_dst) = _pairs(a, d, up), _pairs(h, d, up)
        h_dst.addcmul_(a_dst, h_src)  # a_dst: the product of a over the d steps dst covers
        if up:
            a_dst.mul_(a_src)  # ... now over 2d steps
    return h[:, :T]


def _complex_scan(lam_re, lam_im, b_re, b_im) -> tuple[torch.Tensor, torch.Tensor]:
    """h_t = lambda * h_{t-1} + b_t from zero; lambda: (N,), b: (B, T, N). No autograd."""
    T = b_re.shape[1]
    h_re, h_im = _padded(b_re), _padded(b_im)
    powers = {1: (lam_re, lam_im)}  # d -> lambda^d
    for d, up in _rounds(h_re.shape[1]):
        if d not in powers:
            powers[d] = cmul(*powers[d // 2], *powers[d // 2])
        (p_re, p_im), (re_src, re_dst), (im_src, im_dst) = powers[d], _pairs(h_re, d, up), _pairs(h_im, d, up)
        re_dst.addcmul_(p_re, re_src).addcmul_(p_im, im_src, value=-1)  # dst += lambda^d * src
        im_dst.addcmul_(p_re, im_src).addcmul_(p_im, re_src)
    return h_re[:, :T], h_im[:, :T]


def _shift_back(x: torch.Tensor) -> torch.Tensor:
    """x_{t-1} at step t, zero at t = 0."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


class _LinearScan(torch.autograd.Function):
    """h_t = a_t * h_{t-1} + b_t from zero; backward runs the adjoint recurrence backwards in time."""

    @staticmethod
    def forward(ctx, a, b):
        h = _real_scan(a, b)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, g):
        a, h = ctx.saved_tensors
        # dL/db_t = g_t + a_{t+1} * dL/db_{t+1}: reversed in time, step t's coefficient is a_{t+1}
        a_next = _shift_back(a.flip(1))  # (B, T, ...), reversed time
        gb = _real_scan(a_next, g.flip(1)).flip(1)
        return gb * _shift_back(h), gb  # dL/da_t = dL/db_t * h_{t-1}


class _ComplexScan(torch.autograd.Function):
    """h_t = lambda * h_{t-1} + b_t from zero; backward runs the adjoint recurrence backwards in time."""

    @staticmethod
    def forward(ctx, lam_re, lam_im, b_re, b_im):
        h_re, h_im = _complex_scan(lam_re, lam_im, b_re, b_im)
        ctx.save_for_backward(lam_re, lam_im, h_re, h_im)
        return h_re, h_im

    @staticmethod
    def backward(ctx, g_re, g_im):
        lam_re, lam_im, h_re, h_im = ctx.saved_tensors
        # dL/db_t = g_t + conj(lambda) * dL/db_{t+1}: the same scan, reversed in time, with conj(lambda)
        gb_re, gb_im = _complex_scan(lam_re, -lam_im, g_re.flip(1), g_im.flip(1))
        gb_re, gb_im = gb_re.flip(1), gb_im.flip(1)  # (B, T, N)
        # dL/dlambda = sum over batch and t of dL/db_t * conj(h_{t-1})
        prev_re, prev_im = _shift_back(h_re), _shift_back(h_im)
        dims = tuple(range(h_re.dim() - 1))
        g_lam_re = (gb_re * prev_re + gb_im * prev_im).sum(dims)
        g_lam_im = (gb_im * prev_re - gb_re * prev_im).sum(dims)
        return g_lam_re, g_lam_im, gb_re, gb_im


# ---- optional CUDA kernel -------------------------------------------------------------------------


@functools.cache
def _cuda_scan():
    """`accelerated_scan.warp.scan` if it is installed and builds, else None (looked up once)."""
    try:
        from accelerated_scan.warp import scan
    except Exception as e:  # not installed, or its CUDA extension failed to build
        logger.info("accelerated-scan unavailable (%s): using the torch scan on CUDA", e)
        return None
    logger.info("using accelerated-scan's CUDA kernel for real linear scans")
    return scan


def _accelerated_scan(scan, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The scan from zero by accelerated-scan, which wants (B, H, T), T a power of two >= 32. Untested."""
    T = a.shape[1]
    pad = (0, max(32, 1 << (T - 1).bit_length()) - T)
    a = F.pad(a.transpose(1, 2), pad).contiguous()  # (B, H, T')
    b = F.pad(b.transpose(1, 2), pad).contiguous()
    return scan(a, b)[:, :, :T].transpose(1, 2)
