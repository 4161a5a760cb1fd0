"""Training-step time and peak memory of the backbones against sequence length.

A training step is forward + mean-square loss + backward on a (batch, T, dim) input, timed as the mean
of several repetitions after one warm-up step. The sequential baselines are torch's `nn.GRU` and
`nn.LSTM` (cuDNN on CUDA), as in Feng et al. 2024 ("Were RNNs All We Needed?", arXiv 2410.01201), who
report minGRU / minLSTM training steps 175x / 235x faster than GRU / LSTM at T=512 and 1324x / 1361x
at T=4096 (batch 64, one layer each, T4 GPU). Everything here is therefore ONE layer. Our layer is a
whole residual block (LayerNorms, the mixer at 2x width with in/out projections, and a 4x MLP), so it
does more work than a bare GRU layer: the ratios understate the recurrence's own speed-up.
`mingru-log` / `minlstm-log` are the same models with the paper's log-space scan (`scan="log"`).

Each configuration runs in a fresh subprocess, so peak memory is its own:
- CUDA: torch.cuda.max_memory_allocated() above what was allocated before the first step.
- CPU: the process's peak resident set size (ru_maxrss) above its resident size just before the first
  step. It counts everything the process touches (allocator caches included), so it is an upper bound
  on the tensors' memory, good to a few MiB.
A configuration whose warm-up step alone exceeds `--budget` seconds is marked skipped.

    python experiments/bench_backbones.py            # full run: T in 64..4096, batch 64, dim 128
    python experiments/bench_backbones.py --quick    # smoke run: small T and batch
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from decision_rnn.backbones import build

LOG_SCAN = {"mingru-log": "mingru", "minlstm-log": "minlstm"}  # with scan="log": the paper's App. B scan
OURS = ("mingru", "minlstm", *LOG_SCAN, "lru", "transformer")
BASELINES = {"gru": nn.GRU, "lstm": nn.LSTM}
PAPER = {"mingru": {512: 175, 4096: 1324}, "minlstm": {512: 235, 4096: 1361}}  # speed-up over GRU / LSTM
SEQUENTIAL = {"mingru": "gru", "minlstm": "lstm"}  # the paper's pairs
RESULTS = Path(__file__).resolve().parent.parent / "results"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", type=int, nargs="+", default=[64, 256, 512, 1024, 4096], help="sequence lengths")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=1, help="1 to compare with the paper's single layers")
    p.add_argument("--models", nargs="+", default=[*OURS, *BASELINES], choices=[*OURS, *BASELINES])
    p.add_argument("--reps", type=int, default=3, help="timed steps after the warm-up (fewer if over budget)")
    p.add_argument("--budget", type=float, default=40.0, help="seconds per configuration")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--quick", action="store_true", help="T 64 256, batch 8, 2 reps: a smoke run")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the CSV and markdown")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration in this process
    args = p.parse_args()
    if args.quick:
        args.T, args.batch, args.reps, args.budget = [64, 256], 8, 2, 10.0
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def make_model(name: str, dim: int, layers: int) -> nn.Module:
    if name in BASELINES:
        return BASELINES[name](dim, dim, num_layers=layers, batch_first=True)
    if name in LOG_SCAN:
        return build(LOG_SCAN[name], dim, layers, scan="log")
    return build(name, dim, layers)


def rss_bytes() -> int:
    """Current resident set size (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_one(args: argparse.Namespace, name: str, T: int) -> dict:
    """Time training steps of one configuration in this process."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = make_model(name, args.dim, args.layers).to(device)
    x = torch.randn(args.batch, T, args.dim, device=device)

    def train_step() -> float:
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        y = model(x)[0]  # (B, T, dim) for ours and the baselines alike
        y.square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    warmup = train_step()
    row = {"status": "ok", "reps": 0, "time_ms": math.nan}
    if warmup > args.budget:
        row["status"] = f"skipped: warm-up took {warmup:.0f}s > budget {args.budget:.0f}s"
    else:
        reps = max(1, min(args.reps, int((args.budget - warmup) / warmup)))
        times = [train_step() for _ in range(reps)]
        row.update(reps=reps, time_ms=1000 * sum(times) / reps)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base  # ru_maxrss is in KiB
    row["peak_mib"] = peak / 2**20
    return row


def run_in_subprocess(args: argparse.Namespace, name: str, T: int) -> dict:
    cmd = [sys.executable, __file__, "--one", name, "--T", str(T), "--batch", str(args.batch),
           "--dim", str(args.dim), "--layers", str(args.layers), "--reps", str(args.reps),
           "--budget", str(args.budget), "--threads", str(args.threads), "--device", args.device]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=3 * args.budget + 60, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"status": "skipped: timed out", "reps": 0, "time_ms": math.nan, "peak_mib": math.nan}
    except subprocess.CalledProcessError as e:
        return {"status": f"failed: {e.stderr.strip().splitlines()[-1]}", "reps": 0, "time_ms": math.nan,
                "peak_mib": math.nan}


def speedups(rows: list[dict]) -> None:
    """Add, to each of our rows, how many times faster it is than the sequential GRU and LSTM."""
    ms = {(r["backbone"], r["T"]): r["time_ms"] for r in rows}
    for r in rows:
        for base in BASELINES:
            ratio = ms.get((base, r["T"]), math.nan) / r["time_ms"]
            r[f"x_vs_{base}"] = ratio if r["backbone"] in OURS else math.nan


def fmt(v: float, digits: int = 0) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.{digits}f}"


def markdown(rows: list[dict], args: argparse.Namespace, header: dict) -> str:
    Ts, models = sorted({r["T"] for r in rows}), list(dict.fromkeys(r["backbone"] for r in rows))
    cell = {(r["backbone"], r["T"]): r for r in rows}
    head = "| backbone | " + " | ".join(f"T={T}" for T in Ts) + " |\n|---|" + "---:|" * len(Ts) + "\n"
    lines = [f"# Backbone training-step benchmark ({header['device']})", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", f"One layer each; batch {args.batch}, dim {args.dim}; forward + backward, mean of up to "
              f"{args.reps} steps after a warm-up step. See `experiments/bench_backbones.py` for what is "
              "measured.", "", "## Time per training step (ms)", "", head.rstrip()]
    lines += [f"| {m} | " + " | ".join(fmt(cell[m, T]["time_ms"], 1) for T in Ts) + " |" for m in models]
    lines += ["", "## Peak memory (MiB)", "", head.rstrip()]
    lines += [f"| {m} | " + " | ".join(fmt(cell[m, T]["peak_mib"]) for T in Ts) + " |" for m in models]
    lines += ["", "## Speed-up over the sequential baseline (paper: T4 GPU, Feng et al. 2024)", "",
              "| ours vs baseline | " + " | ".join(f"T={T}" for T in Ts) + " | paper T=512 | paper T=4096 |",
              "|---|" + "---:|" * (len(Ts) + 2)]
    for ours, base in SEQUENTIAL.items():
        if (ours, Ts[0]) in cell:
            vals = " | ".join(fmt(cell[ours, T][f"x_vs_{base}"], 2) for T in Ts)
            lines.append(f"| {ours} vs {base} | {vals} | {PAPER[ours][512]} | {PAPER[ours][4096]} |")
    lines += ["", "The paper's ratios are GPU ratios: there a sequential GRU pays a chain of short kernels "
              "per step while the scan runs all steps at once. On a CPU both are bound by arithmetic, and "
              "our layer has more of it than a bare GRU/LSTM layer (a whole residual block: 2x-wide mixer "
              "with in/out projections and a 4x MLP, about 2-2.3x their multiply-adds per token at dim "
              "128), so a ratio below 1 on CPU is expected. On a shared machine, mind the load averages."]
    skipped = [r for r in rows if r["status"] != "ok"]
    if skipped:
        lines += ["", "## Not measured", ""]
        lines += [f"- {r['backbone']} T={r['T']}: {r['status']}" for r in skipped]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(args, args.one, args.T[0])))
        return
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    header = {"device": args.device, "device name": device_name, "torch": torch.__version__,
              "threads": args.threads, "cpu count": os.cpu_count(),
              "load average before (1, 5, 15 min)": ", ".join(f"{v:.2f}" for v in os.getloadavg())}
    print("\n".join(f"{k}: {v}" for k, v in header.items()), flush=True)
    rows = []
    for T in args.T:
        for name in args.models:
            row = {"backbone": name, "T": T, "batch": args.batch, "dim": args.dim, "layers": args.layers,
                   **run_in_subprocess(args, name, T)}
            rows.append(row)
            print(f"{name:12s} T={T:5d}  {fmt(row['time_ms'], 1):>10s} ms  {fmt(row['peak_mib']):>7s} MiB  "
                  f"reps={row['reps']}  {row['status']}", flush=True)
    header["load average after (1, 5, 15 min)"] = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    speedups(rows)
    md = markdown(rows, args, header)
    print("\n" + md)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench_backbones_{args.device}{'_quick' if args.quick else ''}"
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    stem.with_suffix(".md").write_text(md)
    print(f"wrote {stem}.csv and {stem}.md")


if __name__ == "__main__":
    main()
