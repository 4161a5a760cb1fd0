"""The fused (numba) step equals `DecisionRNN.step`: every recurrent backbone, both tokenizations,
batches whose episodes start at different times, long rollouts with trained-like (non-tiny) weights."""

import copy

import numpy as np
import pytest
import torch

from decision_rnn import DecisionRNN, ModelConfig, Policy
from decision_rnn.backbones import BACKBONES
from decision_rnn.fused import KINDS, FusedStep

RECURRENT = ["mingru", "minlstm", "lru"]


def random_model(backbone, tokens, embed_dim=32, n_layers=2, seed=0, activation="gelu", **options):
    torch.manual_seed(seed)
    model = DecisionRNN(ModelConfig(obs_dim=11, act_dim=3, backbone=backbone, tokens=tokens, embed_dim=embed_dim,
                                    n_layers=n_layers, max_timestep=50, activation=activation, **options)).eval()
    with torch.no_grad():  # move every parameter off its init, LayerNorms and biases included
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.set_normalization(np.linspace(-1, 1, 11), np.linspace(0.5, 2, 11))
    return model


@pytest.mark.parametrize(("tokens", "activation", "options"),
                         [("compact", "gelu", {}), ("interleaved", "gelu", {}), ("split", "gelu", {}),
                          ("compact", "relu", {}), ("compact", "relu", {"return_ln": True}),
                          ("split", "relu", {"return_ln": True}), ("compact", "relu", {"prev_action": False})])
@pytest.mark.parametrize("backbone", RECURRENT)
@pytest.mark.parametrize(("B", "blas_from"), [(1, 64), (6, 64), (6, 2)])  # the loop; (6, 2): BLAS (sgemm)
def test_fused_step_equals_torch_step_over_a_long_rollout(backbone, tokens, activation, options, B, blas_from):
    model = random_model(backbone, tokens, activation=activation, **options)
    fused = FusedStep(model)
    fused.blas_from = blas_from
    T = 300  # past max_timestep=50: the timestep clamp is exercised too
    rng = np.random.default_rng(0)
    state, fstate = model.initial_state(B), fused.initial_state(B)
    prev = np.zeros((B, 3), np.float32)
    rtg = np.array([3600.0, 100.0, -50.0, 2000.0, 0.0, 10.0], np.float32)[:B]
    t = np.array([7, 0, 0, 3, 0, 12], np.int64)[:B]  # batch elements at different points of their episodes
    worst = 0.0
    for _ in range(T):
        obs = rng.standard_normal((B, 11)).astype(np.float32) * 3
        action, fstate = fused(obs, prev, rtg, t, fstate)
        with torch.no_grad():
            expected, state = model.step(*map(torch.from_numpy, (obs, prev, rtg, t)), state)
        worst = max(worst, np.abs(action - expected.numpy()).max())
        for s, f in zip(state, fused.to_torch_state(fstate)):
            torch.testing.assert_close(f, s, atol=2e-5, rtol=2e-5)
        prev, t, rtg = action, t + 1, rtg - rng.uniform(0, 5, B).astype(np.float32)
    assert worst < 1e-5, worst


def test_fused_minlstm_gates_match_torch_where_the_sigmoids_saturate():
    """Gate logits out to about ±3000: one or both sigmoids below float32's range (the log-space branch),
    one saturated at 1, both near 1. Scaling the in-projection's gate rows drives the logits there."""
    model = random_model("minlstm", "compact", n_layers=1)
    mixer = model.backbone.blocks[0].mixer
    H = mixer.hidden
    with torch.no_grad():
        scale = torch.linspace(-2000, 2000, H)
        mixer.in_proj.weight[:H] *= scale[:, None]  # k_f from strongly negative to strongly positive
        mixer.in_proj.weight[H:2 * H] *= scale.flip(0)[:, None]  # k_i: mirrored, with both negative somewhere
        mixer.in_proj.weight[:2 * H] *= 1 + (torch.arange(2 * H) % 3 == 0)[:, None]  # some logits 2x further out
    fused = FusedStep(model)
    rng = np.random.default_rng(1)
    state, fstate = model.initial_state(2), fused.initial_state(2)
    prev, rtg, t = np.zeros((2, 3), np.float32), np.array([3600.0, 10.0], np.float32), np.zeros(2, np.int64)
    for _ in range(20):
        obs = rng.standard_normal((2, 11)).astype(np.float32)
        action, fstate = fused(obs, prev, rtg, t, fstate)
        with torch.no_grad():
            expected, state = model.step(*map(torch.from_numpy, (obs, prev, rtg, t)), state)
        np.testing.assert_allclose(action, expected.numpy(), atol=1e-5)
        for s, f in zip(state, fused.to_torch_state(fstate)):
            torch.testing.assert_close(f, s, atol=2e-5, rtol=2e-5)
        prev, t = action, t + 1


@pytest.mark.parametrize("backbone", RECURRENT)
def test_policy_fused_runtime_acts_like_torch_on_a_logged_episode(embedded, backbone):
    model = random_model(backbone, "compact")
    model.set_normalization(embedded.obs_mean, embedded.obs_std)
    policies = [Policy(model, runtime=r) for r in ("torch", "fused")]
    obs = embedded.observations[:200]
    rewards = embedded.rewards[:200]
    actions = []
    for policy in policies:
        policy.reset(3000.0)
        actions.append(np.stack([policy.act(o, None if i == 0 else rewards[i - 1]) for i, o in enumerate(obs)]))
    np.testing.assert_allclose(actions[1], actions[0], atol=1e-5)


@pytest.mark.parametrize("backbone", sorted(set(BACKBONES) - set(KINDS)))
def test_fused_runtime_refuses_other_backbones_and_a_gpu(backbone):
    with pytest.raises(ValueError, match=f"recurrent backbones.*not '{backbone}'.*onnxruntime"):
        FusedStep(DecisionRNN(ModelConfig(obs_dim=11, act_dim=3, backbone=backbone, embed_dim=16, n_layers=1)))
    with pytest.raises(ValueError, match="runs on the CPU"):
        Policy(random_model("mingru", "compact"), runtime="fused", device="cuda")


@pytest.mark.parametrize(("tokens", "options"), [("compact", {"return_ln": True}), ("interleaved", {}),
                                                 ("split", {"prev_action": False})])
@pytest.mark.parametrize("backbone", RECURRENT)
def test_every_parameter_and_buffer_is_read_by_the_fused_step_by_name(backbone, tokens, options):
    """The weight table reads the model by name: it reads every parameter and buffer, and each one changes the
    actions (a layer the table missed, or one read into the wrong slot, would not)."""
    model = random_model(backbone, tokens, n_layers=2, **options)
    names = set(model.state_dict())
    assert FusedStep(model).used == names
    fused = FusedStep(model)
    base = rollout_actions(fused, fused.initial_state(2), B=2, T=6)
    for name in sorted(names):
        changed = copy.deepcopy(model)
        with torch.no_grad():  # not a constant: LayerNorms would cancel a constant shift of a residual branch
            tensor = changed.state_dict(keep_vars=True)[name]
            tensor.add_(0.3 * torch.rand(tensor.shape, generator=torch.Generator().manual_seed(1)))
        other = FusedStep(changed)
        assert not np.allclose(rollout_actions(other, other.initial_state(2), B=2, T=6), base, atol=1e-6), name


def test_vectorized_exp_is_accurate_on_the_nonpositive_half_line():
    from decision_rnn.fused import exp_nonpositive

    x = np.concatenate([-np.logspace(-8, np.log10(80), 20_000), [0.0, -1e4, -np.inf]]).astype(np.float32)
    out = x.copy()
    exp_nonpositive(out)
    exact = np.exp(x.astype(np.float64))
    body = x > -80
    np.testing.assert_allclose(out[body], exact[body], rtol=3e-7, atol=0)
    assert out[x == 0] == 1.0
    assert np.all((out[~body] >= 0) & (out[~body] < 1e-34))  # far tail: tiny, never negative or NaN


def rounded_to_half(model):
    """A copy whose matrix-vector products' matrices (every nn.Linear weight but the return embedding's, a
    column the step reads as a vector) are rounded to float16."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and m is not model.embed_return:
                m.weight.copy_(m.weight.half().float())
    return model


def rollout_actions(step, initial_state, B=4, T=120, seed=0):
    """Actions of `step` (FusedStep or a torch model's step on numpy) over T random steps."""
    rng = np.random.default_rng(seed)
    state, prev = initial_state, np.zeros((B, 3), np.float32)
    rtg, t = np.linspace(3600, 0, B).astype(np.float32), np.zeros(B, np.int64)
    actions = []
    for _ in range(T):
        obs = rng.standard_normal((B, 11)).astype(np.float32) * 3
        action, state = step(obs, prev, rtg, t, state)
        actions.append(action.copy())
        prev, t, rtg = action, t + 1, rtg - 3
    return np.stack(actions)


def torch_step(model):
    def step(obs, prev, rtg, t, state):
        with torch.no_grad():
            action, state = model.step(*map(torch.from_numpy, (obs, prev, rtg, t)), state)
        return action.numpy(), state
    return step


@pytest.mark.parametrize("tokens", ["compact", "interleaved"])
@pytest.mark.parametrize("backbone", ["mingru", "minlstm"])
def test_fused_float16_weights_equal_torch_with_rounded_matrices(backbone, tokens):
    """float16 weights change only the matrices' values: the step equals the float32 model with them rounded
    (minGRU/minLSTM: the packed matrices are the modules' weights), and differs from the unrounded one."""
    model = random_model(backbone, tokens)
    half = FusedStep(model, weights="float16")
    assert half.packed[False][1].dtype == np.uint16
    got = rollout_actions(half, half.initial_state(4))
    rounded = rounded_to_half(model)
    np.testing.assert_allclose(got, rollout_actions(torch_step(rounded), rounded.initial_state(4)), atol=1e-5)
    exact = rollout_actions(torch_step(model), model.initial_state(4))
    assert 1e-5 < np.abs(got - exact).max() < 0.05  # the rounding shows, and stays small


@pytest.mark.parametrize("backbone", RECURRENT)
def test_fused_float16_loop_and_blas_agree(backbone):
    """BLAS has no float16 product; from `blas_from` rows it reads float32 copies of the same rounded values."""
    model = random_model(backbone, "compact")
    loop, blas = FusedStep(model, weights="float16"), FusedStep(model, weights="float16")
    blas.blas_from = 1
    np.testing.assert_allclose(rollout_actions(loop, loop.initial_state(4)),
                               rollout_actions(blas, blas.initial_state(4)), atol=1e-5)


def test_float16_weights_refuse_other_runtimes_and_out_of_range_weights():
    model = random_model("mingru", "compact")
    with pytest.raises(ValueError, match="option of runtime='fused'"):
        Policy(model, runtime="torch", weights="float16")
    with pytest.raises(ValueError, match="weights must be one of"):
        FusedStep(model, weights="int8")
    with pytest.raises(ValueError, match="weights must be 'float32' or 'float16'"):
        Policy(model, runtime="torch", weights="int8")
    with torch.no_grad():
        model.backbone.blocks[0].mlp.fc.weight[0, 0] = 1e5
    with pytest.raises(ValueError, match="beyond float16's range"):
        FusedStep(model, weights="float16")
    FusedStep(model)  # float32 holds it


def test_policy_with_float16_weights_acts_close_to_float32(embedded):
    model = random_model("mingru", "compact")
    model.set_normalization(embedded.obs_mean, embedded.obs_std)
    actions = []
    for weights in ("float32", "float16"):
        policy = Policy(model, runtime="fused", weights=weights)
        policy.reset(3000.0)
        obs, rewards = embedded.observations[:100], embedded.rewards[:100]
        actions.append(np.stack([policy.act(o, None if i == 0 else rewards[i - 1]) for i, o in enumerate(obs)]))
    assert 1e-5 < np.abs(actions[1] - actions[0]).max() < 0.05
