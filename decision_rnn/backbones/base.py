"""What every backbone shares: the pre-norm residual stack, the MLP, the state contract, input checks.

A backbone is `n_layers` blocks, each `x = x + mixer(LN(x)); x = x + MLP(LN(x))`, then a final
LayerNorm: GPT-2's layout (Radford et al. 2019), as in nanoGPT and the Decision Transformer. Only the
mixer differs between backbones; a backbone file defines its mixer and passes a factory for it here.

A recurrent mixer implements
    state_shapes(batch_size) -> list of shapes, batch first
    forward(x, state) -> (y, state)   x: (B, T, dim), the whole sequence in parallel
    step(x, state) -> (y, state)      x: (B, dim), one step
and the backbone's state is the flat concatenation of its layers' states: a tuple of float tensors,
batch first, so a caller can export `step` with explicit state tensors, and reset env i of a batch with
`state * (1 - done)` (every initial state is all zeros).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ACTIVATIONS as ACTIVATION_NAMES

State = tuple[torch.Tensor, ...]


ACTIVATIONS = {name: getattr(F, name) for name in ACTIVATION_NAMES}  # the names: `decision_rnn.config`


class MLP(nn.Module):
    """Feed-forward, `expansion` x wider inside (GPT-2 and DT: 4); GELU (GPT-2) or ReLU (DT's gym code)."""

    def __init__(self, dim: int, expansion: int, dropout: float, activation: str = "relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.fc = nn.Linear(dim, expansion * dim)
        self.proj = nn.Linear(expansion * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(ACTIVATIONS[self.activation](self.fc(x))))


class Block(nn.Module):
    """Pre-norm residual block around a mixer: x + mixer(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, mixer: nn.Module, mlp_expansion: int, dropout: float, activation: str):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.mixer = mixer
        self.drop = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_expansion, dropout, activation)

    def forward(self, x: torch.Tensor, state):
        return self._finish(x, *self.mixer(self.ln_1(x), state))

    def step(self, x: torch.Tensor, state):
        return self._finish(x, *self.mixer.step(self.ln_1(x), state))

    def _finish(self, x: torch.Tensor, y: torch.Tensor, state):
        x = x + self.drop(y)
        return x + self.mlp(self.ln_2(x)), state


class Backbone(nn.Module):
    """A stack of `Block`s over a sequence, with an explicit state (see the module docstring).

    Subclasses pass `mixer`, a zero-argument factory called once per layer.
    """

    recurrent = True
    """True when `step` costs the same at every step and the state has a fixed size."""

    def __init__(self, dim: int, n_layers: int, mixer: Callable[[], nn.Module], *, mlp_expansion: int,
                 dropout: float, activation: str = "relu"):
        super().__init__()
        self.dim = dim
        self.blocks = nn.ModuleList(Block(dim, mixer(), mlp_expansion, dropout, activation)
                                    for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(dim)

    def state_shapes(self, batch_size: int) -> list[tuple[int, ...]]:
        """Shapes of the state tensors, in order."""
        return [shape for block in self.blocks for shape in block.mixer.state_shapes(batch_size)]

    def initial_state(self, batch_size: int, device=None, dtype=None) -> State:
        """The fresh-start state: zeros, on the module's device and dtype unless given."""
        p = next(self.parameters())
        return tuple(torch.zeros(shape, device=device or p.device, dtype=dtype or p.dtype)
                     for shape in self.state_shapes(batch_size))

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """All T steps in parallel from `state` (None: fresh start). x: (B, T, dim) -> y: (B, T, dim)."""
        self._check_input(x, rank=3)
        state = self._check_state(state, x)
        return self._stack(x, self._per_layer(state), Block.__call__)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One step. x: (B, dim) -> y: (B, dim), state."""
        self._check_input(x, rank=2)
        return self._stack(x, self._per_layer(self._check_state(state, x)), Block.step)

    def _stack(self, x: torch.Tensor, states: list, call) -> tuple[torch.Tensor, State]:
        new_state = []
        for block, s in zip(self.blocks, states, strict=True):
            x, s = call(block, x, s)
            new_state.extend(s)
        return self.ln_f(x), tuple(new_state)

    def _per_layer(self, state: State) -> list[State]:
        out, i = [], 0
        for block in self.blocks:
            n = len(block.mixer.state_shapes(1))
            out.append(state[i:i + n])
            i += n
        return out

    def _check_input(self, x: torch.Tensor, rank: int) -> None:
        expected = "(B, T, dim)" if rank == 3 else "(B, dim)"
        if x.dim() != rank or x.shape[-1] != self.dim or 0 in x.shape:
            raise ValueError(f"{type(self).__name__}: expected x of shape {expected} with dim={self.dim} "
                             f"and no empty axis, got {tuple(x.shape)}")

    def _check_state(self, state: State | None, x: torch.Tensor) -> State:
        """The state to start from: `state` if its shapes fit x's batch, or a fresh one for None."""
        if state is None:
            return self.initial_state(x.shape[0], device=x.device, dtype=x.dtype)
        shapes = self.state_shapes(x.shape[0])
        if not isinstance(state, (tuple, list)) or len(state) != len(shapes):
            n = len(state) if isinstance(state, (tuple, list)) else type(state).__name__
            raise ValueError(f"{type(self).__name__}: expected a state tuple of {len(shapes)} tensors, "
                             f"got {n}")
        for i, (s, shape) in enumerate(zip(state, shapes, strict=True)):
            if tuple(s.shape) != shape:
                raise ValueError(f"{type(self).__name__}: expected state[{i}] of shape {shape} "
                                 f"(batch {x.shape[0]}), got {tuple(s.shape)}")
        return tuple(state)
