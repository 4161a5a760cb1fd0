"""Scaling out: training updates/s and samples/s on 1..N ranks (torchrun + DDP), evaluation episodes/s on 1..N
worker processes, side by side in one run.

    python experiments/bench_scaling.py                  # CPU: 1 and 2 ranks / workers, 1 thread each
    python experiments/bench_scaling.py --device cuda    # GPUs: 1, 2, 4, ... ranks up to every GPU (one per rank)

Training: `Trainer.update` at DT's size (minGRU, interleaved tokens, embed 128, 3 layers, K = 20, window batches,
dropout 0.1) under `torchrun --standalone`, timed after a warm-up; the ranks start and stop the clock together
(barriers). Two settings: the global batch fixed at 64 (strong scaling: each rank computes 64 / N windows) and 64
windows per rank (weak scaling: a global batch of 64 N). Samples/s counts windows per second. Efficiency: samples/s
on N ranks over N times samples/s on 1 rank.
Evaluation: `decision_rnn.evaluation.rollouts` on Hopper-v5 with a briefly trained policy, the same episodes on 1..N
worker processes (each its own vector env and policy; checked identical); the wall time includes starting the
workers.

Writes results/bench_scaling_<device>.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EVAL_PRESET = "minlstm-return-ln"  # the evaluated policy: a fixed recipe, so that reruns compare


def train_worker(args) -> None:
    """One rank of a timed run (inside torchrun); rank 0 writes the rates to `args.worker`."""
    from decision_rnn import ModelConfig, TrainConfig
    from decision_rnn.data import load_dataset
    from decision_rnn.training import Trainer, build_model, distributed
    from decision_rnn.training.trainer import seed_everything

    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset)
    model_cfg = ModelConfig(obs_dim=dataset.obs_dim, act_dim=dataset.act_dim, backbone="mingru")
    train_cfg = TrainConfig(steps=10**9, batch_size=args.batch, device=args.device)
    seed_everything(0)
    with tempfile.TemporaryDirectory() as run_dir:  # the trainer writes nothing before `fit`
        trainer = Trainer(build_model(dataset, model_cfg), dataset, train_cfg, run_dir)
        for _ in range(args.warmup):
            trainer.update()
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        sync()
        distributed.barrier()
        t0 = time.perf_counter()
        for _ in range(args.updates):
            trainer.update()
        sync()
        distributed.barrier()
        wall = time.perf_counter() - t0
    if distributed.is_main_process():
        Path(args.worker).write_text(json.dumps({
            "ranks": distributed.world_size(), "global_batch": args.batch, "updates_per_s": args.updates / wall,
            "samples_per_s": args.updates * args.batch / wall}))
    distributed.shutdown()


def timed_training(ranks: int, batch: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rates.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               __file__, "--worker", str(out), "--batch", str(batch), "--updates", str(args.updates),
               "--warmup", str(args.warmup), "--threads", str(args.threads), "--device", args.device,
               "--dataset", args.dataset]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def timed_evaluation(workers_list: list[int], args) -> list[dict]:
    """Episodes/s of one evaluation on each number of workers, `args.repeats` times in turn; the episodes must come
    out identical every time."""
    from decision_rnn.data import load_dataset
    from decision_rnn.evaluation import rollouts
    from decision_rnn.policy import Policy
    from decision_rnn.presets import model_config, train_config
    from decision_rnn.training import train

    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset)
    rows, reference = [], None  # reference: the episodes on the first number of workers, same runtime
    with tempfile.TemporaryDirectory() as run:
        train(dataset, model_config(EVAL_PRESET, dataset.obs_dim, dataset.act_dim),
              train_config(EVAL_PRESET, steps=args.policy_updates, checkpoint_every=args.policy_updates), run,
              progress=False)
        for repeat in range(args.repeats):
            for runtime, workers in itertools.product(args.runtimes, workers_list):
                policy = Policy.load(run, runtime=runtime)
                torch.set_num_threads(args.threads * workers)  # each worker gets `threads`
                t0 = time.perf_counter()
                (frame,) = rollouts(policy, dataset.env_id, args.episodes, [(3600.0, 0)], workers=workers,
                                    load=partial(Policy.load, run, runtime=runtime))
                wall = time.perf_counter() - t0
                rollout_s = frame["wall_s"].max()  # the slowest worker's rollouts, without its start-up
                frame = frame.drop(columns="wall_s")
                reference = frame if workers == workers_list[0] else reference
                rows.append({"runtime": runtime, "workers": workers, "repeat": repeat, "episodes": args.episodes,
                             "mean_length": frame["length"].mean(), "max_length": frame["length"].max(),
                             "episodes_per_s": args.episodes / wall,
                             "rollout_episodes_per_s": args.episodes / rollout_s, "identical": frame.equals(reference)})
                print(rows[-1], flush=True)
    return rows


def best(rows: list[dict], keys: list[str], rate: str) -> list[dict]:
    """Per `keys`, the repeat with the highest `rate` (the least disturbed by other load), with the spread."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for group in groups.values():
        top = dict(max(group, key=lambda r: r[rate]))
        top[f"{rate}_all"] = " ".join(f"{r[rate]:.3g}" for r in group)
        if "identical" in top:
            top["identical"] = all(r["identical"] for r in group)
        out.append(top)
    return out


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "n/a"


def table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in columns)
                     + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per rank)")
    p.add_argument("--ranks", type=int, nargs="+", help="default: 1 2 on the CPU, 1 2 4 ... up to every GPU")
    p.add_argument("--updates", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="every measurement, in turn; the fastest is reported")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank / worker")
    p.add_argument("--dataset", default="zoo/hopper/medium-v0")
    p.add_argument("--episodes", type=int, default=100, help="evaluation episodes (one target, one seed)")
    p.add_argument("--policy-updates", type=int, default=300, help="training of the evaluated policy")
    p.add_argument("--runtimes", nargs="+", default=["fused", "torch"], help="Policy runtimes to evaluate with")
    p.add_argument("--out", type=Path)
    p.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one rank of a timed run, inside torchrun
    args = p.parse_args()
    if args.worker:
        return train_worker(args)

    if args.ranks is None:
        most = torch.cuda.device_count() if args.device == "cuda" else 2
        args.ranks = [n for n in (1, 2, 4, 8, 16) if n <= most]
    load_before = uptime()
    settings = {"global batch 64": lambda n: 64, "64 per rank": lambda n: 64 * n}
    runs = []  # (setting, ranks, global batch); one rank is the same run in both settings
    for setting, batch_of in settings.items():
        runs += [(setting, n, batch_of(n)) for n in args.ranks if n > 1 or setting == "global batch 64"]
    measured = []
    for repeat in range(args.repeats):  # in turn, so that a burst of other load hits every setting alike
        for setting, n, batch in runs:
            measured.append({"setting": setting, "repeat": repeat, **timed_training(n, batch, args)})
            print(measured[-1], flush=True)
    train_rows = best(measured, ["setting", "ranks"], "samples_per_s")
    one_rank = next(r for r in train_rows if r["ranks"] == 1)
    train_rows += [{**one_rank, "setting": setting} for setting in settings if setting != "global batch 64"]
    train_rows.sort(key=lambda r: (list(settings).index(r["setting"]), r["ranks"]))
    for r in train_rows:
        r["efficiency"] = r["samples_per_s"] / (r["ranks"] * one_rank["samples_per_s"])
    eval_rows = best(timed_evaluation(args.ranks if args.device == "cpu" else [1, 2], args), ["runtime", "workers"],
                     "episodes_per_s")
    for r in eval_rows:
        one = next(o for o in eval_rows if o["runtime"] == r["runtime"] and o["workers"] == 1)
        r["efficiency"] = r["episodes_per_s"] / (r["workers"] * one["episodes_per_s"])
        r["rollout_efficiency"] = r["rollout_episodes_per_s"] / (r["workers"] * one["rollout_episodes_per_s"])
    load_after = uptime()

    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    from decision_rnn import ModelConfig
    from decision_rnn.models import DecisionRNN

    parameters = sum(p.numel() for p in DecisionRNN(ModelConfig(obs_dim=11, act_dim=3, backbone="mingru")).parameters())
    text = f"""# Scaling out: data-parallel training and evaluation workers ({device})

`python experiments/bench_scaling.py {" ".join(sys.argv[1:])}`; {args.threads} torch thread(s) per rank / worker,
torch {torch.__version__}, data {args.dataset}. Machine load (`uptime`) before: `{load_before}`; after: `{load_after}`.

## Training (`torchrun`, DistributedDataParallel, {"nccl" if args.device == "cuda" else "gloo"})

DT's size: minGRU, interleaved tokens, embed 128, 3 layers, K = 20, window batches; {args.updates} timed updates
after {args.warmup}, {args.repeats} repeats in turn, the fastest shown (`samples_per_s_all`: every repeat). Samples are
windows. Efficiency: samples/s over N x the 1-rank samples/s.

{table(train_rows, ["setting", "ranks", "global_batch", "updates_per_s", "samples_per_s", "efficiency",
                    "samples_per_s_all"])}

## Evaluation (`decision-rnn evaluate --workers N`)

{args.episodes} Hopper-v5 episodes of a policy trained {args.policy_updates} updates (`{EVAL_PRESET}` preset),
{args.repeats} repeats in turn, the fastest shown. `episodes_per_s`: over the whole call, starting the worker
processes included (`episodes_per_s_all`: every repeat); `rollout_episodes_per_s`: over the slowest worker's
rollouts alone. The batched rollout steps until its longest episode ends (`max_length` steps). `identical`: the
same episodes and returns as on 1 worker, in every repeat.

{table(eval_rows, ["runtime", "workers", "episodes", "mean_length", "max_length", "episodes_per_s", "efficiency",
                   "rollout_episodes_per_s", "rollout_efficiency", "identical", "episodes_per_s_all"])}

## What bounds the scaling

- Cores: each rank and worker runs {args.threads} thread(s); N of them scale only if N cores are free. The load
  figures above count every process on the machine, these included.
- Training, global batch fixed: each rank computes 1/N of the forward and backward pass, but every rank still
  samples, runs the whole AdamW step and clipping, and all-reduces every gradient ({parameters / 1e6:.2f} M float32
  parameters, {parameters * 4 / 1e6:.1f} MB) once per update; the smaller per-rank batch also uses the cores less
  well. With 64 windows per rank the compute per rank stays, and only the all-reduce and the barriers are added.
- Evaluation: the batched rollout steps until its longest episode ends whatever the number of episodes, and the
  policy's cost per step is mostly a fixed cost per call, so splitting the episodes over workers divides only the
  part that grows with them (MuJoCo and the vector env's per-env work); each worker first starts Python, imports
  torch and MuJoCo and loads the policy, a fixed cost per evaluation.
- `identical`: the `torch` runtime computes a batch row the same in a batch of any size (from 4 rows on), so the
  workers' episodes are the one-process ones bit for bit. The `fused` runtime switches to BLAS at
  `FusedStep.blas_from` rows, where OpenBLAS rounds a row according to its place in the batch: below that the
  episodes are identical too, above it they agree to rounding, which MuJoCo's dynamics amplify over an episode.
"""
    out = args.out or ROOT / "results" / f"bench_scaling_{args.device}.md"
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
