"""D4RL-format HDF5 files -> :class:`TrajectoryDataset`.

A D4RL file stores one flat array per key: ``observations (N, obs_dim)``, ``actions (N, act_dim)``,
``rewards (N,)``, ``terminals (N,)``, ``timeouts (N,)`` (``next_observations`` is optional and unused:
we keep the observation before each action). An episode ends after a step with ``terminals`` or
``timeouts`` set; these become ``terminations`` / ``truncations``. Steps after the last such flag
form no complete episode and are dropped (logged), as the Decision Transformer's and CORL's loaders
do. The environment is named by D4RL (``hopper-medium-v2``) and mapped to the gymnasium ``-v5`` env
that the agents are evaluated in.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Iterator
from contextlib import contextmanager

import gymnasium as gym
import h5py
import numpy as np

from decision_rnn.data.episodes import TrajectoryDataset
from decision_rnn.data.scores import REF_SCORES, env_family

logger = logging.getLogger(__name__)

D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")

GYMNASIUM_ENV_IDS = {
    "hopper": "Hopper-v5",
    "walker2d": "Walker2d-v5",
    "halfcheetah": "HalfCheetah-v5",
    "ant": "Ant-v5",
}
"""D4RL environment family -> the gymnasium env the policies are evaluated in."""


def d4rl_env_id(name: str) -> str:
    """Gymnasium env id for a D4RL name (``"hopper-medium-v2"`` -> ``"Hopper-v5"``).

    A registered gymnasium id (``"Hopper-v4"``) is returned unchanged.
    """
    if name in gym.envs.registry:
        return name
    return GYMNASIUM_ENV_IDS[env_family(name)]


def load_d4rl(path: str | os.PathLike, *, env_id: str | None = None) -> TrajectoryDataset:
    """Read a D4RL-format HDF5 file (see module docstring).

    The environment comes from ``env_id``, else the file's ``env_id``/``env_name`` attribute, else the
    file name (``hopper-medium-v2.hdf5``), each mapped by :func:`d4rl_env_id`.
    """
    path = pathlib.Path(path)
    with unreadable_hdf5(path), h5py.File(path, "r") as file:
        missing = [key for key in D4RL_KEYS if key not in file]
        if missing:
            raise ValueError(
                f"{path} is not a D4RL-format file: missing key {missing[0]!r} (has {sorted(file.keys())}; "
                f"needs {list(D4RL_KEYS)})"
            )
        data = {key: file[key][()] for key in D4RL_KEYS}
        name = env_id or _attr(file, "env_id") or _attr(file, "env_name") or path.stem
    try:
        env_id = d4rl_env_id(name)
    except ValueError as error:
        message = (f"{path}: cannot tell the environment from {name!r} ({error}); pass env_id=..., e.g. "
                   "env_id='Hopper-v5' (on the command line: --env-id Hopper-v5)")
        raise ValueError(message) from None

    n = len(data["observations"])
    for key in ("rewards", "terminals", "timeouts"):
        data[key] = data[key].reshape(-1)  # some files store (N, 1)
    for key in D4RL_KEYS:
        if len(data[key]) != n:
            raise ValueError(f"{path}: {key!r} has {len(data[key])} rows, observations has {n}")

    ends = np.flatnonzero(data["terminals"].astype(bool) | data["timeouts"].astype(bool)) + 1
    if ends.size == 0:
        raise ValueError(f"empty dataset: {path} has no complete episode (no terminals or timeouts set)")
    if ends[-1] < n:
        logger.info("%s: dropping %d steps after the last episode end", path, n - ends[-1])
    last = ends[-1]
    try:
        ref = REF_SCORES[env_family(env_id)]
    except ValueError:
        ref = None
    spec = gym.envs.registry.get(env_id)
    return TrajectoryDataset(
        observations=data["observations"][:last],
        actions=data["actions"][:last],
        rewards=data["rewards"][:last],
        terminations=data["terminals"][:last],
        truncations=data["timeouts"][:last],
        offsets=np.concatenate([[0], ends]),
        env_id=env_id,
        ids=[str(pathlib.Path(path).expanduser().resolve())],  # the same id from any working directory
        ref_min_score=ref.min if ref else None,
        ref_max_score=ref.max if ref else None,
        max_episode_length=spec.max_episode_steps if spec else None,
    )


def _attr(file: h5py.File, key: str) -> str | None:
    value = file.attrs.get(key)
    return value.decode() if isinstance(value, bytes) else (str(value) if value is not None else None)


@contextmanager
def unreadable_hdf5(path: pathlib.Path) -> Iterator[None]:
    """Turn h5py's error for a damaged file (which does not name it) into a ValueError that does."""
    try:
        yield
    except OSError as e:
        if isinstance(e, FileNotFoundError | PermissionError):
            raise
        raise ValueError(f"{path} is not a readable HDF5 file ({e}): it may be truncated by an interrupted "
                         "download or copy; fetch it again") from e
