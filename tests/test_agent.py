"""The return-conditioned agent: step-by-step acting equals the parallel forward; loss masks padding."""

from dataclasses import replace

import pytest
import torch

from decision_rnn import DecisionRNN, ModelConfig

BACKBONES = ["mingru", "minlstm", "lru", "transformer", "gru", "lstm"]
OBS, ACT = 5, 3


def make_model(backbone, tokens, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(obs_dim=OBS, act_dim=ACT, backbone=backbone, tokens=tokens, embed_dim=16, n_layers=2,
                      context_len=8, max_timestep=64, **kw)
    model = DecisionRNN(cfg)
    model.set_normalization(torch.randn(OBS), torch.rand(OBS) + 0.5)
    return model


def trajectory(B, T, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(B, T, OBS, generator=g, dtype=dtype) * 3,
            torch.rand(B, T, ACT, generator=g, dtype=dtype) * 2 - 1,
            torch.randn(B, T, generator=g, dtype=dtype) * 1000,
            torch.arange(T).repeat(B, 1))


@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("tokens", ["interleaved", "compact", "split"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_step_loop_equals_parallel_forward(backbone, tokens, activation):
    model = make_model(backbone, tokens, activation=activation).double().eval()
    # the transformer only matches inside its K-step window (DT semantics); recurrent ones always
    T = model.config.context_len if backbone == "transformer" else 40
    states, actions, rtg, timesteps = trajectory(2, T, torch.float64)
    with torch.no_grad():
        parallel, _ = model(states, actions, rtg, timesteps)
        state = model.initial_state(2, dtype=torch.float64)
        prev = torch.zeros(2, ACT, dtype=torch.float64)
        for t in range(T):
            step_action, state = model.step(states[:, t], prev, rtg[:, t], timesteps[:, t], state)
            torch.testing.assert_close(step_action, parallel[:, t], rtol=1e-9, atol=1e-9)
            prev = actions[:, t]  # teacher forcing: the logged action, as in the parallel forward


def test_return_ln_bounds_the_return_part_whatever_the_target():
    model = make_model("mingru", "compact", return_ln=True).double().eval()
    with torch.no_grad():
        model.return_ln.weight.uniform_(0.5, 1.5)
        parts = model._return_emb(torch.tensor([0.0, 600.0, 3600.0, 1e6], dtype=torch.float64))
        E = model.config.embed_dim  # a normalized vector has norm sqrt(E)
        bound = model.return_ln.weight.abs().max() * E ** 0.5 + model.return_ln.bias.norm()
        assert (parts.norm(dim=-1) <= bound + 1e-9).all()
        assert model.embed_return(torch.tensor([[1e3]], dtype=torch.float64)).norm() > bound  # unbounded without


@pytest.mark.parametrize(("tokens", "options"),
                         [("compact", {"return_ln": True}), ("split", {"return_ln": True}),
                          ("interleaved", {"return_ln": True}), ("compact", {"prev_action": False}),
                          ("split", {"prev_action": False})])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_token_options_keep_step_equal_to_parallel_forward(backbone, tokens, options):
    model = make_model(backbone, tokens, **options).double().eval()
    T = model.config.context_len if backbone == "transformer" else 30
    states, actions, rtg, timesteps = trajectory(2, T, torch.float64)
    with torch.no_grad():
        parallel, _ = model(states, actions, rtg, timesteps)
        state, prev = model.initial_state(2, dtype=torch.float64), torch.zeros(2, ACT, dtype=torch.float64)
        for t in range(T):
            step_action, state = model.step(states[:, t], prev, rtg[:, t], timesteps[:, t], state)
            torch.testing.assert_close(step_action, parallel[:, t], rtol=1e-9, atol=1e-9)
            prev = actions[:, t]


def test_without_prev_action_the_agent_ignores_actions():
    model = make_model("mingru", "compact", prev_action=False).eval()
    assert model.embed_action is None
    states, actions, rtg, timesteps = trajectory(2, 10)
    with torch.no_grad():
        a, _ = model(states, actions, rtg, timesteps)
        b, _ = model(states, torch.rand_like(actions), rtg, timesteps, prev_actions=torch.rand_like(actions))
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="prev_action=False needs compact or split tokens"):
        make_model("mingru", "interleaved", prev_action=False)


@pytest.mark.parametrize("K", [1, 8])
@pytest.mark.parametrize("tokens", ["interleaved", "compact", "split"])
def test_transformer_acts_over_dt_window_of_the_last_k_steps(tokens, K):
    """Past K steps too, acting attends over exactly what a training window holds: the last K steps, ending
    at s_t (3K - 1 tokens interleaved, 2K split, K compact), not one token more. K = 1 compact keeps no past at all."""
    model = make_model("transformer", tokens)
    model = DecisionRNN(replace(model.config, context_len=K)).double().eval()
    T = 3 * K + 2
    states, actions, rtg, timesteps = trajectory(2, T, torch.float64)
    prev = torch.cat([torch.zeros_like(actions[:, :1]), actions[:, :-1]], dim=1)  # a_{t-1}, zero at t = 0
    with torch.no_grad():
        state = model.initial_state(2, dtype=torch.float64)
        for t in range(T):
            step_action, state = model.step(states[:, t], prev[:, t], rtg[:, t], timesteps[:, t], state)
            w = slice(max(0, t - K + 1), t + 1)
            window, _ = model(states[:, w], actions[:, w], rtg[:, w], timesteps[:, w], prev_actions=prev[:, w])
            torch.testing.assert_close(step_action, window[:, -1], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("tokens", ["interleaved", "compact", "split"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_loss_ignores_right_padding_and_trains_every_parameter(backbone, tokens):
    from decision_rnn.data import Batch

    model = make_model(backbone, tokens)
    states, actions, rtg, timesteps = trajectory(3, 8)
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 2:] = False
    batch = Batch(states=states, actions=actions, returns_to_go=rtg, timesteps=timesteps, mask=mask)
    model.eval()
    loss = model.loss(batch)
    junk = Batch(states=torch.where(mask[..., None], states, 99.0), actions=torch.where(mask[..., None], actions, 0.7),
                 returns_to_go=torch.where(mask, rtg, -5e3), timesteps=timesteps, mask=mask)
    assert torch.allclose(model.loss(junk), loss), "padded steps leaked into the loss"
    model.train()
    model.loss(batch).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} received no gradient"


def test_bad_shapes_raise_clear_errors():
    model = make_model("mingru", "compact")
    states, actions, rtg, timesteps = trajectory(2, 4)
    with pytest.raises(ValueError, match="states must have shape"):
        model(states[..., :3], actions, rtg, timesteps)
    with pytest.raises(ValueError, match="returns_to_go must have shape"):
        model(states, actions, rtg[:, :2], timesteps)
    with pytest.raises(ValueError, match=r"prev_actions must have the shape of actions \(2, 4, 3\), got \(2, 3, 3\)"):
        model(states, actions, rtg, timesteps, prev_actions=actions[:, :3])
    with pytest.raises(ValueError, match="tokens must be one of"):
        DecisionRNN(ModelConfig(obs_dim=OBS, act_dim=ACT, tokens="pairs"))
    with pytest.raises(ValueError, match=r"activation must be one of \('gelu', 'relu'\), got 'swish'"):
        DecisionRNN(ModelConfig(obs_dim=OBS, act_dim=ACT, activation="swish"))


def test_activation_selects_the_mlp_nonlinearity():
    x = torch.linspace(-3, 3, 16).repeat(2, 1)
    for activation, fn in (("gelu", torch.nn.functional.gelu), ("relu", torch.relu)):
        mlp = make_model("mingru", "compact", activation=activation).backbone.blocks[0].mlp.eval()
        torch.testing.assert_close(mlp(x), mlp.proj(fn(mlp.fc(x))))


def test_timestep_init_std_scales_only_the_timestep_embedding():
    torch.manual_seed(0)
    unit = DecisionRNN(ModelConfig(obs_dim=11, act_dim=3, timestep_init_std=None))  # nn.Embedding's N(0, 1)
    torch.manual_seed(0)
    small = DecisionRNN(ModelConfig(obs_dim=11, act_dim=3, timestep_init_std=0.02))
    torch.testing.assert_close(small.embed_timestep.weight, 0.02 * unit.embed_timestep.weight)
    for (name, a), (_, b) in zip(unit.state_dict().items(), small.state_dict().items()):
        if name != "embed_timestep.weight":
            assert torch.equal(a, b), name


def test_block_init_std_reinitialises_every_backbone_linear():
    model = DecisionRNN(ModelConfig(obs_dim=11, act_dim=3, backbone="mingru", block_init_std=0.02))
    linears = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Linear)]
    assert linears
    for m in linears:
        assert abs(m.weight.std().item() - 0.02) < 0.003 and not m.bias.any()


@pytest.mark.parametrize("tokens", ["interleaved", "compact", "split"])
@pytest.mark.parametrize("backbone", ["mingru", "minlstm", "lru"])
def test_stream_chunks_with_carried_state_equal_the_whole_episode_forward(backbone, tokens):
    """Stream context's training chunks see exactly the state the agent has at rollout (float64)."""
    from decision_rnn.data import StreamSampler
    from tests.test_data import make_dataset

    data = make_dataset([37, 5, 60], obs_dim=OBS, act_dim=ACT, seed=4)
    data.observations = data.observations.astype("float64")
    data.actions = data.actions.astype("float64")
    data.returns_to_go = data.returns_to_go.astype("float64")
    model = make_model(backbone, tokens).double().eval()
    whole = {}
    with torch.no_grad():
        for e in range(data.num_episodes):
            rows = slice(data.offsets[e], data.offsets[e + 1])
            arrays = (data.observations, data.actions, data.returns_to_go, data.timesteps)
            pred, _ = model(*(torch.from_numpy(a[rows])[None] for a in arrays))
            whole[e] = pred[0]
        sampler = StreamSampler(data, chunk_len=7, batch_size=3, seed=0)
        sampler.next_row = data.offsets[sampler.episode].copy()  # start at step 0 so every state is exact
        checked = 0
        for _ in range(40):
            start, episode = sampler.next_row.copy(), sampler.episode.copy()
            batch = sampler.sample()
            pred, final = model(batch.states, batch.actions, batch.returns_to_go, batch.timesteps, batch.state,
                                batch.prev_actions)
            for b in range(3):
                n = int(batch.mask[b].sum())
                t0 = start[b] - data.offsets[episode[b]]
                torch.testing.assert_close(pred[b, :n], whole[episode[b]][t0:t0 + n], rtol=1e-9, atol=1e-9)
                checked += n
            sampler.advance(final)
        assert checked > 500  # every real step of 40 chunks x 3 streams was compared
