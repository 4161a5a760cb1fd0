"""Per-step acting latency and evaluation throughput, side by side in one run.

1. `act` latency at batch 1 on CPU (1 thread), median and p99 over many calls, for each backbone:
   `Policy.act` (numpy in/out with input checks) on eager PyTorch, onnxruntime and the fused numba
   step (float32 weights, and float16: `weights="float16"`), and the bare step functions (TorchScript,
   onnxruntime, fused); next to d3rlpy's
   DecisionTransformer stateful wrapper (its own venv).
   Model size: DT's (embed 128, 3 layers, K=20). Latency does not depend on the weights' values.
2. Evaluation throughput: 10 parallel Hopper-v5 episodes with a batched `Policy.act` per step, against
   replaying the very same actions on the same seeds without a policy (the same states, contacts and
   episode ends, so the difference is the policy's cost alone), and the policy's share of the time.

    python experiments/bench_latency.py [--calls 2000] [--skip-d3rlpy]

Writes results/bench_latency_cpu.{csv,md,json} (json: the run's header line), results/bench_latency_cpu_summary.md
(the README's table) and results/bench_eval_throughput_cpu.csv; `--report` rewrites the markdown only.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import onnxruntime as ort
import pandas as pd
import torch

from decision_rnn import DecisionRNN, ModelConfig, Policy
from decision_rnn.evaluation import make_envs
from decision_rnn.export import export_onnx, export_torchscript, io_names
from decision_rnn.fused import KINDS, FusedStep

ROOT = Path(__file__).resolve().parents[1]
OBS, ACT = 11, 3


def cpu_description() -> str:
    """The CPU as /proc/cpuinfo names it (a VM's model name can be as short as "AMD EPYC"), with what the
    step's speed depends on: family/model, AVX-512 or AVX2, and the core count."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    info = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    flags = info.get("flags", "").split()
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model {info.get('model', '?')}, "
            f"{simd}{cache_sizes()}), {os.cpu_count()} cores")


def cache_sizes() -> str:
    """", L1d 32K, L2 512K, L3 16384K" as Linux reports the first core's caches (empty where it does not)."""
    sizes = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / f).read_text().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        if kind != "Instruction":
            sizes.append(f"L{level}{'d' if kind == 'Data' else ''} {size}")
    return "".join(f", {s}" for s in sizes)


def timed(fn, calls):
    """Median and p99 of `fn()` in microseconds, after a warm-up."""
    for _ in range(100):
        fn()
    times = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    times *= 1e6
    return float(np.median(times)), float(np.percentile(times, 99))


def acting(policy, obs):
    """One `act` per call, a fresh episode every 900 calls (inside the timestep table)."""
    step = 0

    def act():
        nonlocal step
        if step % 900 == 0:
            policy.reset(3600.0)
            policy.act(obs)
        step += 1
        policy.act(obs, 1.0)

    return act


def bench_backbone(backbone, tokens, calls, tmp):
    torch.manual_seed(0)
    model = DecisionRNN(ModelConfig(obs_dim=OBS, act_dim=ACT, backbone=backbone, tokens=tokens)).eval()
    obs = np.random.default_rng(0).standard_normal(OBS).astype(np.float32)
    rows = []

    runtimes = ["torch", "onnxruntime"] + (["fused"] if backbone in KINDS else [])
    for runtime in runtimes:
        rows.append((f"Policy.act, runtime={runtime}", *timed(acting(Policy(model, runtime=runtime), obs), calls)))
    if backbone in KINDS:
        half = Policy(model, runtime="fused", weights="float16")
        rows.append(("Policy.act, runtime=fused, float16 weights", *timed(acting(half, obs), calls)))

    ts = torch.jit.load(str(export_torchscript(model, tmp / f"{backbone}-{tokens}.pt")))
    ts_state = list(model.initial_state(1))
    t_obs, t_prev = torch.as_tensor(obs)[None], torch.zeros(1, ACT)
    t_rtg, t_step = torch.full((1,), 3600.0), torch.zeros(1, dtype=torch.long)

    def torchscript():
        nonlocal ts_state, t_prev, t_step
        with torch.inference_mode():
            out = ts(t_obs, t_prev, t_rtg, t_step, *ts_state)
        t_prev, ts_state = out[0], list(out[1:])
        t_step = (t_step + 1) % 900

    rows.append(("torchscript", *timed(torchscript, calls)))

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(export_onnx(model, tmp / f"{backbone}-{tokens}.onnx")), opts,
                                   providers=["CPUExecutionProvider"])
    names, _ = io_names(model)
    feed = dict(zip(names, [obs[None], np.zeros((1, ACT), np.float32), np.array([3600.0], np.float32),
                            np.zeros(1, np.int64), *[s.numpy() for s in model.initial_state(1)]]))

    def onnx():
        out = session.run(None, feed)
        feed["prev_action"] = out[0]
        for i, s in enumerate(out[1:]):
            feed[f"state_{i}"] = s
        feed["timestep"] = (feed["timestep"] + 1) % 900

    rows.append(("onnxruntime", *timed(onnx, calls)))

    for weights in ("float32", "float16") if backbone in KINDS else ():
        fused = FusedStep(model, weights=weights)
        f_in = [obs[None], np.zeros((1, ACT), np.float32), np.array([3600.0], np.float32), np.zeros(1, np.int64),
                fused.initial_state(1)]

        def fused_step(fused=fused, f_in=f_in):
            f_in[1], f_in[4] = fused(*f_in)
            f_in[3] = (f_in[3] + 1) % 900

        label = "fused (numba)" + (", float16 weights" if weights == "float16" else "")
        rows.append((label, *timed(fused_step, calls)))
    return [{"impl": f"decision-rnn {backbone}", "tokens": tokens, "runtime": r, "median_us": m, "p99_us": p}
            for r, m, p in rows]


def d3rlpy_latency(calls):
    python = ROOT / ".venv-d3rlpy" / "bin" / "python"
    if not python.exists():
        print("skipping d3rlpy: run `bash experiments/setup_d3rlpy.sh` first", file=sys.stderr)
        return None
    out = subprocess.run([str(python), str(ROOT / "experiments" / "d3rlpy_baseline.py"), "latency",
                          "--steps", str(calls), "--threads", "1"], capture_output=True, text=True, check=True,
                         env=os.environ)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return {"impl": row["impl"], "tokens": "interleaved", "runtime": "pytorch eager",
            "median_us": row["median_us"], "p99_us": row["p99_us"]}


def throughput(steps=1000, n_envs=10, repeats=3):
    """Env steps/s of n_envs Hopper-v5 envs driven by a batched policy, and of replaying its actions.

    Each loop is timed `repeats` times (the best is kept, the usual guard against a busy machine).
    """
    envs = make_envs("Hopper-v5", n_envs)
    rows = []
    loops = [("mingru", "interleaved", "torch", 1), ("mingru", "compact", "torch", 1),
             ("mingru", "compact", "onnxruntime", 1), ("mingru", "compact", "onnxruntime", 2),
             ("mingru", "compact", "fused", 1), ("transformer", "interleaved", "torch", 1)]
    for backbone, tokens, runtime, threads in loops:  # 2 threads: the policy's GEMMs on both cores
        torch.manual_seed(0)
        model = DecisionRNN(ModelConfig(obs_dim=OBS, act_dim=ACT, backbone=backbone, tokens=tokens))
        policy = Policy(model, runtime=runtime, threads=threads)
        obs, _ = envs.reset(seed=0)
        policy.reset(3600.0, batch_size=n_envs)
        for _ in range(20):  # warm-up: first-call compilation and allocations
            policy.act(obs, np.zeros(n_envs))  # the first act's reward is ignored
        best, best_replay, share = np.inf, np.inf, 0.0
        for _ in range(repeats):
            obs, _ = envs.reset(seed=0)
            policy.reset(3600.0, batch_size=n_envs)
            reward, t_policy, actions = None, 0.0, []
            t0 = time.perf_counter()
            for _ in range(steps):
                t1 = time.perf_counter()
                action = policy.act(obs, reward)
                t_policy += time.perf_counter() - t1
                actions.append(action)
                obs, reward, *_ = envs.step(action)
            total = time.perf_counter() - t0
            envs.reset(seed=0)
            t0 = time.perf_counter()
            for action in actions:
                envs.step(action)
            replay = time.perf_counter() - t0
            if total < best:
                best, share = total, t_policy / total
            best_replay = min(best_replay, replay)
        name = f"{runtime}, {threads} threads" if threads > 1 else runtime
        rows.append({"loop": f"{backbone} {tokens} policy ({name}), batch {n_envs}",
                     "env_steps_per_s": steps * n_envs / best, "replay_env_steps_per_s": steps * n_envs / best_replay,
                     "policy_share": share, "overhead_vs_replay": best / best_replay - 1})
    envs.close()
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--skip-d3rlpy", action="store_true")
    p.add_argument("--report", action="store_true", help="only rewrite the markdown from the last run's CSVs")
    args = p.parse_args()
    out = ROOT / "results" / "bench_latency_cpu"
    if args.report:
        flow = pd.read_csv(ROOT / "results" / "bench_eval_throughput_cpu.csv")
        write_reports(pd.read_csv(out.with_suffix(".csv")), flow, out.with_suffix(".json").read_text().strip())
        return
    torch.set_num_threads(1)
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in ["mingru", "minlstm", "lru", "transformer"]:
            for tokens in ["interleaved", "compact"]:
                rows += bench_backbone(backbone, tokens, args.calls, Path(tmp))
                print(rows[-5:], flush=True)
    if not args.skip_d3rlpy and (base := d3rlpy_latency(args.calls)):
        rows.append(base)
    latency = pd.DataFrame(rows)
    ref = latency[latency.impl.str.startswith("d3rlpy")].median_us
    if len(ref):
        latency["speedup_vs_d3rlpy"] = ref.iloc[0] / latency.median_us
    flow = pd.DataFrame(throughput())
    header = (f"{cpu_description()}, 1 thread, batch 1, {args.calls} calls after 100 warm-up; DT-size models "
              f"(embed 128, 3 layers, K=20); torch {torch.__version__}, onnxruntime {ort.__version__}, numba "
              f"{numba.__version__}; load average at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f}")
    latency.to_csv(out.with_suffix(".csv"), index=False)
    flow.to_csv(ROOT / "results" / "bench_eval_throughput_cpu.csv", index=False)
    out.with_suffix(".json").write_text(header + "\n")
    write_reports(latency, flow, header)


def write_reports(latency: pd.DataFrame, flow: pd.DataFrame, header: str) -> None:
    """results/bench_latency_cpu.md (every row) and _summary.md (compact tokens + throughput, for the README).

    `policy_vs_sim`: the policy's time over the rest of the same loop (simulation and bookkeeping), i.e.
    what the policy adds to simulating; `overhead_vs_replay` compares against a separately timed replay
    of the same actions, which a busy machine makes noisier."""
    flow = flow.assign(policy_vs_sim=flow.policy_share / (1 - flow.policy_share))
    out = ROOT / "results" / "bench_latency_cpu"
    print(header)
    print(latency.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(flow.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    title = "Evaluation throughput (10 Hopper-v5 envs, 1000 steps, best of 3)"
    flow_md = flow.to_markdown(index=False, floatfmt=".3f")
    latency_md = latency.to_markdown(index=False, floatfmt=".1f")
    out.with_suffix(".md").write_text(f"# Acting latency\n\n{header}\n\n{latency_md}\n\n# {title}\n\n{flow_md}\n")
    compact = latency[(latency.tokens == "compact") | latency.impl.str.startswith("d3rlpy")]
    Path(f"{out}_summary.md").write_text(
        f"# Acting latency, compact tokens (every row: results/bench_latency_cpu.md)\n\n{header}\n\n"
        f"{compact.to_markdown(index=False, floatfmt='.1f')}\n\n**{title}**\n\n{flow_md}\n")

if __name__ == "__main__":
    main()
