"""Offline datasets: loading (Minari, D4RL files), the flat in-memory dataset, scores and samplers.

Conventions, written once here and tested against a plain Python loop (tests/test_data.py):

- **Observations.** Minari stores T+1 observations per episode of T steps (the last one after the
  final action); we keep the first T, so row t holds the observation *before* action t. D4RL files
  store T already (``next_observations`` is not used).
- **Return-to-go** at step t is the undiscounted sum of rewards t..T-1 of its own episode, so at
  t = 0 it is the episode return. It is stored raw (no scaling); models scale it themselves.
- **Timesteps** are 0-based within the episode.
- **Terminated vs truncated** are kept as two separate flags (Minari ``terminations`` /
  ``truncations``, D4RL ``terminals`` / ``timeouts``): a fall is not a time limit.
- **Padding** is on the right: a sampled sequence starts with real steps, then padding (zeros,
  timestep 0, ``mask`` False), so a recurrent model never sees padding before its first real step.
- **Observation statistics** ``obs_mean`` / ``obs_std`` are over every kept observation of the
  (combined) dataset, std floored at :data:`OBS_STD_FLOOR`. Batches carry raw observations; the
  model normalizes with these statistics.
- **Sampling** draws episodes with probability proportional to length (as the Decision Transformer);
  windows with ``align="uniform"`` weight an episode by its number of K-step windows, length + K - 1;
  see :mod:`decision_rnn.data.samplers`.
- **Previous actions** ``prev_actions[t]`` = a_{t-1} of the same episode, zero at timestep 0: batches carry
  them, so a sequence that starts mid-episode still sees its first step's true previous action.

Episode ``e`` of a :class:`TrajectoryDataset` is rows ``offsets[e]:offsets[e+1]`` of every per-step array.
"""

from decision_rnn.data.d4rl import GYMNASIUM_ENV_IDS, d4rl_env_id, load_d4rl
from decision_rnn.data.episodes import OBS_STD_FLOOR, DatasetNotFoundError, TrajectoryDataset
from decision_rnn.data.load import EMBEDDED_DATASET, load_dataset
from decision_rnn.data.minari import from_minari, open_minari
from decision_rnn.data.samplers import Batch, EpisodeSampler, StreamSampler, WindowSampler
from decision_rnn.data.scores import REF_SCORES, RefScores, env_family, normalized_score, ref_scores

__all__ = [
    "EMBEDDED_DATASET",
    "GYMNASIUM_ENV_IDS",
    "OBS_STD_FLOOR",
    "REF_SCORES",
    "Batch",
    "DatasetNotFoundError",
    "EpisodeSampler",
    "RefScores",
    "StreamSampler",
    "TrajectoryDataset",
    "WindowSampler",
    "d4rl_env_id",
    "env_family",
    "from_minari",
    "load_d4rl",
    "load_dataset",
    "normalized_score",
    "open_minari",
    "ref_scores",
]
