"""Figures of the results grid: learning curves and score vs target return, one panel per dataset.

    python experiments/plot_grid.py [--protocol cpu]

Reads results/grid_<protocol>_curves.csv (written by results_grid.py); writes
results/grid_<protocol>_learning_curves.png and results/grid_<protocol>_target_sweep.png.
Lines are means over the seeds that have run, each agent in its current context (as the grid's table);
the legend gives each agent's number of seeds.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from results_grid import AGENTS, DATASETS, current  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def plot(curves: pd.DataFrame, kind: str, xlabel: str, title: str, path: Path) -> None:
    frame = curves[curves.kind == kind]
    names = [d for d in DATASETS if d in set(frame.dataset)]
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.2 * cols, 6.5), 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        data = frame[frame.dataset == name]
        for agent in [a for a in AGENTS if a in set(data.agent)]:
            d = data[data.agent == agent]
            mean = d.groupby("x").score.mean()
            ax.plot(mean.index, mean.values, marker="o", label=f"{agent} (n={d.seed.nunique()})")
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("normalized score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocol", default="cpu")
    args = p.parse_args()
    curves = current(pd.read_csv(ROOT / "results" / f"grid_{args.protocol}_curves.csv"))
    out = ROOT / "results" / f"grid_{args.protocol}"
    plot(curves, "curve", "updates", f"Learning curves (protocol {args.protocol}; score of each checkpoint)",
         Path(f"{out}_learning_curves.png"))
    plot(curves, "target", "target return", f"Score vs target return (protocol {args.protocol}; last checkpoint)",
         Path(f"{out}_target_sweep.png"))


if __name__ == "__main__":
    main()
