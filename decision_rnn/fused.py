"""The recurrent agents' whole `DecisionRNN.step` as one compiled CPU call (numba): the control-loop runtime.

At batch 1 the step is ~12 small matrix-vector products and ~100 elementwise operations. Eager
PyTorch and onnxruntime pay a dispatch per operation (a few hundred ns to µs each), which at this size
adds tens of µs to the arithmetic (results/bench_latency_cpu.md). Here the step is a single compiled
function over one flat float32 weight buffer, so the cost is mostly the matrix-vector products —
bounded by streaming the weights (2.8 MB at DT's size) from the cache.

Same math as `DecisionRNN.step` in float32 (`fastmath` and BLAS only reorder sums: equal within ~1e-5, tested);
minGRU, minLSTM and LRU (`KINDS`), every tokenization and token option, any batch size. Other backbones are
refused: the transformer's step attends over a K-step window, and the GRU's and LSTM's recurrences are not
compiled here (use `runtime="onnxruntime"`, or `"auto"`, which picks it). Needs numba and scipy.
Compiled code is cached next to this file after the first use (a few seconds, once). The matrix
products are compiled loops, BLAS calls (scipy's OpenBLAS through numba's `np.dot`) from batch
`FusedStep.blas_from`; everything between them is compiled loops.

Weights: one flat buffer and a table of (offset, rows, cols) per slot. The slots are named constants (`OBS_MEAN`,
..., and per block `LN_1_W`, ...); `_pack` fills each slot from the model's parameters by name and records every
name it reads, so a parameter the step does not read, or a slot left empty, is an error or a failing test rather
than a silent shift of indices.

`weights="float16"`: the matrices are rounded to float16 and the loop reads them as float16 (widened to float32
in registers; all arithmetic stays float32): half the bytes per step. That pays off at batch 1 where the float32
matrices do not fit the cache; at DT's size (2.8 MB) widening costs about what the bytes save, and above batch 1
each batch row widens the weights again, which makes it slower (timings: results/bench_fused_cpu.md). Actions
differ from the float32 model's by the rounding (at most ~2e-3 on trained runs, results/half_weights_cpu.md).
Equal within ~1e-5 to the float32 step of the model with its matrices so rounded (tested).

State: one float32 array (n, B, H) holding the backbone's state tensors in `DecisionRNN.initial_state`
order; `FusedStep.to_torch_state` gives them back as that tuple.
"""

from __future__ import annotations

import numpy as np
import torch

try:
    import scipy  # noqa: F401  (numba's np.dot calls scipy's BLAS)
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic, overload
except ImportError as e:
    raise ImportError("runtime='fused' needs numba and scipy: pip install numba scipy") from e

from .config import OBS_BOUND, ModelConfig
from .models import DecisionRNN
from .policy import WEIGHTS

KINDS = {"mingru": 0, "minlstm": 1, "lru": 2}
"""The backbones the fused step runs, and the kernel's code for each."""
TOKENS = {"compact": 0, "interleaved": 1, "split": 2}
FLOAT16_MAX = float(np.finfo(np.float16).max)
# error_model="numpy": a float division by zero gives inf (none can occur here) instead of raising, so the
# compiler drops the zero checks and vectorizes loops that divide (GELU's erf, sigmoids, layer norms).
JIT = dict(cache=True, fastmath=True, nogil=True, error_model="numpy")

# Slots of the weight table. Global ones first; then N_BLOCK per block, from N_GLOBAL + layer * N_BLOCK.
(OBS_MEAN, OBS_INV_STD, TIME, RETURN_W, RETURN_B, STATE_W, STATE_B, ACTION_W, ACTION_B, EMBED_LN_W, EMBED_LN_B,
 RETURN_LN_W, RETURN_LN_B, LN_F_W, LN_F_B, HEAD_W, HEAD_B, N_GLOBAL) = range(18)
(LN_1_W, LN_1_B, MIX_0, MIX_1, MIX_2, MIX_3, LN_2_W, LN_2_B, FC_W, FC_B, PROJ_W, PROJ_B, N_BLOCK) = range(13)
# The mixer's four slots: minGRU's and minLSTM's in- and out-projections; the LRU's lambda (as (re, im)),
# gamma * B (as [re; im]), [C_re, -C_im] and D.
IN_W, IN_B, OUT_W, OUT_B = MIX_0, MIX_1, MIX_2, MIX_3
LAMBDA, GAMMA_B, C_CAT, D_SKIP = MIX_0, MIX_1, MIX_2, MIX_3


def supports(config: ModelConfig) -> bool:
    """Whether the fused step runs this model's backbone."""
    return config.backbone in KINDS


class FusedStep:
    """`DecisionRNN.step` as one numba call: numpy in, numpy out (the runtime behind `Policy(runtime="fused")`)."""

    blas_from = 64
    """Batch size from which the matrix products are BLAS calls (scipy's OpenBLAS sgemm); below it, the
    compiled loop. experiments/bench_fused.py times both by batch size (results/bench_fused_cpu.md): with
    OpenBLAS on 1 thread the loop is faster at small batches, level around 32, and BLAS only pays off from about
    64 rows (sgemm's fixed cost per call packs the weights each time)."""

    def __init__(self, model: DecisionRNN, weights: str = "float32"):
        kind = model.config.backbone
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {list(WEIGHTS)}, got {weights!r}")
        if not supports(model.config):
            raise ValueError(f"runtime='fused' supports the recurrent backbones {sorted(KINDS)}, not {kind!r}; use "
                             f"runtime='onnxruntime' or 'torch' (runtime='auto' picks what runs it)")
        c = model.config
        self.kind = KINDS[kind]
        self.tokens = TOKENS[c.tokens]
        self.act_dim = c.act_dim
        self.n_layers = c.n_layers
        shapes = model.backbone.state_shapes(1)
        self.n_state, self.width = len(shapes), shapes[0][1]
        self.weights = weights
        # Two layouts of the same weights: (out, in) for the loop, (in, out) for BLAS from `blas_from` rows.
        # Each: (float32 buffer, the buffer the matrices are read from, table). BLAS has no float16 product,
        # so with float16 weights it reads the float32 buffer, whose matrices hold the same rounded values.
        half = weights == "float16"
        self.packed = {}
        for blas in (False, True):
            params, table, matrix, self.used = _pack(model, transposed=blas, half=half)
            mats = params
            if half and not blas:
                mats = np.where(matrix, params, 0).astype(np.float16).view(np.uint16)
            self.packed[blas] = (params, mats, table)
        self.scalars = np.array([1.0 / c.return_scale, c.max_timestep - 1, c.activation == "relu", c.return_ln,
                                 OBS_BOUND], np.float64)

    def initial_state(self, batch_size: int) -> np.ndarray:
        return np.zeros((self.n_state, batch_size, self.width), np.float32)

    def __call__(self, obs, prev_action, returns_to_go, timestep, state):
        """(B, obs), (B, act), (B,), (B,) int, (n, B, H) -> ((B, act), (n, B, H)); the state is updated in place."""
        blas, params, mats, table = self._weights(obs.shape[0])
        action = np.empty((obs.shape[0], self.act_dim), np.float32)
        step(params, mats, table, blas, self.kind, self.n_layers, self.tokens, self.scalars,
             np.ascontiguousarray(obs, np.float32), np.ascontiguousarray(prev_action, np.float32),
             returns_to_go, np.ascontiguousarray(timestep, np.int64), state, action)
        return action, state

    def act(self, obs, reward, prev_action, returns_to_go, timestep, state):
        """`Policy.act`'s bookkeeping and step in one compiled call (at batch 1 the numpy calls it replaces
        were a sizeable part of the step): refuse a non-finite obs, subtract `reward` from the returns-to-go
        (none: an empty array), step, store the action as the next previous
        action, advance the timestep. `prev_action`, `returns_to_go`, `timestep` and `state` are updated
        in place. Takes arrays as `Policy` keeps them (contiguous; float32, timestep int64). Returns the
        action, or None when obs holds NaN or inf (then nothing was changed)."""
        blas, params, mats, table = self._weights(obs.shape[0])
        action = policy_step(params, mats, table, blas, self.kind, self.n_layers, self.tokens,
                             self.scalars, obs, reward, prev_action, returns_to_go, timestep, state)
        return action if action.shape[0] else None

    def _weights(self, batch: int) -> tuple[bool, np.ndarray, np.ndarray, np.ndarray]:
        """Whether a batch this size takes BLAS, and the weight layout for it."""
        blas = batch >= self.blas_from
        return (blas, *self.packed[blas])

    def to_torch_state(self, state: np.ndarray) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(s.copy()) for s in state)


# ---- weights: one flat buffer + a table of (offset, rows, cols), one row per slot ----

def _min_rnn_mixer(model, take, w, p: str) -> list[torch.Tensor]:
    """minGRU / minLSTM: in-projection (all branches stacked) and out-projection."""
    return [w(take(p + "in_proj.weight")), take(p + "in_proj.bias")[None],
            w(take(p + "out_proj.weight")), take(p + "out_proj.bias")[None]]


def _lru_mixer(model, take, w, p: str) -> list[torch.Tensor]:
    """LRU: lambda as its step computes it (in float32), gamma * B and [C_re, -C_im] precomputed (float64), D."""
    take(p + "nu_log"), take(p + "theta_log")  # read by `_lambda`
    lam_re, lam_im = (t.detach().cpu().double() for t in model.get_submodule(p.removesuffix("."))._lambda())
    gamma = torch.exp(take(p + "gamma_log"))[:, None]
    return [torch.cat([lam_re, lam_im])[None],
            w(torch.cat([gamma * take(p + "B_re"), gamma * take(p + "B_im")])),
            w(torch.cat([take(p + "C_re"), -take(p + "C_im")], dim=1)), take(p + "D")[None]]


MIXERS = {"mingru": _min_rnn_mixer, "minlstm": _min_rnn_mixer, "lru": _lru_mixer}


def _pack(model: DecisionRNN, transposed: bool, half: bool = False
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, set[str]]:
    """(float32 buffer, table, mask of the buffer's entries that belong to matrix-vector products' matrices, the
    names of the parameters and buffers read). Every slot is filled by name; derived weights (1 / std, the LRU's
    gamma * B) are computed in float64."""
    named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    used: set[str] = set()
    matrices = set()

    def take(name: str) -> torch.Tensor:
        used.add(name)
        return named[name].detach().cpu().double()

    def w(t):  # a linear map's (out, in) weight; (in, out) for BLAS; rounded to float16 with `half`
        t = t.T if transposed else t
        if half:
            big = t.abs().max().item()
            if not big <= FLOAT16_MAX:
                raise ValueError(f"a weight matrix holds {big:.3g}, beyond float16's range (±{FLOAT16_MAX:.0f}); "
                                 f"use weights='float32'")
            t = t.half().double()
        matrices.add(id(t))
        return t

    c = model.config
    E, A = c.embed_dim, c.act_dim
    slots = {OBS_MEAN: take("obs_mean")[None], OBS_INV_STD: (1.0 / take("obs_std"))[None],
             TIME: take("embed_timestep.weight"),
             RETURN_W: take("embed_return.weight").T, RETURN_B: take("embed_return.bias")[None],
             STATE_W: w(take("embed_state.weight")), STATE_B: take("embed_state.bias")[None],
             EMBED_LN_W: take("embed_ln.weight")[None], EMBED_LN_B: take("embed_ln.bias")[None],
             LN_F_W: take("backbone.ln_f.weight")[None], LN_F_B: take("backbone.ln_f.bias")[None],
             HEAD_W: w(take("action_head.0.weight")), HEAD_B: take("action_head.0.bias")[None]}
    if model.embed_action is not None:
        slots[ACTION_W], slots[ACTION_B] = w(take("embed_action.weight")), take("embed_action.bias")[None]
    else:  # the agent sees no action: an embedding of zeros adds nothing
        slots[ACTION_W], slots[ACTION_B] = w(torch.zeros(E, A, dtype=torch.float64)), torch.zeros(1, E).double()
    if c.return_ln:
        slots[RETURN_LN_W], slots[RETURN_LN_B] = take("return_ln.weight")[None], take("return_ln.bias")[None]
    else:  # not read (the kernel checks `return_ln`)
        slots[RETURN_LN_W] = slots[RETURN_LN_B] = torch.zeros(1, 1, dtype=torch.float64)
    for layer in range(c.n_layers):
        p, base = f"backbone.blocks.{layer}.", N_GLOBAL + layer * N_BLOCK
        block = [take(p + "ln_1.weight")[None], take(p + "ln_1.bias")[None],
                 *MIXERS[c.backbone](model, take, w, p + "mixer."),
                 take(p + "ln_2.weight")[None], take(p + "ln_2.bias")[None],
                 w(take(p + "mlp.fc.weight")), take(p + "mlp.fc.bias")[None],
                 w(take(p + "mlp.proj.weight")), take(p + "mlp.proj.bias")[None]]
        slots.update(zip(range(base, base + N_BLOCK), block, strict=True))
    n = N_GLOBAL + c.n_layers * N_BLOCK
    if sorted(slots) != list(range(n)):
        raise RuntimeError(f"fused weight table: slots {sorted(set(range(n)) - set(slots))} left empty")
    tensors = [slots[k] for k in range(n)]
    table, offset = [], 0
    for t in tensors:
        table.append((offset, t.shape[0], t.shape[1]))
        offset += t.numel()
    params = np.concatenate([t.reshape(-1).numpy() for t in tensors]).astype(np.float32)
    matrix = np.concatenate([np.full(t.numel(), id(t) in matrices) for t in tensors])
    return params, np.array(table, np.int64), matrix, used


@intrinsic
def as_float32(typingctx, x):
    """A weight as float32: a float32 itself, float16 bits (uint16) widened (F16C's vcvtph2ps, 8 per instruction,
    where the CPU has it)."""
    if x == types.float32:
        return types.float32(x), lambda context, builder, sig, args: args[0]
    if x == types.uint16:
        def widen(context, builder, sig, args):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
        return types.float32(x), widen
    return None


def sgemm(x, W, out):
    """out = x @ W by BLAS; float32 W only (float16 weights keep a float32 copy for BLAS)."""


@overload(sgemm, jit_options=JIT)
def _sgemm(x, W, out):
    if W.dtype == types.float32:
        return lambda x, W, out: np.dot(x, W, out)

    def refuse(x, W, out):
        raise TypeError("BLAS needs float32 weights")
    return refuse


@njit(**JIT)
def mat(P, L, k):
    o, r, c = L[k, 0], L[k, 1], L[k, 2]
    return P[o:o + r * c].reshape((r, c))


@njit(**JIT)
def vec(P, L, k):
    o, c = L[k, 0], L[k, 2]
    return P[o:o + c]


@njit(**JIT)
def linear(W, bias, x, out, blas):
    """out (B, O) = x (B, I) @ W.T + bias, W (O, I) float32 or float16 bits; with `blas`, x @ W + bias, W (I, O).

    The loop: vectorized dot products over W's rows, eight rows per pass so that each load of x serves
    eight rows and eight sums are in flight (faster here than one, four or sixteen rows per pass and
    than a BLAS call at batch 1); the batch runs inside each pass, so W streams from the cache once and its
    eight rows stay in L1 for every batch row. `blas`: one sgemm (scipy's OpenBLAS
    through numba), for large batches (`FusedStep.blas_from`)."""
    if blas:
        sgemm(x, W, out)
        for b in range(out.shape[0]):
            for i in range(out.shape[1]):
                out[b, i] += bias[i]
        return
    rows, n = W.shape
    blocked = rows - rows % 8
    for i in range(0, blocked, 8):
        for b in range(x.shape[0]):
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
            for j in range(n):
                xj = x[b, j]
                a0 += as_float32(W[i, j]) * xj
                a1 += as_float32(W[i + 1, j]) * xj
                a2 += as_float32(W[i + 2, j]) * xj
                a3 += as_float32(W[i + 3, j]) * xj
                a4 += as_float32(W[i + 4, j]) * xj
                a5 += as_float32(W[i + 5, j]) * xj
                a6 += as_float32(W[i + 6, j]) * xj
                a7 += as_float32(W[i + 7, j]) * xj
            out[b, i], out[b, i + 1], out[b, i + 2], out[b, i + 3] = (
                a0 + bias[i], a1 + bias[i + 1], a2 + bias[i + 2], a3 + bias[i + 3])
            out[b, i + 4], out[b, i + 5], out[b, i + 6], out[b, i + 7] = (
                a4 + bias[i + 4], a5 + bias[i + 5], a6 + bias[i + 6], a7 + bias[i + 7])
    for b in range(x.shape[0]):
        for i in range(blocked, rows):
            acc = np.float32(0.0)
            for j in range(n):
                acc += as_float32(W[i, j]) * x[b, j]
            out[b, i] = acc + bias[i]


@njit(**JIT)
def layer_norm(x, w, bias, out):
    n = x.shape[1]
    for b in range(x.shape[0]):
        mean = np.float32(0.0)
        for j in range(n):
            mean += x[b, j]
        mean /= n
        var = np.float32(0.0)
        for j in range(n):
            var += (x[b, j] - mean) ** 2
        inv = np.float32(1.0) / np.sqrt(var / n + np.float32(1e-5))
        for j in range(n):
            out[b, j] = (x[b, j] - mean) * inv * w[j] + bias[j]


@njit(**JIT)
def exp_nonpositive(x):
    """x <- exp(x) in place for x <= 0 (float32; Cephes' expf, relative error < 3e-7 above -80).

    Unlike libm's exp, the compiler vectorizes it: a polynomial for exp(r) on |r| <= ln2 / 2, times 2^n
    built in the exponent bits of a float (an int32 array viewed as float32)."""
    bits = np.empty(x.size, np.int32)
    for i in range(x.size):
        v = max(x[i], np.float32(-87.0))  # exp(-87) ~ 1.6e-38: the smallest normal float is near
        n = np.floor(v * np.float32(1.4426950408889634) + np.float32(0.5))
        r = v - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)  # ln 2 in two parts
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        x[i] = p * r * r + r + np.float32(1.0)
        bits[i] = (np.int32(n) + np.int32(127)) << 23
    scale = bits.view(np.float32)
    for i in range(x.size):
        x[i] *= scale[i]


@njit(**JIT)
def erf(x):
    """float32 erf as a rational polynomial (Eigen's and XLA's float erf; |error| < 4e-7), which,
    unlike libm's erf, the compiler vectorizes."""
    x = min(max(x, np.float32(-4.0)), np.float32(4.0))
    x2 = x * x
    p = x2 * np.float32(-2.72614225801306e-10) + np.float32(2.77068142495902e-08)
    p = x2 * p + np.float32(-2.10102402082508e-06)
    p = x2 * p + np.float32(-5.69250639462346e-05)
    p = x2 * p + np.float32(-7.34990630326855e-04)
    p = x2 * p + np.float32(-2.95459980854025e-03)
    p = x2 * p + np.float32(-1.60960333262415e-02)
    q = x2 * np.float32(-1.45660718464996e-05) + np.float32(-2.13374055278905e-04)
    q = x2 * q + np.float32(-1.68282697438203e-03)
    q = x2 * q + np.float32(-7.37332916720468e-03)
    q = x2 * q + np.float32(-1.42647390514189e-02)
    return x * p / q


@njit(**JIT)
def activate(v, relu):
    """ReLU or (exact, erf) GELU in place on a flat array: one branch-free loop the compiler vectorizes."""
    if relu:
        for i in range(v.size):
            v[i] = max(v[i], np.float32(0.0))
    else:
        for i in range(v.size):
            v[i] = np.float32(0.5) * v[i] * (np.float32(1.0) + erf(v[i] * np.float32(0.7071067811865476)))


@njit(**JIT)
def softplus(x):  # torch's: beta 1, threshold 20
    return x if x > 20.0 else np.log1p(np.exp(x))


@njit(**JIT)
def sigmoid_pair(x, exp_neg_abs):
    """(sigmoid(x), sigmoid(-x)) from exp(-|x|), each without cancellation."""
    small = exp_neg_abs / (np.float32(1.0) + exp_neg_abs)
    large = np.float32(1.0) / (np.float32(1.0) + exp_neg_abs)
    return (large, small) if x >= 0 else (small, large)


@njit(**JIT)
def backbone_step(P, M, L, blas, kind, n_layers, relu, x, S, write, y):
    """One backbone step on tokens x (B, E) from state S; S[.., b] is updated only where write[b]. P: the float32
    buffer; M: the one its matrices are read from (P, or P's matrices as float16 bits)."""
    B, E = x.shape
    h = np.empty_like(x)
    for layer in range(n_layers):
        k = N_GLOBAL + layer * N_BLOCK
        layer_norm(x, vec(P, L, k + LN_1_W), vec(P, L, k + LN_1_B), h)
        if kind <= 1:  # minGRU / minLSTM: h_t = a * h_{t-1} + b
            W_in = mat(M, L, k + IN_W)
            H = S.shape[2]
            proj = np.empty((B, W_in.shape[1 if blas else 0]), np.float32)
            linear(W_in, vec(P, L, k + IN_B), h, proj, blas)
            # new = keep * h + take * g(c), g(c) = c + 0.5 (c >= 0) or sigmoid(c). minGRU: keep, take =
            # sigmoid(-z), sigmoid(z); minLSTM: f / (f + i), i / (f + i), f = sigmoid(k_f), i = sigmoid(k_i)
            # (torch's sigmoid(softplus(-k_i) - softplus(-k_f)), without its two logs per unit). Every sigmoid
            # from exp(-|.|) <= 1, without cancellation, and all the exps in one vectorized pass.
            gates = 1 + kind  # minGRU: z; minLSTM: k_f, k_i
            e = np.empty((gates + 1, B, H), np.float32)
            for b in range(B):
                for j in range(H):
                    for g in range(gates):
                        e[g, b, j] = -abs(proj[b, g * H + j])
                    e[gates, b, j] = min(proj[b, gates * H + j], np.float32(0.0))
            exp_nonpositive(e.reshape(-1))
            hid = np.empty((B, H), np.float32)
            for b in range(B):
                for j in range(H):
                    if kind == 0:
                        take, keep = sigmoid_pair(proj[b, j], e[0, b, j])
                    else:
                        k_f, k_i = proj[b, j], proj[b, H + j]
                        if k_f < -80 or k_i < -80:  # a sigmoid near float32's smallest: log space, as torch
                            u = softplus(-k_f) - softplus(-k_i)
                            take, keep = sigmoid_pair(u, np.exp(-abs(u)))
                        else:
                            f, i = sigmoid_pair(k_f, e[0, b, j])[0], sigmoid_pair(k_i, e[1, b, j])[0]
                            keep, take = f / (f + i), i / (f + i)
                    c = proj[b, gates * H + j]
                    gc = c + np.float32(0.5) if c >= 0 else e[gates, b, j] / (np.float32(1.0) + e[gates, b, j])
                    new = keep * S[layer, b, j] + take * gc
                    hid[b, j] = new
                    if write[b]:
                        S[layer, b, j] = new
            mix = np.empty((B, E), np.float32)
            linear(mat(M, L, k + OUT_W), vec(P, L, k + OUT_B), hid, mix, blas)
        else:  # LRU: h = lambda * h + gamma B x (complex), y = Re(C h) + D x
            lam = vec(P, L, k + LAMBDA)
            N = lam.shape[0] // 2
            u = np.empty((B, 2 * N), np.float32)
            linear(mat(M, L, k + GAMMA_B), np.zeros(2 * N, np.float32), h, u, blas)
            hid = np.empty((B, 2 * N), np.float32)
            for b in range(B):
                for j in range(N):
                    re, im = S[2 * layer, b, j], S[2 * layer + 1, b, j]
                    new_re = lam[j] * re - lam[N + j] * im + u[b, j]
                    new_im = lam[j] * im + lam[N + j] * re + u[b, N + j]
                    hid[b, j], hid[b, N + j] = new_re, new_im
                    if write[b]:
                        S[2 * layer, b, j], S[2 * layer + 1, b, j] = new_re, new_im
            D = vec(P, L, k + D_SKIP)
            mix = np.empty((B, E), np.float32)
            linear(mat(M, L, k + C_CAT), np.zeros(E, np.float32), hid, mix, blas)
            for b in range(B):
                for j in range(E):
                    mix[b, j] += D[j] * h[b, j]
        x = x + mix
        layer_norm(x, vec(P, L, k + LN_2_W), vec(P, L, k + LN_2_B), h)
        W_fc = mat(M, L, k + FC_W)
        inner = np.empty((B, W_fc.shape[1 if blas else 0]), np.float32)
        linear(W_fc, vec(P, L, k + FC_B), h, inner, blas)
        activate(inner.reshape(-1), relu)
        out = np.empty((B, E), np.float32)
        linear(mat(M, L, k + PROJ_W), vec(P, L, k + PROJ_B), inner, out, blas)
        x = x + out
    layer_norm(x, vec(P, L, LN_F_W), vec(P, L, LN_F_B), y)


@njit(**JIT)
def embed_finish(P, L, token):
    out = np.empty_like(token)
    layer_norm(token, vec(P, L, EMBED_LN_W), vec(P, L, EMBED_LN_B), out)
    return out


@njit(**JIT)
def step(P, M, L, blas, kind, n_layers, tokens, scalars, obs, prev, rtg, t, S, action):
    B = obs.shape[0]
    time_table = mat(P, L, TIME)
    E = time_table.shape[1]
    max_t = int(scalars[1])
    relu = scalars[2] != 0
    bound = scalars[4]
    mean, inv_std = vec(P, L, OBS_MEAN), vec(P, L, OBS_INV_STD)
    w_r, b_r = vec(P, L, RETURN_W), vec(P, L, RETURN_B)
    norm_obs = np.empty_like(obs)
    for b in range(B):  # in float64, where no finite float32 obs overflows; then clamped (`OBS_BOUND`)
        for j in range(obs.shape[1]):
            v = (np.float64(obs[b, j]) - mean[j]) * inv_std[j]
            norm_obs[b, j] = min(max(v, -bound), bound)
    s_emb = np.empty((B, E), np.float32)
    linear(mat(M, L, STATE_W), vec(P, L, STATE_B), norm_obs, s_emb, blas)
    a_emb = np.empty((B, E), np.float32)
    linear(mat(M, L, ACTION_W), vec(P, L, ACTION_B), prev, a_emb, blas)
    r_emb = np.empty((B, E), np.float32)
    for b in range(B):
        r = np.float32(rtg[b] * scalars[0])
        for j in range(E):
            r_emb[b, j] = w_r[j] * r + b_r[j]
    if scalars[3] != 0:  # return_ln
        layer_norm(r_emb.copy(), vec(P, L, RETURN_LN_W), vec(P, L, RETURN_LN_B), r_emb)
    ts = np.minimum(np.maximum(t, 0), max_t)
    y = np.empty((B, E), np.float32)
    every = np.ones(B, np.bool_)
    if tokens == 1:  # interleaved: a_{t-1} (not at t = 0), R_t, s_t
        tok = np.empty((B, E), np.float32)
        later = t > 0
        for b in range(B):
            tp = min(max(t[b] - 1, 0), max_t)
            for j in range(E):
                tok[b, j] = a_emb[b, j] + time_table[tp, j]
        backbone_step(P, M, L, blas, kind, n_layers, relu, embed_finish(P, L, tok), S, later, y)
        for b in range(B):
            for j in range(E):
                tok[b, j] = r_emb[b, j] + time_table[ts[b], j]
        backbone_step(P, M, L, blas, kind, n_layers, relu, embed_finish(P, L, tok), S, every, y)
        for b in range(B):
            for j in range(E):
                tok[b, j] = s_emb[b, j] + time_table[ts[b], j]
        backbone_step(P, M, L, blas, kind, n_layers, relu, embed_finish(P, L, tok), S, every, y)
    else:  # compact: R_t + s_t + a_{t-1}; split: R_t, then s_t + a_{t-1}
        tok = np.empty((B, E), np.float32)
        if tokens == 2:
            for b in range(B):
                for j in range(E):
                    tok[b, j] = r_emb[b, j] + time_table[ts[b], j]
            backbone_step(P, M, L, blas, kind, n_layers, relu, embed_finish(P, L, tok), S, every, y)
        b_a = vec(P, L, ACTION_B)
        for b in range(B):
            for j in range(E):
                a = a_emb[b, j] if t[b] > 0 else b_a[j]  # a_{-1} = 0: only the bias
                r = r_emb[b, j] if tokens == 0 else np.float32(0.0)
                tok[b, j] = s_emb[b, j] + r + a + time_table[ts[b], j]
        backbone_step(P, M, L, blas, kind, n_layers, relu, embed_finish(P, L, tok), S, every, y)
    linear(mat(M, L, HEAD_W), vec(P, L, HEAD_B), y, action, blas)
    for b in range(B):
        for j in range(action.shape[1]):
            action[b, j] = np.tanh(action[b, j])


@njit(**JIT)
def not_finite(x):
    """Whether a contiguous float32 array holds a NaN or an inf, read from the exponent bits: under
    fastmath the compiler may assume every float finite and fold np.isfinite to True."""
    bits = x.reshape(-1).view(np.int32)
    for i in range(bits.size):
        if bits[i] & 0x7F800000 == 0x7F800000:
            return True
    return False


@njit(**JIT)
def policy_step(P, M, L, blas, kind, n_layers, tokens, scalars, obs, reward, prev, rtg, t, S):
    """`FusedStep.act`: an empty (0, act) array when obs is not finite, else the action."""
    if not_finite(obs):
        return np.empty((0, prev.shape[1]), np.float32)
    for b in range(reward.shape[0]):
        rtg[b] -= reward[b]
    action = np.empty_like(prev)
    step(P, M, L, blas, kind, n_layers, tokens, scalars, obs, prev, rtg, t, S, action)
    prev[:] = action
    for b in range(t.shape[0]):
        t[b] += 1
    return action
