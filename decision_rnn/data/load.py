"""``load_dataset``: one entry point for Minari ids, Minari dataset directories and D4RL files."""

from __future__ import annotations

import logging
import os
import pathlib
import time
from collections.abc import Sequence

from decision_rnn.data.d4rl import load_d4rl
from decision_rnn.data.episodes import DatasetNotFoundError, TrajectoryDataset
from decision_rnn.data.minari import from_minari, open_minari

logger = logging.getLogger(__name__)

EMBEDDED_DATASET = pathlib.Path(__file__).resolve().parents[2] / "data" / "hopper-medium-small-v0"
"""The small Hopper dataset shipped in the repository's ``data/`` (not in a wheel): 40 episodes of
zoo/hopper/medium-v0, written by ``experiments/make_embedded_data.py``. Load it with
``load_dataset(EMBEDDED_DATASET)``."""

Source = str | os.PathLike


def load_dataset(
    ids: Source | Sequence[Source], *, download: bool = False, env_id: str | None = None
) -> TrajectoryDataset:
    """Load one dataset, or several combined into one (D4RL medium-expert = ``[medium, expert]``).

    Each source is, in order of precedence: an HDF5 file in D4RL format, a local Minari dataset
    directory, or a Minari dataset id (found under ``MINARI_DATASETS_PATH``, downloaded only if
    ``download``). ``env_id`` names the environment where the data does not (D4RL files, Minari
    datasets without an env spec). Combining different environments is an error.
    """
    sources = [ids] if isinstance(ids, (str, os.PathLike)) else list(ids)
    if not sources:
        raise ValueError("empty dataset: no dataset id given")
    start = time.perf_counter()
    parts = [_load_one(source, download=download, env_id=env_id) for source in sources]
    dataset = parts[0] if len(parts) == 1 else TrajectoryDataset.concatenate(parts)
    # how to load it again (a resumed run): ids as given, existing paths made absolute
    paths = [pathlib.Path(s).expanduser() for s in sources]
    dataset.sources = tuple(str(p.resolve()) if p.exists() else str(s) for p, s in zip(paths, sources, strict=True))
    logger.info("loaded %r in %.2f s", dataset, time.perf_counter() - start)
    return dataset


def _load_one(source: Source, *, download: bool, env_id: str | None) -> TrajectoryDataset:
    path = pathlib.Path(source).expanduser()
    if path.is_file():
        return load_d4rl(path, env_id=env_id)
    if path.is_dir():
        return from_minari(open_minari(path), env_id=env_id)
    if path.resolve() == EMBEDDED_DATASET:
        raise DatasetNotFoundError(
            f"the embedded dataset is missing at {EMBEDDED_DATASET}: it lives in the repository's data/ "
            "(a wheel or non-editable install does not carry it); run experiments/make_embedded_data.py"
        )
    if path.is_absolute() or path.suffix in (".hdf5", ".h5") or str(source).startswith((".", "~")):
        raise DatasetNotFoundError(f"no such file or directory: {path} (from {os.getcwd()})")
    return from_minari(open_minari(str(source), download=download), env_id=env_id)
