"""The return-conditioned agent: DT's embeddings and action head around any sequence backbone.

Conventions (shared with `decision_rnn.data`):
- inputs are RAW observations and RAW undiscounted returns-to-go; the model normalises them itself
  (`obs_mean`/`obs_std` buffers, `return_scale`) so a checkpoint or an exported step function needs
  nothing from the training code;
- timesteps are 0-based within the episode; sequences are padded on the right (a recurrent state
  never sees padding before a real step); outputs at padded positions are meaningless and masked out.

Tokenisations (`ModelConfig.tokens`):
- `interleaved` (DT): per step t the tokens R_t, s_t, a_t, each plus the timestep embedding of t;
  a_t is predicted from the output at the s_t token. At rollout one env step feeds a_{t-1}
  (skipped at t = 0), R_t, s_t: three O(1) backbone steps.
- `compact` (ours): one token per step, emb(R_t) + emb(s_t) + emb(a_{t-1}) + time(t), with
  a_{-1} = 0; a_t is predicted from its output. One backbone step per env step.
- `split` (ours): two tokens per step, R_t and s_t + a_{t-1} (each plus time(t)): the return keeps a
  token of its own, as in DT, at two thirds of its sequence length; a_t is predicted from the output at
  the second token. Two backbone steps per env step.
`ModelConfig.prev_action=False` leaves emb(a_{t-1}) out of compact and split tokens: the agent then sees
no action at all, pi(a_t | R_<=t, s_<=t).
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones import build
from ..config import OBS_BOUND, ModelConfig, validate

State = tuple[torch.Tensor, ...]
TOKENS_PER_STEP = {"interleaved": 3, "split": 2, "compact": 1}


class DecisionRNN(nn.Module):
    """Decision-Transformer-style policy pi(a_t | R_<=t, s_<=t, a_<t) over a parallel/recurrent backbone."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        validate(config)
        self.config = config
        E = config.embed_dim
        self.tokens_per_step = TOKENS_PER_STEP[config.tokens]
        std = config.timestep_init_std
        init = None if std is None else torch.empty(config.max_timestep, E).normal_(0.0, std)
        self.embed_timestep = nn.Embedding(config.max_timestep, E, _weight=init)  # _weight: no default init
        self.embed_return = nn.Linear(1, E)
        self.return_ln = nn.LayerNorm(E) if config.return_ln else nn.Identity()
        self.embed_state = nn.Linear(config.obs_dim, E)
        uses_actions = config.tokens == "interleaved" or config.prev_action
        self.embed_action = nn.Linear(config.act_dim, E) if uses_actions else None
        self.embed_ln = nn.LayerNorm(E)
        self.embed_drop = nn.Dropout(config.dropout)
        options = {"dropout": config.dropout, "activation": config.activation, **config.backbone_options}
        if config.backbone == "transformer":
            # DT's rollout window, what a training window holds: the last K steps ending at s_t, 3K - 1 tokens
            # interleaved (2K split, K compact). The backbone keeps `context` past tokens and attends over them
            # plus the current one.
            span = self.tokens_per_step * config.context_len - (config.tokens == "interleaved")
            options.setdefault("context", span - 1)
        self.backbone = build(config.backbone, E, config.n_layers, **options)
        if config.block_init_std is not None:
            for module in self.backbone.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, 0.0, config.block_init_std)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        self.action_head = nn.Sequential(nn.Linear(E, config.act_dim), nn.Tanh())
        self.register_buffer("obs_mean", torch.zeros(config.obs_dim))
        self.register_buffer("obs_std", torch.ones(config.obs_dim))

    def set_normalization(self, obs_mean, obs_std) -> None:
        """Store the dataset's observation statistics inside the model (saved with the weights)."""
        self.obs_mean.copy_(torch.as_tensor(obs_mean, dtype=self.obs_mean.dtype))
        self.obs_std.copy_(torch.as_tensor(obs_std, dtype=self.obs_std.dtype))

    # ---- embeddings -------------------------------------------------------------------------------
    def _time(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.embed_timestep(timesteps.clamp(0, self.config.max_timestep - 1))

    def _state_emb(self, obs: torch.Tensor) -> torch.Tensor:
        return self.embed_state(((obs - self.obs_mean) / self.obs_std).clamp(-OBS_BOUND, OBS_BOUND))

    def _return_emb(self, rtg: torch.Tensor) -> torch.Tensor:
        return self.return_ln(self.embed_return(rtg.unsqueeze(-1) / self.config.return_scale))

    def _finish(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed_drop(self.embed_ln(tokens))

    def embed(self, states, actions, returns_to_go, timesteps, prev_actions=None) -> torch.Tensor:
        """(B, T, obs), (B, T, act), (B, T), (B, T) -> tokens (B, T * tokens_per_step, E).

        `prev_actions` (B, T, act): a_{t-1}, for compact/split tokens of sequences that start mid-episode;
        None: `actions` shifted by one step, with a_{-1} = 0 (sequences that start at step 0)."""
        B, T = timesteps.shape
        time = self._time(timesteps)  # (B, T, E)
        r, s = self._return_emb(returns_to_go), self._state_emb(states)
        if self.config.tokens == "interleaved":
            a = self.embed_action(actions)
            tokens = (torch.stack((r, s, a), dim=2) + time.unsqueeze(2)).reshape(B, 3 * T, -1)  # R_0 s_0 a_0 R_1..
        else:
            prev = prev_actions
            if prev is None:
                prev = torch.cat((torch.zeros_like(actions[:, :1]), actions[:, :-1]), dim=1)  # a_{-1} = 0
            sa = s if self.embed_action is None else s + self.embed_action(prev)
            if self.config.tokens == "split":
                tokens = (torch.stack((r, sa), dim=2) + time.unsqueeze(2)).reshape(B, 2 * T, -1)  # R_0 (s_0 a_-1) R_1..
            else:
                tokens = r + sa + time
        return self._finish(tokens)

    # ---- parallel (training) ------------------------------------------------------------------------
    def forward(self, states, actions, returns_to_go, timesteps, state: State | None = None, prev_actions=None):
        """Predict a_t for every step in parallel. Returns ((B, T, act_dim), backbone state).

        `state`: the backbone state to start from (None: fresh); `prev_actions`: see `embed`."""
        self._check_inputs(states, actions, returns_to_go, timesteps)
        if prev_actions is not None and prev_actions.shape != actions.shape:
            raise ValueError(f"prev_actions must have the shape of actions {tuple(actions.shape)}, "
                             f"got {tuple(prev_actions.shape)}")
        y, state = self.backbone(self.embed(states, actions, returns_to_go, timesteps, prev_actions), state)
        if self.tokens_per_step > 1:
            B, T = timesteps.shape
            y = y.reshape(B, T, self.tokens_per_step, -1)[:, :, 1]  # outputs at the s_t tokens
        return self.action_head(y), state

    def loss(self, batch, return_state: bool = False):
        """MSE between predicted and logged actions over real (unpadded) steps, as in DT.

        Starts from `batch.state` (None: fresh). `return_state=True` returns (loss, final backbone state).
        The mask multiplies rather than indexes: boolean indexing has a data-dependent shape, which breaks
        a `torch.compile` graph and syncs with the GPU."""
        pred, state = self(batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.state,
                           batch.prev_actions)
        error = ((pred - batch.actions) ** 2).mean(-1)  # (B, T); float32 under autocast (the logged actions are)
        mask = batch.mask.to(error.dtype)
        loss = (error * mask).sum() / mask.sum()
        return (loss, state) if return_state else loss

    # ---- sequential (acting) ------------------------------------------------------------------------
    def initial_state(self, batch_size: int, device=None, dtype=None) -> State:
        return self.backbone.initial_state(batch_size, device=device, dtype=dtype)

    def step(self, obs, prev_action, returns_to_go, timestep, state: State):
        """One env step for a batch: (B, obs), (B, act), (B,), (B,) int, state -> ((B, act), state).

        `prev_action` is a_{t-1} (ignored where timestep == 0). O(1) for recurrent backbones.
        """
        time = self._time(timestep)
        if self.config.tokens == "interleaved":
            a = self._finish(self.embed_action(prev_action) + self._time(timestep - 1))
            _, after_a = self.backbone.step(a, state)
            first = timestep == 0
            state = tuple(
                torch.where(first.view(-1, *([1] * (old.dim() - 1))), old, new)
                for old, new in zip(state, after_a)
            )
            _, state = self.backbone.step(self._finish(self._return_emb(returns_to_go) + time), state)
            y, state = self.backbone.step(self._finish(self._state_emb(obs) + time), state)
        else:
            prev = torch.where((timestep == 0).unsqueeze(-1), torch.zeros_like(prev_action), prev_action)
            sa = self._state_emb(obs)
            if self.embed_action is not None:
                sa = sa + self.embed_action(prev)
            r = self._return_emb(returns_to_go)
            if self.config.tokens == "split":
                _, state = self.backbone.step(self._finish(r + time), state)
                y, state = self.backbone.step(self._finish(sa + time), state)
            else:
                y, state = self.backbone.step(self._finish(r + sa + time), state)
        return self.action_head(y), state

    def _check_inputs(self, states, actions, returns_to_go, timesteps) -> None:
        c = self.config
        if timesteps.dim() != 2:
            raise ValueError(f"timesteps must be (batch, time), got shape {tuple(timesteps.shape)}")
        B, T = timesteps.shape
        expected = {
            "states": ((B, T, c.obs_dim), states),
            "actions": ((B, T, c.act_dim), actions),
            "returns_to_go": ((B, T), returns_to_go),
        }
        for name, (shape, tensor) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name} must have shape {shape} (batch, time, ...), got {tuple(tensor.shape)}")
