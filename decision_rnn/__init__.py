"""decision-rnn: return-conditioned offline RL (Decision-Transformer style) on parallel recurrent
backbones (minGRU, minLSTM, LRU) with O(1)-per-step acting."""

from .config import ModelConfig, TrainConfig
from .models import DecisionRNN
from .policy import Policy

__version__ = "0.1.0"
__all__ = ["DecisionRNN", "ModelConfig", "Policy", "TrainConfig", "__version__"]
