"""Evaluate a saved run: rollouts per target return and seed, a summary table, and files next to the run that
later evaluations add to, never replace."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import math
import os
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import pandas as pd

from ..config import resolve_device
from ..policy import Policy
from ..training import distributed
from .rollout import default_target_return, rollouts


def summarize(frame: pd.DataFrame) -> list[dict]:
    """Per target return: mean normalized score, its std over episodes and over seed groups."""
    rows = []
    for t, g in frame.groupby("target_return"):
        per_seed = g.groupby("seed_group")["normalized_score"].mean()
        rows.append({
            "target_return": float(t),
            "episodes": int(len(g)),
            "seeds": int(per_seed.size),
            "score_mean": float(g.normalized_score.mean()),
            "score_std_episodes": float(g.normalized_score.std(ddof=0)),
            "score_std_seeds": float(per_seed.std(ddof=0)) if per_seed.size > 1 else None,
            "return_mean": float(g["return"].mean()),
            "length_mean": float(g["length"].mean()),
        })
    return rows


INDEX_FIELDS = ["evaluation", "checkpoint_step", "target_return", "seeds", "episodes", "runtime", "weights", "device",
                "score_mean", "score_std_episodes", "score_std_seeds", "return_mean", "length_mean", "checkpoint",
                "created"]


def evaluation_name(step: int, targets, seeds, episodes: int, runtime: str, weights: str) -> str:
    """`step_00003000-target_3600-seeds_0_1-episodes_10-torch`: what an evaluation's folder is keyed by."""
    def join(values):  # many values: their count and a hash, so that the name fits a file system's limit
        joined = "_".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
        return joined if len(joined) <= 40 else f"{len(values)}-{hashlib.sha1(joined.encode()).hexdigest()[:10]}"

    name = f"step_{step:08d}-target_{join(targets)}-seeds_{join(seeds)}-episodes_{episodes}-{runtime}"
    return name if weights == "float32" else f"{name}-{weights}"


def _claim_dir(parent: Path, name: str) -> Path:
    """A new folder `parent/name`, or `name-2`, `name-3`, ... when taken: an evaluation never replaces another."""
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        path = parent / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent} holds 10,000 evaluations named {name}: remove some")


def _append_index(index: Path, rows: list[dict]) -> None:
    """Append rows to the CSV `index`, the header first if it is empty; locked, so that evaluations running at once
    neither interleave their rows nor both write the header."""
    with open(index, "a", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
        writer = csv.DictWriter(f, fieldnames=INDEX_FIELDS)
        if f.seek(0, os.SEEK_END) == 0:
            writer.writeheader()
        writer.writerows(rows)


def evaluate_run(run, *, episodes=10, target_returns=None, seeds=(0,), device="cpu", runtime="auto",
                 weights="float32", out_dir=None, workers=1) -> dict | None:
    """Evaluate a run's last checkpoint (or a given checkpoint); returns the summary and writes it to files.

    Each evaluation gets its own folder, `eval/<evaluation_name>/` with `summary.json` and `episodes.csv`, and a
    row per target in `eval/index.csv`; nothing an earlier evaluation wrote is replaced. `eval/` is in the run
    directory, or in the checkpoint when one is given (`out_dir` overrides it).
    `runtime`, `weights`: as `Policy`'s (evaluate the policy as it will be deployed). `workers`: processes the
    episodes are split over (`rollouts`: the same episodes and scores); under torchrun the ranks split them and
    rank 0 alone writes and returns the summary (the others return None)."""
    seeds = list(seeds)
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive integer (episodes per target and seed), got {episodes!r}")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad or not seeds:
        raise ValueError(f"seeds must be integers >= 0, got {seeds}")
    if target_returns is not None and not all(math.isfinite(t) for t in target_returns):
        raise ValueError(f"target returns must be finite numbers, got {list(target_returns)}")
    resolve_device(str(device))  # a clear error for cuda without a GPU, before loading anything
    # One checkpoint for every process, though training may save a newer one meanwhile: rank 0 (or this process)
    # picks it, the other ranks and the workers load that one
    distributed.init("cpu")
    main = distributed.rank() == 0
    policy = Policy.load(run, device=device, runtime=runtime, weights=weights) if main else None
    checkpoint = distributed.broadcast(policy.meta["path"] if main else None)
    if not main:
        policy = Policy.load(checkpoint, device=device, runtime=runtime, weights=weights)
    runtime = policy.runtime  # the one `auto` picked
    env_id = policy.env_id
    targets = [float(t) for t in (target_returns or [default_target_return(env_id)])]
    ref = policy.meta.get("ref_min_score"), policy.meta.get("ref_max_score")  # the training data's
    runs = [(t, s) for t in targets for s in seeds]
    given = Path(run).resolve() == Path(checkpoint).resolve()  # a checkpoint, not a run directory
    ckpt = Path(checkpoint)
    root = Path(out_dir or (ckpt if given else ckpt.parent.parent) / "eval")
    # the folder is claimed before the episodes run: a place that cannot be written fails now, not after them
    folder = _claim_dir(root, evaluation_name(policy.meta["step"], targets, seeds, episodes, runtime, weights)) \
        if main else None
    try:
        frames = rollouts(policy, env_id, episodes, [(t, s * 1_000_003) for t, s in runs], ref=ref, workers=workers,
                          load=partial(Policy.load, checkpoint, device=device, runtime=runtime, weights=weights))
    except BaseException:
        if folder is not None:
            folder.rmdir()  # still empty: an evaluation that did not finish leaves nothing
        raise
    if frames is None:  # a rank other than 0 under torchrun: rank 0 has the episodes and writes them
        return None
    frame = pd.concat([f.assign(seed_group=s) for f, (_, s) in zip(frames, runs)], ignore_index=True)
    summary = {
        "run": str(run),
        "checkpoint": policy.meta["path"],
        "checkpoint_step": policy.meta["step"],
        "checkpoint_kind": "given" if given else "last",
        "env_id": env_id,
        "datasets": policy.meta.get("datasets"),
        "backbone": policy.model.config.backbone,
        "device": str(device),
        "runtime": runtime,
        "weights": weights,
        "episodes": episodes,
        "seeds": seeds,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "results": summarize(frame),
    }
    frame.to_csv(folder / "episodes.csv", index=False)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _append_index(root / "index.csv", [
        {**{k: r[k] for k in INDEX_FIELDS if k in r}, "evaluation": folder.name,
         "checkpoint_step": summary["checkpoint_step"], "seeds": " ".join(map(str, seeds)), "episodes": episodes,
         "runtime": runtime, "weights": weights, "device": summary["device"], "checkpoint": summary["checkpoint"],
         "created": summary["created"]}
        for r in summary["results"]
    ])
    summary["files"] = {"episodes": str(folder / "episodes.csv"), "summary": str(folder / "summary.json"),
                        "index": str(root / "index.csv")}
    return summary


def format_summary(summary: dict) -> str:
    """The summary as a small text table."""
    lines = [
        f"{summary['backbone']} on {summary['env_id']} ({', '.join(summary['datasets'] or [])}), "
        f"{summary['checkpoint_kind']} checkpoint, step {summary['checkpoint_step']}, runtime {summary['runtime']}"
        + (f" with {summary['weights']} weights" if summary["weights"] != "float32" else ""),
        f"{'target':>8} {'episodes':>8} {'normalized score':>22} {'return':>9} {'length':>7}",
    ]
    for r in summary["results"]:
        spread = f"± {r['score_std_episodes']:.1f}"
        if r["score_std_seeds"] is not None:
            spread += f" (seeds ± {r['score_std_seeds']:.1f})"
        lines.append(f"{r['target_return']:>8.0f} {r['episodes']:>8d} {r['score_mean']:>8.1f} {spread:<13} "
                     f"{r['return_mean']:>9.1f} {r['length_mean']:>7.0f}")
    return "\n".join(lines)
