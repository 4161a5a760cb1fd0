"""Is the grid's best agent best out of sample? Leave-one-dataset-out and leave-one-environment-out selection.

    python experiments/studies/selection_check.py

The `fast` preset is the agent with the best mean over the grid's six datasets, but it was chosen on those
same datasets. This replays the choice without the dataset it is scored on: for each held-out dataset (or
environment), pick the agent with the best mean score on the others, then read the picked agent's score on the
held-out one. The mean of those held-out scores is an honest estimate of "the grid's winner" as a recipe; set
against the in-sample winner's mean and against fixed choices (each agent picked regardless of the data), it
says how much of the winner's lead is selection. The pool: our agents (d3rlpy's DT is the reference, not a
recipe) with three seeds on every dataset, less the grid's `CANDIDATES` (one-field variants measured against
`fast`, as the grid's summary leaves them out); a cell's score is the mean of its seeds 0-2.
Reads results/grid_cpu.csv (current rows only); writes results/selection_check_cpu.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))  # the grid's modules
from results_grid import CANDIDATES, DATASETS, current  # noqa: E402

from decision_rnn.evaluation.aggregate import improvement_interval  # noqa: E402

SEEDS = (0, 1, 2)


def full_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """Seed 0-2 runs of our agents (not the candidates) that have all three seeds on every dataset."""
    runs = current(frame)
    runs = runs[runs.seed.isin(SEEDS) & (runs.agent != "d3rlpy-dt") & ~runs.agent.isin(CANDIDATES)]
    counts = runs.groupby(["agent", "dataset"]).seed.nunique().unstack()
    full = counts.index[(counts.reindex(columns=list(DATASETS)) == len(SEEDS)).all(axis=1)]
    return runs[runs.agent.isin(full)]


def scores_of(runs: pd.DataFrame, agent: str) -> dict:
    return {d: g.score.to_numpy() for d, g in runs[runs.agent == agent].groupby("dataset")}


def replay(table: pd.DataFrame, folds: dict[str, list[str]]) -> pd.DataFrame:
    """For each fold, the agent best on the other datasets and its score (and rank) on the fold's datasets."""
    rows = []
    for fold, held in folds.items():
        rest = [d for d in table.columns if d not in held]
        pick = table[rest].mean(axis=1).idxmax()
        held_scores = table[held].mean(axis=1)
        rows.append({"held out": fold, "picked on the rest": pick, "its held-out score": held_scores[pick],
                     "rank held out": int(held_scores.rank(ascending=False)[pick]),
                     "best held out": held_scores.idxmax(), "best's score": held_scores.max()})
    return pd.DataFrame(rows)


def main():
    runs = full_runs(pd.read_csv(ROOT / "results" / "grid_cpu.csv"))
    table = runs.groupby(["agent", "dataset"]).score.mean().unstack()[list(DATASETS)]
    n = len(table)
    winner = table.mean(axis=1).idxmax()
    by_dataset = replay(table, {d: [d] for d in table.columns})
    envs = {env: [d for d in table.columns if d.startswith(env)] for env in ("hopper", "walker2d")}
    by_env = replay(table, envs)
    fixed = table.mean(axis=1).sort_values(ascending=False)
    second = fixed.index[1]
    p, low, high = improvement_interval(scores_of(runs, winner), scores_of(runs, second))
    lines = [
        "# Selection check: the grid's winner out of sample",
        "",
        f"From `experiments/studies/selection_check.py` over `results/grid_cpu.csv`: {n} agents with seeds "
        f"{SEEDS[0]}-{SEEDS[-1]} on all six datasets; a cell is the mean of its three seeds (D4RL-normalized).",
        "",
        f"In sample, the best mean over the six datasets is `{winner}`'s, {fixed[winner]:.1f}, against "
        f"{fixed[second]:.1f} for the runner-up `{second}`: P({winner} > {second}) = {p:.2f} "
        f"[{low:.2f}, {high:.2f}] (95% stratified bootstrap).",
        "",
        "## Leave one dataset out",
        "",
        by_dataset.to_markdown(index=False, floatfmt=".1f"),
        "",
        f"Held-out mean of the pick: **{by_dataset['its held-out score'].mean():.1f}** "
        f"(the in-sample winner's mean is {fixed[winner]:.1f}); the pick is `{winner}` in "
        f"{(by_dataset['picked on the rest'] == winner).sum()} of {len(by_dataset)} folds; median held-out rank "
        f"{by_dataset['rank held out'].median():.0f} of {n}.",
        "",
        "## Leave one environment out",
        "",
        by_env.to_markdown(index=False, floatfmt=".1f"),
        "",
        "## Fixed choices (no selection), mean over the six datasets",
        "",
        fixed.rename("mean score").to_frame().to_markdown(floatfmt=".1f"),
        "",
    ]
    out = ROOT / "results" / "selection_check_cpu.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
