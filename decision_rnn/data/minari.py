"""Minari datasets -> :class:`TrajectoryDataset`.

Minari resolves the id (honouring ``MINARI_DATASETS_PATH``), the metadata and the env spec. The
arrays of an HDF5-backed dataset are then read with h5py's low-level API, which loads the 1M-step
zoo/hopper/medium-v0 in ~1.0 s against ~2.3-3.4 s through ``MinariDataset.iterate_episodes`` (2 cores,
results/bench_sampler.md): the cost is per-array Python overhead, 5 arrays x 2.4k episodes. Other
storage formats go through ``iterate_episodes``; both paths give identical arrays (tested).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pathlib
import re
import warnings
from collections.abc import Iterator

import gymnasium as gym
import h5py
import minari  # the installed package (absolute import), not this module
import numpy as np
from minari.storage import get_dataset_path

from decision_rnn.data.d4rl import unreadable_hdf5
from decision_rnn.data.episodes import DatasetNotFoundError, TrajectoryDataset
from decision_rnn.data.scores import REF_SCORES, env_family

logger = logging.getLogger(__name__)

_KEYS = ("observations", "actions", "rewards", "terminations", "truncations")


def open_minari(source: str | os.PathLike, *, download: bool = False) -> minari.MinariDataset:
    """A ``MinariDataset`` from a dataset id or a local dataset directory (``<dir>/data/`` or the data dir).

    An id missing locally is downloaded only if ``download``; otherwise a :class:`DatasetNotFoundError`
    lists the local dataset ids and the root that was searched.
    """
    path = pathlib.Path(source).expanduser()
    if path.is_dir():
        for data_path in (path / "data", path):
            if (data_path / "metadata.json").is_file():
                with unreadable_hdf5(data_path / "main_data.hdf5"):
                    return minari.MinariDataset(data_path)
        raise DatasetNotFoundError(f"{path} is a directory but not a Minari dataset (no data/metadata.json)")

    dataset_id = str(source)
    if not (get_dataset_path(dataset_id) / "data").is_dir() and not download:
        raise DatasetNotFoundError(_not_found_message(dataset_id))
    with _one_download_at_a_time() if download else contextlib.nullcontext():
        with unreadable_hdf5(get_dataset_path(dataset_id) / "data" / "main_data.hdf5"):
            return minari.load_dataset(dataset_id, download=download)


@contextlib.contextmanager
def _one_download_at_a_time() -> Iterator[None]:
    """A lock on the Minari root while a dataset may be downloaded: minari writes a dataset in place, so the ranks of
    a torchrun job (or two trainings) asking for a new dataset at once would read it half written. The first
    downloads; the others wait, then find it complete."""
    with open(get_dataset_path() / ".decision-rnn-download.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield


def _not_found_message(dataset_id: str) -> str:
    root = get_dataset_path()
    with warnings.catch_warnings():  # minari warns about every misconfigured directory it meets
        warnings.simplefilter("ignore")
        local = sorted(minari.list_local_datasets())
    message = (
        f"Minari dataset {dataset_id!r} not found: searched {root} "
        f"(MINARI_DATASETS_PATH={os.environ.get('MINARI_DATASETS_PATH', '<unset>')}); local dataset ids: "
        f"{local or 'none'}. It is not a file or directory relative to {os.getcwd()} either. "
        "Pass download=True (on the command line: --download) to fetch it from the Minari server."
    )
    if re.fullmatch(r"(hopper|walker2d|halfcheetah|ant)-[-\w]*-v\d+", dataset_id):
        message += " D4RL datasets are loaded from the path of their HDF5 file."
    return message


def from_minari(
    dataset: minari.MinariDataset, *, env_id: str | None = None, fast: bool = True
) -> TrajectoryDataset:
    """Convert a ``MinariDataset`` (only its ``episode_indices``, so filtered datasets work).

    ``env_id`` overrides the env spec's id (needed when the dataset has none). ``fast=False`` reads
    through ``iterate_episodes`` even for HDF5 storage. Reference scores come from the metadata and
    fall back to :data:`REF_SCORES`; metadata that disagrees with the D4RL table is used as-is, with a
    logged warning, since such scores are not comparable with D4RL numbers.
    """
    for name, space in (("observation", dataset.observation_space), ("action", dataset.action_space)):
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"{dataset.id}: only flat Box {name} spaces are supported, got {space}")
    if env_id is None:
        if dataset.env_spec is None:
            raise ValueError(f"{dataset.id}: the dataset has no env spec; pass env_id=...")
        env_id = dataset.env_spec.id

    metadata = dataset.storage.metadata
    use_h5py = fast and metadata.get("data_format") == "hdf5"
    episodes = _read_hdf5(dataset) if use_h5py else _read_iterate(dataset)
    columns: dict[str, list[np.ndarray]] = {key: [] for key in _KEYS}
    lengths = []
    for episode_id, episode in zip(dataset.episode_indices, episodes, strict=True):
        length = len(episode["rewards"])
        for key, expected in zip(_KEYS, (length + 1, length, length, length, length), strict=True):
            if len(episode[key]) != expected:
                raise ValueError(
                    f"{dataset.id} episode id {episode_id}: {key} has {len(episode[key])} rows, "
                    f"expected {expected} (Minari stores T+1 observations and T of everything else)"
                )
        columns["observations"].append(episode["observations"][:-1])  # drop the final observation
        for key in _KEYS[1:]:
            columns[key].append(episode[key])
        lengths.append(length)

    ref_min, ref_max = _reference_scores(dataset.id, env_id, metadata)
    max_steps = dataset.env_spec.max_episode_steps if dataset.env_spec is not None else None
    return TrajectoryDataset(
        **{key: np.concatenate(columns[key]) if columns[key] else np.zeros((0,)) for key in _KEYS},
        offsets=np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]),
        env_id=env_id,
        ids=[dataset.id],
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        max_episode_length=max_steps,
        episode_ids=np.asarray(dataset.episode_indices, dtype=np.int64),
    )


def _reference_scores(dataset_id: str, env_id: str, metadata: dict) -> tuple[float | None, float | None]:
    try:
        table = REF_SCORES[env_family(env_id)]
    except ValueError:
        table = None
    ref_min, ref_max = metadata.get("ref_min_score"), metadata.get("ref_max_score")
    if ref_min is None or ref_max is None:
        return (table.min, table.max) if table is not None else (None, None)
    if table is not None and not np.allclose((ref_min, ref_max), table, rtol=1e-6, atol=0.0):
        logger.warning(
            "%s: metadata reference scores (min %s, max %s) differ from D4RL's for %s (min %s, max %s); "
            "using the metadata's, so normalized returns are not comparable with D4RL numbers",
            dataset_id, ref_min, ref_max, env_id, table.min, table.max,
        )  # fmt: skip
    return float(ref_min), float(ref_max)


def _read_hdf5(dataset: minari.MinariDataset) -> Iterator[dict[str, np.ndarray]]:
    """Episodes of an HDF5-backed dataset, read with h5py's low-level API (see module docstring)."""
    path = pathlib.Path(dataset.storage.data_path) / "main_data.hdf5"
    with unreadable_hdf5(path), h5py.File(path, "r") as file:
        for episode_id in dataset.episode_indices:
            episode = {}
            for key in _KEYS:
                name = f"episode_{episode_id}/{key}"
                try:
                    array = h5py.h5d.open(file.id, name.encode())
                except KeyError:
                    raise ValueError(f"{dataset.id}: {path} has no dataset {name!r}") from None
                episode[key] = np.empty(array.shape, dtype=array.dtype)
                array.read(h5py.h5s.ALL, h5py.h5s.ALL, episode[key])
            yield episode


def _read_iterate(dataset: minari.MinariDataset) -> Iterator[dict[str, np.ndarray]]:
    for episode in dataset.iterate_episodes():
        yield {key: np.asarray(getattr(episode, key)) for key in _KEYS}
