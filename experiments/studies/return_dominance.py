"""How much of a compact token is the return? Its share at the data's returns and at DT's targets.

    python experiments/studies/return_dominance.py RUN_DIR [RUN_DIR ...]

A compact token is LayerNorm(emb(R) + emb(s) + emb(a_{t-1}) + time(t)), and emb(R) is linear in R. For
each run's last checkpoint, on 2,000 logged steps of its training data, this reports the norm of the
return part at several returns-to-go, the norm of the rest (state, previous action, time), and the
cosine between the normalized token and the normalized rest: 1 when the return barely moves the token,
near 0 when the token is mostly the return (what the backbone then sees of the state is scaled down
accordingly); and the cosine between the return part and the one at DT's target (near 1: the agent can
hardly tell that return from the target). The returns: the data's median and 99th-percentile
return-to-go, and 0.5, 1 and 1.25x DT's target. `ModelConfig.return_ln` bounds the return part.
Writes results/return_dominance_cpu.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from decision_rnn import Policy
from decision_rnn.data import load_dataset
from decision_rnn.evaluation import default_target_return

ROOT = Path(__file__).resolve().parents[2]


def normalized(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)


@torch.no_grad()
def measure(run: Path, rows: int = 2000) -> list[dict]:
    policy = Policy.load(run)
    model = policy.model
    if model.config.tokens != "compact":
        raise SystemExit(f"{run}: {model.config.tokens} tokens; this measures compact ones")
    data = load_dataset(policy.meta["datasets"])
    i = np.random.default_rng(0).choice(data.num_steps, min(rows, data.num_steps), replace=False)
    prev = np.where((data.timesteps[i] > 0)[:, None], data.actions[np.maximum(i - 1, 0)], 0.0)
    rest = model._state_emb(torch.from_numpy(data.observations[i])) + model._time(torch.from_numpy(data.timesteps[i]))
    if model.embed_action is not None:  # prev_action=False: no action part
        rest = rest + model.embed_action(torch.from_numpy(prev))
    target = default_target_return(policy.env_id)
    returns = {"data median": float(np.median(data.returns_to_go)),
               "data 99th pct": float(np.percentile(data.returns_to_go, 99)),
               "0.5x target": 0.5 * target, "target": target, "1.25x target": 1.25 * target}
    at_target = model._return_emb(torch.tensor([target]))
    out = []
    for label, R in returns.items():
        r = model._return_emb(torch.full((len(i),), R))
        cos = torch.nn.functional.cosine_similarity(normalized(r + rest), normalized(rest), dim=-1)
        like_target = torch.nn.functional.cosine_similarity(r[:1], at_target, dim=-1)
        out.append({"run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run),
                    "backbone": model.config.backbone, "return_ln": model.config.return_ln, "returns": label,
                    "R": R, "|return part|": r.norm(dim=-1).mean().item(), "|rest|": rest.norm(dim=-1).mean().item(),
                    "cos(token, rest)": cos.mean().item(), "cos(return part, at target)": like_target.item()})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args()
    frame = pd.DataFrame([r for run in args.runs for r in measure(run.resolve())])
    text = ("# The return's share of a compact token (last checkpoint, 2,000 logged steps of its data)\n\n"
            "`cos(token, rest)`: cosine between the normalized token and its normalized state + previous action "
            "+ time part (1: the return barely moves the token); `cos(return part, at target)`: between the return "
            "part and the one at DT's target. experiments/studies/return_dominance.py\n\n"
            + frame.to_markdown(index=False, floatfmt=".2f") + "\n")
    (ROOT / "results" / "return_dominance_cpu.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
