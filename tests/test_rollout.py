"""Evaluation honesty: the returns and lengths `rollout` reports are gymnasium's own episode statistics."""

import importlib
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.wrappers.vector import RecordEpisodeStatistics

from decision_rnn import DecisionRNN, ModelConfig, Policy

rollout_module = importlib.import_module("decision_rnn.evaluation.rollout")  # the module, not the function


class FirstEpisodes(gym.vector.VectorWrapper):
    """RecordEpisodeStatistics around a vector env, keeping each sub-env's first finished episode (return, length)
    as gymnasium reports it; later episodes (after the autoreset) are not the rollout's."""

    def __init__(self, env: gym.vector.VectorEnv):
        super().__init__(RecordEpisodeStatistics(env))
        self.first: dict[int, tuple[float, int]] = {}

    def step(self, actions):
        out = self.env.step(actions)
        info = out[-1]
        for i in np.flatnonzero(info.get("_episode", [])):
            self.first.setdefault(int(i), (float(info["episode"]["r"][i]), int(info["episode"]["l"][i])))
        return out


@pytest.mark.parametrize("max_episode_steps", [None, 20])  # None: the hopper falls (terminated); 20: truncated
def test_rollout_returns_and_lengths_are_gymnasiums_episode_statistics(monkeypatch, max_episode_steps):
    torch.manual_seed(0)
    model = DecisionRNN(ModelConfig(obs_dim=11, act_dim=3, backbone="mingru", tokens="compact", embed_dim=16,
                                    n_layers=1))
    with torch.no_grad():  # small actions: the hopper stands for a while and falls at different steps
        model.action_head[0].weight.mul_(0.05)
        model.action_head[0].bias.mul_(0.05)
    wrapped = []

    def make_envs(env_id, num_envs, vectorization="sync"):
        limit = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
        wrapped.append(FirstEpisodes(gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=vectorization,
                                                  **limit)))
        return wrapped[-1]

    monkeypatch.setattr(rollout_module, "make_envs", make_envs)
    frame = rollout_module.rollout(Policy(model, runtime="torch"), "Hopper-v5", episodes=6, target_return=3600.0)
    stats = wrapped[0].first
    assert sorted(stats) == list(range(6))
    np.testing.assert_allclose(frame["return"], [stats[i][0] for i in range(6)], rtol=1e-12)
    np.testing.assert_array_equal(frame["length"], [stats[i][1] for i in range(6)])
    if max_episode_steps is None:
        assert frame["length"].nunique() > 1  # episodes ended at different steps: the autoreset rows are ignored
    else:
        assert (frame["length"] == max_episode_steps).all()


MINARI_ROOT = Path(os.environ.get("MINARI_DATASETS_PATH", "<unset>"))


@pytest.mark.skipif(not (MINARI_ROOT / "zoo" / "hopper" / "medium-v0").is_dir(),
                    reason="shared Minari datasets not found (see tests/conftest.py)")
def test_one_normalized_score_equal_to_minaris_where_the_dataset_carries_reference_returns():
    import minari

    from decision_rnn.data import load_dataset

    ours, theirs = load_dataset("zoo/hopper/medium-v0"), minari.load_dataset("zoo/hopper/medium-v0")
    assert theirs.storage.metadata.get("ref_min_score") is not None
    expected = 100 * minari.get_normalized_score(theirs, ours.episode_returns)
    np.testing.assert_allclose(ours.normalized_returns(), expected, rtol=1e-12)
    ref = (ours.ref_min_score, ours.ref_max_score)
    np.testing.assert_allclose(rollout_module.score(ours.env_id, ours.episode_returns, ref), expected, rtol=1e-12)
