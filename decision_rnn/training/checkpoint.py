"""Self-describing, atomically written checkpoints.

Layout of a run directory::

    RUN/checkpoints/step_00005000/model.safetensors   weights + normalisation buffers
    RUN/checkpoints/step_00005000/meta.json           format version, configs, step, env, datasets,
                                                      sha256 of the other files
    RUN/checkpoints/step_00005000/trainer.pt          optimizer, scheduler, RNG states (resume only)
    RUN/checkpoints/latest                            name of the newest complete checkpoint

A checkpoint is written into a hidden temporary directory and renamed into place only when every
file is on disk, then `latest` is replaced atomically: an interrupted save never leaves a
half-written checkpoint where a loader would find it. Loading checks the hashes, so a truncated or
edited file gives a clear `CheckpointError` instead of garbage weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..config import model_config_from_saved
from ..models import DecisionRNN

FORMAT_VERSION = 1
WEIGHTS, META, TRAINER = "model.safetensors", "meta.json", "trainer.pt"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or of an unknown format."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    run_dir: str | os.PathLike,
    model: DecisionRNN,
    step: int,
    *,
    meta: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write `RUN/checkpoints/step_<step>` atomically and point `latest` at it. Returns its path."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    for stale in ckpt_root.glob(".tmp-*"):  # left by an interrupted save
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step_{step:08d}"
    tmp = ckpt_root / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp / WEIGHTS))
    files = [WEIGHTS]
    if trainer_state is not None:
        torch.save(trainer_state, tmp / TRAINER)
        files.append(TRAINER)
    record = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "model_config": asdict(model.config),
        **(meta or {}),
        "sha256": {f: _sha256(tmp / f) for f in files},
    }
    with open(tmp / META, "w") as f:
        json.dump(record, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    for f in files:
        with open(tmp / f, "rb+") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    final = ckpt_root / name
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(ckpt_root)
    _write_text_atomic(ckpt_root / "latest", name + "\n")
    return final


def find_checkpoint(path: str | os.PathLike) -> Path:
    """Resolve a run directory, its `checkpoints/` folder or a checkpoint folder to a checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no such run or checkpoint: {path}")
    if (path / META).exists() or (path / WEIGHTS).exists():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    latest = root / "latest"
    if latest.exists():
        candidate = root / latest.read_text().strip()
        if candidate.is_dir():
            return candidate
    found = sorted(p for p in root.glob("step_*") if (p / META).exists())
    if not found:
        raise CheckpointError(
            f"no checkpoint found under {path}: expected a run directory with checkpoints/step_*/"
            f"{META} (was training started with --out {path}?)"
        )
    return found[-1]


def read_meta(checkpoint: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """Read and validate a checkpoint's meta.json; with `verify`, check every file's sha256."""
    ckpt = find_checkpoint(checkpoint)
    try:
        meta = json.loads((ckpt / META).read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {ckpt} is incomplete: {META} is missing") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: {META} is not valid JSON ({e})") from e
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {ckpt} has format_version {version!r}; this decision-rnn reads {FORMAT_VERSION}"
        )
    if verify:
        for name, digest in meta.get("sha256", {}).items():
            file = ckpt / name
            if not file.exists():
                raise CheckpointError(f"checkpoint {ckpt} is incomplete: {name} is missing")
            if _sha256(file) != digest:
                raise CheckpointError(
                    f"checkpoint {ckpt} is corrupt: {name} does not match the sha256 recorded in {META} "
                    "(truncated or modified file); use an earlier checkpoint"
                )
    meta["path"] = str(ckpt)
    return meta


def load_model(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[DecisionRNN, dict]:
    """Rebuild the model from a checkpoint alone (no training code or dataset needed). Eval mode."""
    meta = read_meta(checkpoint)
    model = DecisionRNN(model_config_from_saved(meta["model_config"]))
    try:
        weights = load_file(str(Path(meta["path"]) / WEIGHTS))
    except Exception as e:  # safetensors raises its own error type for malformed files
        raise CheckpointError(f"checkpoint {meta['path']}: cannot read {WEIGHTS}: {e}") from e
    model.load_state_dict(weights)
    return model.to(device).eval(), meta


def load_trainer_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The optimizer/scheduler/RNG state saved beside the weights (verified)."""
    meta = read_meta(checkpoint)
    path = Path(meta["path"]) / TRAINER
    if not path.exists():
        raise CheckpointError(f"checkpoint {meta['path']} holds no trainer state: it cannot be resumed")
    # weights_only: tensors, plain containers and numpy arrays (the samplers' positions); no other code runs,
    # so a run directory from elsewhere cannot execute anything through its trainer.pt
    multiarray = getattr(np, "_core", None) or np.core
    dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    with torch.serialization.safe_globals([np.ndarray, np.dtype, multiarray.multiarray._reconstruct, *dtypes]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"checkpoint {meta['path']}: {TRAINER} holds objects other than tensors, "
                                  f"containers and numpy arrays; refused, as loading them could run code ({e})") from e
