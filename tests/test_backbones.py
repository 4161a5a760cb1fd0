"""Contract tests every backbone inherits (dm_env style), plus the scan math against naive loops.

The central check: the parallel `forward` equals a Python loop of `step`, from a fresh start and from a
random non-zero state of either sign (a public minLSTM gets this wrong), in float64 and float32.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from decision_rnn import DecisionRNN, ModelConfig
from decision_rnn.backbones import BACKBONES, build, scan
from decision_rnn.backbones.lru import LRUMixer
from decision_rnn.backbones.minrnn import MinRNNMixer, g
from decision_rnn.backbones.scan import complex_linear_scan, linear_scan, log_linear_scan
from decision_rnn.data import Batch

TOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, the reference b's scale guarded away from zero."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(torch.finfo(b.dtype).tiny)).item()


def pytest_generate_tests(metafunc):
    """Each contract subclass runs the equivalence test at its own `lengths`."""
    if "T" in metafunc.fixturenames and metafunc.cls is not None:
        metafunc.parametrize("T", metafunc.cls.lengths)


def step_loop(model, x: torch.Tensor, state):
    ys = []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1), state


BAD_CALLS = {  # (model, x (B, T, dim), state) -> a call that must raise ValueError
    "rank 2 forward": lambda m, x, s: m(x[:, 0]),
    "wrong dim": lambda m, x, s: m(torch.cat([x, x[..., :1]], dim=-1)),
    "empty T": lambda m, x, s: m(x[:, :0]),
    "rank 3 step": lambda m, x, s: m.step(x, s),
    "wrong dim step": lambda m, x, s: m.step(x[:, 0, 1:], s),
    "state batch": lambda m, x, s: m.step(x[:2, 0], s),
    "state batch forward": lambda m, x, s: m(x, m.initial_state(x.shape[0] + 1)),
    "state length": lambda m, x, s: m(x, s[:-1]),
}


class BackboneContract:
    """The suite every backbone passes. Subclasses set `name` and may adjust the knobs below."""

    name: str
    options: dict = {}
    dim, n_layers, batch = 16, 2, 3
    lengths = (1, 7, 256, 2049)  # forward == step loop at these T
    grad_T, finite_T = 4096, 16384

    def make(self, dtype=torch.float64, **options):
        torch.manual_seed(0)
        return build(self.name, self.dim, self.n_layers, **{**self.options, **options}).to(dtype).eval()

    def random_state(self, model, T: int, dtype):
        """A random state of the right shapes, any sign, from which T more inputs still fit."""
        return tuple(torch.randn_like(s) for s in model.initial_state(self.batch, dtype=dtype))

    def inputs(self, T: int, dtype=torch.float64, batch=None) -> torch.Tensor:
        gen = torch.Generator().manual_seed(T)
        return torch.randn(batch or self.batch, T, self.dim, dtype=dtype, generator=gen)

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
    def test_forward_equals_step_loop(self, T, dtype):
        model = self.make(dtype)
        x = self.inputs(T, dtype)
        for start in (None, self.random_state(model, T, dtype)):
            with torch.no_grad():
                y, state = model(x, start)
                y_ref, state_ref = step_loop(model, x, start or model.initial_state(self.batch, dtype=dtype))
            assert rel_err(y, y_ref) <= TOL[dtype], f"T={T}, start={'random' if start else 'fresh'}"
            for i, (s, s_ref) in enumerate(zip(state, state_ref, strict=True)):
                assert rel_err(s, s_ref) <= TOL[dtype], f"state[{i}], T={T}"

    def test_chunked_forward_equals_whole(self):
        model, T = self.make(), self.lengths[2]
        x = self.inputs(T)
        for start in (None, self.random_state(model, T, torch.float64)):
            with torch.no_grad():
                y, state = model(x, start)
                y1, mid = model(x[:, : T // 3], start)
                y2, end = model(x[:, T // 3 :], mid)
            assert rel_err(torch.cat([y1, y2], dim=1), y) <= 1e-9
            assert all(rel_err(a, b) <= 1e-9 for a, b in zip(end, state, strict=True))

    def test_causal(self):
        model, T, t = self.make(), 64, 40
        x = self.inputs(T)
        x2 = x.clone()
        x2[:, t] += torch.randn(self.dim, dtype=x.dtype)  # not a constant: LayerNorm would remove that
        with torch.no_grad():
            y, y2 = model(x)[0], model(x2)[0]
        assert torch.equal(y[:, :t], y2[:, :t])
        assert not torch.allclose(y[:, t], y2[:, t])

    def test_initial_state_contract(self):
        model = self.make(torch.float32)
        state = model.initial_state(5)
        assert isinstance(state, tuple) and state
        for s in state:  # zeros, so `state * (1 - done)` is a reset; float of the module's dtype
            assert isinstance(s, torch.Tensor) and s.shape[0] == 5 and s.dtype == torch.float32
            assert not s.any()
        assert model.initial_state(2, dtype=torch.float64)[0].dtype == torch.float64
        assert model.dim == self.dim and model.recurrent == (self.name != "transformer")
        x = self.inputs(7, torch.float32, batch=5)
        with torch.no_grad():
            y_none, s_none = model(x)
            y_zero, s_zero = model(x, state)
        assert rel_err(y_zero, y_none) <= 1e-5
        assert all(rel_err(a, b) <= 1e-5 for a, b in zip(s_zero, s_none, strict=True))
        assert [s.shape for s in s_none] == [s.shape for s in state]  # fixed size, whatever T was

    def test_every_parameter_gets_a_gradient(self):
        model = self.make().train()
        y, state = model(self.inputs(32), self.random_state(model, 32, torch.float64))
        y.square().mean().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().max() > 0, name

    def test_gradients_finite_on_long_sequences(self):
        model = self.make(torch.float32).train()
        y, _ = model(self.inputs(self.grad_T, torch.float32, batch=1))
        y.square().mean().backward()
        for name, p in model.named_parameters():
            assert torch.isfinite(p.grad).all(), name

    def test_finite_on_long_large_inputs(self):
        model = self.make(torch.float32)
        y, state = model(100 * self.inputs(self.finite_T, torch.float32, batch=1))
        assert torch.isfinite(y).all() and all(torch.isfinite(s).all() for s in state)
        y.square().mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())

    def test_dropout_only_in_training(self):
        model = self.make(dropout=0.5)
        x = self.inputs(7)
        with torch.no_grad():
            assert torch.equal(model(x)[0], model(x)[0])
            model.train()
            assert not torch.equal(model(x)[0], model(x)[0])

    @pytest.mark.parametrize("case", BAD_CALLS)
    def test_bad_shapes_raise(self, case):
        model = self.make()
        with pytest.raises(ValueError, match="expected"):
            BAD_CALLS[case](model, self.inputs(7), model.initial_state(self.batch))

    def test_per_env_reset_by_masking(self):
        """`state * (1 - done)` restarts the done envs and leaves the others alone."""
        model = self.make()
        x = self.inputs(10)
        with torch.no_grad():
            _, state = model(x)
            done = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
            state = tuple(s * (1 - done).view(-1, *[1] * (s.dim() - 1)) for s in state)
            y, _ = model.step(x[:, 0], state)
            y_fresh, _ = model.step(x[:, 0], model.initial_state(self.batch))
        assert rel_err(y[[0, 2]], y_fresh[[0, 2]]) <= 1e-12
        assert rel_err(y[1], y_fresh[1]) > 1e-3


class TestMinGRU(BackboneContract):
    name = "mingru"


class TestMinLSTM(BackboneContract):
    name = "minlstm"


class LogScan:
    """The min-RNN contract again with the paper's log-space scan, which must also match the default scan."""

    options = {"scan": "log"}

    def test_matches_linear_scan(self):
        model, model_linear = self.make(), self.make(scan="linear")  # the same weights
        x = self.inputs(300)
        start = self.random_state(model, 300, torch.float64)
        with torch.no_grad():
            (y, state), (y_ref, state_ref) = model(x, start), model_linear(x, start)
        assert rel_err(y, y_ref) <= 1e-9
        assert all(rel_err(a, b) <= 1e-9 for a, b in zip(state, state_ref, strict=True))


class TestMinGRULogScan(LogScan, TestMinGRU):
    pass


class TestMinLSTMLogScan(LogScan, TestMinLSTM):
    pass


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_min_rnn_unknown_scan_lists_choices(name):
    with pytest.raises(ValueError, match="'linear', 'log'"):
        build(name, 16, 2, scan="heinsen")


class TestLRU(BackboneContract):
    name = "lru"

    @pytest.mark.parametrize("ring", [{}, {"r_min": 0.9, "r_max": 0.999}, {"r_min": 0.5, "r_max": 0.6}])
    def test_ring_init_puts_every_eigenvalue_on_the_ring(self, ring):
        """|lambda| in [r_min, r_max] (default [0, 0.999]), filling it; gamma = sqrt(1 - |lambda|^2)."""
        r_min, r_max = ring.get("r_min", 0.0), ring.get("r_max", 0.999)
        torch.manual_seed(0)
        mixer = build("lru", 64, 1, **ring).double().blocks[0].mixer
        modulus = torch.hypot(*mixer._lambda())
        assert modulus.min() >= r_min - 1e-6 and modulus.max() <= r_max + 1e-6  # float32 parameters
        assert modulus.max() - modulus.min() > 0.5 * (r_max - r_min)  # 128 draws spread over the ring
        assert torch.allclose(mixer.gamma_log.exp(), (1 - modulus**2).sqrt())


class TestTransformer(BackboneContract):
    """Forward equals the step loop only while everything fits in the window: T <= context."""

    name = "transformer"
    options = {"context": 64, "n_heads": 2}
    lengths = (1, 7, 48, 64)
    grad_T, finite_T = 2048, 4096  # full attention over T: keep the test fast

    def random_state(self, model, T, dtype):
        window, _ = super().random_state(model, T, dtype)
        gen = torch.Generator().manual_seed(1)
        return window, torch.randint(0, model.context - T + 1, (self.batch,), generator=gen).to(dtype)

    def test_window_keeps_the_last_context_inputs(self):
        model = self.make()
        x = self.inputs(100)
        with torch.no_grad():
            _, (window, count) = model(x)
            _, (window2, count2) = step_loop(model, x, model.initial_state(self.batch))
        assert torch.equal(window, x[:, -64:]) and (count == 64).all()
        assert torch.equal(window2, x[:, -64:]) and (count2 == 64).all()


def test_build_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="mingru.*minlstm|lru.*mingru"):
        build("rwkv", 16, 2)
    assert set(BACKBONES) == {"mingru", "minlstm", "lru", "transformer", "gru", "lstm"}


# ---- scan math against naive loops -----------------------------------------------------------------


def naive_scan(a, b, h0):
    h, out = h0, []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


@pytest.fixture(params=["chunked", "loop"])
def scan_path(request, monkeypatch):
    """The torch scan's two paths: chunks for narrow steps (these tests' 2 x 3 channels), the plain loop over t
    for wide ones (made the case here by lowering the width from which it is taken)."""
    if request.param == "loop":
        monkeypatch.setattr(scan, "SEQUENTIAL_WIDTH", 1)
    return request.param


@pytest.mark.parametrize("T", [1, 2, 5, 64, 65, 300, 1025])
def test_linear_scan_matches_loop(T, scan_path):
    gen = torch.Generator().manual_seed(T)
    a = torch.rand(2, T, 3, dtype=torch.float64, generator=gen)  # gates in (0, 1), as the min-RNNs have
    b = torch.randn(2, T, 3, dtype=torch.float64, generator=gen)
    h0 = 5 * torch.randn(2, 3, dtype=torch.float64, generator=gen)  # any sign
    assert rel_err(linear_scan(a, b, h0), naive_scan(a, b, h0)) <= 1e-9
    a_signed = 2 * a - 1  # the scan itself does not need positive coefficients
    assert rel_err(linear_scan(a_signed, b, h0), naive_scan(a_signed, b, h0)) <= 1e-9


@pytest.mark.parametrize("T", [1, 2, 5, 64, 65, 300, 1025])
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_log_linear_scan_matches_loop(T, chunk):
    gen = torch.Generator().manual_seed(T)
    a = torch.rand(2, T, 3, dtype=torch.float64, generator=gen)
    b = torch.rand(2, T, 3, dtype=torch.float64, generator=gen) * 3  # positive, as log b requires
    h0 = 5 * torch.randn(2, 3, dtype=torch.float64, generator=gen)  # any sign: it never enters a log
    assert rel_err(log_linear_scan(a.log(), b.log(), h0, chunk), naive_scan(a, b, h0)) <= 1e-9


@pytest.mark.parametrize("T", [1, 3, 64, 257])
def test_complex_linear_scan_matches_complex_loop(T, scan_path):
    gen = torch.Generator().manual_seed(T)
    N = 5
    modulus = 0.5 + 0.5 * torch.rand(N, dtype=torch.float64, generator=gen)
    phase = 2 * math.pi * torch.rand(N, dtype=torch.float64, generator=gen)
    lam = torch.polar(modulus, phase)
    b = torch.randn(2, T, N, dtype=torch.complex128, generator=gen)
    h0 = torch.randn(2, N, dtype=torch.complex128, generator=gen)
    ref = naive_scan(lam.expand(2, T, N), b, h0)  # torch's own complex arithmetic as the reference
    assert rel_err(complex_linear_scan(lam, b, h0), ref) <= 1e-9


@pytest.mark.parametrize("T", [9, 22])  # 9: the plain loop (T < 16); 22: 5 chunks of 4, 2 steps after
def test_scan_gradients_match_finite_differences(T):
    gen = torch.Generator().manual_seed(0)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, dtype=torch.float64, generator=gen) * scale).requires_grad_()

    def complex_leaf(*shape, scale=1.0):
        return torch.complex(leaf(*shape, scale=scale), leaf(*shape, scale=scale)).detach().requires_grad_()

    lam, b, h = complex_leaf(4, scale=0.5), complex_leaf(2, T, 4), complex_leaf(2, 4)
    assert torch.autograd.gradcheck(complex_linear_scan, (lam, b, h))
    a, b, h0 = leaf(2, T, 3, scale=0.7), leaf(2, T, 3), leaf(2, 3)
    assert torch.autograd.gradcheck(linear_scan, (a, b, h0))
    log_a, log_b = leaf(2, T, 3, scale=0.7), leaf(2, T, 3)
    assert torch.autograd.gradcheck(lambda *args: log_linear_scan(*args, chunk=4), (log_a, log_b, h0))


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_min_rnn_forward_gradients_match_finite_differences(name):
    """The mixers' hand-written gate backward, through x and h0, with candidates k_h of either sign."""
    torch.manual_seed(0)
    mixer = build(name, 3, 1, expansion=1).double().blocks[0].mixer
    x = (3 * torch.randn(2, 6, 3, dtype=torch.float64)).requires_grad_()
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h0: mixer(x, (h0,))[0], (x, h0))


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_min_rnn_coefficients_follow_the_paper(name):
    """The scan coefficients equal the paper's sequential form, written here from sigmoid and g."""
    mixer = build(name, 4, 1).double().blocks[0].mixer
    k = torch.randn(mixer.n_branches, 50, dtype=torch.float64) * 4
    a, b = mixer.coefficients(*k)
    if name == "mingru":
        z = torch.sigmoid(k[0])
        a_ref, b_ref = 1 - z, z * g(k[1])
    else:
        f, i = torch.sigmoid(k[0]), torch.sigmoid(k[1])
        a_ref, b_ref = f / (f + i), i / (f + i) * g(k[2])
    assert rel_err(a, a_ref) <= 1e-12 and rel_err(b, b_ref) <= 1e-12
    log_a, log_b = mixer.log_coefficients(*k)
    assert rel_err(log_a, a_ref.log()) <= 1e-12 and rel_err(log_b, b_ref.log()) <= 1e-12
    # finite where log(sigmoid) and log(g) of float32 would give -inf
    assert all(torch.isfinite(c).all() for c in mixer.float().log_coefficients(*(1e4 * k.float().sign())))


class TestGRU(BackboneContract):
    """nn.GRU's CPU backward records each step's ops (oneDNN fuses the LSTM's, not the GRU's): 16384 steps of it
    take seconds, so the long-input check stops at 4096. A loop in time has no scan error growing with T to find."""

    name = "gru"
    finite_T = 4096


class TestLSTM(BackboneContract):
    name = "lstm"


# ---- precision under bf16 autocast ------------------------------------------------------------------

BF16_TOL = 1e-2
"""Relative error (`rel_err`) allowed between a bf16-autocast forward and the float32 one. bf16 keeps 8
significant bits (rounding error 2^-9 = 0.2%); the bf16 projections and MLP around a float32 recurrence
stay within a few of those (0.1-0.4% measured at T = 1000). A recurrence run in bf16 loses 2-4% on these
models' states, and 14.5% in the 0.99-gate case below (85.5 against 100)."""


def slow_gates(model: torch.nn.Module) -> bool:
    """Sets every recurrence in `model` to keep ~99% of its state per step (the regime where bf16 rounds a
    gate of 0.99 away); returns whether it found one."""
    found = False
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MinRNNMixer):
                H, keep = m.hidden, -math.log(99)  # the candidate's share sigmoid(u) = 0.01: a_t ~ 0.99
                if m.n_branches == 2:  # minGRU: u = k_z
                    m.in_proj.bias[:H] = keep
                else:  # minLSTM: u = softplus(-k_f) - softplus(-k_i), with f ~ 1
                    m.in_proj.bias[:H], m.in_proj.bias[H:2 * H] = 8.0, keep
            elif isinstance(m, LRUMixer):
                r = 0.99 + 0.009 * torch.rand(m.state_dim)  # |lambda| in [0.99, 0.999]
                m.nu_log.copy_(torch.log(-torch.log(r)))
                m.gamma_log.copy_(0.5 * torch.log(1 - r**2))
            elif isinstance(m, (nn.GRU, nn.LSTM)):  # update gate z (GRU) / forget gate f (LSTM) ~ 0.99
                H = m.hidden_size
                m.bias_ih_l0[H:2 * H] = math.log(99)
            else:
                continue
            found = True
    return found


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_bf16_autocast_forward_stays_near_float32(name):
    """For every backbone, one block at T = 1000 with gates near 1: the bf16-autocast output and state within
    BF16_TOL of float32. One block, so what differs is the block's own bf16 work (a second block would add
    its model's sensitivity to the first block's bf16 MLP). The transformer has no recurrence: its bound is
    that of bf16 attention and matmuls, the same tolerance."""
    torch.manual_seed(0)
    model = build(name, 32, 1).eval()
    assert slow_gates(model) or not model.recurrent, f"{name}: add its gates near 1 to slow_gates"
    x = torch.randn(2, 1000, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y, state = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16, state16 = model(x)
    assert rel_err(y16.float(), y) <= BF16_TOL
    for i, (s16, s) in enumerate(zip(state16, state, strict=True)):
        assert s16.dtype == s.dtype == torch.float32, f"state[{i}]: the state keeps the module's dtype"
        assert rel_err(s16, s) <= BF16_TOL, f"state[{i}]"


@pytest.mark.parametrize("name, options", [("mingru", {}), ("minlstm", {}), ("minlstm", {"scan": "log"}),
                                           ("mingru", {"scan": "log"})])
def test_bf16_autocast_keeps_a_gate_of_099_for_1000_steps(name, options):
    """h_t = 0.99 h_{t-1} + 1 from 0 reaches 100 (1 - 0.99^1000) = 99.996 in float32; with the gates in bf16,
    where a_t = 0.99 rounds to 0.988, it ends near 85.5. The in-projection stays bf16 under autocast: its bias
    rounds the gate's logit log(99) = 4.5951 to 4.5938, which moves a_t by 1e-5 and leaves the limit at 100
    (b_t = (1 - a_t) * 100)."""
    mixer = build(name, 4, 1, **options).blocks[0].mixer
    H = mixer.hidden
    with torch.no_grad():
        mixer.in_proj.weight.zero_()
        bias = mixer.in_proj.bias
        bias[-H:] = 99.5  # the candidate g(99.5) = 100
        if mixer.n_branches == 2:
            bias[:H] = -math.log(99)
        else:
            bias[:H], bias[H:2 * H] = 30.0, -math.log(99)  # softplus(-30) ~ 1e-13: u = -log(99)
    x, h0 = torch.zeros(1, 1000, 4), torch.zeros(1, H)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, (h,) = mixer(x, (h0,))
    assert h.dtype == torch.float32
    assert torch.allclose(h, torch.full_like(h, 100 * (1 - 0.99**1000)), rtol=1e-4)


def test_bf16_autocast_keeps_an_lru_eigenvalue_of_099_for_1000_steps():
    """The LRU's complex scan with lambda = 0.99 and gamma B x = 1 reaches 100 (1 - 0.99^1000) under bf16 autocast."""
    mixer = build("lru", 4, 1, state_dim=3).blocks[0].mixer
    with torch.no_grad():
        mixer.nu_log.fill_(math.log(-math.log(0.99)))  # |lambda| = 0.99
        mixer.theta_log.fill_(-40.0)  # phase e^-40: lambda real
        mixer.gamma_log.zero_()
        mixer.B_re.fill_(0.25)  # B x = 1 for x = ones(4)
        mixer.B_im.zero_()
    x, h0 = torch.ones(1, 1000, 4), torch.zeros(1, 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, (h_re, h_im) = mixer(x, (h0, h0))
    assert torch.allclose(h_re, torch.full_like(h_re, 100 * (1 - 0.99**1000)), rtol=1e-4)
    assert h_im.abs().max() < 1e-6


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_bf16_autocast_training_gives_finite_losses_and_gradients(name):
    """A few AdamW updates of the agent's loss under CPU bf16 autocast: finite losses, and a finite gradient
    for every parameter."""
    torch.manual_seed(0)
    model = DecisionRNN(ModelConfig(obs_dim=3, act_dim=2, backbone=name, embed_dim=16, n_layers=2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    B, T = 4, 10
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 6:] = False  # a padded row
    batch = Batch(states=torch.randn(B, T, 3, generator=gen), actions=torch.rand(B, T, 2, generator=gen) * 2 - 1,
                  returns_to_go=100 * torch.rand(B, T, generator=gen), timesteps=torch.arange(T).expand(B, T),
                  mask=mask)
    for update in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        assert torch.isfinite(loss), f"update {update}"
        for p_name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"update {update}: {p_name}"
        optimizer.step()
