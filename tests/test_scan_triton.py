"""The Triton scan kernels (`decision_rnn/backbones/triton_scan.py`) against the torch scan: values and
gradients of a, b, h0 (lambda, b, h0 for the complex scan), T = 1 and an odd T over several chunks, from a
non-zero h0, and the kernel reached under autocast.

On CUDA the kernels are compiled and the tests run directly (they are marked `gpu`, which
experiments/gpu_check.py selects). Without a GPU they run under Triton's interpreter, which must be
switched on (TRITON_INTERPRET=1) before triton is first imported, so `test_kernels_under_the_interpreter`
runs this file again in a fresh process with it set (small shapes: the interpreter is slow), and the
tests skip in the outer process. Everything skips, with the reason, where triton cannot be imported.
"""

from __future__ import annotations

import collections
import importlib
import os
import re
import subprocess
import sys

import pytest
import torch

from decision_rnn.backbones import build, scan

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
RUN_HERE = CUDA or os.environ.get("TRITON_INTERPRET") == "1"
pytest.importorskip("triton", reason="triton is not installed (pip install triton): the Triton scan kernel "
                                     "cannot be tested")
ts = importlib.import_module("decision_rnn.backbones.triton_scan") if RUN_HERE else None


def kernel_test(test):
    """A test of the kernels: marked `gpu` (experiments/gpu_check.py runs it compiled on a GPU), and skipped in a
    process without a GPU or the interpreter (test_kernels_under_the_interpreter runs it in one)."""
    skip = pytest.mark.skipif(not RUN_HERE, reason="no GPU: runs under the interpreter, in the subprocess of "
                                                   "test_kernels_under_the_interpreter")
    return pytest.mark.gpu(skip(test))


def test_kernels_under_the_interpreter():
    if RUN_HERE:
        pytest.skip("the kernel tests run directly in this process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
                          "-k", "not test_kernels_under_the_interpreter"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, summary  # every kernel test ran


KERNELS = ("_real_fwd", "_real_bwd", "_complex_fwd", "_complex_bwd")


@pytest.fixture
def launches(monkeypatch):
    """Counts kernel launches by name, and shrinks the tiles so that small tensors span several of them
    (4 channels, 16 steps: T = 37 is 3 chunks, 5 channels 2 blocks)."""
    counts = collections.Counter()

    class Counting:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            counts[self.name] += 1
            return self.kernel[grid]

    for name in KERNELS:
        kernel = getattr(ts, name)
        assert CUDA or type(kernel).__name__ == "InterpretedFunction", "the kernels must run interpreted on CPU"
        monkeypatch.setattr(ts, name, Counting(name, kernel))
    monkeypatch.setattr(ts, "BLOCK_N", 4)
    monkeypatch.setattr(ts, "MAX_CHUNK", 16)
    return counts


def grads(fn, *inputs):
    """fn(*inputs) and the gradients of <fn(*inputs), w> for a fixed random w, for each input."""
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*inputs)
    w = torch.randn(out.shape, dtype=out.dtype, device=out.device, generator=torch.Generator(DEVICE).manual_seed(1))
    return out, torch.autograd.grad((out * w).real.sum(), inputs)


def close(x: torch.Tensor, ref: torch.Tensor, tol: float) -> bool:
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item() <= tol


@kernel_test
@pytest.mark.parametrize("T", [1, 37])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_real_scan_matches_torch(launches, T, dtype):
    gen = torch.Generator(DEVICE).manual_seed(T)
    a = torch.rand(2, T, 5, dtype=dtype, device=DEVICE, generator=gen)
    b = torch.randn(2, T, 5, dtype=dtype, device=DEVICE, generator=gen)
    h0 = 3 * torch.randn(2, 5, dtype=dtype, device=DEVICE, generator=gen)  # non-zero, either sign
    h, g = grads(lambda *x: scan.linear_scan(*x, backend="triton"), a, b, h0)
    h_ref, g_ref = grads(lambda *x: scan.linear_scan(*x, backend="torch"), a, b, h0)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert h.dtype == dtype and close(h, h_ref, tol)
    for name, x, ref in zip(("a", "b", "h0"), g, g_ref, strict=True):
        assert close(x, ref, tol), f"dL/d{name}"
    assert launches["_real_fwd"] == 1 and launches["_real_bwd"] == 1


@kernel_test
def test_real_scan_keeps_trailing_dimensions(launches):
    gen = torch.Generator(DEVICE).manual_seed(0)
    a, b = (torch.rand(2, 9, 2, 3, dtype=torch.float64, device=DEVICE, generator=gen) for _ in range(2))
    h0 = torch.randn(2, 2, 3, dtype=torch.float64, device=DEVICE, generator=gen)
    h, g = grads(lambda *x: scan.linear_scan(*x, backend="triton"), a, b, h0)
    h_ref, g_ref = grads(lambda *x: scan.linear_scan(*x, backend="torch"), a, b, h0)
    assert h.shape == b.shape and close(h, h_ref, 1e-12)
    assert all(x.shape == ref.shape and close(x, ref, 1e-12) for x, ref in zip(g, g_ref, strict=True))


@kernel_test
@pytest.mark.parametrize("T", [1, 37])
def test_complex_scan_matches_torch(launches, T):
    gen = torch.Generator(DEVICE).manual_seed(T)
    N = 5
    modulus = 0.5 + 0.5 * torch.rand(N, dtype=torch.float64, device=DEVICE, generator=gen)
    lam = torch.polar(modulus, 6.3 * torch.rand(N, dtype=torch.float64, device=DEVICE, generator=gen))
    b = torch.randn(2, T, N, dtype=torch.complex128, device=DEVICE, generator=gen)
    h0 = 3 * torch.randn(2, N, dtype=torch.complex128, device=DEVICE, generator=gen)
    h, g = grads(lambda *x: scan.complex_linear_scan(*x, backend="triton"), lam, b, h0)
    h_ref, g_ref = grads(lambda *x: scan.complex_linear_scan(*x, backend="torch"), lam, b, h0)
    assert h.dtype == torch.complex128 and close(h, h_ref, 1e-12)
    for name, x, ref in zip(("lambda", "b", "h0"), g, g_ref, strict=True):
        assert close(x, ref, 1e-12), f"dL/d{name}"
    assert launches["_complex_fwd"] == 1 and launches["_complex_bwd"] == 1


@kernel_test
@pytest.mark.parametrize("name, kernels", [("mingru", ("_real_fwd", "_real_bwd")),
                                           ("lru", ("_complex_fwd", "_complex_bwd"))])
def test_autocast_reaches_the_kernel(launches, monkeypatch, name, kernels):
    """Under bf16 autocast the default scan ("linear") takes the kernel where it is on (here made the case
    for CPU tensors too), in float32, and agrees with the torch scan under the same autocast."""
    monkeypatch.setattr(scan, "KERNEL_DEVICES", ("cuda", "cpu"))
    torch.manual_seed(0)
    model = build(name, 4, 1).to(DEVICE)
    x = torch.randn(2, 11, 4, device=DEVICE)
    outputs = []
    for devices in (("cuda", "cpu"), ()):
        monkeypatch.setattr(scan, "KERNEL_DEVICES", devices)
        model.zero_grad()
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            y, state = model(x)
        y.float().square().mean().backward()
        outputs.append((y.float(), state, [p.grad.clone() for p in model.parameters()]))
        if devices:
            assert [launches[k] for k in kernels] == [1, 1], "the kernel was not reached under autocast"
    (y, state, g), (y_ref, state_ref, g_ref) = outputs
    assert close(y, y_ref, 1e-5)
    assert all(s.dtype == torch.float32 and close(s, r, 1e-5) for s, r in zip(state, state_ref, strict=True))
    assert all(close(a, b, 1e-4) for a, b in zip(g, g_ref, strict=True))


@kernel_test
@pytest.mark.parametrize("name", ["mingru", "minlstm", "lru"])
def test_scan_option_triton_runs_the_kernel(launches, name):
    """scan="triton" takes the kernel whatever the device; forward equals the step loop from a non-zero state."""
    torch.manual_seed(0)
    model = build(name, 4, 1, scan="triton").double().to(DEVICE).eval()
    x = torch.randn(2, 7, 4, dtype=torch.float64, device=DEVICE)
    state = tuple(torch.randn_like(s) for s in model.initial_state(2))
    with torch.no_grad():
        y, end = model(x, state)
        ys = []
        for t in range(7):
            y_t, state = model.step(x[:, t], state)
            ys.append(y_t)
    assert close(y, torch.stack(ys, dim=1), 1e-12)
    assert all(close(a, b, 1e-12) for a, b in zip(end, state, strict=True))
    assert launches["_real_fwd" if name != "lru" else "_complex_fwd"] == 1
