"""Scans for the first-order linear recurrence h_t = a_t * h_{t-1} + b_t, from h_{-1} = h0.

- `linear_scan`: real, time-varying a_t (the min-RNN gates).
- `complex_linear_scan`: complex, time-invariant a (the LRU's diagonal lambda).
- `log_linear_scan`: real a_t, b_t > 0 given as log a_t, log b_t: the min-RNN paper's log-space scan.

What runs where (`backend`):
- "torch" (CPU, and CUDA without Triton): a chunked sequential scan, in place into the output. While
  one time step spans enough channels (batch x hidden >= `SEQUENTIAL_WIDTH`), it is the plain loop over
  t, each step one vectorised multiply-add over the batch and channels. Narrower, it cuts T into chunks
  of C steps and runs the loop over the positions within the chunks, all chunks at once: each chunk's end
  state from zero, then the true state entering each chunk (a loop over chunks), then the chunk again from
  that state: ~2C + T/C vectorised steps instead of T. No padding, no concatenation, no flips: the
  backward is the adjoint recurrence run backwards in time over the same views, dL/db_t = g_t +
  a_{t+1} dL/db_{t+1} and dL/da_t = dL/db_t h_{t-1}, so training keeps O(T) memory.
- "triton" (CUDA; CPU under TRITON_INTERPRET=1): the fused kernel of `triton_scan.py`.
- "auto" (default): "triton" for CUDA tensors when Triton imports, else "torch".
Under torch.compile the "torch" scan is the plain loop in functional ops (dynamo cannot trace writes into
views), which the compiler fuses.
h0 enters as the scan's starting state, linearly: it is never passed through an activation, so the
parallel result equals the step-by-step loop whatever h0 is.

Precision: the scan computes in float32, or float64 for float64 inputs, whatever the dtype it is given
(bf16 / fp16 inputs are upcast, the result is cast back to b's dtype), as Mamba's and
flash-linear-attention's scans do: in bf16, a gate of 0.99 rounds to 0.988 and 1000 steps of
h = 0.99 h + 1 end at 85.5 instead of 100. The min-RNN and LRU mixers also compute their gates in
float32 (see `float32_region`), where the rounding of a near 1 would otherwise happen.

`log_linear_scan` is Heinsen's scan (Heinsen 2023, arXiv 2311.06281), as the min-RNN paper runs it
(Feng et al. 2024, App. B): log h = a* + logcumsumexp(log b - a*), a* = cumsum(log a). That sum cancels
two numbers of size |a*|, the log-decay summed since the scan's start, so h's relative error grows like
eps * |a*|: over T=2049 steps of gates near 1/2, ~1400 eps, more than float32's test tolerance of 1e-4.
So it runs within chunks of `chunk` steps, where |a*| <= chunk * max |log a_t| (~50 eps for such gates),
and chains the chunks with `linear_scan`; h0 and each chunk's entering state, of any sign, are added
linearly (h = h_local + exp(a*) * h_enter), never through a log. In linear space every |a_t| <= 1, so
the scan only multiplies by numbers of modulus <= 1: products may underflow to zero, their correct
limit, and nothing overflows.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "triton")
KERNEL_DEVICES = ("cuda",)
"""Devices where backend "auto" picks the Triton kernel."""
SEQUENTIAL_WIDTH = 16384
"""Channels per time step (batch x hidden) from which the plain loop over t beats chunking on CPU."""


def cmul(a_re, a_im, b_re, b_im) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_re + i a_im) * (b_re + i b_im) as a (real, imaginary) pair."""
    return a_re * b_re - a_im * b_im, a_re * b_im + a_im * b_re


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype a scan computes in: float32, or wider if an input is (float64, complex128)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in `dtype`, t itself if it has it: no `.to` call (~3 us), which `step` would pay per token and layer."""
    return t if t.dtype == dtype else t.to(dtype)


_FULL = (torch.float32, torch.float64, torch.complex64, torch.complex128)


def upcast(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors in their `compute_dtype` (at once where they all have one already, as in float32 `step`s)."""
    dtype = tensors[0].dtype
    if dtype in _FULL and all(t.dtype == dtype for t in tensors):
        return tensors
    dtype = compute_dtype(*tensors)
    return tuple(cast(t, dtype) for t in tensors)


_NO_REGION = contextlib.nullcontext()


def float32_region(x: torch.Tensor):
    """Autocast off on x's device, where it is on: the gates and the scan inside run in the dtype their
    inputs are given (the callers upcast them to `compute_dtype`)."""
    device = x.device.type
    return torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else _NO_REGION


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t for t = 0..T-1 from h_{-1} = h0. a, b: (B, T, ...), h0: (B, ...).

    Computes in float32 (float64 for float64 inputs); returns b's dtype. `backend`: module docstring."""
    if a.shape != b.shape or h0.shape != (b.shape[0], *b.shape[2:]):
        raise ValueError(f"linear_scan: expected a, b of one shape (B, T, ...) and h0 (B, ...), got "
                         f"{tuple(a.shape)}, {tuple(b.shape)}, {tuple(h0.shape)}")
    return _scan("linear_scan", _LinearScan, a, b, h0, backend)


def complex_linear_scan(lam: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """h_t = lambda * h_{t-1} + b_t in complex numbers. lam: (N,), time-invariant; b: (B, T, N); h0: (B, N).

    Computes in complex64 (complex128 for complex128 inputs); returns b's dtype. `backend`: module docstring."""
    if not (lam.is_complex() and b.is_complex() and h0.is_complex()):
        raise ValueError("complex_linear_scan: expected complex lam, b and h0; build them with torch.complex(re, im)")
    if b.dim() != 3 or lam.shape != b.shape[2:] or h0.shape != (b.shape[0], b.shape[2]):
        raise ValueError(f"complex_linear_scan: expected lam (N,), b (B, T, N), h0 (B, N), got "
                         f"{tuple(lam.shape)}, {tuple(b.shape)}, {tuple(h0.shape)}")
    return _scan("complex_linear_scan", _ComplexScan, lam, b, h0, backend)


def _scan(kernel: str, function: type[torch.autograd.Function], coef: torch.Tensor, b: torch.Tensor,
          h0: torch.Tensor, backend: str) -> torch.Tensor:
    """Run a checked scan in its compute dtype: the Triton kernel `kernel`, else the torch autograd `function` (a
    plain loop while torch.compile traces); returns b's dtype."""
    dtype = compute_dtype(coef, b, h0)
    args = coef.to(dtype), b.to(dtype), h0.to(dtype)
    with float32_region(b):
        if _use_triton(b, backend):
            h = getattr(_triton(), kernel)(*args)
        else:
            h = _stacked_loop(*args) if torch.compiler.is_compiling() else function.apply(*args)
    return h.to(b.dtype)


def log_linear_scan(log_a: torch.Tensor, log_b: torch.Tensor, h0: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t from h_{-1} = h0, in log space within chunks (see the module docstring).

    log_a, log_b: (B, T, ...), the logs of a_t > 0 and b_t > 0; h0: (B, ...), any sign. Returns h (B, T, ...).
    """
    T = log_a.shape[1]
    n = -(-T // chunk)  # chunks; the padding (a = b = 1) comes after every real step, so changes none of them
    pad = (0, 0) * (log_a.dim() - 2) + (0, n * chunk - T)
    a_star = F.pad(log_a, pad).unflatten(1, (n, chunk)).cumsum(2)  # (B, n, chunk, ...), per chunk
    log_b = F.pad(log_b, pad).unflatten(1, (n, chunk))
    h_local = (a_star + (log_b - a_star).logcumsumexp(2)).exp()  # each chunk from a zero state
    decay = a_star.exp()  # prod of a from the chunk's start
    ends = linear_scan(decay[:, :, -1], h_local[:, :, -1], h0)  # (B, n, ...), the state after each chunk
    h_enter = torch.cat([h0.unsqueeze(1), ends[:, :-1]], dim=1)  # (B, n, ...), the state before each chunk
    return (h_local + decay * h_enter.unsqueeze(2)).flatten(1, 2)[:, :T]


# ---- the torch scan ------------------------------------------------------------------------------


def _chunk_len(T: int, width: int) -> int:
    """C for the chunked scan: T (the plain loop) when a step is wide enough, else ~sqrt(T/2), which
    minimises the 2C + T/C vectorised steps."""
    if width >= SEQUENTIAL_WIDTH or T < 16:
        return T
    return min(T, max(4, round(math.sqrt(T / 2))))


def _scan_into(h, a, b, h0, reverse: bool = False) -> None:
    """Writes into h (B, T, ...) the scan of b with coefficients a, from h0 (None: zero).

    forward:  h_t = a_t h_{t-1} + b_t,      t = 0..T-1, h_{-1} = h0
    reverse:  h_t = a_{t+1} h_{t+1} + b_t,  t = T-1..0, h_T = 0 (h0 must be None: there is no a_T)
    `a` is (B, T, ...) or, time-invariant, broadcastable to one step (...). In both directions the
    coefficient between neighbours t-1 and t is a_t: the step later in time.
    """
    T = b.shape[1]
    per_step = a.dim() == b.dim()
    at = (lambda t: a[:, t]) if per_step else (lambda t: a)
    C = _chunk_len(T, b[:, 0].numel())
    n = T // C
    if n == 1:  # the plain loop
        _loop_into(h, at, b, h0, range(T - 1, -1, -1) if reverse else range(T), reverse)
        return
    # the main part: n chunks of C steps, aligned at the start (forward) or at the end (reverse)
    lo = T - n * C if reverse else 0
    rest = range(lo - 1, -1, -1) if reverse else range(n * C, T)  # the steps left over, run after the chunks
    hm, bm = (x[:, lo:lo + n * C].unflatten(1, (n, C)) for x in (h, b))  # (B, n, C, ...) views
    am = a[:, lo:lo + n * C].unflatten(1, (n, C)) if per_step else a
    amc = (lambda c: am[:, :, c]) if per_step else (lambda c: am)
    inner = range(C - 2, -1, -1) if reverse else range(1, C)
    first = C - 1 if reverse else 0  # where a chunk starts, in scan order
    # 1. each chunk from zero: its end state e and its coefficient product A (what it does to an entering state)
    e = bm[:, :, first].clone()
    A = None
    for c in inner:
        coef = amc(c + 1) if reverse else amc(c)
        e.mul_(coef).add_(bm[:, :, c])
        A = coef.expand_as(e).clone() if A is None else A.mul_(coef)
    # 2. the state entering each chunk: carry_k = (coefficient into the chunk's first step) * state after chunk k-1
    carry = torch.empty_like(e)
    chunks = range(n - 1, -1, -1) if reverse else range(n)
    state = h0
    for k in chunks:
        if state is None:
            carry[:, k].zero_()
        else:  # the coefficient of the later step: chunk k's first (forward) or chunk k+1's first (reverse)
            coef = am[:, k + 1 if reverse else k, 0] if per_step else a
            torch.mul(coef, state, out=carry[:, k])
        state = torch.addcmul(e[:, k], A[:, k], carry[:, k])  # the state after chunk k
    # 3. each chunk again, from its entering state
    torch.add(bm[:, :, first], carry, out=hm[:, :, first])
    prev = first
    for c in inner:
        coef = amc(c + 1) if reverse else amc(c)
        torch.addcmul(bm[:, :, c], coef, hm[:, :, prev], out=hm[:, :, c])
        prev = c
    # the rest, from the chunks' last state
    last = lo if reverse else n * C - 1
    _loop_into(h, at, b, h[:, last], rest, reverse)


def _loop_into(h, at, b, state, steps: range, reverse: bool) -> None:
    """The plain loop over `steps` (in scan order), from `state` (None: zero)."""
    for t in steps:
        if state is None:
            h[:, t].copy_(b[:, t])
        else:
            torch.addcmul(b[:, t], at(t + 1) if reverse else at(t), state, out=h[:, t])
        state = h[:, t]


def _stacked_loop(a, b, h0) -> torch.Tensor:
    """The plain loop in functional ops, differentiated by autograd: what runs under torch.compile, which
    cannot trace writes into views (and fuses these ops itself). a: (B, T, ...) or, time-invariant, (...)."""
    hs, h = [], h0
    for t in range(b.shape[1]):
        h = torch.addcmul(b[:, t], a[:, t] if a.dim() == b.dim() else a, h)
        hs.append(h)
    return torch.stack(hs, dim=1)


class _LinearScan(torch.autograd.Function):
    """h_t = a_t * h_{t-1} + b_t from h0; backward runs the adjoint recurrence backwards in time."""

    @staticmethod
    def forward(ctx, a, b, h0):
        h = torch.empty_like(b)
        _scan_into(h, a, b, h0)
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def backward(ctx, g):
        a, h, h0 = ctx.saved_tensors
        gb = torch.empty_like(h)
        _scan_into(gb, a, g, None, reverse=True)  # dL/db_t = g_t + a_{t+1} dL/db_{t+1}
        ga = torch.empty_like(h)
        torch.mul(gb[:, 1:], h[:, :-1], out=ga[:, 1:])  # dL/da_t = dL/db_t * h_{t-1}
        torch.mul(gb[:, 0], h0, out=ga[:, 0])
        return ga, gb, a[:, 0] * gb[:, 0]


class _ComplexScan(torch.autograd.Function):
    """h_t = lambda * h_{t-1} + b_t from h0, complex; backward runs the adjoint backwards in time.

    Gradients follow torch's convention for complex tensors (dL/d re + i dL/d im): for h = lambda h' + b,
    dL/db = g, dL/dh' = conj(lambda) g, dL/dlambda = g conj(h')."""

    @staticmethod
    def forward(ctx, lam, b, h0):
        h = torch.empty_like(b)
        _scan_into(h, lam, b, h0)
        ctx.save_for_backward(lam, h, h0)
        return h

    @staticmethod
    def backward(ctx, g):
        lam, h, h0 = ctx.saved_tensors
        gb = torch.empty_like(h)
        _scan_into(gb, lam.conj().resolve_conj(), g, None, reverse=True)
        g_lam = (h[:, :-1].conj() * gb[:, 1:]).sum((0, 1)) + (h0.conj() * gb[:, 0]).sum(0)  # conj first: no copy
        return g_lam, gb, lam.conj() * gb[:, 0]


# ---- the Triton kernel ---------------------------------------------------------------------------


def _use_triton(x: torch.Tensor, backend: str) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choices: {list(BACKENDS)}")
    if backend == "triton":
        if _triton() is None:
            raise RuntimeError("scan backend 'triton' needs the triton package (pip install triton); "
                               "use 'auto' or 'torch' without it")
        if not x.is_cuda and not _triton().INTERPRETED:
            raise ValueError(f"scan backend 'triton' runs on CUDA tensors, got {x.device.type} ones; use 'auto' or "
                             "'torch', or set TRITON_INTERPRET=1 before triton is imported to interpret the kernel")
        return True
    return backend == "auto" and x.device.type in KERNEL_DEVICES and _triton() is not None


@functools.cache
def _triton():
    """The `triton_scan` module if Triton imports, else None (looked up once)."""
    try:
        from . import triton_scan
    except ImportError as e:
        logger.info("triton unavailable (%s): scans run in torch", e)
        return None
    return triton_scan
