"""Dataset + configs -> a trained run directory. The one function the CLI and the experiments call.

A run directory is marked by `run.json` (its format, when it was created, by which decision-rnn). `train` writes
only into a run or into a new (missing or empty) directory; anything else is refused before a file is touched.
While it trains it holds an exclusive lock on the run (`RUN/.lock`, which holds its pid), so a second trainer
on the same directory stops at once and names the first one's pid.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, fields
from datetime import datetime, timezone
from pathlib import Path

from ..config import ModelConfig, TrainConfig, validate
from ..errors import RunDirError
from ..models import DecisionRNN
from . import distributed
from .checkpoint import TMP_PREFIX, CheckpointError, remove_stale_temps, write_text_atomic
from .trainer import EvalHook, Trainer, seed_everything

log = logging.getLogger(__name__)

RUN_FILE, LOCK_FILE = "run.json", ".lock"
RUN_FORMAT = 1


def build_model(dataset, config: ModelConfig) -> DecisionRNN:
    """A fresh agent for `dataset`, its observation statistics stored inside the model."""
    _check_dims(dataset, config)
    model = DecisionRNN(config)
    model.set_normalization(dataset.obs_mean, dataset.obs_std)
    return model


def _check_dims(dataset, config: ModelConfig) -> None:
    if (config.obs_dim, config.act_dim) != (dataset.obs_dim, dataset.act_dim):
        raise ValueError(
            f"model expects obs_dim={config.obs_dim}, act_dim={config.act_dim} but the dataset "
            f"({dataset.env_id}) has obs_dim={dataset.obs_dim}, act_dim={dataset.act_dim}"
        )


# ---- checks before any work ---------------------------------------------------------------------------
def _accepts(tp, value) -> bool:
    """Whether `value` (as parsed from JSON or given in Python) fits the annotation `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in args)
    if origin is typing.Literal:
        return value in args
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, origin or tp)


def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    return "null" if tp is type(None) else getattr(origin or tp, "__name__", str(tp))


def check_types(cls, values: dict) -> None:
    """Refuse unknown fields of the config dataclass `cls` and values of the wrong type (an int field given
    40.5, a bool field given "yes"), naming each with the type it needs."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(hints)}")
    bad = [f"{name}={value!r} (needs {_describe(hints[name])})" for name, value in values.items()
           if not _accepts(hints[name], value)]
    if bad:
        raise ValueError(f"{cls.__name__}: wrong type for {', '.join(bad)}")


def check_configs(model_config: ModelConfig, train_config: TrainConfig) -> None:
    """Types and values of both configs, as `Trainer` needs them (a clear error before any work)."""
    for config in (model_config, train_config):
        check_types(type(config), {f.name: getattr(config, f.name) for f in fields(config)})
    validate(model_config, train_config)
    if train_config.seed < 0:
        raise ValueError(f"seed must be >= 0, got {train_config.seed}")


@functools.cache
def _env_shapes(env_id: str) -> tuple[tuple, tuple]:
    import gymnasium as gym

    env = gym.make(env_id)
    try:
        return env.observation_space.shape, env.action_space.shape
    finally:
        env.close()


def check_env(dataset) -> None:
    """Refuse a dataset whose observation or action size is not its environment's (the env is built, not
    stepped). An environment gymnasium does not know is not checked: it cannot be evaluated either."""
    import gymnasium as gym

    if dataset.env_id not in gym.envs.registry:
        log.warning("%s is not a registered gymnasium env: the data's shapes are not checked against it",
                    dataset.env_id)
        return
    obs_shape, act_shape = _env_shapes(dataset.env_id)
    if obs_shape != (dataset.obs_dim,) or act_shape != (dataset.act_dim,):
        raise ValueError(
            f"{', '.join(dataset.ids)} has observations of size {dataset.obs_dim} and actions of size "
            f"{dataset.act_dim}, but its env {dataset.env_id} has observation shape {obs_shape} and action shape "
            f"{act_shape}: the data is not from this env; name the right one (--env-id for a D4RL file)"
        )


# ---- run directories ------------------------------------------------------------------------------------
def is_run(path: str | os.PathLike) -> bool:
    return (Path(path) / RUN_FILE).is_file()


def check_run_dir(out: Path, *, resume: bool) -> bool:
    """Whether `out` holds a run. Refuses (RunDirError) a directory `train` may not write into: a run
    without `resume`, a run of another format, or a non-empty directory that is not a run."""
    if is_run(out):
        try:
            version = json.loads((out / RUN_FILE).read_text()).get("format_version")
        except (json.JSONDecodeError, AttributeError) as e:
            raise RunDirError(f"{out / RUN_FILE} is not valid JSON ({e}); pick a new --out") from None
        if version != RUN_FORMAT:
            raise RunDirError(f"{out} is a run of format {version!r}; this decision-rnn trains format {RUN_FORMAT} "
                              "runs only: pick a new --out")
        if not resume:
            raise RunDirError(f"{out} already holds a run: pass --resume to continue it, or pick a new --out")
        return True
    if out.exists() and (not out.is_dir() or any(not _ours(p.name) for p in out.iterdir())):
        raise RunDirError(f"{out} is not empty and holds no decision-rnn run (no {RUN_FILE}); nothing in it was "
                          "changed. Pick a new --out, or an empty directory")
    return False


def _ours(name: str) -> bool:
    """The lock file, or a temporary file a start killed before it wrote run.json left."""
    return name == LOCK_FILE or name.startswith(f".{RUN_FILE}{TMP_PREFIX}")


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold `out`'s exclusive training lock (flock on RUN/.lock, which holds our pid); released on exit, and by
    the kernel if the process dies. A lock another process holds is a RunDirError naming its pid."""
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirError(f"{out} is being trained by another process (pid {holder}); wait for it to finish, "
                              "or pick another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def _new_run(out: Path) -> None:
    from .. import __version__

    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_text_atomic(out / RUN_FILE, json.dumps(
        {"format_version": RUN_FORMAT, "created": created, "decision_rnn_version": __version__}, indent=2) + "\n")


def train(
    dataset,
    model_config: ModelConfig,
    train_config: TrainConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    eval_hook: EvalHook | None = None,
    progress: bool = True,
) -> dict:
    """Train a new run in `out` (a missing or empty directory), or with `resume` continue the run there (or
    start one where there is none); returns the trainer's summary.

    Everything is checked before a file is written: the configs' types and values, the data against its env,
    and that `out` may be written. Then the run is locked for the whole training."""
    out = Path(out)
    main = distributed.is_main_process()  # under torchrun, rank 0 alone writes the run directory
    check_configs(model_config, train_config)
    _check_dims(dataset, model_config)
    check_env(dataset)
    if main:
        check_run_dir(out, resume=resume)
    meta = {
        "env_id": dataset.env_id,
        "datasets": list(dataset.ids),
        "sources": list(dataset.sources),
        "dataset_steps": int(dataset.num_steps),
        "dataset_episodes": int(dataset.num_episodes),
        "ref_min_score": dataset.ref_min_score,  # floats, or None where the data has no reference returns
        "ref_max_score": dataset.ref_max_score,
    }
    seed_everything(train_config.seed)  # the same seed gives the same initial weights
    trainer = Trainer(build_model(dataset, model_config), dataset, train_config, out, eval_hook=eval_hook, meta=meta)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    with run_lock(out) if main else nullcontext():
        if main and not check_run_dir(out, resume=resume):  # again under the lock: another trainer may have begun
            _new_run(out)
        if main:  # only this process writes here now
            remove_stale_temps(out, any_pid=True)
            if (out / "checkpoints").is_dir():
                remove_stale_temps(out / "checkpoints", any_pid=True)
        distributed.barrier()  # the other ranks read the run once rank 0 has prepared it
        if resume and not trainer.resume() and main:
            log.info("no checkpoint in %s yet: starting at step 0", out)
        first = distributed.broadcast(trainer.step)
        if trainer.step != first:  # this rank read another run directory than rank 0's
            raise CheckpointError(f"rank {trainer.rank} resumes {out} at step {trainer.step}, rank 0 at step {first}: "
                                  "every rank must see the same run directory (on several nodes, a shared "
                                  "filesystem)")
        if main:
            write_text_atomic(out / "config.json", json.dumps(
                {"model": asdict(model_config), "train": asdict(train_config), **meta}, indent=2) + "\n")
        summary = trainer.fit(progress=progress)
    log.info("trained %s: %s", out, summary)
    return summary
