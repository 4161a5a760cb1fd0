"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?", arXiv 2410.01201, Sec. 3.1 and App. B).

    z_t = sigmoid(Linear(x_t)),  h~_t = g(Linear(x_t)),  h_t = (1 - z_t) * h_{t-1} + z_t * h~_t

The gate and the candidate see x_t only (no h_{t-1}), which makes the recurrence a linear scan.
"""

from __future__ import annotations

import torch

from .minrnn import MinRNN, MinRNNMixer


class MinGRUMixer(MinRNNMixer):
    """in-proj -> minGRU recurrence -> out-proj."""

    n_branches = 2  # gate, candidate

    def logits(self, k_z: torch.Tensor, k_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return k_z, k_h  # the candidate's share is the update gate z


class MinGRU(MinRNN):
    """Residual stack of MinGRU mixers. State: (h_1, ..., h_L), h_l: (B, expansion * dim)."""

    mixer_cls = MinGRUMixer
