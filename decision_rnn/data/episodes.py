"""The in-memory offline dataset: every episode concatenated into flat arrays, plus offsets.

The conventions (which observation is kept, return-to-go, timestep base, flags) are written once,
in the :mod:`decision_rnn.data` docstring; this module implements them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from decision_rnn.data.scores import normalized_score

OBS_STD_FLOOR = 1e-6
"""Lower bound on ``obs_std``: a constant feature gets std 1e-6 (normalizes to 0) instead of 0 (NaN).

The Decision Transformer adds 1e-6 (``np.std(states, axis=0) + 1e-6``, gym/experiment.py); a floor
is the same for every non-constant feature and leaves the statistics exact."""


STEP_FIELDS = (
    "observations",
    "actions",
    "rewards",
    "terminations",
    "truncations",
    "returns_to_go",
    "timesteps",
)
"""The per-step arrays of a :class:`TrajectoryDataset`, one row per step."""


class DatasetNotFoundError(FileNotFoundError, ValueError):
    """A dataset id or path that resolves to nothing; the message says where we looked.

    Subclasses both ``FileNotFoundError`` (what ``minari.load_dataset`` raises) and ``ValueError``.
    """


class TrajectoryDataset:
    """One environment's episodes as flat numpy arrays; episode ``e`` is rows ``offsets[e]:offsets[e+1]``.

    Built from the stored per-step arrays and the episode offsets; everything else (returns-to-go,
    timesteps, per-episode returns and lengths, observation statistics) is derived here, once.
    Construction checks shapes and that the data is finite, naming the episode that is not.

    Per step, ``N = num_steps`` rows: ``observations (N, obs_dim) float32`` (the observation *before*
    each action), ``actions (N, act_dim) float32``, ``rewards (N,) float32``, ``terminations (N,)
    bool``, ``truncations (N,) bool``, ``returns_to_go (N,) float32``, ``timesteps (N,) int64``.
    Per episode, ``E = num_episodes``: ``offsets (E+1,) int64``, ``episode_lengths (E,) int64``,
    ``episode_returns (E,) float64``, ``episode_source (E,)`` (index into ``ids``), ``episode_ids
    (E,)`` (the episode's id in its source, for error messages and provenance).
    """

    def __init__(
        self,
        *,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminations: np.ndarray,
        truncations: np.ndarray,
        offsets: np.ndarray,
        env_id: str,
        ids: Sequence[str] = ("<arrays>",),
        ref_min_score: float | None = None,
        ref_max_score: float | None = None,
        max_episode_length: int | None = None,
        episode_source: np.ndarray | None = None,
        episode_ids: np.ndarray | None = None,
    ):
        self.observations = np.ascontiguousarray(observations, dtype=np.float32)  # (N, obs_dim)
        self.actions = np.ascontiguousarray(actions, dtype=np.float32)  # (N, act_dim)
        self.rewards = np.ascontiguousarray(rewards, dtype=np.float32).reshape(-1)  # (N,)
        self.terminations = np.ascontiguousarray(terminations, dtype=bool).reshape(-1)  # (N,)
        self.truncations = np.ascontiguousarray(truncations, dtype=bool).reshape(-1)  # (N,)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)  # (E+1,)
        self.env_id = env_id
        self.ids = tuple(str(i) for i in ids)
        self.sources = self.ids  # what it was loaded from: load_dataset records the paths or ids given
        self.ref_min_score = None if ref_min_score is None else float(ref_min_score)
        self.ref_max_score = None if ref_max_score is None else float(ref_max_score)
        num_episodes = max(len(self.offsets) - 1, 0)
        if episode_source is None:
            episode_source = np.zeros(num_episodes)
        if episode_ids is None:
            episode_ids = np.arange(num_episodes)
        self.episode_source = np.asarray(episode_source, dtype=np.int64)  # (E,)
        self.episode_ids = np.asarray(episode_ids, dtype=np.int64)  # (E,)
        self._check()

        n, lengths = self.num_steps, np.diff(self.offsets)
        episode_of_row = np.repeat(np.arange(num_episodes), lengths)  # (N,)
        # Return-to-go from prefix sums in float64: rtg[t] = S[end] - S[t] with S[t] = sum(r[:t]).
        prefix = np.concatenate([[0.0], np.cumsum(self.rewards, dtype=np.float64)])  # (N+1,)
        self.returns_to_go = (prefix[self.offsets[1:]][episode_of_row] - prefix[:n]).astype(np.float32)
        overflow = np.flatnonzero(~np.isfinite(self.returns_to_go))
        if overflow.size:
            e = int(episode_of_row[overflow[0]])
            raise ValueError(f"the returns-to-go of {self.describe_episode(e)} overflow float32 from step "
                             f"{overflow[0] - self.offsets[e]}: its rewards sum beyond {np.finfo(np.float32).max:.3g}; "
                             "rescale the rewards")
        self.timesteps = np.arange(n, dtype=np.int64) - np.repeat(self.offsets[:-1], lengths)
        self.episode_lengths = lengths
        self.episode_returns = prefix[self.offsets[1:]] - prefix[self.offsets[:-1]]  # (E,) float64
        self.max_episode_length = max(int(max_episode_length or 0), int(lengths.max()))
        self.obs_mean = self.observations.mean(axis=0, dtype=np.float64).astype(np.float32)
        obs_std = self.observations.std(axis=0, dtype=np.float64)
        self.obs_std = np.maximum(obs_std, OBS_STD_FLOOR).astype(np.float32)

    # --- sizes -------------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_steps(self) -> int:
        return len(self.rewards)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    # --- per-episode views -------------------------------------------------------------------
    def episode(self, e: int) -> dict[str, np.ndarray]:
        """Views of every per-step array for episode ``e``."""
        rows = slice(self.offsets[e], self.offsets[e + 1])
        return {name: getattr(self, name)[rows] for name in STEP_FIELDS}

    def describe_episode(self, e: int) -> str:
        """``"episode 12 (zoo/hopper/medium-v0, episode id 12)"``: where episode ``e`` came from."""
        return f"episode {e} ({self.ids[self.episode_source[e]]}, episode id {self.episode_ids[e]})"

    def normalized_returns(self) -> np.ndarray:
        """Per-episode D4RL-normalized returns on the x100 scale, from ``ref_min_score``/``ref_max_score``."""
        if self.ref_min_score is None or self.ref_max_score is None:
            raise ValueError(f"{self.ids}: no reference scores for {self.env_id}, cannot normalize returns")
        return normalized_score(self.env_id, self.episode_returns, (self.ref_min_score, self.ref_max_score))

    def __repr__(self) -> str:
        return (
            f"TrajectoryDataset(ids={list(self.ids)}, env_id={self.env_id!r}, episodes={self.num_episodes}, "
            f"steps={self.num_steps}, obs_dim={self.obs_dim}, act_dim={self.act_dim})"
        )

    # --- combining ---------------------------------------------------------------------------
    @classmethod
    def concatenate(cls, datasets: Sequence[TrajectoryDataset]) -> TrajectoryDataset:
        """One dataset with every episode of ``datasets`` in order (D4RL medium-expert = medium + expert).

        All must share the env id, the observation/action sizes and the reference scores.
        """
        if not datasets:
            raise ValueError("empty dataset: nothing to concatenate")
        first = datasets[0]
        for other in datasets[1:]:
            if other.env_id != first.env_id:
                raise ValueError(
                    f"cannot combine datasets of different environments: {list(first.ids)} is "
                    f"{first.env_id}, {list(other.ids)} is {other.env_id}"
                )
            for what in ("obs_dim", "act_dim"):
                if getattr(other, what) != getattr(first, what):
                    raise ValueError(
                        f"cannot combine datasets with inconsistent {what}: {list(first.ids)} has "
                        f"{getattr(first, what)}, {list(other.ids)} has {getattr(other, what)}"
                    )
            refs = (first.ref_min_score, first.ref_max_score), (other.ref_min_score, other.ref_max_score)
            if not _same_refs(*refs):
                raise ValueError(
                    f"cannot combine datasets with different reference scores (min, max): "
                    f"{list(first.ids)} has {refs[0]}, {list(other.ids)} has {refs[1]}"
                )
        row_shift = np.cumsum([0] + [d.num_steps for d in datasets[:-1]])
        source_shift = np.cumsum([0] + [len(d.ids) for d in datasets[:-1]])
        return cls(
            observations=np.concatenate([d.observations for d in datasets]),
            actions=np.concatenate([d.actions for d in datasets]),
            rewards=np.concatenate([d.rewards for d in datasets]),
            terminations=np.concatenate([d.terminations for d in datasets]),
            truncations=np.concatenate([d.truncations for d in datasets]),
            offsets=np.concatenate(
                [[0]] + [d.offsets[1:] + s for d, s in zip(datasets, row_shift, strict=True)]
            ),
            env_id=first.env_id,
            ids=[i for d in datasets for i in d.ids],
            ref_min_score=first.ref_min_score,
            ref_max_score=first.ref_max_score,
            max_episode_length=max(d.max_episode_length for d in datasets),
            episode_source=np.concatenate(
                [d.episode_source + s for d, s in zip(datasets, source_shift, strict=True)]
            ),
            episode_ids=np.concatenate([d.episode_ids for d in datasets]),
        )

    # --- validation --------------------------------------------------------------------------
    def _check(self) -> None:
        n, offsets = len(self.rewards), self.offsets
        if offsets.ndim != 1 or len(offsets) < 2 or n == 0:
            raise ValueError(f"empty dataset: {list(self.ids)} has no episodes (or no steps)")
        if offsets[0] != 0 or offsets[-1] != n:
            raise ValueError(f"{list(self.ids)}: offsets must run from 0 to {n} (num_steps), got {offsets}")
        if len(self.episode_source) != len(offsets) - 1 or len(self.episode_ids) != len(offsets) - 1:
            raise ValueError(f"{list(self.ids)}: episode_source/episode_ids need one entry per episode")
        empty = np.flatnonzero(np.diff(offsets) <= 0)
        if empty.size:
            raise ValueError(f"{self.describe_episode(int(empty[0]))} has no steps (offsets must increase)")
        for name, ndim in (("observations", 2), ("actions", 2), ("terminations", 1), ("truncations", 1)):
            array = getattr(self, name)
            if array.ndim != ndim or len(array) != n:
                raise ValueError(f"{list(self.ids)}: {name} has shape {array.shape}, expected {n} rows")
        for name in ("observations", "actions", "rewards"):
            array = getattr(self, name)
            finite = np.isfinite(array) if array.ndim == 1 else np.isfinite(array).all(axis=1)
            if not finite.all():
                row = int(np.argmin(finite))
                e = int(np.searchsorted(offsets, row, side="right") - 1)
                raise ValueError(
                    f"non-finite {name} (NaN or inf) in {self.describe_episode(e)} at step {row - offsets[e]}"
                )


def _same_refs(a: tuple[float | None, float | None], b: tuple[float | None, float | None]) -> bool:
    if None in a or None in b:
        return a == b
    return bool(np.allclose(a, b, rtol=1e-6, atol=0.0))
