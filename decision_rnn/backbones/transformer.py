"""The Decision Transformer's backbone: a GPT-2 stack with causal multi-head self-attention
(Chen et al. 2021, arXiv 2106.01345), through `torch.nn.functional.scaled_dot_product_attention`.

No positional embedding: DT removes GPT-2's and relies on the agent's timestep embedding
(kzl/decision-transformer, gym/decision_transformer/models/trajectory_gpt2.py drops `wpe`).

State: (window, count).
- window (B, context, dim): the last `context` inputs, most recent last (right-aligned).
- count (B,): how many window slots hold real inputs (the rest are zeros from the start). It is a
  float of the module's dtype, like every other state tensor, so `state * (1 - done)` resets it.
`step` re-runs the whole stack over the window followed by its input, then appends the input (dropping
the oldest when the window is full): O(context) per step, as in every DT implementation (no KV cache:
the window slides, and every layer recomputes over it).
`forward(x, state)` attends causally over the window's real inputs followed by all of x, without a
sliding limit. Hence forward(x, state) equals a loop of `step` only while every step's past fits in the
window (count + T - 1 <= context); beyond that, `step` forgets inputs older than `context` steps and
`forward` does not. The agent trains on windows of at most `context` + 1 inputs (K steps), so the two
agree there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone, Block, State


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention. Called like a recurrent mixer, with the attention mask in place of the
    state, and returns no state: the transformer keeps its window itself."""

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"expected dim divisible by n_heads, got dim={dim}, n_heads={n_heads}")
        self.dim, self.n_heads, self.dropout = dim, n_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None):
        """x: (B, L, dim); mask: (B, 1, L, L) bool, True = may attend, or None for plain causal."""
        B, L, _ = x.shape
        qkv = self.qkv(x).split(self.dim, dim=-1)
        q, k, v = (t.view(B, L, self.n_heads, -1).transpose(1, 2) for t in qkv)  # (B, nh, L, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, nh, L, hs)
        return self.proj(y.transpose(1, 2).reshape(B, L, self.dim)), ()


class Transformer(Backbone):
    """GPT-2 stack over a sliding window of inputs (see the module docstring for the state)."""

    recurrent = False

    def __init__(self, dim: int, n_layers: int, *, n_heads: int = 1, context: int = 20,
                 mlp_expansion: int = 4, dropout: float = 0.0, activation: str = "relu"):
        """`n_heads`: attention heads (DT gym: 1). `context`: past inputs the window holds; a step attends
        over them and its own input (the agent passes DT's window less one: K - 1 steps compact, 2K - 1
        tokens split, 3K - 2 interleaved). `mlp_expansion`: MLP width / dim
        (GPT-2: 4). `dropout`: on attention weights and residual branches (DT: 0.1; default 0 here).
        `activation`: the MLP's, "gelu" (GPT-2) or "relu" (DT's gym code)."""
        super().__init__(dim, n_layers, lambda: CausalSelfAttention(dim, n_heads, dropout),
                         mlp_expansion=mlp_expansion, dropout=dropout, activation=activation)
        self.context = context

    def state_shapes(self, batch_size: int) -> list[tuple[int, ...]]:
        return [(batch_size, self.context, self.dim), (batch_size,)]

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x: (B, T, dim) -> y: (B, T, dim), state. Attends over the state's window, then x, causally."""
        self._check_input(x, rank=3)
        if state is None:  # nothing to attend to before x: SDPA's causal fast path
            y, _ = self._stack(x, [None] * len(self.blocks), Block.__call__)
            return y, self._push(self.initial_state(x.shape[0], device=x.device, dtype=x.dtype), x)
        window, count = self._check_state(state, x)
        K, L = self.context, self.context + x.shape[1]
        seq = torch.cat([window, x], dim=1)  # (B, L, dim)
        pos = torch.arange(L, device=x.device)
        real = pos >= K - count.unsqueeze(1)  # (B, L): empty window slots are not real
        mask = (pos.unsqueeze(1) >= pos) & real.unsqueeze(1)  # (B, L, L): causal, over real inputs only
        mask = mask | (pos.unsqueeze(1) == pos)  # empty slots see themselves: no NaN (not torch.eye: ONNX)
        y, _ = self._stack(seq, [mask.unsqueeze(1)] * len(self.blocks), Block.__call__)
        return y[:, K:], self._push(state, x)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x: (B, dim) -> y: (B, dim), state. Re-runs the stack over the window plus x."""
        self._check_input(x, rank=2)
        y, state = self.forward(x.unsqueeze(1), state)
        return y[:, 0], state

    def _push(self, state: State, x: torch.Tensor) -> State:
        """The state after appending x (B, T, dim): the last `context` inputs and the updated count."""
        window, count = state
        window = torch.cat([window, x], dim=1)
        window = window[:, window.shape[1] - self.context:]  # not [-context:]: context may be 0
        return window, (count + x.shape[1]).clamp(max=self.context)
