"""Run the README's main job (`python evaluate.py`: the quickstart) from scratch and record what it did.

    python experiments/quickstart_check.py

Trains into a fresh temporary directory (the quickstart resumes an existing one, which would not time a
fresh run), evaluates as `evaluate.py` does, and writes results/quickstart_cpu.md: score, wall-clock,
updates/s, the machine and its load. The README's quickstart numbers come from that file.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from bench_latency import cpu_description

ROOT = Path(__file__).resolve().parents[1]


def main():
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "quickstart"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--quickstart-out", str(out), "--json"],
                              capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"evaluate.py failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        summary = json.loads(proc.stdout)
        log = pd.read_csv(out / "log.csv")
        train_s = float(log.elapsed_s.iloc[-1])
    r = summary["results"][0]
    text = (f"# Quickstart (`python evaluate.py`), measured by experiments/quickstart_check.py\n\n"
            f"{cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads; load average at "
            f"start {load:.2f}, at end {os.getloadavg()[0]:.2f}.\n\n"
            f"| updates | training | updates/s | whole command | episodes | target return | normalized score |\n"
            f"|---:|---:|---:|---:|---:|---:|---:|\n"
            f"| {summary['checkpoint_step']:,} | {train_s / 60:.1f} min | {summary['checkpoint_step'] / train_s:.1f} "
            f"| {wall / 60:.1f} min | {r['episodes']} | {r['target_return']:.0f} "
            f"| {r['score_mean']:.1f} ± {r['score_std_episodes']:.1f} |\n")
    (ROOT / "results" / "quickstart_cpu.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
