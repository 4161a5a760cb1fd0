"""Vectorized batch samplers: index arithmetic and one fancy-indexing gather per array, no per-sample loop.

Episodes are drawn with probability proportional to length, as the Decision Transformer's gym experiment
does (``p_sample = traj_lens / sum(traj_lens)``, gym/experiment.py): window (``align`` start or end) and
episode samplers draw a row uniformly from all ``N`` steps and take its episode, which is exactly that
distribution; the stream sampler walks whole episodes drawn uniformly, which covers every step once
per walk, so the same. Windows with ``align="uniform"`` draw one of all K-step windows that overlap an
episode (length + K - 1 of them), so short episodes weigh a little more. Batches are right-padded (see
:mod:`decision_rnn.data`).

Every sampler has ``sample()``, a numpy ``rng``, and ``state_dict()`` / ``load_state_dict()`` for exact
resume.

Data parallel training (``rank``, ``world_size``): ``batch_size`` is the global batch. Every rank draws the
global batch's indices from the same seeded stream (integers, cheap) and gathers only its own contiguous share of
the rows, ``rank * b:(rank + 1) * b`` with ``b = batch_size // world_size``; the ranks' batches, stacked, are the
one-process batch (episodes: each rank pads to its own longest). So the data a run sees does not depend on how many
ranks it runs on, and resuming with another number of ranks continues the same stream. Each shard also carries the
global batch's count of real steps (``Batch.global_real``), with which the trainer weights its loss so that the
ranks' averaged gradient is the global batch's.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from decision_rnn.config import WINDOW_ALIGNS
from decision_rnn.data.episodes import TrajectoryDataset


@dataclass
class Batch:
    """A padded batch of sequences; padded positions are zero, with ``timesteps`` 0 and ``mask`` False."""

    states: torch.Tensor  # (B, T, obs_dim) float32, raw observations (the model normalizes)
    actions: torch.Tensor  # (B, T, act_dim) float32
    returns_to_go: torch.Tensor  # (B, T) float32, raw undiscounted return-to-go
    timesteps: torch.Tensor  # (B, T) int64, 0-based within the episode
    mask: torch.Tensor  # (B, T) bool, True = real step
    prev_actions: torch.Tensor | None = None
    """(B, T, act_dim) float32: a_{t-1} of the same episode, zero at timestep 0. A sequence that starts
    mid-episode needs it for its first step; None means "shift `actions`" (sequences from step 0)."""
    state: tuple[torch.Tensor, ...] | None = None
    """Backbone state each row starts from (stream context: carried over from the row's previous
    chunk); None: the all-zero fresh start."""
    global_real: int | None = None
    """A rank's shard of a global batch: the number of real (unmasked) steps in the whole global batch.
    None: this batch is the whole batch."""

    def to(self, device: str | torch.device, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device``."""

        def move(value):
            if isinstance(value, tuple):
                return tuple(move(v) for v in value)
            return value.to(device, non_blocking=non_blocking) if isinstance(value, torch.Tensor) else value

        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` as a tensor on ``device``; to CUDA through pinned memory, so the copy does not block the host."""
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _gather(dataset: TrajectoryDataset, rows: np.ndarray, valid: np.ndarray, device: torch.device,
            global_real: int | None = None) -> Batch:
    """Batch of ``dataset`` rows ``rows (B, T)``; positions where ``valid`` is False become padding."""
    rows = np.where(valid, rows, 0)  # any in-range row; zeroed below
    arrays = {
        "states": dataset.observations[rows],  # (B, T, obs_dim)
        "actions": dataset.actions[rows],  # (B, T, act_dim)
        "returns_to_go": dataset.returns_to_go[rows],  # (B, T)
        "timesteps": dataset.timesteps[rows],  # (B, T)
        "prev_actions": dataset.actions[rows - 1],  # (B, T, act_dim); row -1 only where timestep 0
    }
    arrays["prev_actions"][arrays["timesteps"] == 0] = 0
    for array in arrays.values():
        array[~valid] = 0
    tensors = {name: _to_device(array, device) for name, array in arrays.items()}
    return Batch(**tensors, mask=_to_device(valid, device), global_real=global_real)


class _Sampler:
    """What every sampler holds (data, global batch size, this rank's rows of it, device, numpy generator) and its
    resume state."""

    def __init__(self, dataset: TrajectoryDataset, batch_size: int, seed, device, rank: int = 0, world_size: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size % world_size:
            raise ValueError(f"the batch of {batch_size} (the global batch) does not split evenly over {world_size} "
                             f"ranks; use a multiple of {world_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.world_size = world_size
        share = batch_size // world_size
        self.rows = slice(rank * share, (rank + 1) * share)  # this rank's rows of every global batch
        self.device = torch.device(device)
        self.rng = _rng(seed)

    def _shard(self, rows: np.ndarray, valid: np.ndarray) -> Batch:
        """This rank's rows of the global batch ``rows``, ``valid`` (B, T), gathered."""
        if self.world_size == 1:
            return _gather(self.dataset, rows, valid, self.device)
        return _gather(self.dataset, rows[self.rows], valid[self.rows], self.device, int(valid.sum()))

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


class WindowSampler(_Sampler):
    """Decision-Transformer-style windows of up to ``context_len`` steps inside one episode.

    ``align="start"`` (DT's gym code): the window starts at a step drawn uniformly from all steps
    (``si = random.randint(0, traj_len - 1)`` on a length-proportional episode) and is cut at the
    episode end. ``align="end"`` (d3rlpy's trajectory slicer): the window ENDS at the uniformly drawn
    step and is cut at the episode start, so every step is the last, fully informed position of a
    window equally often, and the first steps of an episode are seen with their short history.
    Each under-trains one end of an episode: a step within K of the episode's start (``start``) or end
    (``end``) lies in fewer windows than the rest, down to one. ``align="uniform"``: the window is one of
    the ``L + K - 1`` K-step windows that overlap an episode of ``L`` steps (cut to it), drawn uniformly
    from all episodes' such windows, so every step, first and last included, lies in a window equally
    often (K of them); the first steps are seen with their short history, the last ones at every position.
    Every way the real steps come first and the rest is padded on the right (DT and d3rlpy pad on the
    left, which would feed padding into a recurrent state; for a causal model the two are the same).
    """

    def __init__(
        self,
        dataset: TrajectoryDataset,
        context_len: int = 20,
        batch_size: int = 64,
        *,
        seed: int | np.random.Generator | None = 0,
        device: str | torch.device = "cpu",
        align: str = "start",
        rank: int = 0,
        world_size: int = 1,
    ):
        if context_len < 1 or batch_size < 1:
            raise ValueError(f"context_len and batch_size must be >= 1, got {context_len}, {batch_size}")
        if align not in WINDOW_ALIGNS:
            raise ValueError(f"align must be one of {WINDOW_ALIGNS}, got {align!r}")
        super().__init__(dataset, batch_size, seed, device, rank, world_size)
        self.align = align
        self.context_len = context_len
        # align="uniform": episode e owns windows slots[e]:slots[e + 1], one per first step it may start at
        self._slots = np.concatenate(([0], np.cumsum(dataset.episode_lengths + context_len - 1)))

    def sample(self) -> Batch:
        """One batch, ``(batch_size / world_size, context_len)``."""
        data = self.dataset
        K = self.context_len
        if self.align == "uniform":
            slot = self.rng.integers(0, self._slots[-1], size=self.batch_size)  # (B,) uniform over windows
            episode = np.searchsorted(self._slots, slot, side="right") - 1  # (B,)
            first = data.offsets[episode] + slot - self._slots[episode] - (K - 1)  # may lie before the episode
            starts = np.maximum(first, data.offsets[episode])
            stops = np.minimum(first + K, data.offsets[episode + 1])
        else:
            drawn = self.rng.integers(0, data.num_steps, size=self.batch_size)  # (B,) uniform over all steps
            episode = np.searchsorted(data.offsets, drawn, side="right") - 1  # (B,)
            if self.align == "start":
                starts, stops = drawn, data.offsets[episode + 1]  # stop: one past the last row allowed
            else:
                starts, stops = np.maximum(drawn - K + 1, data.offsets[episode]), drawn + 1
        rows = starts[:, None] + np.arange(K)  # (B, K)
        valid = rows < stops[:, None]  # (B, K)
        return self._shard(rows, valid)


class EpisodeSampler(_Sampler):
    """Whole episodes from their first step, right-padded to the longest in the batch.

    Starting at the episode's first step makes a recurrent state in training equal the state at
    rollout time. Episodes are drawn with replacement, with probability proportional to length
    (as :class:`WindowSampler`, so both see every step equally often). ``max_len`` crops each episode
    to its first ``max_len`` steps; the batch is then ``min(longest, max_len)`` long.
    """

    def __init__(
        self,
        dataset: TrajectoryDataset,
        batch_size: int = 16,
        *,
        max_len: int | None = None,
        seed: int | np.random.Generator | None = 0,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1 or (max_len is not None and max_len < 1):
            raise ValueError(f"batch_size and max_len must be >= 1, got {batch_size}, {max_len}")
        super().__init__(dataset, batch_size, seed, device, rank, world_size)
        self.max_len = max_len

    def sample(self) -> Batch:
        """One batch, ``(batch_size / world_size, T)`` with ``T`` the longest (cropped) episode in it."""
        data = self.dataset
        steps = self.rng.integers(0, data.num_steps, size=self.batch_size)  # (B,)
        episode = np.searchsorted(data.offsets, steps, side="right") - 1  # (B,) proportional to length
        lengths = data.episode_lengths[episode]  # (B,)
        if self.max_len is not None:
            lengths = np.minimum(lengths, self.max_len)
        episode, total = episode[self.rows], int(lengths.sum())
        lengths = lengths[self.rows]  # this rank's episodes, padded to the longest of them
        positions = np.arange(lengths.max())  # (T,)
        rows = data.offsets[episode][:, None] + positions  # (b, T)
        valid = positions < lengths[:, None]  # (b, T)
        return _gather(data, rows, valid, self.device, None if self.world_size == 1 else total)


class StreamSampler(_Sampler):
    """``batch_size`` streams, each walking whole episodes in consecutive chunks of ``chunk_len`` steps.

    Truncated backpropagation through time for a recurrent agent: the trainer passes each chunk's final
    backbone state to :meth:`advance`, and the stream's next chunk starts from it (detached), so the state
    a step is trained with summarises its episode from step 0, as at rollout, while every update still
    sees ``batch_size`` different episodes (the episode context sees only a few). A chunk is cut at its
    episode's end (right padding); the stream then starts a new episode, drawn uniformly, from step 0 and
    a zero state. At the very start each stream begins at a uniformly drawn step (zero state), so the
    streams are spread over all timesteps instead of walking in lock-step from step 0.
    """

    def __init__(
        self,
        dataset: TrajectoryDataset,
        chunk_len: int = 20,
        batch_size: int = 64,
        *,
        seed: int | np.random.Generator | None = 0,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ):
        if chunk_len < 1 or batch_size < 1:
            raise ValueError(f"chunk_len and batch_size must be >= 1, got {chunk_len}, {batch_size}")
        super().__init__(dataset, batch_size, seed, device, rank, world_size)
        self.chunk_len = chunk_len
        drawn = self.rng.integers(0, dataset.num_steps, size=batch_size)  # (B,) uniform over all steps
        self.episode = np.searchsorted(dataset.offsets, drawn, side="right") - 1  # (B,)
        self.next_row = drawn  # (B,) dataset row the stream's next chunk starts at
        self.state: tuple[torch.Tensor, ...] | None = None  # this rank's streams' backbone state; None: all zero

    def sample(self) -> Batch:
        """This rank's streams' next chunks, ``(batch_size / world_size, chunk_len)``, with the state each starts
        from. Every rank walks all ``batch_size`` streams' positions; each carries only its own streams' state."""
        rows = self.next_row[:, None] + np.arange(self.chunk_len)  # (B, C)
        valid = rows < self.dataset.offsets[self.episode + 1][:, None]
        batch = self._shard(rows, valid)
        batch.state = self.state
        return batch

    def advance(self, final_state: tuple[torch.Tensor, ...]) -> None:
        """Move every stream past the chunk just sampled; ``final_state``: the backbone state after it."""
        data = self.dataset
        self.next_row = self.next_row + self.chunk_len
        ended = self.next_row >= data.offsets[self.episode + 1]  # (B,)
        new = self.rng.integers(0, data.num_episodes, size=int(ended.sum()))
        self.episode[ended], self.next_row[ended] = new, data.offsets[new]
        # a stream whose episode ended, or whose state is not finite (a batch the trainer skipped), starts from zero
        keep = _to_device(~ended[self.rows], self.device)
        for s in final_state:
            keep = keep & torch.isfinite(s.detach()).flatten(1).all(1)
        self.state = tuple(torch.where(keep.view(-1, *[1] * (s.dim() - 1)), s.detach(), torch.zeros_like(s))
                           for s in final_state)

    def state_dict(self) -> dict:
        """The streams' positions and this rank's carried state (data parallel: the trainer stacks the ranks'
        states into the global batch's before saving)."""
        state = None if self.state is None else [s.cpu() for s in self.state]
        return {**super().state_dict(), "episode": self.episode.copy(), "next_row": self.next_row.copy(),
                "state": state}

    def load_state_dict(self, state: dict) -> None:
        """Restore from a state whose carried state holds all ``batch_size`` streams; this rank keeps its rows."""
        super().load_state_dict(state)
        self.episode, self.next_row = state["episode"].copy(), state["next_row"].copy()
        self.state = None if state["state"] is None else tuple(s[self.rows].to(self.device) for s in state["state"])
