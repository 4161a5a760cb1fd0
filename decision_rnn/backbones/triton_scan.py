"""A fused Triton kernel for h_t = a_t * h_{t-1} + b_t, forward and backward (`scan.py`'s "triton" backend).

One program per (batch row, block of BLOCK_N channels) walks the sequence in chunks of CHUNK steps. Each
chunk is one tile [BLOCK_N, CHUNK] in registers: `tl.associative_scan` composes the affine maps
h -> a_t h + b_t along the chunk (Blelloch's operator: (a1, b1) then (a2, b2) is (a1 a2, a2 b1 + b2)),
and the state carried in from the previous chunk enters as h = B_t + A_t * carry, A_t the product of
a since the chunk's start. So a, b are read once and h written once: no padding, no intermediate
tensors, any T (steps past T are masked, with a = 1, b = 0), h0 loaded as the first carry.

The backward is the adjoint scan backwards in time, dL/db_t = g_t + a_{t+1} dL/db_{t+1}, over chunks
taken from the end and loaded in reversed order (column 0 = the chunk's last step), and in the same pass
dL/da_t = dL/db_t * h_{t-1} (h_{-1} = h0). The complex kernels do the same in complex arithmetic on
(real, imaginary) pairs, for a time-invariant lambda (the LRU's): the adjoint runs with conj(lambda)
and dL/dlambda = sum over t of dL/db_t * conj(h_{t-1}), summed per program, then over the batch.

Arithmetic is float32 (float64 for float64 tensors); the callers in `scan.py` upcast bf16 / fp16 first.
It runs on CUDA, and on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1 set before this
module is imported), which is how tests/test_scan_triton.py checks it, values and gradients, without a
GPU. The same tests run it compiled where CUDA is present (experiments/gpu_check.py); block sizes are
not tuned for any GPU.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

BLOCK_N = 32  # channels per program
MAX_CHUNK = 64  # steps per tile
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
"""Whether the kernels were defined under the interpreter, so that they run on CPU tensors."""


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _combine_complex(ar1, ai1, br1, bi1, ar2, ai2, br2, bi2):
    return (ar2 * ar1 - ai2 * ai1, ar2 * ai1 + ai2 * ar1,
            ar2 * br1 - ai2 * bi1 + br2, ar2 * bi1 + ai2 * br1 + bi2)


@triton.jit
def _last(x, steps, CHUNK: tl.constexpr):
    """x[:, CHUNK - 1] of a [BLOCK_N, CHUNK] tile."""
    return tl.sum(tl.where(steps[None, :] == CHUNK - 1, x, 0.0), axis=1)


@triton.jit
def _real_fwd(a_ptr, b_ptr, h0_ptr, h_ptr, T, N,
              ACC: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """a, b, h: (B, T, N); h0: (B, N); all contiguous."""
    pid_b, cols = tl.program_id(0).to(tl.int64), tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # int64 offsets
    steps = tl.arange(0, CHUNK)
    cmask = cols < N
    carry = tl.load(h0_ptr + pid_b * N + cols, mask=cmask, other=0.0).to(ACC)
    s_t = N  # elements per step
    for start in range(0, T, CHUNK):
        t = start + steps
        mask = cmask[:, None] & (t < T)[None, :]
        off = (pid_b * T + t[None, :]) * s_t + cols[:, None]
        a = tl.load(a_ptr + off, mask=mask, other=1.0).to(ACC)
        b = tl.load(b_ptr + off, mask=mask, other=0.0).to(ACC)
        a, b = tl.associative_scan((a, b), axis=1, combine_fn=_combine)
        h = b + a * carry[:, None]
        tl.store(h_ptr + off, h.to(h_ptr.dtype.element_ty), mask=mask)
        carry = _last(h, steps, CHUNK)


@triton.jit
def _real_bwd(a_ptr, h_ptr, h0_ptr, g_ptr, ga_ptr, gb_ptr, T, N,
              ACC: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """g, ga, gb: (B, T, N) like h."""
    pid_b, cols = tl.program_id(0).to(tl.int64), tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # int64 offsets
    steps = tl.arange(0, CHUNK)
    cmask = cols < N
    h0 = tl.load(h0_ptr + pid_b * N + cols, mask=cmask, other=0.0).to(ACC)
    carry = tl.zeros([BLOCK], dtype=ACC)  # dL/db at the step after the chunk
    s_t = N  # elements per step
    n_chunks = tl.cdiv(T, CHUNK)
    for i in range(n_chunks):
        t = (n_chunks - i) * CHUNK - 1 - steps  # reversed: column 0 is the chunk's last step
        mask = cmask[:, None] & (t < T)[None, :]
        off = (pid_b * T + t[None, :]) * s_t + cols[:, None]
        a_next = tl.load(a_ptr + off + s_t, mask=cmask[:, None] & (t + 1 < T)[None, :], other=0.0).to(ACC)
        g = tl.load(g_ptr + off, mask=mask, other=0.0).to(ACC)
        a_next, gb = tl.associative_scan((a_next, g), axis=1, combine_fn=_combine)
        gb = gb + a_next * carry[:, None]
        h_prev = tl.load(h_ptr + off - s_t, mask=mask & (t >= 1)[None, :], other=0.0).to(ACC)
        h_prev = tl.where((t == 0)[None, :], h0[:, None], h_prev)
        tl.store(gb_ptr + off, gb.to(gb_ptr.dtype.element_ty), mask=mask)
        tl.store(ga_ptr + off, (gb * h_prev).to(ga_ptr.dtype.element_ty), mask=mask)
        carry = _last(gb, steps, CHUNK)


@triton.jit
def _complex_fwd(lam_ptr, b_ptr, h0_ptr, h_ptr, T, N,
                 ACC: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """(real, imaginary) pairs, contiguous: b, h (B, T, N, 2); lam (N, 2); h0 (B, N, 2)."""
    pid_b, cols = tl.program_id(0).to(tl.int64), tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # int64 offsets
    steps = tl.arange(0, CHUNK)
    cmask = cols < N
    lr = tl.load(lam_ptr + 2 * cols, mask=cmask, other=1.0).to(ACC)
    li = tl.load(lam_ptr + 2 * cols + 1, mask=cmask, other=0.0).to(ACC)
    cr = tl.load(h0_ptr + pid_b * 2 * N + 2 * cols, mask=cmask, other=0.0).to(ACC)
    ci = tl.load(h0_ptr + pid_b * 2 * N + 2 * cols + 1, mask=cmask, other=0.0).to(ACC)
    s_t = 2 * N  # elements per step: (real, imaginary) pairs
    for start in range(0, T, CHUNK):
        t = start + steps
        mask = cmask[:, None] & (t < T)[None, :]
        off = (pid_b * T + t[None, :]) * s_t + 2 * cols[:, None]
        ar = tl.where(mask, lr[:, None], 1.0)
        ai = tl.where(mask, li[:, None], 0.0)
        br = tl.load(b_ptr + off, mask=mask, other=0.0).to(ACC)
        bi = tl.load(b_ptr + off + 1, mask=mask, other=0.0).to(ACC)
        ar, ai, br, bi = tl.associative_scan((ar, ai, br, bi), axis=1, combine_fn=_combine_complex)
        hr = br + ar * cr[:, None] - ai * ci[:, None]
        hi = bi + ar * ci[:, None] + ai * cr[:, None]
        tl.store(h_ptr + off, hr.to(h_ptr.dtype.element_ty), mask=mask)
        tl.store(h_ptr + off + 1, hi.to(h_ptr.dtype.element_ty), mask=mask)
        cr, ci = _last(hr, steps, CHUNK), _last(hi, steps, CHUNK)


@triton.jit
def _complex_bwd(lam_ptr, h_ptr, h0_ptr, g_ptr, gb_ptr, glam_ptr, T, N,
                 ACC: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """g, gb like h; glam (B, N, 2): this batch row's share of dL/dlambda."""
    pid_b, cols = tl.program_id(0).to(tl.int64), tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # int64 offsets
    steps = tl.arange(0, CHUNK)
    cmask = cols < N
    lr = tl.load(lam_ptr + 2 * cols, mask=cmask, other=0.0).to(ACC)
    li = -tl.load(lam_ptr + 2 * cols + 1, mask=cmask, other=0.0).to(ACC)  # conj(lambda)
    h0r = tl.load(h0_ptr + pid_b * 2 * N + 2 * cols, mask=cmask, other=0.0).to(ACC)
    h0i = tl.load(h0_ptr + pid_b * 2 * N + 2 * cols + 1, mask=cmask, other=0.0).to(ACC)
    cr = tl.zeros([BLOCK], dtype=ACC)
    ci = tl.zeros([BLOCK], dtype=ACC)
    sum_r = tl.zeros([BLOCK], dtype=ACC)
    sum_i = tl.zeros([BLOCK], dtype=ACC)
    s_t = 2 * N  # elements per step: (real, imaginary) pairs
    n_chunks = tl.cdiv(T, CHUNK)
    for i in range(n_chunks):
        t = (n_chunks - i) * CHUNK - 1 - steps  # reversed: column 0 is the chunk's last step
        mask = cmask[:, None] & (t < T)[None, :]
        off = (pid_b * T + t[None, :]) * s_t + 2 * cols[:, None]
        inner = cmask[:, None] & (t + 1 < T)[None, :]  # a step with a later one: conj(lambda) links them
        ar = tl.where(inner, lr[:, None], 0.0)
        ai = tl.where(inner, li[:, None], 0.0)
        gr = tl.load(g_ptr + off, mask=mask, other=0.0).to(ACC)
        gi = tl.load(g_ptr + off + 1, mask=mask, other=0.0).to(ACC)
        ar, ai, gr, gi = tl.associative_scan((ar, ai, gr, gi), axis=1, combine_fn=_combine_complex)
        gr, gi = gr + ar * cr[:, None] - ai * ci[:, None], gi + ar * ci[:, None] + ai * cr[:, None]
        tl.store(gb_ptr + off, gr.to(gb_ptr.dtype.element_ty), mask=mask)
        tl.store(gb_ptr + off + 1, gi.to(gb_ptr.dtype.element_ty), mask=mask)
        prev = mask & (t >= 1)[None, :]
        pr = tl.load(h_ptr + off - s_t, mask=prev, other=0.0).to(ACC)
        pi = tl.load(h_ptr + off - s_t + 1, mask=prev, other=0.0).to(ACC)
        first = (t == 0)[None, :]
        pr, pi = tl.where(first, h0r[:, None], pr), tl.where(first, h0i[:, None], pi)
        sum_r += tl.sum(gr * pr + gi * pi, axis=1)  # dL/db_t * conj(h_{t-1})
        sum_i += tl.sum(gi * pr - gr * pi, axis=1)
        cr, ci = _last(gr, steps, CHUNK), _last(gi, steps, CHUNK)
    tl.store(glam_ptr + pid_b * 2 * N + 2 * cols, sum_r.to(glam_ptr.dtype.element_ty), mask=cmask)
    tl.store(glam_ptr + pid_b * 2 * N + 2 * cols + 1, sum_i.to(glam_ptr.dtype.element_ty), mask=cmask)


def _launch(kernel, *tensors) -> None:
    """Runs `kernel` over (batch rows, channel blocks) on contiguous tensors; the first tensor of
    `tensors` after lambda / a is the (B, T, N[, 2]) layout every sequence tensor shares."""
    x = tensors[1]
    B, T, N = x.shape[:3]
    acc = tl.float64 if x.dtype == torch.float64 else tl.float32
    chunk = min(MAX_CHUNK, max(16, triton.next_power_of_2(T)))
    # Triton launches on the current CUDA device; make it the tensors' one (a run on cuda:1, say)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        kernel[(B, triton.cdiv(N, BLOCK_N))](*tensors, T, N, ACC=acc, CHUNK=chunk, BLOCK=BLOCK_N)


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t from h0. a, b: (B, T, ...) float32 / float64; h0: (B, ...)."""
    return _RealScan.apply(a, b, h0)


def complex_linear_scan(lam: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h_t = lam * h_{t-1} + b_t from h0, complex64 / complex128. lam: (N,); b: (B, T, N); h0: (B, N)."""
    return _ComplexScan.apply(lam, b, h0)


class _RealScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0):
        ctx.shapes = b.shape, h0.shape
        B, T = b.shape[:2]
        a, b, h0 = a.reshape(B, T, -1).contiguous(), b.reshape(B, T, -1).contiguous(), h0.reshape(B, -1).contiguous()
        h = torch.empty_like(b)
        _launch(_real_fwd, a, b, h0, h)
        ctx.save_for_backward(a, h, h0)
        return h.view(ctx.shapes[0])

    @staticmethod
    def backward(ctx, g):
        a, h, h0 = ctx.saved_tensors
        g = g.reshape(h.shape).contiguous()
        ga, gb = torch.empty_like(h), torch.empty_like(h)
        _launch(_real_bwd, a, h, h0, g, ga, gb)
        shape, h0_shape = ctx.shapes
        return ga.view(shape), gb.view(shape), (a[:, 0] * gb[:, 0]).view(h0_shape)


class _ComplexScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lam, b, h0):
        lam, b, h0 = (torch.view_as_real(x.resolve_conj().contiguous()) for x in (lam, b, h0))
        h = torch.empty_like(b)
        _launch(_complex_fwd, lam, b, h0, h)
        ctx.save_for_backward(lam, h, h0)
        return torch.view_as_complex(h)

    @staticmethod
    def backward(ctx, g):
        lam, h, h0 = ctx.saved_tensors
        g = torch.view_as_real(g.resolve_conj().contiguous())
        gb, glam = torch.empty_like(h), h.new_empty(h0.shape)
        _launch(_complex_bwd, lam, h, h0, g, gb, glam)
        gb, lam = torch.view_as_complex(gb), torch.view_as_complex(lam)
        return torch.view_as_complex(glam).sum(0), gb, lam.conj() * gb[:, 0]
