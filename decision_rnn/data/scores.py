"""D4RL-normalized scores: ``100 * (return - ref_min) / (ref_max - ref_min)``, the one place they are computed.

0 is a random policy and 100 an expert. The reference returns are a dataset's own where it carries them (Minari's
ports of D4RL store ``ref_min_score`` / ``ref_max_score`` in their metadata, which ``minari.get_normalized_score``
reads: this is its formula, x100, tested equal), else D4RL's (``d4rl/infos.py``, ``REF_MIN_SCORE`` /
``REF_MAX_SCORE``): the same numbers. The table is keyed by environment family (``"hopper"``); :func:`env_family`
maps gymnasium ids (``"Hopper-v5"``) and D4RL dataset names (``"hopper-medium-v2"``) to it.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np


class RefScores(NamedTuple):
    """Average undiscounted episode return of a random (``min``) and an expert (``max``) policy."""

    min: float
    max: float


REF_SCORES: dict[str, RefScores] = {
    "hopper": RefScores(-20.272305, 3234.3),
    "walker2d": RefScores(1.629008, 4592.3),
    "halfcheetah": RefScores(-280.178953, 12135.0),
    "ant": RefScores(-325.6, 3879.7),
}


def env_family(env_id: str) -> str:
    """``"Hopper-v5"``, ``"hopper-medium-v2"``, ``"mujoco/hopper/medium-v0"`` -> ``"hopper"``.

    Raises ``ValueError`` listing the known families when the name matches none of them.
    """
    for part in re.sub(r"-v\d+$", "", env_id.strip()).split("/"):  # also "mujoco/hopper/medium-v0"
        family = part.split("-")[0].replace("_", "").lower()
        if family in REF_SCORES:
            return family
    raise ValueError(
        f"unknown environment {env_id!r}: no D4RL reference scores; known families: {sorted(REF_SCORES)}"
    )


def ref_scores(env_id: str) -> RefScores:
    """D4RL reference returns for an env id or D4RL dataset name (see :func:`env_family`)."""
    return REF_SCORES[env_family(env_id)]


def normalized_score(env_id: str, returns: float | np.ndarray,
                     ref: tuple[float | None, float | None] | None = None) -> float | np.ndarray:
    """D4RL-normalized score on the x100 scale; a float for a scalar, an array for an array.

    ``ref``: the (min, max) reference returns to normalize with (a dataset's); None, or a None in it: D4RL's for
    ``env_id`` (a ValueError when it has none)."""
    low, high = ref_scores(env_id) if ref is None or None in ref else ref
    scores = 100.0 * (np.asarray(returns, dtype=np.float64) - low) / (high - low)
    return float(scores) if scores.ndim == 0 else scores
