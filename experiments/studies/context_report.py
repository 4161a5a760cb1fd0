"""One table of every minGRU run by training context: window, episode, stream (CPU protocol, compact tokens).

    python experiments/studies/context_report.py

Gathers the last-checkpoint scores at DT's target return from the three scripts that trained minGRU in
more than one context: results/grid_cpu.csv (the grid, every context it has run), results/context_ablation.csv
and the `window-context` / `stream-context` rows of results/recipe_ablation_cpu.csv. A (dataset, context,
code revision, seed) that several scripts ran is counted once, the grid's run first; a grid run is labelled with
the latest revision whose training equals its own (`grid_versions`). Writes results/context_cpu.md.
"""

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))  # the grid's modules: protocol.py, results_grid.py
from results_grid import DATASETS, grid_versions, versions  # noqa: E402

CONTEXTS = ["episode", "window", "stream"]


def gather(results: Path) -> pd.DataFrame:
    """(dataset, context, seed, score, source) of every minGRU compact-token run at 3,000 updates."""
    grid = pd.read_csv(results / "grid_cpu.csv")
    grid = grid[(grid.agent == "mingru") & (grid.tokens == "compact")]
    grid = grid.assign(version=grid_versions(grid), source="grid")  # a run counts as the latest revision it equals
    names = {ids[0]: name for name, ids in DATASETS.items() if len(ids) == 1}
    ablation = pd.read_csv(results / "context_ablation.csv")
    ablation = ablation[(ablation.agent == "mingru") & (ablation.tokens == "compact")]
    ablation = ablation.assign(dataset=ablation.get("dataset", pd.Series(index=ablation.index, dtype=object))
                               .fillna("zoo/hopper/medium-v0").map(names), source="context_ablation")
    recipe = pd.read_csv(results / "recipe_ablation_cpu.csv")
    recipe = recipe[(recipe.agent == "mingru") & recipe.variant.isin(["window-context", "stream-context"])
                    & (recipe.kind == "curve") & (recipe.x == 3000)]
    recipe = recipe.assign(context=recipe.variant.str.removesuffix("-context"), source="recipe_ablation")
    columns = ["dataset", "context", "version", "seed", "score", "source"]
    frame = pd.concat([f.reindex(columns=columns) for f in (grid, ablation, recipe)], ignore_index=True)
    frame["version"] = versions(frame)
    return frame.drop_duplicates(["dataset", "context", "version", "seed"], keep="first")


def table(frame: pd.DataFrame) -> str:
    """One column per (context, code version) that has runs."""
    kinds = sorted(set(zip(frame.context, frame.version)), key=lambda k: (CONTEXTS.index(k[0]), k[1]))
    lines = ["| dataset | " + " | ".join(f"{c} v{v}" for c, v in kinds) + " |", "|---|" + "---|" * len(kinds)]
    for name in DATASETS:
        runs = frame[frame.dataset == name]
        if runs.empty:
            continue
        cells = []
        for context, version in kinds:
            scores = runs[(runs.context == context) & (runs.version == version)].sort_values("seed").score
            if scores.empty:
                cells.append("—")
                continue
            each = ", ".join(f"{v:.1f}" for v in scores)
            cells.append(f"**{scores.mean():.1f}** ({each})" if len(scores) > 1 else f"{scores.iloc[0]:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    frame = gather(ROOT / "results")
    text = ("# minGRU by training context (CPU protocol, compact tokens, 10 episodes per seed)\n\n"
            "Each cell: mean over seeds in bold, then the seeds' scores (last checkpoint, DT's target return). "
            "vN: the code revision a run was trained with (`CODE_VERSION` in experiments/results_grid.py says what "
            "each changed; a run counts as the latest revision that trains it identically).\n\n"
            f"{table(frame)}\n")
    (ROOT / "results" / "context_cpu.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
