"""Export the single-step policy with explicit state tensors (ONNX, TorchScript).

The exported function is `DecisionRNN.step` with normalisation inside (the normalized observation clamped to
±`decision_rnn.config.OBS_BOUND`, as in every runtime):

    inputs : obs (B, obs_dim) f32, prev_action (B, act_dim) f32, returns_to_go (B,) f32,
             timestep (B,) i64, state_0 ... state_{n-1} (the backbone's state tensors)
    outputs: action (B, act_dim) f32, next_state_0 ... next_state_{n-1}

A control loop starts from the `initial_state` values (zeros for every backbone here; the ONNX file
stores their shapes as metadata), feeds returns_to_go = target - rewards so far, prev_action = the
last action (ignored at timestep 0; always, for a model built with `prev_action=False`, but still an
input, so every exported file has the same interface), and carries the state outputs back in. See
experiments/onnx_control_loop.py for a loop that needs only numpy and onnxruntime.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .models import DecisionRNN


class StepFunction(nn.Module):
    """`DecisionRNN.step` with the state flattened into positional tensors (export-friendly)."""

    def __init__(self, model: DecisionRNN):
        super().__init__()
        # A copy in eval mode: exporting must not switch the caller's model (mid-training, say) out of its
        # mode; and exporters restore the wrapper's mode afterwards, so the wrapper is in eval mode too.
        self.model = copy.deepcopy(model)
        self.eval()

    def forward(self, obs, prev_action, returns_to_go, timestep, *state):
        action, next_state = self.model.step(obs, prev_action, returns_to_go, timestep, tuple(state))
        if self.model.embed_action is None:  # unused: the ONNX exporter would drop the input; keep it (x 0)
            action = action + 0.0 * prev_action[:, :1]
        return (action, *next_state)


def example_inputs(model: DecisionRNN, batch_size: int = 1) -> tuple[torch.Tensor, ...]:
    """Inputs of the first step of an episode (timestep 0, initial state)."""
    c = model.config
    device = next(model.parameters()).device
    state = model.initial_state(batch_size, device=device)
    return (
        torch.zeros(batch_size, c.obs_dim, device=device),
        torch.zeros(batch_size, c.act_dim, device=device),
        torch.full((batch_size,), 1000.0, device=device),
        torch.zeros(batch_size, dtype=torch.long, device=device),
        *state,
    )


def io_names(model: DecisionRNN) -> tuple[list[str], list[str]]:
    n = len(model.initial_state(1))
    inputs = ["obs", "prev_action", "returns_to_go", "timestep"] + [f"state_{i}" for i in range(n)]
    outputs = ["action"] + [f"next_state_{i}" for i in range(n)]
    return inputs, outputs


@contextmanager
def _new_file(path: str | os.PathLike, overwrite: bool):
    """A temporary path beside `path` that becomes `path` when the block succeeds (an interrupted export leaves
    no half-written file); an existing `path` is refused unless `overwrite`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; export elsewhere (--out) or replace it (--force, overwrite=True)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def export_onnx(model: DecisionRNN, path: str | os.PathLike, *, opset: int = 17, overwrite: bool = False) -> Path:
    """Write the step function to ONNX with a dynamic batch axis; returns the path."""
    fn = StepFunction(model)
    inputs, outputs = io_names(model)
    args = example_inputs(model, batch_size=2)  # batch 2 so the exporter cannot fold the batch axis
    with _new_file(path, overwrite) as tmp:
        with torch.no_grad():
            torch.onnx.export(
                fn, args, str(tmp), input_names=inputs, output_names=outputs, opset_version=opset, dynamo=False,
                dynamic_axes={name: {0: "batch"} for name in inputs + outputs},
            )
        import onnx

        proto = onnx.load(str(tmp))
        shapes = [list(t.shape[1:]) for t in model.initial_state(1)]
        dtypes = [str(t.dtype).removeprefix("torch.") for t in model.initial_state(1)]
        meta = {"state_shapes": json.dumps(shapes), "state_dtypes": json.dumps(dtypes),
                "model_config": json.dumps(model.config.__dict__, default=str)}
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
    return Path(path)


def export_torchscript(model: DecisionRNN, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Trace the step function to TorchScript (loads with `torch.jit.load`, no decision-rnn needed)."""
    with _new_file(path, overwrite) as tmp:
        with torch.no_grad():
            traced = torch.jit.trace(StepFunction(model), example_inputs(model, batch_size=2), check_trace=False)
        traced.save(str(tmp))
    return Path(path)


class OnnxStep:
    """`DecisionRNN.step` run by onnxruntime on the CPU: same signature, numpy arrays in and out."""

    def __init__(self, model: DecisionRNN, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, threads
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(model.cpu(), Path(tmp) / "step.onnx")
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names, _ = io_names(model)

    def __call__(self, obs, prev_action, returns_to_go, timestep, state):
        out = self.session.run(None, dict(zip(self.input_names, (obs, prev_action, returns_to_go, timestep, *state))))
        return out[0], tuple(out[1:])
