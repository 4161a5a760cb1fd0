"""minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv 2410.01201, Sec. 3.2 and App. B).

    f_t = sigmoid(Linear(x_t)),  i_t = sigmoid(Linear(x_t)),  h~_t = g(Linear(x_t))
    f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t),  h_t = f'_t * h_{t-1} + i'_t * h~_t

The normalised gates sum to one, which makes the scale of h independent of time (the paper's
length-independence argument). A public minLSTM implementation applies g to the starting state again
in its parallel path, so parallel and step-by-step results differ when a state is given; here the state
is the hidden state itself and enters the scan linearly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .minrnn import MinRNN, MinRNNMixer


class MinLSTMMixer(MinRNNMixer):
    """in-proj -> minLSTM recurrence -> out-proj."""

    n_branches = 3  # forget gate, input gate, candidate

    def logits(self, k_f: torch.Tensor, k_i: torch.Tensor, k_h: torch.Tensor):
        # the candidate's share i' = i / (f + i) = sigmoid(log i - log f). Unlike f / (f + i), this stays
        # finite when both sigmoids underflow (the paper's log-space form, App. B)
        return F.softplus(-k_f) - F.softplus(-k_i), k_h


class MinLSTM(MinRNN):
    """Residual stack of MinLSTM mixers. State: (h_1, ..., h_L), h_l: (B, expansion * dim)."""

    mixer_cls = MinLSTMMixer
