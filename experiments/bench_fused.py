"""The fused runtime's matrix products: its compiled loop against BLAS (sgemm), by batch size.

    python experiments/bench_fused.py [--calls 500]

Times `FusedStep` (DT-size minGRU, compact tokens, 1 thread) at batch 1, 2, 10, 32, 64 and 100 with the
loop and with BLAS forced, side by side in one run: the evidence behind `FusedStep.blas_from`.
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

from decision_rnn import DecisionRNN, ModelConfig  # noqa: E402
from decision_rnn.fused import FusedStep  # noqa: E402

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


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=500)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    fused = FusedStep(DecisionRNN(ModelConfig(obs_dim=OBS, act_dim=ACT, backbone="mingru", tokens="compact")).eval())
    load = os.getloadavg()[0]
    rows = []
    for batch in (1, 2, 10, 32, 64, 100):
        row = {"batch": batch}
        for name, blas_from in (("loop_us", 10**9), ("blas_us", 1)):
            fused.blas_from = blas_from
            row[name] = median_us(fused, batch, args.calls)
        rows.append(row)
    frame = pd.DataFrame(rows).assign(blas_over_loop=lambda f: f.blas_us / f.loop_us)
    threads = os.environ["OPENBLAS_NUM_THREADS"]
    header = (f"{cpu_description()}, 1 thread (OPENBLAS_NUM_THREADS={threads}), median of {args.calls} calls of "
              f"FusedStep (DT-size minGRU, compact tokens); load average at start {load:.2f}; "
              f"`FusedStep.blas_from` = {FusedStep.blas_from}")
    text = f"# Fused runtime: compiled loop against BLAS by batch size\n\n{header}\n\n" \
           f"{frame.astype({'batch': str}).to_markdown(index=False, floatfmt=('', '.1f', '.1f', '.2f'))}\n"
    (ROOT / "results" / "bench_fused_cpu.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
