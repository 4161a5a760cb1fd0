"""Training: a generic trainer, atomic self-describing checkpoints, and the `train` entry point."""

from .checkpoint import CheckpointError, find_checkpoint, load_model, read_meta, save_checkpoint
from .run import build_model, train
from .trainer import NonFiniteError, Trainer, resolve_device

__all__ = [
    "CheckpointError",
    "NonFiniteError",
    "Trainer",
    "build_model",
    "find_checkpoint",
    "load_model",
    "read_meta",
    "resolve_device",
    "save_checkpoint",
    "train",
]
