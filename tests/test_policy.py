"""The deployable policy: acting step by step equals the parallel forward; bad input; real rollouts."""

import numpy as np
import pytest
import torch

from decision_rnn import DecisionRNN, ModelConfig, Policy
from decision_rnn.backbones import BACKBONES as ALL_BACKBONES
from decision_rnn.evaluation import rollout

BACKBONES = ["mingru", "minlstm", "lru", "transformer"]


def make_policy(dataset, backbone="mingru", tokens="interleaved", runtime="torch", **options):
    torch.manual_seed(0)
    model = DecisionRNN(ModelConfig(obs_dim=dataset.obs_dim, act_dim=dataset.act_dim, backbone=backbone,
                                    tokens=tokens, embed_dim=16, n_layers=2, context_len=10, **options))
    model.set_normalization(dataset.obs_mean, dataset.obs_std)
    return Policy(model, meta={"env_id": dataset.env_id}, runtime=runtime)


@pytest.mark.parametrize(("backbone", "runtime"), [(b, r) for b in BACKBONES for r in ("torch", "onnxruntime", "fused")
                                                  if not (b == "transformer" and r == "fused")])
@pytest.mark.parametrize("tokens", ["interleaved", "compact", "split"])
def test_act_reproduces_parallel_forward_on_a_logged_episode(embedded, backbone, tokens, runtime):
    assert_act_reproduces_parallel_forward(embedded, make_policy(embedded, backbone, tokens, runtime))


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "fused"])
@pytest.mark.parametrize("options", [{"return_ln": True}, {"prev_action": False}])
def test_act_with_token_options_reproduces_parallel_forward(embedded, runtime, options):
    assert_act_reproduces_parallel_forward(embedded, make_policy(embedded, "minlstm", "compact", runtime, **options))


def assert_act_reproduces_parallel_forward(embedded, policy):
    """Act through the first logged episode (its observations and rewards), then run the model's parallel
    forward on what was acted: the actions must agree (within K steps for the transformer)."""
    start, end = embedded.offsets[0], embedded.offsets[1]
    K = policy.model.config.context_len
    T = K if policy.model.config.backbone == "transformer" else min(end - start, 200)
    obs = embedded.observations[start:start + T]
    rewards = embedded.rewards[start:start + T]
    target = 3000.0
    policy.reset(target)
    acted = np.stack([policy.act(obs[t], None if t == 0 else rewards[t - 1]) for t in range(T)])
    rtg = target - np.concatenate([[0.0], np.cumsum(rewards[:-1])])
    with torch.no_grad():
        parallel, _ = policy.model(torch.as_tensor(obs)[None], torch.as_tensor(acted)[None],
                                   torch.as_tensor(rtg, dtype=torch.float32)[None], torch.arange(T)[None])
    np.testing.assert_allclose(acted, parallel[0].numpy(), atol=1e-4, rtol=1e-4)


def test_batched_act_matches_single(embedded):
    policy = make_policy(embedded)
    obs = embedded.observations[:4]
    policy.reset(3000.0, batch_size=4)
    batched = policy.act(obs)
    for i in range(4):
        policy.reset(3000.0)
        np.testing.assert_allclose(policy.act(obs[i]), batched[i], atol=1e-6)


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "fused"])  # fused: checks and bookkeeping compiled
def test_bad_input_gives_clear_errors(embedded, runtime):
    policy = make_policy(embedded, runtime=runtime)
    obs = embedded.observations[0]
    with pytest.raises(RuntimeError, match="reset"):
        policy.act(obs)
    policy.reset(3000.0)
    with pytest.raises(ValueError, match=r"obs must have shape \(11,\) or \(1, 11\).*got \(5,\)"):
        policy.act(obs[:5])
    with pytest.raises(ValueError, match="NaN or inf"):
        policy.act(np.full_like(obs, np.nan))
    with pytest.raises(TypeError, match="real number"):
        policy.act(np.array(["a"] * 11))
    policy.act(obs, reward=1.0)  # the first act's reward is ignored: nothing was received yet
    with pytest.raises(ValueError, match="needs the reward"):
        policy.act(obs)
    for bad_reward in (float("nan"), np.inf, np.array([-np.inf])):  # Python float, numpy scalar, array
        with pytest.raises(ValueError, match="reward contains NaN or inf"):
            policy.act(obs, reward=bad_reward)
    with pytest.raises(ValueError, match="obs contains NaN or inf"):
        policy.act(np.where(np.arange(11) == 3, np.inf, obs), reward=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        policy.reset(3000.0, batch_size=0)
    with pytest.raises(ValueError, match=r"one per batch element \(2\), got shape \(3,\)"):
        policy.reset([3000.0, 2000.0, 1000.0], batch_size=2)
    with pytest.raises(ValueError, match="unknown runtime"):
        Policy(policy.model, runtime="tensorrt")
    with pytest.raises(ValueError, match=r"done must be a boolean array of shape \(1,\)"):
        policy.reset_done(np.array([0]))
    with pytest.raises(ValueError, match=r"row indices must lie in \[0, 1\)"):
        policy.reset(3000.0, indices=[1])
    with pytest.raises(ValueError, match="knows no env"):
        Policy(policy.model, runtime=runtime).reset()


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "fused"])
def test_changing_a_returned_action_does_not_change_the_next_step(embedded, runtime):
    """The action is the caller's: adding noise to it in place must not become the policy's a_{t-1}."""
    policies = [make_policy(embedded, tokens="compact", runtime=runtime) for _ in range(2)]
    actions = []
    for i, policy in enumerate(policies):
        policy.reset(3000.0)
        action = policy.act(embedded.observations[0])
        action += 5.0 * i  # only the second caller changes its copy
        actions.append(policy.act(embedded.observations[1], reward=1.0))
    np.testing.assert_array_equal(actions[0], actions[1])


def test_scores_use_the_given_reference_returns_and_are_nan_without_any():
    from decision_rnn.evaluation.rollout import score

    np.testing.assert_allclose(score("Hopper-v5", np.array([10.0, 110.0]), (10.0, 210.0)), [0.0, 50.0])
    np.testing.assert_allclose(score("Hopper-v5", np.array([-20.272305]), None), [0.0], atol=1e-9)  # D4RL's
    assert np.isnan(score("Pusher-v5", np.array([1.0, 2.0]), (None, None))).all()  # no reference anywhere


def test_two_episode_evaluation_gives_finite_normalized_scores(embedded):
    frame = rollout(make_policy(embedded), embedded.env_id, episodes=2, target_return=3600.0, seed=0)
    assert len(frame) == 2
    assert np.isfinite(frame.normalized_score).all()
    assert (frame.length >= 1).all() and (frame.length <= 1000).all()
    # an untrained policy falls quickly: the episodes end at different times and are frozen there
    ref = 100 * (frame["return"] - (-20.272305)) / (3234.3 - (-20.272305))
    np.testing.assert_allclose(frame.normalized_score, ref, rtol=1e-6)


@pytest.mark.parametrize("runtime", ["torch", "fused"])
def test_rejected_input_changes_nothing_and_huge_finite_obs_is_accepted(embedded, runtime):
    """The finite check sums first: a sum that overflows (all terms finite) must not be refused, while a
    value beyond float32's range (inf once cast) must be."""
    policy, fresh = make_policy(embedded, runtime=runtime), make_policy(embedded, runtime=runtime)
    obs = embedded.observations[:3]
    for p in (policy, fresh):
        p.reset(3000.0)
        p.act(obs[0])
    with pytest.raises(ValueError):
        policy.act(obs[1], reward=float("nan"))
    with pytest.raises(ValueError, match="obs contains NaN"):  # a good reward with a bad obs: not spent
        policy.act(np.where(np.arange(11) == 0, np.nan, obs[1]), reward=5.0)
    assert policy.timesteps.tolist() == [1]
    np.testing.assert_array_equal(policy.act(obs[1], 1.0), fresh.act(obs[1], 1.0))
    policy.reset(3000.0)
    huge = np.full(11, 3e38)  # finite in float32; their float32 sum overflows to inf. Accepted (no error), and
    assert np.isfinite(policy.act(huge)).all()  # the model saturates the normalized observation (OBS_BOUND)
    policy.reset(3000.0)
    with pytest.raises(ValueError, match="beyond float32's range"):
        policy.act(np.full(11, 1e39))
    policy.act(obs[0])
    with pytest.raises(ValueError, match="beyond float32's range"):
        policy.act(obs[1], reward=1e39)


def small_model(backbone="mingru", tokens="compact", **options):
    torch.manual_seed(0)
    return DecisionRNN(ModelConfig(obs_dim=11, act_dim=3, backbone=backbone, tokens=tokens, embed_dim=16, n_layers=2,
                                   context_len=5, **options))


@pytest.mark.parametrize("backbone", sorted(ALL_BACKBONES))
def test_the_default_runtime_is_the_fastest_available(backbone, monkeypatch):
    """fused where it runs the backbone (the recurrent ones it compiles), else onnxruntime, else torch."""
    import importlib.util
    import sys

    from decision_rnn.fused import KINDS

    model = small_model(backbone)
    assert Policy(model).runtime == ("fused" if backbone in KINDS else "onnxruntime")
    monkeypatch.setitem(sys.modules, "decision_rnn.fused", None)  # numba not installed: import fails
    assert Policy(model).runtime == "onnxruntime"
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else
                        find_spec(name, *a))
    assert Policy(model).runtime == "torch"


def test_unsupported_backbones_fall_back_and_the_fused_runtime_refuses_them():
    from decision_rnn.fused import FusedStep, supports

    model = small_model("transformer")
    assert not supports(model.config) and Policy(model).runtime != "fused"
    with pytest.raises(ValueError, match="runtime='fused' supports the recurrent backbones.*not 'transformer'"):
        FusedStep(model)
    with pytest.raises(ValueError, match="not 'transformer'"):
        Policy(model, runtime="fused")


def test_policy_works_on_a_copy_and_never_changes_the_callers_model():
    model = small_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for runtime in ("torch", "onnxruntime", "fused"):
        policy = Policy(model, runtime=runtime)
        assert policy.model is not model and not policy.model.training
        assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    policy = Policy(model, runtime="torch")
    policy.reset(100.0)
    first = policy.act(np.ones(11, np.float32))
    with torch.no_grad():
        model.embed_state.weight.add_(1.0)  # the caller trains on: the policy keeps what it was given
    policy.reset(100.0)
    np.testing.assert_array_equal(policy.act(np.ones(11, np.float32)), first)


def test_reset_without_a_target_takes_the_envs_default_and_the_first_reward_is_ignored():
    from decision_rnn.evaluation import default_target_return

    model = small_model()
    policy = Policy(model, meta={"env_id": "Walker2d-v5"}, runtime="torch")
    policy.reset(batch_size=2)
    assert policy.default_target() == default_target_return("Walker2d-v5") == 5000.0
    np.testing.assert_array_equal(policy._rtg, [5000.0, 5000.0])
    obs = np.random.default_rng(0).standard_normal((2, 11)).astype(np.float32)
    with_zero = policy.act(obs, 0.0)
    policy.reset(5000.0, batch_size=2)
    np.testing.assert_array_equal(policy.act(obs, np.array([7.0, -3.0])), with_zero)  # ignored, as 0.0
    policy.reset(5000.0, batch_size=2)
    np.testing.assert_array_equal(policy.act(obs), with_zero)
    np.testing.assert_array_equal(policy._rtg, [5000.0, 5000.0])


@pytest.mark.parametrize(("backbone", "runtime"), [("mingru", r) for r in ("torch", "onnxruntime", "fused")]
                         + [("transformer", r) for r in ("torch", "onnxruntime")])
def test_resetting_some_rows_restarts_them_alone(runtime, backbone):
    """Rows 1 and 3 of four end their episodes at step 4 and restart (at another target); afterwards they act
    exactly as fresh policies on their new episodes, and rows 0 and 2 as if nothing had happened."""
    model = small_model(backbone)
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((10, 4, 11)).astype(np.float32)
    rewards = rng.uniform(0, 3, (10, 4)).astype(np.float32)
    done = np.array([False, True, False, True])
    policy, untouched = Policy(model, runtime=runtime), Policy(model, runtime=runtime)
    fresh = [Policy(model, runtime=runtime) for _ in range(2)]
    policy.reset(300.0, batch_size=4)
    untouched.reset(300.0, batch_size=4)
    for t in range(10):
        if t == 4:
            policy.reset_done(done, target_return=[200.0, 100.0])  # one per restarted row
            for f, target in zip(fresh, (200.0, 100.0)):
                f.reset(target)
        reward = None if t == 0 else rewards[t - 1]  # at t = 4 rows 1, 3 get their last episode's final reward
        action, kept = policy.act(obs[t], reward), untouched.act(obs[t], reward)
        np.testing.assert_allclose(action[~done], kept[~done], atol=1e-6)
        if t >= 4:
            assert policy.timesteps.tolist() == [t + 1, t - 3, t + 1, t - 3]
            for f, row in zip(fresh, np.flatnonzero(done)):
                np.testing.assert_allclose(action[row], f.act(obs[t, row], None if t == 4 else rewards[t - 1, row]),
                                           atol=1e-5)
    policy.reset(50.0, indices=[0])  # indices instead of a mask; the batch size stays
    assert policy.batch_size == 4 and policy.timesteps.tolist() == [0, 6, 10, 6] and policy._rtg[0] == 50.0


@pytest.mark.parametrize("backbone", ["mingru", "minlstm", "lru", "transformer"])
def test_huge_observations_saturate_alike_in_every_runtime(backbone, embedded):
    """Finite observations far beyond the data (1e20, float32's largest) overflow nothing: the model clamps the
    normalized observation to OBS_BOUND, so every runtime gives the same finite action and state, and the episode
    goes on finitely. inf is refused by all three, changing nothing."""
    from decision_rnn.config import OBS_BOUND

    model = small_model(backbone, return_ln=True)
    model.set_normalization(embedded.obs_mean, embedded.obs_std)
    runtimes = ["torch", "onnxruntime"] + (["fused"] if backbone != "transformer" else [])
    policies = [Policy(model, runtime=r) for r in runtimes]
    rewards = np.random.default_rng(0).uniform(0, 3, 12)
    normal = embedded.observations[:12]
    huge = normal.copy()
    huge[2, 3], huge[3, :] = 1e20, -1e20
    huge[5, 0], huge[6, 1] = np.finfo(np.float32).max, -np.finfo(np.float32).max
    actions = []
    for policy in policies:
        policy.reset(3600.0)
        acted = []
        for t, o in enumerate(huge):
            acted.append(policy.act(o, float(rewards[t]) if t else None))
            if t == 7:
                with pytest.raises(ValueError, match="NaN or inf"):
                    policy.act(np.where(np.arange(11) == 2, np.inf, o), 1.0)
        actions.append(np.stack(acted))
        state = policy._state if policy.runtime != "torch" else [s.numpy() for s in policy._state]
        assert all(np.isfinite(s).all() for s in state)
    assert np.isfinite(actions[0]).all()
    for other in actions[1:]:
        np.testing.assert_allclose(other, actions[0], atol=1e-4)
    model.eval()
    with torch.no_grad():  # saturated: a larger value acts as the bound itself
        at_bound = normal[2:3].copy()
        at_bound[0, 3] = embedded.obs_mean[3] + OBS_BOUND * embedded.obs_std[3] * 1.001
        step = [model.step(torch.as_tensor(o), torch.zeros(1, 3), torch.tensor([3600.0]), torch.tensor([0]),
                           model.initial_state(1))[0] for o in (at_bound, huge[2:3])]
    torch.testing.assert_close(step[0], step[1])
