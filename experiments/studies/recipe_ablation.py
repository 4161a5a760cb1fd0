"""Where we lose to d3rlpy's DT: one recipe change at a time against the grid's own run.

    python experiments/studies/recipe_ablation.py [--dataset hopper-mixed] [--agent transformer] [--seed 0]

The baselines are the grid's runs of the same (dataset, agent, seed), one per context it ran in, read
from results/grid_cpu*.csv (run results_grid.py first). Each variant changes one thing in the grid agent:
- `timestep-init-0.02`: GPT-2's N(0, 0.02) init of the timestep embedding (d3rlpy's); DT's code leaves
  nn.Embedding's N(0, 1).
- `grad-clip-0.083`: d3rlpy sums the squared error over the action dimensions (x act_dim = 3 on Hopper)
  before its 0.25 gradient clip; under Adam that equals our mean loss clipped at 0.25 / 3.
- `window-align-end` (window context only): d3rlpy's windows END at a uniformly drawn step; DT's code
  (and `TrainConfig`'s default) STARTS them there.
- `tokens-interleaved`: DT's and d3rlpy's (return, state, action) tokens instead of our compact ones.
- `tokens-split` (not from d3rlpy): two tokens per step, the return's own and state + previous action
  (`ModelConfig.tokens="split"`): does the return's own token give interleaved's hopper-mixed scores at
  two thirds of its sequence length?
- `return-ln` (not from d3rlpy): compact tokens whose return embedding is LayerNormed on its own
  (`ModelConfig.return_ln`), so that a target far above the data's returns cannot outweigh the state in
  the token (experiments/studies/return_dominance.py measures how much it does without).
- `no-prev-action`: compact tokens without the previous action (`ModelConfig.prev_action=False`).
- `gpt2-init`: d3rlpy's init, N(0, 0.02) for every Linear in the blocks (zero biases) and for the
  timestep embedding, instead of PyTorch's default.
- `relu`: ReLU in the blocks' MLPs (DT's gym default and d3rlpy's) instead of GPT-2's GELU.
- `d3rlpy-model`: d3rlpy's ReLU, GPT-2 init and effective clip, keeping our compact tokens and the
  agent's own context: the part of d3rlpy's recipe a recurrent agent can take.
- `d3rlpy-recipe`: all of the above at once, in DT windows (what our transformer trains on anyway).
  What remains different is minor: d3rlpy's LayerNorm eps (3e-3 vs 1e-5), its loss averaging over
  padded steps too, and its AdamW leaving biases, LayerNorms and embeddings out of the weight decay
  (1e-4 x lr 1e-3 = 1e-7 shrinkage per update here, negligible).
- `window-context` (recurrent agents): DT's 64 K-step windows per update instead of 4 whole episodes.
- `stream-context` (recurrent agents): 64 streams walking whole episodes in consecutive K-step chunks, the
  state carried from chunk to chunk (truncated BPTT): a window batch's variety and cost, with the
  rollout's state (`TrainConfig.context`).
- `cosine-decay`: not from d3rlpy (it keeps the rate, as DT does) but a guard against the last-checkpoint
  swings the learning curves show: the rate falls from 1e-3 to 1e-4 over the updates after the warm-up
  (`TrainConfig.lr_decay`).
- `ema-0.999`: not from d3rlpy either: the checkpoints hold an exponential moving average of the weights
  (decay 0.999 per update, `TrainConfig.ema_decay`), so the last checkpoint is an average over about the
  last 1000 updates instead of wherever the final update left the weights.
- `window-align-start`: DT's start-aligned windows (the converse of `window-align-end`).
- `window-align-uniform`: windows drawn from all K-step windows overlapping an episode, so its first steps
  (which end-alignment trains fully) and its last ones (which start-alignment does) are both trained as
  often as the rest (`WindowSampler(align="uniform")`).
- `constant-lr`: DT's constant rate after the warm-up (the converse of `cosine-decay`).
- `lr-3e-4`: the CPU protocol's peak rate 1e-3 -> 3e-4 (so 1e-4 -> 3e-5 at the end, about where d3rlpy's DT,
  still warming up to 1e-4 over 10k updates, stands at update 3,000). Do the last checkpoints still flip
  between walking and falling at a lower rate?
- `lru-r-min-0` (LRU only): the LRU's ring init from |lambda| in [0, 0.999] instead of [0.9, 0.999] (the
  paper's Appendix A code defaults to r_min = 0). From 0.9 up every channel averages over 10 steps or more,
  half a training window: does the LRU need channels that forget fast? LRU-only variants are skipped for
  other agents when several variants are asked for, refused when only one.
A variant that the current code already trains by default (the library's defaults and the CPU protocol
took several of them) changes nothing when run again; its rows are those of the code revision it was run
under (the `version` column, `CODE_VERSION` in experiments/results_grid.py), paired with the grid's run of
that revision. Every variant gets the learning curve and target sweep the grid records. CPU protocol,
1 thread. Writes results/recipe_ablation_cpu.{csv,md}; variants run earlier for the same run are kept.
"""

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))  # the grid's modules: protocol.py, results_grid.py
from protocol import train_and_evaluate  # noqa: E402
from results_grid import AGENTS, CODE_VERSION, DATASETS, agent_spec, locked, our_curves, version_chain, versions  # noqa: E402

VARIANTS = {
    "timestep-init-0.02": ({"timestep_init_std": 0.02}, {}),
    "grad-clip-0.083": ({}, {"grad_clip": 0.25 / 3}),
    "window-align-end": ({}, {"window_align": "end"}),
    "tokens-interleaved": ({"tokens": "interleaved"}, {}),
    "tokens-split": ({"tokens": "split"}, {}),
    "return-ln": ({"return_ln": True}, {}),
    "no-prev-action": ({"prev_action": False}, {}),
    "gpt2-init": ({"block_init_std": 0.02, "timestep_init_std": 0.02}, {}),
    "relu": ({"activation": "relu"}, {}),
    "d3rlpy-model": ({"activation": "relu", "block_init_std": 0.02, "timestep_init_std": 0.02},
                     {"grad_clip": 0.25 / 3}),
    "d3rlpy-recipe": ({"tokens": "interleaved", "activation": "relu", "block_init_std": 0.02,
                       "timestep_init_std": 0.02}, {"grad_clip": 0.25 / 3, "context": "window", "window_align": "end"}),
    "window-context": ({}, {"context": "window"}),
    "stream-context": ({}, {"context": "stream"}),
    "cosine-decay": ({}, {"lr_decay": "cosine"}),
    "ema-0.999": ({}, {"ema_decay": 0.999}),
    "window-align-start": ({}, {"window_align": "start"}),
    "window-align-uniform": ({}, {"window_align": "uniform"}),
    "constant-lr": ({}, {"lr_decay": "none"}),
    "lr-3e-4": ({}, {"lr": 3e-4}),
    "lru-r-min-0": ({"backbone_options": {"r_min": 0.0}}, {}),
}


def applies(agent: str, variant: str) -> bool:
    """Whether `variant` can change grid `agent`: the `lru-` variants change LRU options only."""
    return not variant.startswith("lru-") or agent_spec(agent)[0] == "lru"


def variant_spec(agent: str, variant: str) -> tuple[str, str, dict, dict]:
    """(backbone, tokens, ModelConfig options, TrainConfig options) of `variant` applied to grid `agent`: the
    agent's flavour (tokens, options) with the variant's changes on top."""
    backbone, tokens, model_options, train_options = agent_spec(agent)
    if not applies(agent, variant):
        raise ValueError(f"variant {variant!r} changes the LRU's options; agent {agent!r} has no LRU backbone")
    model_options = {**model_options, **VARIANTS[variant][0]}
    return backbone, model_options.pop("tokens", tokens), model_options, {**train_options, **VARIANTS[variant][1]}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="hopper-mixed", choices=sorted(DATASETS))
    p.add_argument("--agent", default="transformer", choices=[a for a in AGENTS if a != "d3rlpy-dt"],
                   help="a grid agent: its backbone and flavour (tokens, options) are the base every variant changes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--report", action="store_true", help="only rewrite the markdown from the CSV")
    args = p.parse_args()
    path = ROOT / "results" / "recipe_ablation_cpu"
    if args.report:
        write_report(pd.read_csv(path.with_suffix(".csv")), args.episodes)
        return
    torch.set_num_threads(1)
    key = {"dataset": args.dataset, "agent": args.agent, "seed": args.seed}
    grid = pd.read_csv(ROOT / "results" / "grid_cpu_curves.csv")
    base = grid[(grid.dataset == args.dataset) & (grid.agent == args.agent) & (grid.seed == args.seed)]
    if base.empty:
        raise SystemExit(f"no grid run for {key}: run experiments/results_grid.py for it first")
    rows = [{"variant": f"grid run ({r.pop('context')} context)", **r}
            for r in base[["kind", "x", "score", "context", "version"]].to_dict("records")]
    specs = {name: variant_spec(args.agent, name) for name in args.variants  # refuse before training any
             if applies(args.agent, name) or len(args.variants) == 1}
    for name, (backbone, tokens, model_options, train_options) in specs.items():
        out = ROOT / "runs" / "recipe_ablation" / args.dataset / f"{args.agent}-s{args.seed}-{name}"
        final = train_and_evaluate(DATASETS[args.dataset], backbone, out, tokens=tokens, seed=args.seed,
                                   episodes=args.episodes, model_options=model_options, train_options=train_options)
        rows += [{"variant": name, "version": CODE_VERSION, **c}
                 for c in our_curves(out, args.seed, args.episodes, "cpu", final)]
    frame = pd.DataFrame(rows).assign(**key)
    with locked(path.with_suffix(".csv")):  # several ablations may run at once
        if path.with_suffix(".csv").exists():  # keep every other run: other variants, agents, datasets, seeds
            old = pd.read_csv(path.with_suffix(".csv"))
            replaced = ((old.dataset == args.dataset) & (old.agent == args.agent) & (old.seed == args.seed)
                        & old.variant.isin(set(frame.variant)))
            frame = pd.concat([old[~replaced], frame], ignore_index=True)
        frame.to_csv(path.with_suffix(".csv"), index=False)
        write_report(frame, args.episodes)


SAME_TRAINING = {("cosine-decay", 2): ("window-align-start", 3)}
"""(variant, version) pairs that trained exactly what another (variant, version) trains: revision 3's CPU
protocol is revision 2's plus cosine decay and end-aligned windows, so 2's `cosine-decay` is 3's
`window-align-start`. Their runs also count as pairs of the other against that revision's grid run."""


def as_every_version(grid: pd.DataFrame) -> pd.DataFrame:
    """Grid rows under their own code version, and once more under each later one they count as
    (`version_chain`: later versions did not change that agent's training)."""
    both = pd.concat([grid.assign(version=v) for v in version_chain(grid)], ignore_index=True)
    key = ["dataset", "agent", "seed", "context", "kind", "x", "version"]
    return both.drop_duplicates(key, keep="first")  # a run of that version itself wins over a counted one


def paired_differences(frame: pd.DataFrame, grid: pd.DataFrame, over: str = "curve") -> pd.Series:
    """Each variant run's score minus the grid's window run of the same (code version, agent, dataset,
    seed), indexed by (version, agent, dataset, seed, variant); `SAME_TRAINING` runs count twice.
    `over="curve"`: the last checkpoint at DT's target; `"target"`: the last checkpoint's mean over the
    target sweep (runs with all four targets only). `grid`: results/grid_cpu_curves.csv, the grid's own
    record (the ablation CSV copies only some of it)."""
    grid_run = "grid run (window context)"
    rows = frame[(frame.kind == over) & (frame.variant != grid_run)]
    own = grid[(grid.kind == over) & (grid.context == "window")].assign(variant=grid_run)
    own = as_every_version(own)
    rows = pd.concat([rows, own], ignore_index=True).assign(version=lambda f: versions(f))
    for (variant, version), (alias, alias_version) in SAME_TRAINING.items():
        same = rows[(rows.variant == variant) & (rows.version == version)]
        rows = pd.concat([rows, same.assign(variant=alias, version=alias_version)], ignore_index=True)
    key = ["version", "agent", "dataset", "seed", "variant"]
    rows = rows.drop_duplicates(key + ["x"], keep="first")  # a run of its own wins over an alias
    if over == "curve":
        score = rows.loc[rows.groupby(key).x.idxmax()].set_index(key).score
    else:
        sweep = rows.groupby(key).score.agg(["mean", "count"])
        score = sweep[sweep["count"] == sweep["count"].max()]["mean"]
    if grid_run not in set(score.index.get_level_values("variant")):
        return pd.Series(dtype=float, index=pd.MultiIndex.from_tuples([], names=key))
    return (score.drop(grid_run, level="variant") - score.xs(grid_run, level="variant")).dropna()


def against_grid(diff: pd.Series) -> pd.DataFrame:
    """Paired differences against the grid (`paired_differences`): their mean and how many are positive,
    per version, agent (the grid agent the variant changes) and variant."""
    if diff.empty:
        return pd.DataFrame(columns=["version", "agent", "variant", "pairs", "mean difference", "higher in"])
    by = diff.groupby(level=["version", "agent", "variant"])
    wins = by.apply(lambda d: (d > 0).sum())
    summary = pd.DataFrame({"pairs": by.size(), "mean difference": by.mean(), "higher in": wins}).reset_index()
    return summary.sort_values(["version", "variant", "agent"], ascending=[False, True, True], ignore_index=True)


def per_dataset(diff: pd.Series, sweep: pd.Series, grid: pd.DataFrame, min_datasets: int = 4) -> list[str]:
    """For each (version, agent, variant) run on at least `min_datasets` datasets: per dataset, the seeds
    paired, the grid's mean and the variant's mean over them, the mean difference and wins; then the mean
    difference of the runs' means over the target sweep (`sweep`: `paired_differences(over="target")`)."""
    key = ["version", "agent", "dataset", "seed"]
    grid = as_every_version(grid[(grid.kind == "curve") & (grid.context == "window")])
    grid = grid.loc[grid.groupby(key).x.idxmax()].set_index(key).score
    parts = []
    for (version, agent, variant), d in diff.groupby(level=["version", "agent", "variant"]):
        d = d.droplevel(["version", "agent", "variant"])
        if d.index.get_level_values("dataset").nunique() < min_datasets:
            continue
        base = grid.xs((version, agent), level=["version", "agent"]).reindex(d.index)
        levels = ["version", "agent", "variant"]
        has = len(sweep) and (version, agent, variant) in sweep.index.droplevel(["dataset", "seed"])
        swept = (sweep.xs((version, agent, variant), level=levels).reindex(d.index) if has
                 else pd.Series(float("nan"), index=d.index))
        table = pd.DataFrame({"seeds": d.groupby(level="dataset").size(),
                              "grid run": base.groupby(level="dataset").mean(),
                              variant: (base + d).groupby(level="dataset").mean(),
                              "mean difference": d.groupby(level="dataset").mean(),
                              "higher in": (d > 0).groupby(level="dataset").sum(),
                              "mean difference over targets": swept.groupby(level="dataset").mean()})
        table.loc["average over datasets"] = [len(d), table["grid run"].mean(), table[variant].mean(),
                                              table["mean difference"].mean(), int((d > 0).sum()),
                                              table["mean difference over targets"].mean()]
        parts.append(f"**{variant} [v{version}] against the grid run, {agent}, per dataset** (mean over the paired "
                     f"seeds; the last column: each run's mean over the four targets of its sweep)\n\n"
                     f"{table.reset_index().to_markdown(index=False, floatfmt='.1f')}")
    return parts


def write_report(frame: pd.DataFrame, episodes: int) -> None:
    """results/recipe_ablation_cpu.md (the summary, which docs/studies/recipe-ablation.md embeds) and
    results/recipe_ablation_cpu_runs.md (every run's table); prints the summary."""
    summary, runs = report(frame, episodes)
    (ROOT / "results" / "recipe_ablation_cpu.md").write_text(summary)
    (ROOT / "results" / "recipe_ablation_cpu_runs.md").write_text(runs)
    print(summary)


def report(frame: pd.DataFrame, episodes: int) -> tuple[str, str]:
    """A paired summary against the grid's runs; then, as a second text, one table per (agent, dataset,
    seed): scores at the checkpoints and at four target returns."""
    grid = pd.read_csv(ROOT / "results" / "grid_cpu_curves.csv")
    diff = paired_differences(frame, grid)
    summary = against_grid(diff)
    parts = [f"# Recipe ablation, CPU protocol, {episodes} episodes per score\n\n[vN]: the code revision a run "
             "was trained with (`CODE_VERSION` in experiments/results_grid.py)",
             "**Against the grid's window run of the same code version, agent, dataset and seed** (last "
             f"checkpoint; difference in normalized score; v2's `cosine-decay` runs also count as v3's "
             f"`window-align-start`, the same training)\n\n{summary.to_markdown(index=False, floatfmt='.1f')}",
             *per_dataset(diff, paired_differences(frame, grid, over="target"), grid),
             "Every run's scores: `results/recipe_ablation_cpu_runs.md`."]
    runs = [f"# Recipe ablation, every run: scores at the 1k/2k/3k checkpoints and the last checkpoint at four "
            f"target returns ({episodes} episodes per score; `grid run` rows: the grid's run of that agent, "
            f"dataset and seed; [vN]: the code version)"]
    frame = frame.assign(variant=frame.variant + " [v" + versions(frame).astype(str) + "]")
    for (agent, dataset, seed), group in frame.groupby(["agent", "dataset", "seed"], sort=False):
        curve = group[group.kind == "curve"].pivot(index="variant", columns="x", values="score")
        curve.columns = [f"score @ {int(c)} updates" for c in curve.columns]
        sweep = group[group.kind == "target"].pivot(index="variant", columns="x", values="score")
        sweep.columns = [f"target {int(c)}" for c in sweep.columns]
        table = curve.join(sweep).reset_index()
        runs.append(f"**{agent} on {dataset}, seed {seed}**\n\n{table.to_markdown(index=False, floatfmt='.1f')}")
    return "\n\n".join(parts) + "\n", "\n\n".join(runs) + "\n"

if __name__ == "__main__":
    main()
