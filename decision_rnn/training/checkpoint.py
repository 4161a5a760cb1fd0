"""Self-describing, atomically written, checksummed checkpoints.

Layout of a run directory's checkpoints::

    RUN/checkpoints/step_00005000/model.safetensors   weights + normalisation buffers
    RUN/checkpoints/step_00005000/meta.json           format version, configs, step, env, datasets, reference scores
    RUN/checkpoints/step_00005000/trainer.pt          optimizer, scheduler, RNG states (resume only)
    RUN/checkpoints/step_00005000/SHA256SUMS          sha256 of each file above (`sha256sum -c SHA256SUMS` reads it)
    RUN/checkpoints/latest                            name of the newest complete checkpoint

A checkpoint is written into a hidden temporary directory and renamed into place only when every
file is on disk, then `latest` is replaced atomically: an interrupted save never leaves a
half-written checkpoint where a loader would find it. Loading checks every hash, meta.json's included,
so a truncated or edited file (a weight, or a value such as `activation` or `ref_max_score`) gives a
clear `CheckpointError` naming the intact checkpoints beside it instead of a different policy.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..config import model_config_from_saved, resolve_device
from ..errors import DiskFullError
from ..models import DecisionRNN

FORMAT_VERSION = 2
WEIGHTS, META, TRAINER, SUMS = "model.safetensors", "meta.json", "trainer.pt", "SHA256SUMS"
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"  # a checkpoint moved aside while the same step is saved again


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


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync `data`; the file gets the mode the umask gives (0644 under the usual 022)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` by `text` at once: a reader sees the old content or the new, never part of it."""
    tmp = path.with_name(f".{path.name}{TMP_PREFIX}{os.getpid()}")
    _write_file(tmp, text.encode())
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temps(ckpt_root: Path, *, any_pid: bool = False) -> None:
    """Remove temporary files and directories interrupted saves left in `ckpt_root`.

    By default only those of this process and of processes no longer running: another live process's
    save in progress is never touched. `any_pid`: every one (for a caller holding the run's lock)."""
    def abandoned(path: Path) -> bool:
        pid = path.name.rsplit("-", 1)[-1]
        return any_pid or not pid.isdigit() or int(pid) == os.getpid() or not _pid_alive(int(pid))

    for stale in ckpt_root.glob(f"*{TMP_PREFIX}*"):
        if abandoned(stale):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
    for old in ckpt_root.glob(f"{OLD_PREFIX}*"):
        if abandoned(old):
            final = ckpt_root / old.name.removeprefix(OLD_PREFIX).rsplit("-", 1)[0]
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:  # a save killed between its two renames: the earlier copy is the checkpoint
                os.rename(old, final)


def save_checkpoint(
    run_dir: str | os.PathLike,
    model: DecisionRNN,
    step: int,
    *,
    meta: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write `RUN/checkpoints/step_<step>` atomically and point `latest` at it. Returns its path.

    Raises `DiskFullError` (naming the path and the bytes needed) when the disk fills; the temporary
    directory is then removed and the previous checkpoints stay as they were."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(ckpt_root)
    name = f"step_{step:08d}"
    record = {"format_version": FORMAT_VERSION, "step": step, "model_config": asdict(model.config), **(meta or {})}
    files = {WEIGHTS: safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})}
    if trainer_state is not None:
        buffer = io.BytesIO()
        torch.save(trainer_state, buffer)
        files[TRAINER] = buffer.getvalue()
    files[META] = json.dumps(record, indent=2).encode()
    files[SUMS] = "".join(f"{hashlib.sha256(data).hexdigest()}  {f}\n" for f, data in files.items()).encode()
    final = ckpt_root / name
    tmp = ckpt_root / f"{TMP_PREFIX}{name}-{os.getpid()}"
    try:
        tmp.mkdir()
        for f, data in files.items():
            _write_file(tmp / f, data)
        _fsync_dir(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            needed = sum(len(data) for data in files.values())
            free = shutil.disk_usage(ckpt_root).free
            raise DiskFullError(
                f"no space left on the device of {ckpt_root} while saving {final}: the checkpoint needs "
                f"{needed / 1e6:.1f} MB, {free / 1e6:.1f} MB are free. Free some space (earlier checkpoints "
                f"are intact; resume with --resume)") from e
        raise
    old = None
    if final.exists():  # the same step saved again: move the old copy aside first, so a kill leaves one of the two
        old = ckpt_root / f"{OLD_PREFIX}{name}-{os.getpid()}"
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(ckpt_root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    write_text_atomic(ckpt_root / "latest", name + "\n")
    return final


def _step_of(ckpt: Path) -> int:
    """The update a `step_*` folder holds, for ordering (its name has 8 digits up to step 10^8, more beyond)."""
    digits = ckpt.name.removeprefix("step_")
    return int(digits) if digits.isdigit() else -1


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
    found = sorted((p for p in root.glob("step_*") if (p / META).exists()), key=_step_of)
    if not found:
        raise CheckpointError(
            f"no checkpoint found under {path}: expected a run directory with checkpoints/step_*/"
            f"{META} (was training started with --out {path}?)"
        )
    return found[-1]


def _problem(ckpt: Path, *, verify: bool = True) -> tuple[dict[str, Any] | None, str | None]:
    """(meta, None) for a sound checkpoint, else (None, what is wrong with it). meta.json's hash is always
    checked (it is small); with `verify`, every other file's too."""
    try:
        meta = json.loads((ckpt / META).read_text())
    except FileNotFoundError:
        return None, f"is incomplete: {META} is missing"
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, f"is corrupt: {META} is not valid JSON ({e})"
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        from .. import __version__

        return None, (f"has checkpoint format {version!r}; decision-rnn {__version__} reads format {FORMAT_VERSION} "
                      "only: load it with the decision-rnn that wrote it, or retrain")
    try:
        sums = dict(reversed(line.split(None, 1)) for line in (ckpt / SUMS).read_text().splitlines() if line.strip())
    except FileNotFoundError:
        return None, f"is incomplete: {SUMS} is missing"
    except ValueError:
        return None, f"is corrupt: {SUMS} is not in sha256sum's format"
    if META not in sums or WEIGHTS not in sums:
        return None, f"is corrupt: {SUMS} does not list {META} and {WEIGHTS}"
    for name in sums if verify else [META]:
        file = ckpt / name
        if not file.exists():
            return None, f"is incomplete: {name} is missing"
        if _sha256(file) != sums[name]:
            return None, f"is corrupt: {name} does not match the sha256 recorded in {SUMS} (truncated or modified file)"
    return meta, None


def _refusal(ckpt: Path, problem: str) -> CheckpointError:
    """The error for an unusable checkpoint, naming the sound checkpoints beside it to fall back to."""
    intact = [p for p in sorted(ckpt.parent.glob("step_*"), key=_step_of, reverse=True)
              if p != ckpt and _problem(p)[1] is None]
    if intact:
        fallback = (f"intact checkpoints beside it, newest first: {', '.join(p.name for p in intact)} (load one by "
                    f"its path, e.g. {intact[0]}; to resume from it, move {ckpt.name} out of {ckpt.parent})")
    else:
        fallback = "no intact checkpoint beside it to fall back to"
    return CheckpointError(f"checkpoint {ckpt} {problem}; {fallback}")


def read_meta(checkpoint: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint's meta.json after checking its sha256; with `verify`, every other file's too."""
    ckpt = find_checkpoint(checkpoint)
    meta, problem = _problem(ckpt, verify=verify)
    if problem is not None:
        raise _refusal(ckpt, problem)
    meta["path"] = str(ckpt)
    return meta


def load_model(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[DecisionRNN, dict]:
    """Rebuild the model from a checkpoint alone (no training code or dataset needed). Eval mode."""
    device = resolve_device(device)
    meta = read_meta(checkpoint)
    model = DecisionRNN(model_config_from_saved(meta["model_config"]))
    try:
        weights = load_file(str(Path(meta["path"]) / WEIGHTS))
    except Exception as e:  # safetensors raises its own error type for malformed files
        raise _refusal(Path(meta["path"]), f"is corrupt: cannot read {WEIGHTS} ({e})") from e
    bad = [name for name, w in weights.items() if w.is_floating_point() and not bool(torch.isfinite(w).all())]
    if bad:
        raise _refusal(Path(meta["path"]), f"holds non-finite weights (NaN or inf in {', '.join(bad[:3])}): its "
                                           "policy would act NaN")
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
