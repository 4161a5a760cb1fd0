"""Loading time and sampler throughput on zoo/hopper/medium-v0 (1M steps); writes results/bench_sampler.md.

Training runs at roughly 5-50 updates/s, so a sampler is fast enough when one batch costs well
under 1/50 s. Loading is timed through our h5py reader, through ``MinariDataset.iterate_episodes``,
and from an ``.npz`` copy of the arrays (what a cache would give).

    MINARI_DATASETS_PATH=../shared/minari python experiments/bench_sampler.py
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import tempfile
import time

import minari
import numpy as np
import torch

from decision_rnn.data import EpisodeSampler, TrajectoryDataset, WindowSampler, from_minari, load_dataset

REPO = pathlib.Path(__file__).resolve().parents[1]


def best_time(fn, repeats: int) -> float:
    """Fastest of ``repeats`` calls, in seconds (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def time_npz_cache(dataset: TrajectoryDataset) -> float:
    names = ("observations", "actions", "rewards", "terminations", "truncations", "offsets")
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "cache.npz"
        np.savez(path, **{name: getattr(dataset, name) for name in names})

        def load() -> TrajectoryDataset:
            with np.load(path) as arrays:
                return TrajectoryDataset(**{name: arrays[name] for name in names}, env_id=dataset.env_id)

        return best_time(load, 2)


def time_sampler(sampler, seconds: float) -> tuple[float, float]:
    """(batches/s, real steps per batch) over about ``seconds``."""
    for _ in range(5):  # warm-up
        sampler.sample()
    batches, steps, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        steps += int(sampler.sample().mask.sum())
        batches += 1
    return batches / (time.perf_counter() - start), steps / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="zoo/hopper/medium-v0")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per sampler")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "results" / "bench_sampler.md")
    args = parser.parse_args()

    dataset = load_dataset(args.dataset)
    load_h5py = best_time(lambda: load_dataset(args.dataset), 2)
    load_iterate = best_time(lambda: from_minari(minari.load_dataset(args.dataset), fast=False), 1)
    load_npz = time_npz_cache(dataset)

    rows = []
    for name, sampler, batch_size in [
        ("WindowSampler(K=20)", WindowSampler(dataset, context_len=20, batch_size=64), 64),
        ("EpisodeSampler", EpisodeSampler(dataset, batch_size=16), 16),
        ("EpisodeSampler(max_len=200)", EpisodeSampler(dataset, batch_size=16, max_len=200), 16),
    ]:
        batches_per_s, steps = time_sampler(sampler, args.seconds)
        rows.append(
            f"| {name} | {batch_size} | {batches_per_s:,.0f} | {batches_per_s * batch_size:,.0f} | "
            f"{steps:,.0f} | {100 * 50 / batches_per_s:.2f}% |"
        )

    report = "\n".join(
        [
            "# Data loading and sampler throughput",
            "",
            f"`python experiments/bench_sampler.py` on {args.dataset} ({dataset.num_episodes} episodes, "
            f"{dataset.num_steps:,} steps); {platform.processor() or platform.machine()}, {os.cpu_count()} "
            f"CPUs, torch {torch.__version__} (threads {torch.get_num_threads()}), CPU tensors.",
            "",
            "## Loading (best of repeats, seconds)",
            "",
            "| path | seconds |",
            "|---|---|",
            f"| `load_dataset` (h5py low-level reader, the default) | {load_h5py:.2f} |",
            f"| `from_minari(..., fast=False)` (`MinariDataset.iterate_episodes`) | {load_iterate:.2f} |",
            f"| `.npz` copy of the arrays + `TrajectoryDataset(...)` (a cache) | {load_npz:.2f} |",
            "",
            "A cache would save about a second per run, next to training runs of minutes: not worth "
            "a second copy of the data on disk and its invalidation, so there is none.",
            "",
            "## Samplers",
            "",
            "Training runs at about 5-50 updates/s; the last column is the share of one core that "
            "sampling takes at 50 updates/s.",
            "",
            "| sampler | batch | batches/s | sequences/s | real steps/batch | at 50 updates/s |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)


if __name__ == "__main__":
    main()
