"""What a user gets from `Policy.load(run).act(...)` with no options: the default runtime's latency at batch 1.

For each preset at DT's size (embed 128, 3 layers), a run is trained for 2 updates on the embedded dataset (latency
does not depend on the weights' values), loaded with `Policy.load(run)` (runtime="auto") and timed per `act`
(median and p99 over `--calls` calls, one thread), next to `runtime="torch"` in the same process.

    python experiments/bench_policy_default.py [--calls 3000] [--presets fast minlstm-return-ln dt]

Writes results/bench_policy_default_cpu.md.
"""

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_latency import cpu_description, timed

from decision_rnn import Policy
from decision_rnn.data import EMBEDDED_DATASET, load_dataset
from decision_rnn.presets import model_config, train_config
from decision_rnn.training import train

ROOT = Path(__file__).resolve().parents[1]


def acting(policy: Policy, obs: np.ndarray):
    """One `act` per call as a control loop makes it (reward 0.0 on the first), a new episode every 900 calls."""
    step = 0

    def act():
        nonlocal step
        if step % 900 == 0:
            policy.reset()
        step += 1
        policy.act(obs, 1.0)

    return act


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--presets", nargs="+", default=["fast", "minlstm-return-ln", "dt"])
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(str(EMBEDDED_DATASET))
    obs = data.observations[100]
    lines = ["# `Policy.load(run).act(obs, reward)` at batch 1, default runtime against torch", "",
             f"CPU: {cpu_description()}; torch {torch.__version__}, 1 thread; {args.calls} calls per row; "
             f"load average at start {os.getloadavg()[0]:.2f}.", "",
             "| preset | backbone, tokens | runtime | median µs | p99 µs |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            run = Path(tmp) / preset
            model_cfg = model_config(preset, data.obs_dim, data.act_dim)
            train(data, model_cfg, train_config(preset, steps=2, warmup_steps=1, checkpoint_every=2, log_every=1),
                  run, progress=False)
            for runtime in ("auto", "torch"):
                policy = Policy.load(run, **({} if runtime == "auto" else {"runtime": runtime}))
                median, p99 = timed(acting(policy, obs), args.calls)
                label = f"default ({policy.runtime})" if runtime == "auto" else runtime
                lines.append(f"| {preset} | {model_cfg.backbone}, {model_cfg.tokens} | {label} | {median:.0f} | "
                             f"{p99:.0f} |")
                print(lines[-1], flush=True)
    lines += ["", f"Load average at end {os.getloadavg()[0]:.2f}."]
    (ROOT / "results" / "bench_policy_default_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
