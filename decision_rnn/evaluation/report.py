"""Evaluate a saved run: rollouts per target return and seed, a summary table, files next to the run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..policy import Policy
from .rollout import default_target_return, rollout


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


def evaluate_run(run, *, episodes=10, target_returns=None, seeds=(0,), device="cpu", runtime="torch",
                 weights="float32", out_dir=None) -> dict:
    """Evaluate a run's last checkpoint; writes per-episode CSV and a JSON summary next to it.

    `runtime`, `weights`: as `Policy`'s (evaluate the policy as it will be deployed)."""
    policy = Policy.load(run, device=device, runtime=runtime, weights=weights)
    env_id = policy.env_id
    targets = list(target_returns or [default_target_return(env_id)])
    ref = policy.meta.get("ref_min_score"), policy.meta.get("ref_max_score")  # the training data's
    frames = [
        rollout(policy, env_id, episodes, t, seed=s * 1_000_003, ref=ref).assign(seed_group=s)
        for t in targets
        for s in seeds
    ]
    frame = pd.concat(frames, ignore_index=True)
    given = Path(run).resolve() == Path(policy.meta["path"]).resolve()  # a checkpoint, not a run directory
    kind = "given" if given else "last"
    summary = {
        "run": str(run),
        "checkpoint": policy.meta["path"],
        "checkpoint_step": policy.meta["step"],
        "checkpoint_kind": kind,
        "env_id": env_id,
        "datasets": policy.meta.get("datasets"),
        "backbone": policy.model.config.backbone,
        "device": str(device),
        "runtime": runtime,
        "weights": weights,
        "results": summarize(frame),
    }
    # a run's evaluation goes into the run directory, a given checkpoint's into the checkpoint
    ckpt = Path(policy.meta["path"])
    out_dir = Path(out_dir or (ckpt if given else ckpt.parent.parent) / "eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out_dir / "episodes.csv", index=False)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["files"] = {"episodes": str(out_dir / "episodes.csv"), "summary": str(out_dir / "summary.json")}
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
