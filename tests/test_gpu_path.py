"""The GPU path, tested on the CPU where it can be: the masked loss, `torch.compile` of the loss and of training,
and experiments/gpu_check.py at toy sizes (bf16 autocast of every backbone: tests/test_backbones.py).

Tests marked `gpu` need CUDA and skip without it; `python experiments/gpu_check.py` runs them on a GPU.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo

from decision_rnn import DecisionRNN, ModelConfig, TrainConfig
from decision_rnn.backbones import BACKBONES, build
from decision_rnn.data import Batch
from decision_rnn.training import Trainer, build_model

ROOT = Path(__file__).resolve().parents[1]
CUDNN_RNNS = ("gru", "lstm")  # nn.GRU / nn.LSTM inside: dynamo leaves them out of the graph
SCANNED = [b for b in BACKBONES if b not in CUDNN_RNNS]


def on_gpu(test):
    """Mark `test` as a GPU test, skipped with a reason where CUDA is missing."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(),
                              reason="needs a CUDA GPU (python experiments/gpu_check.py runs it on one)")
    return pytest.mark.gpu(skip(test))


def tiny_model(backbone: str, tokens: str = "interleaved", dtype=torch.float32) -> DecisionRNN:
    torch.manual_seed(0)
    config = ModelConfig(obs_dim=5, act_dim=2, backbone=backbone, tokens=tokens, embed_dim=16, n_layers=1,
                         context_len=4, dropout=0.0)
    return DecisionRNN(config).to(dtype)


def padded_batch(model: DecisionRNN, B: int = 3, T: int = 4, dtype=torch.float32, device="cpu") -> Batch:
    """Random steps, rows 1 and 2 padded on the right after 3 and 1 real steps."""
    g = torch.Generator().manual_seed(1)
    c = model.config
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3:] = mask[2, 1:] = False
    batch = Batch(states=torch.randn(B, T, c.obs_dim, generator=g, dtype=dtype),
                  actions=torch.rand(B, T, c.act_dim, generator=g, dtype=dtype) * 2 - 1,
                  returns_to_go=torch.rand(B, T, generator=g, dtype=dtype) * 3000,
                  timesteps=torch.arange(T).expand(B, T).contiguous(), mask=mask)
    return batch.to(device)


def grads(model) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out


# ---- the masked loss --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", ["interleaved", "compact"])
def test_masked_loss_equals_the_mean_over_real_steps(tokens):
    """The loss by mask multiplication is DT's mean squared error over the real steps only (boolean indexing)."""
    model = tiny_model("mingru", tokens, torch.float64)
    batch = padded_batch(model, T=4, dtype=torch.float64)
    loss = model.loss(batch)
    loss.backward()
    g = grads(model)
    pred, _ = model(batch.states, batch.actions, batch.returns_to_go, batch.timesteps)
    reference = ((pred - batch.actions) ** 2)[batch.mask].mean()
    reference.backward()
    assert int(batch.mask.sum()) == 4 + 3 + 1
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=0)
    for a, b in zip(g, grads(model), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


# ---- torch.compile ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", SCANNED)
def test_loss_compiles_to_one_graph(backbone):
    """fullgraph=True: no graph break anywhere in the loss (scans, masks, embeddings), and the compiled loss and
    gradients equal eager. aot_eager traces what inductor would compile, without inductor's C++ build time."""
    model = tiny_model(backbone).train()
    batch = padded_batch(model)
    torch._dynamo.reset()
    compiled = torch.compile(model.loss, fullgraph=True, backend="aot_eager")
    loss = compiled(batch)
    loss.backward()
    g = grads(model)
    eager = model.loss(batch)
    eager.backward()
    torch.testing.assert_close(loss, eager)
    for a, b in zip(g, grads(model), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backbone", CUDNN_RNNS)
def test_classic_rnns_compile_around_the_rnn_call(backbone):
    """Dynamo leaves nn.GRU / nn.LSTM out of the graph (`torch._dynamo.config.allow_rnn` is off: its CPU LSTM does
    not compile): every graph break is that call, and the compiled loss still equals eager."""
    model = tiny_model(backbone, "compact").train()
    batch = padded_batch(model)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model.loss)(batch)
    assert explained.graph_break_count >= 1
    assert all("RNN, GRU, or LSTM" in str(reason.reason) for reason in explained.break_reasons)
    torch._dynamo.reset()
    loss = torch.compile(model.loss, backend="aot_eager")(batch)
    loss.backward()
    g = grads(model)
    eager = model.loss(batch)
    eager.backward()
    torch.testing.assert_close(loss, eager)
    for a, b in zip(g, grads(model), strict=True):
        torch.testing.assert_close(a, b)


def five_updates(dataset, compile: bool, run_dir: Path, device: str = "cpu") -> list[float]:
    model_cfg = ModelConfig(obs_dim=dataset.obs_dim, act_dim=dataset.act_dim, backbone="mingru", tokens="compact",
                            embed_dim=16, n_layers=1, context_len=5, dropout=0.0)
    train_cfg = TrainConfig(steps=5, batch_size=8, lr=1e-3, warmup_steps=1, compile=compile, device=device)
    torch.manual_seed(0)
    trainer = Trainer(build_model(dataset, model_cfg), dataset, train_cfg, run_dir)
    return [float(trainer.update()[0]) for _ in range(5)]


def test_compiled_training_equals_eager(embedded, tmp_path, monkeypatch):
    """`TrainConfig.compile`: 5 updates give eager's losses. The trainer's torch.compile runs with the aot_eager
    backend here: it traces forward and backward as inductor would, without inductor's C++ builds (about a minute on
    2 CPU cores); inductor itself runs in the GPU test below. Dropout is off: compiled code draws its own random
    numbers, so with dropout the two runs would differ by their masks."""
    compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile(fn, **{"backend": "aot_eager", **kw}))
    torch._dynamo.reset()
    eager, compiled = five_updates(embedded, False, tmp_path / "eager"), five_updates(embedded, True, tmp_path / "c")
    assert len(set(eager)) == 5  # the weights move: later losses check the compiled backward too
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-7)


# ---- experiments/gpu_check.py -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gpu_check_quick_writes_every_section(tmp_path):
    """The CPU/--quick mode runs every section's code at toy sizes and writes its table where --out says."""
    results = sorted((ROOT / "results").iterdir())
    before = {p: p.stat().st_mtime_ns for p in results}
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "gpu_check.py"), "--device", "cpu", "--quick",
                          "--out", str(tmp_path), "--dataset", "embedded"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    table = (tmp_path / "gpu_check_cpu_quick.md").read_text()
    for title in ["# GPU check", "## Environment", "## GPU-marked tests", "## Backbone table", "## Training updates/s",
                  "## Parallel Hopper rollout", "## Paper protocol: minGRU on hopper-medium (training)",
                  "## Paper protocol: minGRU on hopper-medium (score)"]:
        assert title in table, title
    statuses = [line for line in table.splitlines() if line.startswith("Status:")]
    assert len(statuses) == 7 and all(s.startswith("Status: ok") for s in statuses), statuses
    assert "mingru mixer" in table and "nn.GRU" in table and "lstm block" in table
    assert "output dtype under bfloat16 autocast: mingru mixer bfloat16" in table  # the rows say what ran
    assert "score_mean" in table
    assert {p: p.stat().st_mtime_ns for p in sorted((ROOT / "results").iterdir())} == before, "wrote into results/"


# ---- on a GPU (skipped without CUDA) ------------------------------------------------------------------------------


@on_gpu
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_backbone_on_gpu_equals_cpu(backbone, monkeypatch):
    """float32 forward, state and gradients on CUDA (cuDNN, the Triton scan where it runs) equal the CPU's."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # cuDNN's RNNs would round to TF32
    torch.manual_seed(0)
    model = build(backbone, 32, 2)
    x = torch.randn(4, 300 if backbone != "transformer" else 64, 32)
    results = []
    for device in ("cpu", "cuda"):
        m = model.to(device)
        y, state = m(x.to(device))
        (y.square().mean() + sum(s.square().mean() for s in state)).backward()
        results.append([t.detach().cpu() for t in (y, *state, *(p.grad for p in m.parameters()))])
        m.zero_grad(set_to_none=True)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)


@on_gpu
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_step_loop_on_gpu_equals_forward(backbone, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    model = build(backbone, 32, 2, **({"context": 64} if backbone == "transformer" else {})).cuda().eval()
    x = torch.randn(3, 50, 32, device="cuda")
    with torch.no_grad():
        y, _ = model(x)
        state = model.initial_state(3)
        for t in range(50):
            y_t, state = model.step(x[:, t], state)
            torch.testing.assert_close(y_t, y[:, t], rtol=1e-3, atol=1e-4)


@on_gpu
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_training_on_gpu_is_finite(backbone, embedded, tmp_path):
    """5 updates on CUDA under the trainer's bf16 autocast: finite losses and gradient norms for every backbone."""
    model_cfg = ModelConfig(obs_dim=embedded.obs_dim, act_dim=embedded.act_dim, backbone=backbone, embed_dim=32,
                            n_layers=2, context_len=10)
    trainer = Trainer(build_model(embedded, model_cfg), embedded, TrainConfig(steps=5, batch_size=16, device="cuda"),
                      tmp_path)
    for _ in range(5):
        loss, grad_norm = (float(v) for v in trainer.update())
        assert torch.isfinite(torch.tensor([loss, grad_norm])).all(), backbone


@on_gpu
def test_trainer_state_restores_the_training_devices_generator(embedded, tmp_path):
    """trainer.pt holds the CUDA generator of the training device alone, so a machine that sees fewer GPUs
    resumes it, and restoring it replays the same random numbers (dropout) on that device."""
    model_cfg = ModelConfig(obs_dim=embedded.obs_dim, act_dim=embedded.act_dim, embed_dim=32, n_layers=2)
    trainer = Trainer(build_model(embedded, model_cfg), embedded, TrainConfig(steps=2, batch_size=16, device="cuda"),
                      tmp_path)
    state = trainer.state_dict()
    assert isinstance(state["cuda_rng"], torch.Tensor)
    first = torch.rand(3, device="cuda")
    trainer._restore_rng(state)
    assert torch.equal(torch.rand(3, device="cuda"), first)


@on_gpu
def test_compiled_training_on_gpu_equals_eager(embedded, tmp_path):
    """`TrainConfig.compile` on CUDA: 5 updates give eager's losses within bf16 autocast's rounding."""
    torch._dynamo.reset()
    eager = five_updates(embedded, False, tmp_path / "eager", device="cuda")
    compiled = five_updates(embedded, True, tmp_path / "compiled", device="cuda")
    torch.testing.assert_close(compiled, eager, rtol=2e-2, atol=1e-3)


@on_gpu
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_policy_on_gpu_acts_like_cpu(backbone, monkeypatch):
    from decision_rnn import Policy

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)

    torch.manual_seed(0)
    model = DecisionRNN(ModelConfig(obs_dim=11, act_dim=3, backbone=backbone, embed_dim=32, n_layers=2)).eval()
    policies = [Policy(model, device=device, runtime="torch") for device in ("cpu", "cuda")]
    for p in policies:
        p.reset(3600.0, batch_size=4)
    g = torch.Generator().manual_seed(0)
    for t in range(30):
        obs = torch.randn(4, 11, generator=g).numpy()
        reward = None if t == 0 else torch.rand(4, generator=g).numpy()
        cpu, cuda = (p.act(obs, reward) for p in policies)
        torch.testing.assert_close(torch.as_tensor(cuda), torch.as_tensor(cpu), rtol=1e-3, atol=1e-4)
