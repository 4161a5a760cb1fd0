"""Exported step functions (ONNX in onnxruntime, TorchScript) equal PyTorch over a whole rollout."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from decision_rnn import DecisionRNN, ModelConfig
from decision_rnn.export import export_onnx, export_torchscript, io_names

BACKBONES = ["mingru", "minlstm", "lru", "transformer", "gru", "lstm"]


@pytest.mark.parametrize(("backbone", "activation", "tokens"),
                         [(b, "gelu", "interleaved") for b in BACKBONES]
                         + [("mingru", "relu", "interleaved"), ("mingru", "gelu", "split"),
                            ("transformer", "gelu", "split"), ("mingru", "relu", "compact+return_ln"),
                            ("minlstm", "relu", "compact+no_prev_action")])
def test_exports_match_pytorch_step_by_step(backbone, activation, tokens, tmp_path):
    torch.manual_seed(0)
    tokens, _, option = tokens.partition("+")
    options = {"return_ln": {"return_ln": True}, "no_prev_action": {"prev_action": False}, "": {}}[option]
    model = DecisionRNN(ModelConfig(obs_dim=11, act_dim=3, backbone=backbone, embed_dim=16, n_layers=2,
                                    context_len=5, activation=activation, tokens=tokens, **options)).eval()
    onnx_path = export_onnx(model, tmp_path / "policy.onnx")
    ts = torch.jit.load(str(export_torchscript(model, tmp_path / "policy.pt")))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs, _ = io_names(model)
    assert [i.name for i in session.get_inputs()] == inputs  # one interface, whatever the model uses
    B = 3
    state = model.initial_state(B)
    ort_state = [s.numpy() for s in state]
    ts_state = state
    prev = torch.zeros(B, 3)
    g = torch.Generator().manual_seed(0)
    for t in range(12):  # past the transformer's window, so the window shifting is exercised too
        obs, rtg, ts_t = torch.randn(B, 11, generator=g), torch.full((B,), 3000.0 - 3 * t), torch.full((B,), t)
        with torch.no_grad():
            action, state = model.step(obs, prev, rtg, ts_t, state)
            ts_out = ts(obs, prev, rtg, ts_t, *ts_state)
        feed = dict(zip(inputs, [obs.numpy(), prev.numpy(), rtg.numpy(), ts_t.numpy(), *ort_state]))
        ort_out = session.run(None, feed)
        np.testing.assert_allclose(ort_out[0], action.numpy(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ts_out[0], action, atol=1e-5, rtol=1e-5)
        ort_state, ts_state, prev = ort_out[1:], ts_out[1:], action


def test_numpy_only_control_loop_matches_policy(tmp_path):
    """experiments/onnx_control_loop.py's OnnxPolicy acts exactly like decision_rnn.Policy."""
    import importlib.util
    from pathlib import Path

    from decision_rnn import Policy

    spec = importlib.util.spec_from_file_location(
        "onnx_control_loop", Path(__file__).resolve().parents[1] / "experiments" / "onnx_control_loop.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    torch.manual_seed(0)
    model = DecisionRNN(ModelConfig(obs_dim=11, act_dim=3, backbone="mingru", embed_dim=16, n_layers=2)).eval()
    onnx_policy = example.OnnxPolicy(str(export_onnx(model, tmp_path / "policy.onnx")))
    policy = Policy(model)
    onnx_policy.reset(3600.0)
    policy.reset(3600.0)
    rng = np.random.default_rng(0)
    for t in range(30):
        obs, reward = rng.standard_normal(11).astype(np.float32), float(rng.uniform(0, 3))
        np.testing.assert_allclose(onnx_policy.act(obs, 0.0 if t == 0 else reward),
                                   policy.act(obs, None if t == 0 else reward), atol=1e-5)


def test_export_leaves_the_model_in_eval_mode(tmp_path):
    model = DecisionRNN(ModelConfig(obs_dim=11, act_dim=3, embed_dim=16, n_layers=1)).eval()
    export_onnx(model, tmp_path / "p.onnx")
    export_torchscript(model, tmp_path / "p.pt")
    assert not any(m.training for m in model.modules()), "export switched dropout back on"


def test_export_refuses_an_existing_file_and_leaves_no_partial_one(tmp_path, monkeypatch):
    model = DecisionRNN(ModelConfig(obs_dim=11, act_dim=3, embed_dim=16, n_layers=1)).eval()
    target = tmp_path / "p.onnx"
    target.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="p.onnx exists"):
        export_onnx(model, target)
    assert target.read_bytes() == b"keep"

    def interrupted(*args, **kwargs):
        Path(args[2]).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.onnx, "export", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(model, target, overwrite=True)
    assert target.read_bytes() == b"keep" and [f.name for f in tmp_path.iterdir()] == ["p.onnx"]
    monkeypatch.undo()
    export_onnx(model, target, overwrite=True)
    assert target.read_bytes() != b"keep"
