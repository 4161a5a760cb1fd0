"""The fused runtime's matrix products: the compiled loop against BLAS by batch size, and where the
weights come from at batch 1.

    python experiments/bench_fused.py [--calls 500]

1. Times `FusedStep` (DT-size minGRU, compact tokens, 1 thread) at batch 1, 2, 10, 32, 64 and 100 with the
   loop and with BLAS (sgemm) forced, side by side in one run: the evidence behind `FusedStep.blas_from`.
   Also the loop with float16 weights (`FusedStep(weights="float16")`).
2. At batch 1, the step's own matrix-vector products in one compiled call (the loop `FusedStep` runs), with
   each matrix once, as a step runs them (the weights stream from L3), and each many times back to back
   (then they come from L2), with float32 and float16 weights: how much of the step is the weights' way to
   the core.
3. The batch-1 step with float32 and float16 weights by model size: where float16 pays off (weights
   beyond the cache) and where widening them costs what the halved bytes save.
Writes results/bench_fused_cpu.md.
"""

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy/scipy load OpenBLAS: 1 thread, as the loop
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from bench_latency import ACT, OBS, cpu_description  # noqa: E402
from numba import njit  # noqa: E402

from decision_rnn import DecisionRNN, ModelConfig  # noqa: E402
from decision_rnn.fused import FusedStep, linear  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def median_us(fused: FusedStep, batch: int, calls: int) -> float:
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((batch, OBS)).astype(np.float32)
    prev, rtg = np.zeros((batch, ACT), np.float32), np.full(batch, 3600.0, np.float32)
    t, state = np.zeros(batch, np.int64), fused.initial_state(batch)
    for _ in range(20):
        fused(obs, prev, rtg, t, state)
    times = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        fused(obs, prev, rtg, t, state)
        times[i] = time.perf_counter() - t0
    return float(np.median(times) * 1e6)


@njit(cache=True, fastmath=True)
def products(P, L, ks, repeat, x, out, bias):
    """The matrices `ks` of the packed weights at batch 1, in turn, each `repeat` times back to back (x, out,
    bias: flat buffers at least as long as any matrix needs)."""
    for k in ks:
        o, r, c = L[k, 0], L[k, 1], L[k, 2]
        for _ in range(repeat):
            linear(P[o:o + r * c].reshape((r, c)), bias[:r], x[:c].reshape((1, c)), out[:r].reshape((1, r)), False)


def weight_sources(steps: list[FusedStep], calls: int, repeat: int = 20) -> tuple[pd.DataFrame, int, float]:
    """The step's matrix products once each, as a step runs them (their 2.8 MB in float32 come from L3), then
    each `repeat` times back to back (from the second time on a matrix, at most 256 KB, is in L2); for each
    of `steps` (float32 and float16 weights)."""
    mhz = cpu_mhz()
    rows = []
    for fused in steps:
        _, M, L = fused.packed[False]
        ks = np.array([k for k in range(len(L)) if k != 2 and L[k, 1] > 1], np.int64)  # 2: the timestep table
        macs = int(sum(L[k, 1] * L[k, 2] for k in ks))
        x = np.random.default_rng(0).standard_normal(int(L[:, 2].max())).astype(np.float32)
        out, bias = np.zeros(int(L[:, 1].max()), np.float32), np.zeros(int(L[:, 1].max()), np.float32)
        for name, n in (("once each, as a step streams them", 1), (f"each {repeat} times back to back", repeat)):
            products(M, L, ks, n, x, out, bias)
            times = np.empty(calls)
            for i in range(calls):
                t0 = time.perf_counter()
                products(M, L, ks, n, x, out, bias)
                times[i] = time.perf_counter() - t0
            us = float(np.median(times) * 1e6) / n  # per pass over the step's matrices
            rows.append({"weights": fused.weights, "matrices": name, "weights_from": "L3" if n == 1 else "L2",
                         "us_per_step": us, "multiply_adds_per_cycle": macs / (us * mhz),
                         "bytes_per_cycle": M.itemsize * macs / (us * mhz)})
    return pd.DataFrame(rows), macs, mhz


def by_size(calls: int) -> pd.DataFrame:
    """Batch-1 step time, float32 against float16 weights, for DT's size and wider/deeper minGRUs."""
    rows = []
    for embed, layers in ((128, 3), (256, 3), (256, 6)):
        torch.manual_seed(0)
        model = DecisionRNN(ModelConfig(obs_dim=OBS, act_dim=ACT, backbone="mingru", tokens="compact",
                                        embed_dim=embed, n_layers=layers)).eval()
        steps = [FusedStep(model, weights=w) for w in ("float32", "float16")]
        _, _, L = steps[0].packed[False]
        macs = sum(L[k, 1] * L[k, 2] for k in range(len(L)) if k != 2 and L[k, 1] > 1)
        times = [median_us(f, 1, calls) for f in steps]
        rows.append({"embed_dim": embed, "n_layers": layers, "float32_MB": 4 * macs / 1e6, "float32_us": times[0],
                     "float16_us": times[1], "float32_over_float16": times[0] / times[1]})
    return pd.DataFrame(rows)


def cpu_mhz() -> float:
    """The clock /proc/cpuinfo reports (a VM's nominal one; turbo may differ)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":")[1])
    raise RuntimeError("no 'cpu MHz' in /proc/cpuinfo")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=500)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DecisionRNN(ModelConfig(obs_dim=OBS, act_dim=ACT, backbone="mingru", tokens="compact")).eval()
    fused, half = FusedStep(model), FusedStep(model, weights="float16")
    half.blas_from = 10**9
    load = os.getloadavg()[0]
    rows = []
    for batch in (1, 2, 10, 32, 64, 100):
        row = {"batch": batch}
        for name, blas_from in (("loop_us", 10**9), ("blas_us", 1)):
            fused.blas_from = blas_from
            row[name] = median_us(fused, batch, args.calls)
        row["loop_float16_us"] = median_us(half, batch, args.calls)
        rows.append(row)
    frame = pd.DataFrame(rows).assign(blas_over_loop=lambda f: f.blas_us / f.loop_us)
    threads = os.environ["OPENBLAS_NUM_THREADS"]
    header = (f"{cpu_description()}, 1 thread (OPENBLAS_NUM_THREADS={threads}), median of {args.calls} calls of "
              f"FusedStep (DT-size minGRU, compact tokens); load average at start {load:.2f}; "
              f"`FusedStep.blas_from` = {FusedStep.blas_from}")
    sources, macs, mhz = weight_sources([fused, half], args.calls)
    sizes = by_size(args.calls)
    text = f"# Fused runtime: compiled loop against BLAS by batch size\n\n{header}\n\n" \
           f"{frame.astype({'batch': str}).to_markdown(index=False, floatfmt=('', '.1f', '.1f', '.1f', '.2f'))}\n\n" \
           f"Batch 1, the step's {macs:,} multiply-adds (its matrix-vector products, {4 * macs / 1e6:.1f} MB of " \
           f"weights in float32, {2 * macs / 1e6:.1f} MB in float16) in one compiled call of the loop, by where " \
           f"the weights come from (per cycle at the " \
           f"{mhz:.0f} MHz /proc/cpuinfo reports); load average now {os.getloadavg()[0]:.2f}:\n\n" \
           f"{sources.to_markdown(index=False, floatfmt=('', '', '', '.1f', '.1f', '.1f'))}\n\n" \
           f"Batch 1, the whole step (median of {args.calls} calls) by model size (minGRU, compact tokens; MB: the " \
           f"float32 matrices a step streams); load average now {os.getloadavg()[0]:.2f}:\n\n" \
           f"{sizes.to_markdown(index=False, floatfmt=('', '', '.1f', '.1f', '.1f', '.2f'))}\n"
    (ROOT / "results" / "bench_fused_cpu.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
