"""The deployable policy: acting step by step equals the parallel forward; bad input; real rollouts."""

import numpy as np
import pytest
import torch

from decision_rnn import DecisionRNN, ModelConfig, Policy
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


@pytest.mark.parametrize("runtime", ["torch", "fused"])  # fused: checks and bookkeeping in compiled code
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
    with pytest.raises(ValueError, match="first act"):
        policy.act(obs, reward=1.0)
    policy.act(obs)
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
    assert policy.steps == 1
    np.testing.assert_array_equal(policy.act(obs[1], 1.0), fresh.act(obs[1], 1.0))
    policy.reset(3000.0)
    huge = np.full(11, 3e38)  # finite in float32; their float32 sum overflows to inf. Accepted (no error),
    assert policy.act(huge).shape == (3,)  # though the network itself overflows on such input.
    policy.reset(3000.0)
    with pytest.raises(ValueError, match="beyond float32's range"):
        policy.act(np.full(11, 1e39))
    policy.act(obs[0])
    with pytest.raises(ValueError, match="beyond float32's range"):
        policy.act(obs[1], reward=1e39)
