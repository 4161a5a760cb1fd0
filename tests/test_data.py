"""Offline-data layer: conventions against a plain loop, loaders, samplers, scores, and every input error."""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import h5py
import minari
import numpy as np
import pytest
import torch

from decision_rnn.data import (
    EMBEDDED_DATASET,
    OBS_STD_FLOOR,
    REF_SCORES,
    Batch,
    DatasetNotFoundError,
    EpisodeSampler,
    StreamSampler,
    TrajectoryDataset,
    WindowSampler,
    from_minari,
    load_dataset,
    normalized_score,
    ref_scores,
)

MINARI_ROOT = pathlib.Path(os.environ.get("MINARI_DATASETS_PATH", "<unset>"))
requires_shared = pytest.mark.skipif(
    not (MINARI_ROOT / "zoo" / "hopper" / "mixed-v0").is_dir(),
    reason=f"shared Minari datasets not found (MINARI_DATASETS_PATH={MINARI_ROOT}); see tests/conftest.py",
)


# --- helpers -----------------------------------------------------------------------------------
def make_dataset(lengths, obs_dim=3, act_dim=2, seed=0) -> TrajectoryDataset:
    """Synthetic episodes; observation column 0 is the row index, so a sample tells where it came from."""
    rng = np.random.default_rng(seed)
    n = int(sum(lengths))
    observations = rng.normal(size=(n, obs_dim)).astype(np.float32)
    observations[:, 0] = np.arange(n)
    ends = np.cumsum(lengths) - 1
    terminations, truncations = np.zeros(n, bool), np.zeros(n, bool)
    terminations[ends[::2]] = True
    truncations[ends[1::2]] = True
    return TrajectoryDataset(
        observations=observations,
        actions=rng.uniform(-1, 1, size=(n, act_dim)),
        rewards=rng.normal(1.0, 2.0, size=n),
        terminations=terminations,
        truncations=truncations,
        offsets=np.concatenate([[0], np.cumsum(lengths)]),
        env_id="Hopper-v5",
        ids=["synthetic"],
    )


def plain_loop_conventions(rewards: np.ndarray) -> tuple[list[float], list[int]]:
    """Return-to-go and timesteps of one episode, the obvious way."""
    rtg, timesteps = [], []
    for t in range(len(rewards)):
        rtg.append(sum(float(r) for r in rewards[t:]))
        timesteps.append(t)
    return rtg, timesteps


def write_d4rl(path, lengths, *, obs_dim=11, act_dim=3, trailing=0, drop=(), attrs=None, seed=0):
    """A D4RL-format file: episodes of ``lengths``, even ones terminated, odd ones timed out; then
    ``trailing`` steps with no end flag. Returns the arrays written."""
    rng = np.random.default_rng(seed)
    n = sum(lengths) + trailing
    data = {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "next_observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": np.zeros(n, bool),
    }
    ends = np.cumsum(lengths, dtype=np.int64) - 1
    data["terminals"][ends[::2]] = True
    data["timeouts"][ends[1::2]] = True
    with h5py.File(path, "w") as file:
        for key, value in data.items():
            if key not in drop:
                file[key] = value
        file.attrs.update(attrs or {})
    return data


@pytest.fixture
def embedded_copy(tmp_path) -> pathlib.Path:
    """A writable copy of the embedded dataset, under a Minari root of its own."""
    target = tmp_path / "root" / EMBEDDED_DATASET.name
    shutil.copytree(EMBEDDED_DATASET, target)
    return target


@pytest.fixture(scope="module")
def hopper_mixed():
    return minari.load_dataset("zoo/hopper/mixed-v0"), load_dataset("zoo/hopper/mixed-v0")


# --- conventions -------------------------------------------------------------------------------
def test_conventions_match_plain_loop():
    data = make_dataset([5, 1, 12, 30, 2])
    assert data.num_episodes == 5 and data.num_steps == 50
    np.testing.assert_array_equal(data.episode_lengths, [5, 1, 12, 30, 2])
    for e in range(data.num_episodes):
        episode = data.episode(e)
        rtg, timesteps = plain_loop_conventions(episode["rewards"])
        np.testing.assert_allclose(episode["returns_to_go"], rtg, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(episode["timesteps"], timesteps)
        assert data.returns_to_go[data.offsets[e]] == np.float32(data.episode_returns[e])
        np.testing.assert_allclose(data.episode_returns[e], sum(episode["rewards"].astype(float)), rtol=1e-9)
    for name, dtype in [("observations", np.float32), ("actions", np.float32), ("rewards", np.float32),
                        ("returns_to_go", np.float32), ("timesteps", np.int64), ("terminations", bool),
                        ("truncations", bool), ("offsets", np.int64)]:  # fmt: skip
        assert getattr(data, name).dtype == dtype, name
    np.testing.assert_allclose(data.obs_mean, data.observations.mean(0), rtol=1e-5)
    np.testing.assert_allclose(data.obs_std, data.observations.std(0), rtol=1e-5)


def test_obs_std_has_a_floor():
    data = make_dataset([4, 4])
    data = TrajectoryDataset(**{**_core(data), "observations": np.ones((8, 3))})
    np.testing.assert_array_equal(data.obs_std, np.float32(OBS_STD_FLOOR))


def _core(data: TrajectoryDataset) -> dict:
    names = ("observations", "actions", "rewards", "terminations", "truncations", "offsets", "env_id", "ids")
    return {name: getattr(data, name) for name in names}


@requires_shared
def test_minari_totals_and_conventions_on_real_data(hopper_mixed):
    reference, data = hopper_mixed
    assert (data.num_episodes, data.num_steps) == (reference.total_episodes, reference.total_steps)
    assert data.env_id == "Hopper-v5" and data.ids == ("zoo/hopper/mixed-v0",)
    assert (data.obs_dim, data.act_dim, data.max_episode_length) == (11, 3, 1000)
    assert data.normalized_returns().mean() == pytest.approx(16.8, abs=0.05)  # shared/README.md
    for e, episode in zip([0, 7, 1999], reference.iterate_episodes([0, 7, 1999]), strict=True):
        mine = data.episode(e)
        np.testing.assert_array_equal(mine["observations"], episode.observations[:-1])  # first T of T+1
        for key in ("actions", "rewards", "terminations", "truncations"):
            np.testing.assert_array_equal(mine[key], getattr(episode, key))
        rtg, timesteps = plain_loop_conventions(episode.rewards)
        np.testing.assert_allclose(mine["returns_to_go"], rtg, rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(mine["timesteps"], timesteps)


@requires_shared
def test_fast_reader_equals_iterate_episodes_on_a_filtered_dataset(hopper_mixed):
    reference, _ = hopper_mixed
    subset = minari.MinariDataset(reference.storage, episode_indices=np.array([9, 3, 1500, 2199]))
    fast, slow = from_minari(subset), from_minari(subset, fast=False)
    for name in ("observations", "actions", "rewards", "terminations", "truncations", "offsets"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)
    np.testing.assert_array_equal(fast.episode_ids, [9, 3, 1500, 2199])


@requires_shared
def test_combined_datasets_are_concatenated():
    medium, expert = minari.load_dataset("zoo/hopper/medium-v0"), minari.load_dataset("zoo/hopper/expert-v0")
    data = load_dataset(["zoo/hopper/medium-v0", "zoo/hopper/expert-v0"])
    assert data.num_episodes == medium.total_episodes + expert.total_episodes
    assert data.num_steps == medium.total_steps + expert.total_steps
    assert data.ids == ("zoo/hopper/medium-v0", "zoo/hopper/expert-v0")
    first_expert = medium.total_episodes
    assert data.episode_source[first_expert - 1] == 0 and data.episode_source[first_expert] == 1
    assert data.episode_ids[first_expert] == 0
    first_expert_episode = next(expert.iterate_episodes([0]))
    np.testing.assert_array_equal(data.episode(first_expert)["actions"], first_expert_episode.actions)
    assert data.timesteps[data.offsets[first_expert]] == 0
    np.testing.assert_allclose(data.obs_mean, data.observations.mean(0, dtype=np.float64), rtol=1e-5)


def test_embedded_dataset_loads_with_us_and_with_minari():
    data = load_dataset(EMBEDDED_DATASET)
    reference = minari.MinariDataset(EMBEDDED_DATASET / "data")
    assert (data.num_episodes, data.num_steps) == (reference.total_episodes, reference.total_steps)
    assert data.num_episodes == 40 and data.env_id == "Hopper-v5"
    assert (data.ref_min_score, data.ref_max_score) == REF_SCORES["hopper"]
    normalized = data.normalized_returns()
    assert normalized.min() < 35 and normalized.max() > 100  # a spread of returns
    fast, slow = from_minari(reference), from_minari(reference, fast=False)
    for name in ("observations", "actions", "rewards", "terminations", "truncations", "offsets"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)


def test_minari_id_resolves_through_minari_datasets_path(embedded_copy, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(embedded_copy.parent))
    data = load_dataset(embedded_copy.name)
    assert data.num_episodes == 40 and data.ids == (embedded_copy.name,)
    assert load_dataset(embedded_copy / "data").num_steps == data.num_steps  # the data dir itself works too


# --- D4RL files --------------------------------------------------------------------------------
def test_d4rl_round_trip(tmp_path, monkeypatch):
    path = tmp_path / "hopper-medium-v2.hdf5"
    written = write_d4rl(path, [4, 6, 3], trailing=2)
    data = load_dataset(path)
    assert data.env_id == "Hopper-v5" and data.ids == (str(path.resolve()),)
    monkeypatch.chdir(tmp_path)  # a relative path names the same dataset (a run resumes from anywhere)
    assert load_dataset(path.name).ids == data.ids
    assert (data.num_episodes, data.num_steps, data.max_episode_length) == (3, 13, 1000)  # trailing 2 dropped
    np.testing.assert_array_equal(data.offsets, [0, 4, 10, 13])
    np.testing.assert_array_equal(data.observations, written["observations"][:13])  # not next_observations
    np.testing.assert_array_equal(data.actions, written["actions"][:13])
    np.testing.assert_array_equal(data.rewards, written["rewards"][:13])
    np.testing.assert_array_equal(data.terminations, written["terminals"][:13])
    np.testing.assert_array_equal(data.truncations, written["timeouts"][:13])
    assert data.terminations[3] and data.truncations[9] and not data.truncations[3]
    assert (data.ref_min_score, data.ref_max_score) == REF_SCORES["hopper"]
    np.testing.assert_array_equal(data.timesteps, [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 0, 1, 2])


@pytest.mark.parametrize(
    ("file_name", "attrs", "env_id", "expected"),
    [
        ("walker2d-medium-replay-v2.hdf5", {}, None, "Walker2d-v5"),
        ("data.hdf5", {"env_name": "halfcheetah-expert-v2"}, None, "HalfCheetah-v5"),
        ("data.hdf5", {"env_id": "ant-medium-v2"}, None, "Ant-v5"),
        ("hopper-medium-v2.hdf5", {}, "Walker2d-v4", "Walker2d-v4"),  # a gymnasium id is kept
        ("data.hdf5", {}, "halfcheetah-medium-v2", "HalfCheetah-v5"),
    ],
)
def test_d4rl_env_id_mapping(tmp_path, file_name, attrs, env_id, expected):
    write_d4rl(tmp_path / file_name, [3, 3], attrs=attrs)
    assert load_dataset(tmp_path / file_name, env_id=env_id).env_id == expected


def test_d4rl_unknown_env_and_missing_key(tmp_path):
    write_d4rl(tmp_path / "data.hdf5", [3])
    with pytest.raises(ValueError, match=r"cannot tell the environment.*pass env_id"):
        load_dataset(tmp_path / "data.hdf5")
    write_d4rl(tmp_path / "hopper-medium-v2.hdf5", [3], drop=("timeouts",))
    with pytest.raises(ValueError, match=r"missing key 'timeouts'"):
        load_dataset(tmp_path / "hopper-medium-v2.hdf5")


# --- bad input ---------------------------------------------------------------------------------
def test_unknown_minari_id_lists_local_datasets_and_searched_path(embedded_copy, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(embedded_copy.parent))
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset("zoo/hopper/nonexistent-v0")
    assert isinstance(error.value, FileNotFoundError) and isinstance(error.value, ValueError)
    message = str(error.value)
    assert "zoo/hopper/nonexistent-v0" in message and str(embedded_copy.parent) in message
    assert embedded_copy.name in message and "download=True" in message


def test_downloads_into_a_minari_root_take_turns(tmp_path, monkeypatch):
    """torchrun's ranks all ask for a new dataset at once: one downloads while the others wait on a lock (minari
    writes a dataset in place), so none reads it half written."""
    import fcntl

    from decision_rnn.data.minari import open_minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    held = []

    def download(dataset_id, download):
        with open(tmp_path / ".decision-rnn-download.lock") as other:  # what another process would meet
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
        return dataset_id

    monkeypatch.setattr(minari, "load_dataset", download)
    assert open_minari("zoo/hopper/new-v0", download=True) == "zoo/hopper/new-v0"
    assert held == [True]
    with open(tmp_path / ".decision-rnn-download.lock") as after:
        fcntl.flock(after, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released


@requires_shared
def test_unknown_minari_id_lists_shared_datasets():
    with pytest.raises(DatasetNotFoundError, match=r"zoo/hopper/medium-v0"):
        load_dataset("zoo/hopper/medium-v9")


def test_missing_paths(tmp_path, monkeypatch):
    monkeypatch.setattr("decision_rnn.data.load.EMBEDDED_DATASET", tmp_path / "gone")
    with pytest.raises(DatasetNotFoundError, match="embedded dataset is missing.*make_embedded_data.py"):
        load_dataset(tmp_path / "gone")
    with pytest.raises(
        DatasetNotFoundError, match="D4RL datasets are loaded from the path of their HDF5 file"
    ):
        load_dataset("hopper-medium-v2")
    with pytest.raises(DatasetNotFoundError, match="no such file"):
        load_dataset(tmp_path / "hopper-medium-v2.hdf5")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DatasetNotFoundError, match="not a Minari dataset"):
        load_dataset(tmp_path / "empty_dir")


def test_non_finite_values_name_the_episode_and_field(tmp_path, embedded_copy):
    core = _core(make_dataset([3, 4, 5]))
    core["actions"] = core["actions"].copy()
    core["actions"][8, 1] = np.nan  # episode 2, step 1
    with pytest.raises(
        ValueError, match=r"non-finite actions .*episode 2 \(synthetic, episode id 2\) at step 1"
    ):
        TrajectoryDataset(**core)

    written = write_d4rl(tmp_path / "hopper-medium-v2.hdf5", [3, 4])
    written["rewards"][5] = np.inf
    with h5py.File(tmp_path / "hopper-medium-v2.hdf5", "a") as file:
        file["rewards"][...] = written["rewards"]
    with pytest.raises(ValueError, match=r"non-finite rewards .*episode 1 .*hopper-medium-v2.hdf5"):
        load_dataset(tmp_path / "hopper-medium-v2.hdf5")

    with h5py.File(embedded_copy / "data" / "main_data.hdf5", "a") as file:
        file["episode_3/observations"][5, 2] = np.nan
    expected = r"non-finite observations .*hopper-medium-small-v0, episode id 3\) at step 5"
    with pytest.raises(ValueError, match=expected):
        load_dataset(embedded_copy)


def test_empty_datasets_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="empty dataset"):
        load_dataset([])
    with pytest.raises(ValueError, match="empty dataset"):
        no_steps = {"rewards": [], "terminations": [], "truncations": [], "offsets": [0]}
        TrajectoryDataset(**{**_core(make_dataset([2])), **no_steps, "observations": np.zeros((0, 3))})
    write_d4rl(tmp_path / "hopper-medium-v2.hdf5", [], trailing=5)
    with pytest.raises(ValueError, match="empty dataset.*no complete episode"):
        load_dataset(tmp_path / "hopper-medium-v2.hdf5")


def test_combining_different_envs_or_dims_is_an_error(tmp_path):
    write_d4rl(tmp_path / "hopper-medium-v2.hdf5", [3, 4])
    write_d4rl(tmp_path / "walker2d-medium-v2.hdf5", [3, 4], obs_dim=17, act_dim=6)
    write_d4rl(tmp_path / "hopper-expert-v2.hdf5", [3, 4], obs_dim=12)
    with pytest.raises(ValueError, match=r"different environments.*Hopper-v5.*Walker2d-v5"):
        load_dataset([tmp_path / "hopper-medium-v2.hdf5", tmp_path / "walker2d-medium-v2.hdf5"])
    with pytest.raises(ValueError, match=r"inconsistent obs_dim.* has 11.* has 12"):
        load_dataset([tmp_path / "hopper-medium-v2.hdf5", tmp_path / "hopper-expert-v2.hdf5"])
    write_d4rl(tmp_path / "hopper-random-v2.hdf5", [5, 1], seed=1)
    combined = load_dataset([tmp_path / "hopper-medium-v2.hdf5", tmp_path / "hopper-random-v2.hdf5"])
    np.testing.assert_array_equal(combined.offsets, [0, 3, 7, 12, 13])
    np.testing.assert_array_equal(combined.episode_source, [0, 0, 1, 1])


# --- scores ------------------------------------------------------------------------------------
ENV_IDS = ["Hopper-v5", "Walker2d-v5", "HalfCheetah-v5", "Ant-v5", "hopper-medium-v2", "mujoco/ant/expert-v0"]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_normalized_score_of_reference_returns(env_id):
    ref = ref_scores(env_id)
    assert normalized_score(env_id, ref.min) == pytest.approx(0.0)
    assert normalized_score(env_id, ref.max) == pytest.approx(100.0)
    both = normalized_score(env_id, np.array([ref.min, ref.max]))
    assert isinstance(both, np.ndarray)
    np.testing.assert_allclose(both, [0.0, 100.0], atol=1e-9)
    assert isinstance(normalized_score(env_id, 1.0), float)


def test_normalized_score_unknown_env():
    with pytest.raises(ValueError, match=r"unknown environment 'Pendulum-v1'.*hopper"):
        normalized_score("Pendulum-v1", 0.0)


def test_metadata_reference_scores_are_checked(embedded_copy, caplog):
    data = load_dataset(embedded_copy)
    np.testing.assert_allclose(data.normalized_returns(), normalized_score("Hopper-v5", data.episode_returns))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    metadata_path = embedded_copy / "data" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata_path.write_text(json.dumps({**metadata, "ref_max_score": 3000.0}))
    with caplog.at_level("WARNING", logger="decision_rnn.data"):
        data = load_dataset(embedded_copy)
    assert "differ from D4RL" in caplog.text and data.ref_max_score == 3000.0


# --- samplers ----------------------------------------------------------------------------------
def _check_batch_shapes(batch: Batch, b: int, t: int, data: TrajectoryDataset):
    assert batch.states.shape == (b, t, data.obs_dim) and batch.states.dtype == torch.float32
    assert batch.actions.shape == (b, t, data.act_dim) and batch.actions.dtype == torch.float32
    assert batch.returns_to_go.shape == (b, t) and batch.returns_to_go.dtype == torch.float32
    assert batch.timesteps.shape == (b, t) and batch.timesteps.dtype == torch.int64
    assert batch.mask.shape == (b, t) and batch.mask.dtype == torch.bool


def _check_rows(batch: Batch, data: TrajectoryDataset, b: int, start: int, n_real: int):
    """Row ``b`` holds ``n_real`` dataset rows from ``start``, then zero padding."""
    rows, n = slice(start, start + n_real), data.num_steps
    np.testing.assert_array_equal(batch.mask[b].numpy(), np.arange(batch.mask.shape[1]) < n_real)
    np.testing.assert_array_equal(batch.states[b, :n_real].numpy(), data.observations[rows])
    np.testing.assert_array_equal(batch.actions[b, :n_real].numpy(), data.actions[rows])
    np.testing.assert_array_equal(batch.returns_to_go[b, :n_real].numpy(), data.returns_to_go[rows])
    np.testing.assert_array_equal(batch.timesteps[b, :n_real].numpy(), data.timesteps[rows])
    # a_{t-1} of the same episode, zero at its first step
    prev = [data.actions[r - 1] if data.timesteps[r] > 0 else np.zeros(data.act_dim) for r in range(*rows.indices(n))]
    np.testing.assert_array_equal(batch.prev_actions[b, :n_real].numpy(), np.reshape(prev, (n_real, -1)))
    for name in ("states", "actions", "returns_to_go", "timesteps", "prev_actions"):
        assert not getattr(batch, name)[b, n_real:].any(), name


def test_window_sampler_right_pads_within_the_episode():
    data = make_dataset([3, 7, 25, 1, 40])
    sampler = WindowSampler(data, context_len=10, batch_size=32, seed=1)
    for _ in range(20):
        batch = sampler.sample()
        _check_batch_shapes(batch, 32, 10, data)
        for b in range(32):
            start = int(batch.states[b, 0, 0])  # column 0 is the row index
            end = data.offsets[np.searchsorted(data.offsets, start, side="right")]
            _check_rows(batch, data, b, start, min(10, end - start))


def test_end_aligned_windows_end_at_the_drawn_step_and_are_cut_at_the_episode_start():
    data = make_dataset([3, 7, 25, 1, 40])
    sampler = WindowSampler(data, context_len=10, batch_size=32, seed=1, align="end")
    ends = []
    for _ in range(50):
        batch = sampler.sample()
        _check_batch_shapes(batch, 32, 10, data)
        for b in range(32):
            start = int(batch.states[b, 0, 0])
            n_real = int(batch.mask[b].sum())
            episode_start = data.offsets[np.searchsorted(data.offsets, start, side="right") - 1]
            assert start == episode_start or n_real == 10  # cut only at the episode's first step
            _check_rows(batch, data, b, start, n_real)
            ends.append(start + n_real - 1)
    # the window's last step is uniform over all steps: every step is an end, about equally often
    counts = np.bincount(ends, minlength=data.num_steps)
    assert counts.min() > 0 and counts.max() < 3 * counts.mean()
    with pytest.raises(ValueError, match="align"):
        WindowSampler(data, align="middle")


def test_uniform_windows_cover_every_step_equally_often_episode_ends_included():
    lengths, K = [3, 7, 25, 1, 40], 10
    data = make_dataset(lengths)
    # plain loop: every K-step window that overlaps an episode, cut to it; each step lies in exactly K of them
    windows, coverage = set(), np.zeros(data.num_steps, int)
    for e, length in enumerate(lengths):
        begin = int(data.offsets[e])
        for first in range(begin - K + 1, begin + length):
            start, stop = max(first, begin), min(first + K, begin + length)
            windows.add((start, stop - start))
            coverage[start:stop] += 1
    assert (coverage == K).all()
    sampler = WindowSampler(data, context_len=K, batch_size=64, seed=1, align="uniform")
    counts = np.zeros(data.num_steps, int)
    for _ in range(300):
        batch = sampler.sample()
        _check_batch_shapes(batch, 64, K, data)
        for b in range(64):
            start, n_real = int(batch.states[b, 0, 0]), int(batch.mask[b].sum())
            assert (start, n_real) in windows
            _check_rows(batch, data, b, start, n_real)
            counts[start:start + n_real] += 1
    # each draw covers a given step with probability K / (N + E (K - 1)): ~1,590 of 19,200, sd ~38
    expected = 64 * 300 * K / (data.num_steps + len(lengths) * (K - 1))
    assert np.abs(counts - expected).max() < 0.15 * expected
    starts = WindowSampler(data, context_len=K, batch_size=64, seed=1, align="start")
    first = np.zeros(data.num_steps, int)  # DT's start-aligned windows: an episode's first steps far less
    for _ in range(300):
        batch = starts.sample()
        for b in range(64):
            start, n_real = int(batch.states[b, 0, 0]), int(batch.mask[b].sum())
            first[start:start + n_real] += 1
    assert first[data.offsets[4]] < 0.2 * first[data.offsets[4] + 30]


def test_episode_sampler_returns_whole_episodes_from_the_start():
    data = make_dataset([3, 7, 25, 1, 40])
    for max_len, batch_size in ((None, 8), (12, 8), (100, 1)):
        sampler = EpisodeSampler(data, batch_size=batch_size, max_len=max_len, seed=2)
        for _ in range(20):
            batch = sampler.sample()
            starts = batch.states[:, 0, 0].long().numpy()
            episodes = np.searchsorted(data.offsets, starts)
            np.testing.assert_array_equal(data.offsets[episodes], starts)  # every row starts an episode
            lengths = np.minimum(data.episode_lengths[episodes], max_len or 10**9)
            _check_batch_shapes(batch, batch_size, lengths.max(), data)
            for b in range(batch_size):
                _check_rows(batch, data, b, starts[b], lengths[b])


def test_stream_sampler_walks_whole_episodes_in_chunks_and_carries_the_state():
    data = make_dataset([3, 7, 25, 1, 40])
    sampler = StreamSampler(data, chunk_len=4, batch_size=6, seed=3)
    expected_start = sampler.next_row.copy()  # first chunks: uniformly drawn steps, zero state
    visits, previous_ended = np.zeros(data.num_steps, int), None
    for i in range(300):
        batch = sampler.sample()
        _check_batch_shapes(batch, 6, 4, data)
        starts = batch.states[:, 0, 0].long().numpy()
        np.testing.assert_array_equal(starts, expected_start)
        for b in range(6):
            end = data.offsets[np.searchsorted(data.offsets, starts[b], side="right")]
            n_real = min(4, end - starts[b])
            _check_rows(batch, data, b, starts[b], n_real)
            visits[starts[b]:starts[b] + n_real] += 1
        ended = starts + 4 >= data.offsets[np.searchsorted(data.offsets, starts, side="right")]
        if i == 0:
            assert batch.state is None  # the very first chunks start fresh
        else:  # the state each row starts from: the previous chunk's, or zero after an episode change
            np.testing.assert_array_equal(batch.state[0][:, 0].numpy(), np.where(previous_ended, 0.0, 10.0 * i))
        final = (torch.full((6, 2), 10.0 * (i + 1)), torch.ones(6, 2, 3))
        sampler.advance(final)
        assert torch.equal(sampler.state[1], torch.from_numpy(~ended).float()[:, None, None].expand(6, 2, 3))
        # the next chunk continues the episode, or starts a new one at its step 0
        continued = np.where(ended, -1, starts + 4)
        assert np.all((sampler.next_row == continued) | (ended & np.isin(sampler.next_row, data.offsets[:-1])))
        expected_start, previous_ended = sampler.next_row.copy(), ended
    # whole episodes, drawn uniformly: every step is visited about equally often
    assert visits.min() > 0 and visits.max() < 2 * visits.mean(), visits


def test_stream_sampler_restarts_a_stream_whose_state_is_not_finite():
    """A skipped non-finite batch (`skip_nonfinite`) must not carry NaN into every later chunk of its streams."""
    data = make_dataset([40, 40])
    sampler = StreamSampler(data, chunk_len=4, batch_size=3, seed=0)
    sampler.sample()
    sampler.next_row = data.offsets[:1].repeat(3)  # every stream mid-way through episode 0: none ends here
    sampler.episode = np.zeros(3, np.int64)
    h, c = torch.ones(3, 2), torch.ones(3, 2, 5)
    h[1, 0], c[2, 1, 3] = float("nan"), float("inf")
    sampler.advance((h, c))
    assert torch.equal(sampler.state[0], torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))
    assert torch.equal(sampler.state[1][0], torch.ones(2, 5)) and not sampler.state[1][1:].any()


def test_stream_sampler_state_dict_resumes_exactly():
    data = make_dataset([3, 7, 25, 1, 40])
    a, b = StreamSampler(data, 5, 4, seed=1), StreamSampler(data, 5, 4, seed=2)
    for _ in range(7):
        a.sample()
        a.advance((torch.randn(4, 3),))
    b.load_state_dict(a.state_dict())
    for _ in range(10):
        x, y = a.sample(), b.sample()
        assert torch.equal(x.states, y.states) and torch.equal(x.state[0], y.state[0])
        final = (torch.randn(4, 3),)
        a.advance(final)
        b.advance(final)
    with pytest.raises(ValueError, match="chunk_len"):
        StreamSampler(data, chunk_len=0)


def test_samplers_are_deterministic_given_a_seed():
    data = make_dataset([3, 7, 25, 1, 40])
    for make in (lambda s: WindowSampler(data, 5, 16, seed=s), lambda s: EpisodeSampler(data, 4, seed=s)):
        a, b, c = make(7), make(7), make(8)
        batches_a, batches_b, batches_c = ([s.sample() for _ in range(3)] for s in (a, b, c))
        for x, y in zip(batches_a, batches_b, strict=True):
            assert all(torch.equal(getattr(x, n), getattr(y, n)) for n in ("states", "mask", "timesteps"))
        first_rows = [[batch.states[:, 0, 0] for batch in batches] for batches in (batches_a, batches_c)]
        assert not all(torch.equal(x, z) for x, z in zip(*first_rows, strict=True))
    generator_sampler = WindowSampler(data, 5, 16, seed=np.random.default_rng(7))
    assert torch.equal(generator_sampler.sample().states, WindowSampler(data, 5, 16, seed=7).sample().states)


def test_episodes_are_drawn_in_proportion_to_length():
    data = make_dataset([10, 90, 300])
    expected = data.episode_lengths / data.num_steps
    for sampler in (WindowSampler(data, 4, 256, seed=0), EpisodeSampler(data, 256, max_len=1, seed=0)):
        rows = np.concatenate([sampler.sample().states[:, 0, 0].long().numpy() for _ in range(40)])
        episodes = np.searchsorted(data.offsets, rows, side="right") - 1
        frequency = np.bincount(episodes, minlength=3) / len(rows)
        np.testing.assert_allclose(frequency, expected, atol=0.02)  # > 6 standard errors


def test_batch_to_device_and_argument_checks():
    data = make_dataset([3, 4])
    batch = WindowSampler(data, 4, 2, device="cpu").sample().to(torch.device("cpu"))
    assert batch.states.device.type == "cpu" and isinstance(batch, Batch) and batch.state is None
    stream = StreamSampler(data, 4, 2)
    stream.sample()
    stream.advance((torch.ones(2, 3),))
    moved = stream.sample().to("cpu")
    assert isinstance(moved.state, tuple) and torch.equal(moved.state[0], stream.state[0])
    with pytest.raises(ValueError, match="context_len"):
        WindowSampler(data, context_len=0)
    with pytest.raises(ValueError, match="max_len"):
        EpisodeSampler(data, max_len=0)
