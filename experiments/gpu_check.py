"""The GPU path checked and measured by one command, written to results/gpu_check_<device>.md.

    python experiments/gpu_check.py                          # on one GPU: about 8 minutes
    python experiments/gpu_check.py --device cpu --quick     # the same code at toy sizes, under a minute (CI)

On a GPU machine without network whose image lacks gymnasium, MuJoCo and Minari, experiments/device_wheels.sh
fetches their wheels beforehand and says how to install them there.

Sections, each in a process of its own under a time budget: a section that fails, crashes or runs out of time
is recorded as such in the table (with the rows it finished), and the next one runs. The table is rewritten
after every section, so a run cut short still leaves one.
1. tests: pytest on the tests marked `gpu` (they skip without CUDA).
2. backbones: experiments/bench_backbones.py's table at the min-RNN paper's T = 512 and 4096 and batch 64
   (Feng et al. 2024, arXiv 2410.01201), in float32 and under bf16 autocast: the minGRU / minLSTM mixers against
   cuDNN's nn.GRU / nn.LSTM at equal widths (input 128, state 256), the scans alone, one block of each backbone;
   forward + backward of a mean-square loss.
3. train: training updates/s at DT's size (embed 128, 3 layers, K = 20, batch 64) for each backbone and token
   layout, through `Trainer.update` (experiments/bench_train_speed.py); the compiled minGRU if time is left.
4. rollout: 10 Hopper-v5 envs stepped together with each backbone's (untrained) policy on the device:
   env steps/s of `Policy.act` + `envs.step` for a fixed number of steps.
5. protocol: minGRU trained under the paper protocol (DT's config, experiments/protocol.py `PROTOCOLS["paper"]`)
   for 10k updates on zoo/hopper/medium-v0, then its D4RL-normalized score over 10 parallel episodes with the
   policy on the device (and those episodes' env steps/s). Training stops at its time budget if it must; the
   table then says at which update, and the last checkpoint is evaluated.
`--dataset` names the training data (any `load_dataset` source); where it cannot be loaded, the sections train
on the repository's embedded 40-episode slice of hopper-medium and the table says so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent

FULL = {"T": [512, 4096], "batch": 64, "dim": 128, "hidden": 256, "reps": 5, "updates": 50, "warmup": 5, "envs": 10,
        "env_steps": 300, "protocol_steps": 10_000, "episodes": 10, "checkpoint_every": 1000,
        "model": {}, "train": {}}
QUICK = {"T": [16, 64], "batch": 4, "dim": 16, "hidden": 32, "reps": 2, "updates": 2, "warmup": 1, "envs": 2,
         "env_steps": 10, "protocol_steps": 10, "episodes": 2, "checkpoint_every": 5,
         "model": {"embed_dim": 16, "n_layers": 1, "context_len": 5}, "train": {"batch_size": 4}}
BUDGETS = {  # seconds per section, (full, quick); the protocol's training takes what the total leaves, at least
    "env": (30, 30), "tests": (120, 30), "backbones": (50, 15), "train": (75, 20), "rollout": (35, 15),
    "protocol-train": (60, 15), "protocol-eval": (50, 20),
}  # a run that spends every budget and grace ends within 10 minutes (a device call's limit)
TOTAL = (470, 60)  # the whole run's target in seconds, (full, quick)
GRACE = (20, 60)  # seconds past its budget before a section's process is killed, (full, quick): CI's cores are shared
TITLES = {"env": "Environment", "tests": "GPU-marked tests", "backbones": "Backbone table",
          "train": "Training updates/s", "rollout": "Parallel Hopper rollout",
          "protocol-train": "Paper protocol: minGRU on hopper-medium (training)",
          "protocol-eval": "Paper protocol: minGRU on hopper-medium (score)"}


# ---- sections (each runs in its own process: `--section NAME`) ----------------------------------------------------


def emit(rows_file: Path, **row) -> None:
    """Append one result row (JSON line): what a section finished survives its process being killed later."""
    with open(rows_file, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")
    print(row, flush=True)


def section_env(args, sizes, rows_file, budget):
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "device": args.device,
            "cpu threads": torch.get_num_threads(), "cpu count": os.cpu_count()}
    if args.device == "cuda":
        torch.zeros(1, device="cuda")  # CUDA initialises, or this section fails saying why
        props = torch.cuda.get_device_properties(0)
        info.update({"device name": torch.cuda.get_device_name(), "CUDA": torch.version.cuda,
                     "cuDNN": torch.backends.cudnn.version(), "GPU memory GiB": round(props.total_memory / 2**30, 1),
                     "matmul TF32": torch.backends.cuda.matmul.allow_tf32,
                     "cuDNN TF32": torch.backends.cudnn.allow_tf32})
    else:
        info["device name"] = platform.processor() or platform.machine() or "cpu"
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError as e:
        info["triton"] = f"not importable ({e})"
    info["load average (1, 5, 15 min)"] = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    for key, value in info.items():
        emit(rows_file, key=key, value=value)


def section_backbones(args, sizes, rows_file, budget):
    """experiments/bench_backbones.py's table (mixers, scans, blocks), in float32 and under bf16 autocast."""
    import torch
    from bench_backbones import measure, models, step_seconds
    from bench_backbones import parse_args as bench_args

    bench = bench_args(["--device", args.device, "--batch", str(sizes["batch"]), "--dim", str(sizes["dim"]),
                        "--hidden", str(sizes["hidden"]), "--rounds", str(sizes["reps"]), "--budget", "20"])
    emit(rows_file, note=f"experiments/bench_backbones.py at batch {bench.batch}, dim {bench.dim}, hidden "
                         f"{bench.hidden}: ms is the median of {bench.rounds} forward + backward steps of "
                         "mean(y ** 2) after a warm-up step; bfloat16: the forward under torch.autocast")
    table = models(bench)

    def bf16(call):
        def run(module, *inputs):
            with torch.autocast(args.device, dtype=torch.bfloat16):
                return call(module, *inputs).float()
        return run

    tables = {"float32": table, "bfloat16": {name: (*entry[:3], bf16(entry[3])) for name, entry in table.items()}}
    for dtype, models_ in tables.items():  # a model that cannot run (no bf16 kernel) is a row, not the end
        for name, (_, module, make_inputs, call) in list(models_.items()):
            try:
                step_seconds(module, make_inputs(8), call, torch.device(args.device))
            except Exception as e:
                del models_[name]
                emit(rows_file, model=name, dtype=dtype, status=f"failed: {type(e).__name__}: {str(e)[:200]}")
    # what autocast made of each model: cuDNN's RNNs follow their own autocast rule, not the dtype asked for
    with torch.no_grad(), torch.autocast(args.device, dtype=torch.bfloat16):
        out = {name: call(module, *make_inputs(8)).dtype
               for name, (_, module, make_inputs, call) in table.items() if name in tables["bfloat16"]}
    emit(rows_file, note="output dtype under bfloat16 autocast: " + ", ".join(
        f"{name} {str(dtype).removeprefix('torch.')}" for name, dtype in out.items()))
    start = time.perf_counter()
    for T in sizes["T"]:
        for dtype, models_ in tables.items():
            if time.perf_counter() - start > budget:
                emit(rows_file, T=T, dtype=dtype, status="skipped: section budget spent")
                continue
            try:
                for row in measure(bench, torch.get_num_threads(), T, models_):
                    emit(rows_file, dtype=dtype, **row)
            except Exception as e:  # out of memory, say: recorded, and the next T and dtype run
                emit(rows_file, T=T, dtype=dtype, status=f"failed: {type(e).__name__}: {str(e)[:200]}")
            if args.device == "cuda":
                torch.cuda.empty_cache()


def load_training_data(args, rows_file):
    """`args.dataset`, or the embedded slice of hopper-medium where it cannot be loaded (recorded as a note)."""
    from decision_rnn.data import EMBEDDED_DATASET, load_dataset

    if args.dataset != "embedded":
        try:
            return load_dataset(args.dataset)
        except Exception as e:
            emit(rows_file, note=f"{args.dataset} could not be loaded ({type(e).__name__}: {str(e)[:160]}); "
                                 f"using the embedded 40-episode slice of hopper-medium instead")
    return load_dataset(str(EMBEDDED_DATASET))


def section_train(args, sizes, rows_file, budget):
    from bench_train_speed import ours

    from decision_rnn.backbones import BACKBONES
    from decision_rnn.models.agent import TOKENS_PER_STEP

    dataset = load_training_data(args, rows_file)
    start = time.perf_counter()
    configs = [(b, t, False) for b in BACKBONES for t in TOKENS_PER_STEP] + [("mingru", "interleaved", True)]
    for backbone, tokens, compile in configs:
        left = budget - (time.perf_counter() - start)
        need = 60 if compile and not args.quick else 0  # torch.compile's first call compiles for up to a minute
        row = {"impl": f"decision-rnn {backbone}" + (" (compiled)" if compile else ""), "tokens": tokens,
               "context": "window"}
        if left <= need:
            emit(rows_file, **row, updates_per_s=math.nan, status=f"skipped: {left:.0f} s of the section left")
            continue
        if compile and args.quick:
            emit(rows_file, **row, updates_per_s=math.nan, status="skipped: --quick (compilation takes minutes)")
            continue
        try:
            result = ours(dataset, backbone, tokens, "window", sizes["updates"], args.device, compile=compile,
                          model_options=sizes["model"], train_options=sizes["train"], warmup=sizes["warmup"])
            emit(rows_file, **{**row, **result}, status="ok")
        except Exception as e:
            emit(rows_file, **row, updates_per_s=math.nan, status=f"failed: {type(e).__name__}: {str(e)[:200]}")


def section_rollout(args, sizes, rows_file, budget):
    import numpy as np
    import torch

    from decision_rnn import DecisionRNN, ModelConfig, Policy
    from decision_rnn.backbones import BACKBONES
    from decision_rnn.evaluation import make_envs

    n, steps = sizes["envs"], sizes["env_steps"]
    start = time.perf_counter()
    for backbone in BACKBONES:
        row = {"backbone": backbone, "tokens": "interleaved", "envs": n, "steps": steps}
        if time.perf_counter() - start > budget:
            emit(rows_file, **row, env_steps_per_s=math.nan, status="skipped: section budget spent")
            continue
        try:
            torch.manual_seed(0)
            model = DecisionRNN(ModelConfig(obs_dim=11, act_dim=3, backbone=backbone, **sizes["model"]))
            policy = Policy(model, device=args.device, runtime="torch")
            envs = make_envs("Hopper-v5", n)
            try:
                obs, _ = envs.reset(seed=0)
                policy.reset(3600.0, batch_size=n)
                reward = None
                for t in range(steps + 1):  # step 0 is a warm-up
                    if t == 1:
                        t0 = time.perf_counter()
                    obs, reward, *_ = envs.step(policy.act(obs, reward))
                wall = time.perf_counter() - t0
            finally:
                envs.close()
            # envs that end restart on their own (autoreset) while the policy's rows run on: a throughput measure
            emit(rows_file, **row, env_steps_per_s=n * steps / wall, status="ok",
                 finite=bool(np.isfinite(obs).all()))
        except Exception as e:
            emit(rows_file, **row, env_steps_per_s=math.nan, status=f"failed: {type(e).__name__}: {str(e)[:200]}")


def section_protocol_train(args, sizes, rows_file, budget):
    from protocol import PROTOCOLS

    from decision_rnn import ModelConfig
    from decision_rnn.training import train

    dataset = load_training_data(args, rows_file)
    model_cfg = ModelConfig(obs_dim=dataset.obs_dim, act_dim=dataset.act_dim, backbone="mingru", **sizes["model"])
    train_cfg = replace(PROTOCOLS["paper"], steps=sizes["protocol_steps"], device=args.device, seed=0,
                        checkpoint_every=sizes["checkpoint_every"], **sizes["train"])
    emit(rows_file, note=f"dataset {dataset.env_id} {list(dataset.ids)}: {dataset.num_episodes} episodes, "
                         f"{dataset.num_steps} steps; model {model_cfg}; training {train_cfg}")
    summary = train(dataset, model_cfg, train_cfg, args.runs / "protocol", progress=False)
    emit(rows_file, **{k: summary[k] for k in ("steps", "final_loss", "wall_s", "updates_per_s")})


def section_protocol_eval(args, sizes, rows_file, budget):
    import pandas as pd

    from decision_rnn.evaluation import evaluate_run

    summary = evaluate_run(args.runs / "protocol", episodes=sizes["episodes"], seeds=[0], device=args.device)
    result = summary["results"][0]
    episodes = pd.read_csv(summary["files"]["episodes"])
    emit(rows_file, note="score: the D4RL-normalized return (x100, against the training data's reference returns), "
                         "the mean over episodes run in parallel with the policy on the device")
    emit(rows_file, checkpoint_step=summary["checkpoint_step"], episodes=result["episodes"],
         target_return=result["target_return"], score_mean=result["score_mean"],
         score_std_episodes=result["score_std_episodes"], return_mean=result["return_mean"],
         length_mean=result["length_mean"],
         env_steps_per_s=episodes["length"].sum() / episodes["wall_s"].iloc[0])


SECTIONS = {"env": section_env, "backbones": section_backbones, "train": section_train,
            "rollout": section_rollout, "protocol-train": section_protocol_train,
            "protocol-eval": section_protocol_eval}


# ---- the driver ---------------------------------------------------------------------------------------------------


def run_child(cmd: list[str], timeout: float) -> tuple[str, str]:
    """Run a section's process; (status, output tail). The process is killed at `timeout`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
        [str(HERE), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return f"timed out: killed after {timeout:.0f} s", out[-2000:]
    wall = time.perf_counter() - t0
    tail = (proc.stdout + proc.stderr)[-2000:]
    if proc.returncode != 0:
        last = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or [f"exit {proc.returncode}"]
        return f"failed (exit {proc.returncode}) after {wall:.0f} s: {last[0][:300]}", tail
    return f"ok in {wall:.0f} s", tail


def run_tests(args, budget: float) -> tuple[str, list[dict]]:
    """pytest -m gpu; the summary line and the names of failed tests."""
    paths = ["tests/test_gpu_path.py"] if args.quick else ["tests"]
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra",
           "--continue-on-collection-errors", *paths]  # a test module that cannot import stops no GPU test
    status, tail = run_child(cmd, budget + GRACE[args.quick])
    lines = [line for line in tail.splitlines() if line.strip()]
    rows = [{"result": line} for line in lines if line.startswith(("FAILED", "ERROR"))]
    summary = next((line for line in reversed(lines) if re.search(r"\d+ (passed|failed|skipped|deselected)", line)),
                   None)
    if summary:
        rows.append({"result": summary.strip("= ")})
        if status.startswith("failed (exit 1)"):  # pytest's exit 1: some tests failed; the rows say which
            status = "failed: " + summary.strip("= ")
    return status, rows


def last_checkpoint(run: Path) -> int | None:
    steps = [int(p.name.removeprefix("step_")) for p in (run / "checkpoints").glob("step_*") if p.name[5:].isdigit()]
    return max(steps, default=None)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def markdown(args, sections: dict, started: float) -> str:
    import pandas as pd

    env = {r["key"]: r["value"] for r in sections.get("env", {}).get("rows", []) if "key" in r}
    device = env.get("device name", args.device)
    lines = [f"# GPU check: {device}", "",
             f"`python experiments/gpu_check.py --device {args.device}{' --quick' if args.quick else ''}`: "
             f"{time.perf_counter() - started:.0f} s in all, {time.strftime('%Y-%m-%d %H:%M %Z')}. "
             "What each section measures: the script's docstring.", ""]
    for name, title in TITLES.items():
        if name not in sections:
            continue
        section = sections[name]
        lines += [f"## {title}", "", f"Status: {section['status']}", ""]
        rows = section["rows"]
        notes = [r["note"] for r in rows if "note" in r]
        rows = [r for r in rows if "note" not in r]
        lines += [f"Note: {n}" for n in notes] + ([""] if notes else [])
        if name == "env":
            lines += [f"- {r['key']}: {r['value']}" for r in rows] + [""]
        elif rows:
            frame = pd.DataFrame(rows)
            if name == "backbones":
                frame = backbone_table(frame)
            lines += [frame.to_markdown(index=False, floatfmt=".4g"), ""]
        if section["status"] != "ok" and not section["status"].startswith("ok ") and section.get("tail"):
            lines += ["Output tail:", "", "```", section["tail"].strip()[-1500:], "```", ""]
    return "\n".join(lines) + "\n"


def backbone_table(frame):
    """The min-RNN mixers' speed-ups over nn.GRU / nn.LSTM beside the paper's (Feng et al. 2024, on a T4)."""
    from bench_backbones import PAPER

    frame = frame.copy()
    frame["paper_x (T4)"] = [PAPER.get(str(m).split(" ")[0], {}).get(T, math.nan) if str(m).endswith(" mixer")
                             else math.nan for m, T in zip(frame.get("model", [None] * len(frame)), frame["T"])]
    first = [c for c in ("model", "group", "T", "dtype", "ms", "x_vs_nn_rnn", "paper_x (T4)") if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first and c != "status"] + ["status"]]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--quick", action="store_true", help="toy sizes: the whole check in under a minute on a CPU")
    p.add_argument("--out", type=Path, default=ROOT / "results", help="folder for gpu_check_<device>.md")
    p.add_argument("--dataset", default="zoo/hopper/medium-v0",
                   help="training data (a load_dataset source; 'embedded': the repository's slice of hopper-medium)")
    p.add_argument("--runs", type=Path, default=None, help="keep the protocol run here (default: a temporary folder)")
    p.add_argument("--section", choices=list(SECTIONS), help=argparse.SUPPRESS)  # internal: run one section
    p.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device not in ("cuda", "cpu"):
        p.error(f"--device must be cuda or cpu, got {args.device!r}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.section:  # a child: one section
        import torch

        torch.set_num_threads(min(torch.get_num_threads(), 8 if args.device == "cuda" else 1))
        SECTIONS[args.section](args, sizes, args.rows, args.budget)
        return
    started = time.perf_counter()
    own_runs = args.runs is None
    args.runs = Path(tempfile.mkdtemp(prefix="gpu-check-")) if own_runs else args.runs.resolve()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    rows_dir = Path(tempfile.mkdtemp(prefix="gpu-check-rows-"))
    sections: dict = {}
    path = None

    def write() -> Path:
        env = {r["key"]: r["value"] for r in sections.get("env", {}).get("rows", []) if "key" in r}
        name = "cpu" if args.device == "cpu" else str(env.get("device name", "cuda"))
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        target = args.out / f"gpu_check_{slug}{'_quick' if args.quick else ''}.md"
        target.write_text(markdown(args, sections, started))
        return target

    try:
        for name in ["env", "tests", "backbones", "train", "rollout", "protocol-train", "protocol-eval"]:
            budget = BUDGETS[name][args.quick]
            if name == "protocol-train":
                left = TOTAL[args.quick] - (time.perf_counter() - started) - BUDGETS["protocol-eval"][args.quick]
                budget = max(budget, left)
            print(f"== {name} (budget {budget:.0f} s)", flush=True)
            if name == "tests":
                status, rows = run_tests(args, budget)
                sections[name] = {"status": status, "rows": rows, "tail": ""}
            else:
                rows_file = rows_dir / f"{name}.jsonl"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--device", args.device,
                       "--rows", str(rows_file), "--budget", str(budget), "--dataset", args.dataset,
                       "--runs", str(args.runs), *(["--quick"] if args.quick else [])]
                if name == "protocol-eval" and last_checkpoint(args.runs / "protocol") is None:
                    status, tail = "skipped: the training wrote no checkpoint", ""
                else:
                    status, tail = run_child(cmd, budget + GRACE[args.quick])
                sections[name] = {"status": status, "rows": read_rows(rows_file), "tail": tail}
                if name == "protocol-train" and not status.startswith("ok"):
                    sections[name]["rows"].append({"note": f"the last checkpoint is at update "
                                                           f"{last_checkpoint(args.runs / 'protocol')}"})
            print(f"   {sections[name]['status']}", flush=True)
            path = write()
    finally:
        shutil.rmtree(rows_dir, ignore_errors=True)
        if own_runs:
            shutil.rmtree(args.runs, ignore_errors=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
