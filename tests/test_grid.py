"""The results grid's bookkeeping: run claims between workers, locked CSV appends, the goal check."""

import importlib.util
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from decision_rnn.backbones import BACKBONES

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(scope="module")
def grid():
    sys.path.insert(0, str(EXPERIMENTS))  # results_grid imports its sibling protocol.py
    spec = importlib.util.spec_from_file_location("results_grid", EXPERIMENTS / "results_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(EXPERIMENTS))


def test_a_run_is_claimed_once_and_a_dead_holders_claim_is_taken_over(grid, tmp_path):
    run = tmp_path / "hopper-medium" / "mingru-s0"
    assert grid.claim(run)
    assert not grid.claim(run)  # held by this (live) process
    (tmp_path / "hopper-medium" / "mingru-s0.claim").write_text("999999999")  # no such pid
    assert grid.claim(run)
    assert int((tmp_path / "hopper-medium" / "mingru-s0.claim").read_text()) == os.getpid()


def test_appends_keep_every_row_and_leave_no_temp_file(grid, tmp_path):
    path = tmp_path / "grid.csv"
    grid.append_rows(path, [{"dataset": "a", "agent": "mingru", "seed": 0, "score": 1.0}])
    frame = grid.append_rows(path, [{"dataset": "a", "agent": "lru", "seed": 0, "score": 2.0, "extra": 3}])
    assert list(frame.agent) == ["mingru", "lru"]
    assert pd.read_csv(path).equals(frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.csv", "grid.csv.lock"]


def test_goal_check_compares_the_best_recurrent_agent_with_d3rlpy(grid):
    scores = {"mingru": [60, 20], "minlstm": [50, 40], "lru": [40, 30], "transformer": [55, 35], "d3rlpy-dt": [50, 30]}
    rows = [{"dataset": d, "agent": a, "score": s[i], "train_wall_s": 1.0}
            for a, s in scores.items() for i, d in enumerate(["x", "y"])]
    stats = pd.DataFrame(rows).groupby(["dataset", "agent"]).agg(mean=("score", "mean"), std=("score", "std"),
                                                                 n=("score", "count"), wall=("train_wall_s", "mean"))
    lines = "\n".join(grid.goal_check(stats, list(scores)))
    assert "every dataset: yes (per dataset: x +10.0 mingru, y +10.0 minlstm)" in lines
    assert "on average: yes (+10.0)" in lines
    assert "mingru ≥ our transformer: on 1 of 2 dataset(s); on average 40.0 against 45.0 (-5.0, level or above: no)" \
        in lines
    assert "minlstm ≥ our transformer: on 1 of 2 dataset(s); on average 45.0 against 45.0 (+0.0, level or above: yes)" \
        in lines
    assert "lru ≥ our transformer: on 0 of 2" in lines
    # minlstm is best on average (45 against mingru's 40): level on x, +10 on y
    assert "best on average, minlstm (45.0 against d3rlpy DT's 40.0): ≥ d3rlpy DT on 2 of 2 dataset(s), +5.0" in lines


def test_an_extra_agent_joins_the_goal_check_only_with_every_dataset(grid):
    scores = {"mingru": [60, 20], "minlstm": [50, 40], "lru": [40, 30], "transformer": [55, 35], "d3rlpy-dt": [50, 30],
              "mingru-interleaved": [90, None]}
    rows = [{"dataset": d, "agent": a, "score": s[i], "train_wall_s": 1.0}
            for a, s in scores.items() for i, d in enumerate(["x", "y"]) if s[i] is not None]
    stats = pd.DataFrame(rows).groupby(["dataset", "agent"]).agg(mean=("score", "mean"), std=("score", "std"),
                                                                 n=("score", "count"), wall=("train_wall_s", "mean"))
    agents = [a for a in grid.AGENTS if a in scores]
    lines = "\n".join(grid.goal_check(stats, agents))
    assert "on the 2 dataset(s)" in lines and "x +10.0 mingru, y +10.0 minlstm" in lines  # judged without it
    assert "mingru-interleaved: not in the goal check until it has every dataset above (lacks y)" in lines
    rows.append({"dataset": "y", "agent": "mingru-interleaved", "score": 10.0, "train_wall_s": 1.0})
    stats = pd.DataFrame(rows).groupby(["dataset", "agent"]).agg(mean=("score", "mean"), std=("score", "std"),
                                                                 n=("score", "count"), wall=("train_wall_s", "mean"))
    lines = "\n".join(grid.goal_check(stats, agents))
    assert "x +40.0 mingru-interleaved, y +10.0 minlstm" in lines
    assert "mingru-interleaved ≥ our transformer: on 1 of 2" in lines
    assert "provisional: fewer than 3 seeds for mingru on x, y; minlstm on x, y" in lines  # 1 seed per cell


def test_intervals_cover_the_agents_with_every_dataset_against_both_baselines(grid):
    rows = [(d, a, seed, score) for d in ("x", "y") for seed in range(3)
            for a, score in [("mingru", 90 + seed), ("d3rlpy-dt", 10 + seed), ("transformer", 50 + seed)]]
    rows.append(("x", "lru", 0, 70))  # lacks y: left out
    frame = pd.DataFrame(rows, columns=["dataset", "agent", "seed", "score"])
    lines = grid.intervals(frame, ["mingru", "lru", "transformer", "d3rlpy-dt"])
    table = [line for line in lines if line.startswith("| ")]
    assert table[0] == "| agent | runs | mean over datasets | IQM | P(> d3rlpy-dt) | P(> transformer) |"
    # every run of mingru beats every run of both: certain, whatever the resample
    assert table[1].startswith("| mingru | 6 | 91.0 [90.") and table[1].count(" 91.0 [90.") == 2
    assert table[1].endswith("| 1.00 [1.00, 1.00] | 1.00 [1.00, 1.00] |")
    assert table[2].startswith("| transformer | 6 | 51.0") and table[2].endswith("| 1.00 [1.00, 1.00] | — |")
    assert table[3].endswith("| — | 0.00 [0.00, 0.00] |") and not any("| lru |" in line for line in table)


def test_flavoured_agents_pair_with_the_agent_they_change(grid):
    assert grid.base_agent("minlstm-return-ln-constant-lr") == "minlstm-return-ln"
    assert grid.base_agent("mingru-interleaved") == "mingru" and grid.base_agent("lru") is None
    frame = pd.DataFrame([("hopper-medium", a, 0, score) for a, score in [("minlstm", 50), ("minlstm-return-ln", 60),
                                                               ("minlstm-return-ln-constant-lr", 40)]],
                         columns=["dataset", "agent", "seed", "score"])
    lines = grid.pairs(frame)
    assert "- minlstm-return-ln − minlstm: hopper-medium +10.0 (n=1)" in "\n".join(lines)
    assert "- minlstm-return-ln-constant-lr − minlstm-return-ln: hopper-medium -20.0 (n=1)" in "\n".join(lines)
    frame = pd.DataFrame([("hopper-medium", "mingru", 0, 70), ("hopper-medium", "gru", 0, 65)],
                         columns=["dataset", "agent", "seed", "score"])
    assert "- mingru − gru: hopper-medium +5.0 (n=1)" in "\n".join(grid.pairs(frame))  # what "min" costs
    assert grid.simplifications(frame) == [
        "- mingru against gru, on the 1 runs both have: P(mingru > gru) = 1.00 [1.00, 1.00]"]


def test_paired_comparison_uses_only_the_seeds_both_agents_have(grid):
    rows = [("hopper-medium", "mingru", 0, 60), ("hopper-medium", "mingru", 1, 50), ("hopper-medium", "mingru", 2, 40),
            ("hopper-medium", "d3rlpy-dt", 0, 50), ("hopper-medium", "d3rlpy-dt", 2, 50),  # no seed 1
            ("walker2d-mixed", "mingru", 0, 10), ("walker2d-mixed", "d3rlpy-dt", 0, 30)]
    frame = pd.DataFrame(rows, columns=["dataset", "agent", "seed", "score"])
    (line,) = grid.paired(frame, "mingru", "d3rlpy-dt")
    assert "hopper-medium +0.0 (n=2), walker2d-mixed -20.0 (n=1)" in line  # (10 - 10) / 2; seed 1 unpaired
    assert "average over datasets -10.0" in line and "higher in 1 of 3 seed pairs" in line
    assert grid.paired(frame, "mingru", "lru") == ["- mingru − lru: no seed both have run"]


def test_against_previous_pairs_each_agent_with_its_last_code_version_in_the_same_context(grid):
    v = grid.CODE_VERSION  # the LRU: none of its earlier versions counts as current (`UNCHANGED`)
    assert "lru" not in grid.UNCHANGED[v - 1]
    rows = [("lru", "window", v, 0, 70), ("lru", "window", v, 1, 40),
            ("lru", "window", v - 1, 0, 50), ("lru", "window", v - 1, 1, 60),
            ("lru", "episode", v - 1, 0, 0),  # another context: ignored
            ("lru", "window", v - 3, 0, 0),  # older than its latest earlier version: ignored
            ("minlstm-return-ln", "window", v, 0, 10),  # no earlier version: no line
            ("d3rlpy-dt", "window", v - 1, 0, 80), ("d3rlpy-dt", "window", v, 0, 90)]  # not ours: no line
    frame = pd.DataFrame(rows, columns=["agent", "context", "version", "seed", "score"]).assign(dataset="hopper-medium")
    (line,) = grid.against_previous(frame)
    assert line.startswith(f"- lru now (v{v}) − lru v{v - 1}: hopper-medium +0.0 (n=2)")  # (20-20)/2
    assert "higher in 1 of 2 seed pairs" in line


def test_sync_readme_replaces_each_block_with_its_file_and_keeps_the_rest(tmp_path):
    spec = importlib.util.spec_from_file_location("sync_readme", EXPERIMENTS / "sync_readme.py")
    sync_readme = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync_readme)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "a.md").write_text("# Title\n\n| x |\n|---|\n| 1 |\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- from results/a.md -->\nstale\n<!-- end results/a.md -->\noutro\n")
    assert sync_readme.sync(readme, tmp_path) == 1
    expected = "intro\n<!-- from results/a.md -->\n| x |\n|---|\n| 1 |\n<!-- end results/a.md -->\noutro\n"
    assert readme.read_text() == expected
    readme.write_text("<!-- from results/missing.md -->\n<!-- end results/missing.md -->\n")
    with pytest.raises(FileNotFoundError):
        sync_readme.sync(readme, tmp_path)


def test_cells_are_keyed_by_context_and_only_the_current_defaults_are_reported(grid):
    v = grid.CODE_VERSION
    frame = pd.DataFrame([{"agent": "mingru", "context": c, "version": v} for c in ("episode", "window", "stream")]
                         + [{"agent": "lru", "context": "window", "version": v - 1},  # older code: record
                            {"agent": "lru", "context": "window", "version": v},
                            {"agent": "d3rlpy-dt", "context": "window", "version": 1}])  # not our code: any version
    kept = grid.current(frame)
    assert [(r.agent, r.context) for r in kept.itertuples()] == [
        ("mingru", "window"), ("lru", "window"), ("d3rlpy-dt", "window")]
    assert list(kept.version)[:2] == [v, v]
    assert grid.agent_context("d3rlpy-dt") == "window"
    for old in grid.UNCHANGED:  # a run of `old` counts as current if no later version changed its agent
        frame = pd.DataFrame([{"agent": a, "context": grid.agent_context(a), "version": old} for a in grid.AGENTS])
        unchanged = set(grid.AGENTS).intersection(*(grid.UNCHANGED[u] for u in range(old, v)))
        assert set(grid.current(frame).agent) == unchanged | {"d3rlpy-dt"}
    assert "lru" in grid.UNCHANGED[v - 2] and "lru" not in set(grid.current(pd.DataFrame(
        [{"agent": "lru", "context": "window", "version": v - 2}])).agent)  # v4 = v5 for the LRU, not v6


def test_context_report_counts_each_run_once_grid_first(grid, tmp_path):
    spec = importlib.util.spec_from_file_location("context_report", EXPERIMENTS / "studies" / "context_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    base = {"agent": "mingru", "tokens": "compact"}
    pd.DataFrame([{**base, "dataset": "hopper-mixed", "context": "window", "seed": 0, "score": 50.0, "version": 1},
                  {**base, "dataset": "hopper-mixed", "context": "window", "seed": 1, "score": 70.0, "version": 1},
                  {**base, "dataset": "hopper-mixed", "context": "episode", "seed": 0, "score": 20.0, "agent": "lru"}]
                 ).to_csv(tmp_path / "grid_cpu.csv", index=False)
    pd.DataFrame([{**base, "context": "episode", "seed": 0, "score": 66.0}]).to_csv(  # no dataset column: old rows
        tmp_path / "context_ablation.csv", index=False)
    pd.DataFrame([{"variant": "window-context", "kind": "curve", "x": 3000, "score": 1.0, "dataset": "hopper-mixed",
                   "agent": "mingru", "seed": 0},  # the grid already ran it: dropped
                  {"variant": "stream-context", "kind": "curve", "x": 2000, "score": 9.0, "dataset": "hopper-mixed",
                   "agent": "mingru", "seed": 0}]).to_csv(tmp_path / "recipe_ablation_cpu.csv", index=False)
    frame = report.gather(tmp_path)
    assert sorted(frame.score) == [50.0, 66.0, 70.0]
    text = report.table(frame)
    assert "| dataset | episode v1 | window v1 |" in text
    assert "| hopper-medium | 66.0 | — |" in text
    assert "| hopper-mixed | — | **60.0** (50.0, 70.0) |" in text


def test_noise_line_reports_evaluation_and_seed_spread(grid):
    frame = pd.DataFrame({"dataset": ["x"] * 3, "agent": ["mingru"] * 3, "seed": [0, 1, 2], "score": [10.0, 20.0, 30.0],
                          "score_std_episodes": [10.0, 20.0, 30.0], "episodes": [100] * 3, "train_wall_s": [1.0] * 3})
    stats = frame.groupby(["dataset", "agent"]).agg(mean=("score", "mean"), std=("score", "std"), n=("score", "count"))
    line = grid.noise(frame, stats)
    assert "100-episode mean 2.0" in line and "across seeds 10.0 (median over the 1 cells" in line


def test_recipe_ablation_summary_pairs_each_variant_with_the_grid_run_of_its_seed(grid):
    spec = importlib.util.spec_from_file_location("recipe_ablation", EXPERIMENTS / "studies" / "recipe_ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    v = grid.CODE_VERSION
    where = {"agent": "mingru", "dataset": "hopper-mixed", "kind": "curve"}
    runs = pd.DataFrame([{**where, "context": "window", "seed": s, "x": x, "score": sc, "version": ver}
                         for s, x, sc, ver in [(0, 2000, 90.0, v), (0, 3000, 40.0, v), (1, 3000, 60.0, v),
                                               (0, 3000, 5.0, v - 1)]]
                        + [{**where, "context": "episode", "seed": 1, "x": 3000, "score": 0.0, "version": v}])
    variants = [("cosine-decay", 0, 3000, 50.0, v), ("cosine-decay", 1, 3000, 55.0, v),
                ("relu", 0, 3000, 99.0, v - 1),  # an older version: against that version's grid run
                ("grid run (window context)", 1, 3000, -50.0, v)]  # a stale copy: the grid's own record wins
    frame = pd.DataFrame([{**where, "variant": n, "seed": s, "x": x, "score": sc, "version": ver}
                          for n, s, x, sc, ver in variants])
    summary = ablation.against_grid(ablation.paired_differences(frame, runs)).set_index(["version", "agent", "variant"])
    assert list(summary.index) == [(v, "mingru", "cosine-decay"), (v - 1, "mingru", "relu")]  # newest version first
    assert summary.loc[(v, "mingru", "cosine-decay")].tolist() == [2, 2.5, 1]  # (+10, -5): last checkpoints
    assert summary.loc[(v - 1, "mingru", "relu")].tolist() == [1, 94.0, 1]


def test_recipe_ablation_counts_a_run_under_the_variant_that_trains_the_same(grid):
    spec = importlib.util.spec_from_file_location("recipe_ablation", EXPERIMENTS / "studies" / "recipe_ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    (variant, version), (alias, alias_version) = next(iter(ablation.SAME_TRAINING.items()))
    datasets = ["hopper-medium", "hopper-mixed", "walker2d-medium", "walker2d-mixed"]
    runs = pd.DataFrame([{"agent": "mingru", "dataset": d, "kind": "curve", "context": "window", "seed": 0,
                          "x": 3000, "score": score, "version": ver}
                         for d in datasets for ver, score in [(version, 10.0), (alias_version, 30.0)]])
    frame = pd.DataFrame([{"agent": "mingru", "dataset": d, "kind": "curve", "seed": 0, "x": 3000, "variant": variant,
                           "score": 40.0, "version": version} for d in datasets]
                         + [{"agent": "mingru", "dataset": "hopper-mixed", "kind": "curve", "seed": 0, "x": 3000,
                             "variant": alias, "score": 20.0, "version": alias_version}])  # its own run wins
    diff = ablation.paired_differences(frame, runs)
    summary = ablation.against_grid(diff).set_index(["version", "agent", "variant"])
    assert summary.loc[(version, "mingru", variant)].tolist() == [4, 30.0, 4]  # against its own version's grid runs
    assert summary.loc[(alias_version, "mingru", alias)].tolist() == [4, 5.0, 3]  # (10 x 3 - 10) / 4
    tables = "\n".join(ablation.per_dataset(diff, ablation.paired_differences(frame, runs, over="target"), runs))
    assert f"**{alias} [v{alias_version}] against the grid run, mingru, per dataset**" in tables
    row = next(line for line in tables.splitlines()[::-1] if line.startswith("| hopper-mixed"))
    sweep = pd.concat([frame.assign(kind="target", x=x, score=frame.score + dx) for x, dx in [(1, 0.0), (2, 2.0)]])
    grid_sweep = pd.concat([runs.assign(kind="target", x=x) for x in (1, 2)])
    over_targets = ablation.paired_differences(sweep, grid_sweep, over="target")  # (20 + 22) / 2 - 30
    assert over_targets.xs((alias_version, "hopper-mixed"), level=["version", "dataset"]).tolist() == [-9.0]
    assert [c.strip() for c in row.split("|")[1:-1]] == ["hopper-mixed", "1", "30.0", "20.0", "-10.0", "0", "nan"]


def test_sweep_means_average_each_runs_last_checkpoint_over_all_four_targets(grid):
    run = {"dataset": "hopper-mixed", "agent": "mingru", "context": "window", "version": grid.CODE_VERSION}
    runs = pd.DataFrame([{**run, "seed": 0, "score": 10.0, "train_wall_s": 1.0},
                         {**run, "seed": 1, "score": 20.0, "train_wall_s": 1.0}])
    targets = [1800.0, 2700.0, 3600.0, 4500.0]
    scores = [0.0, 10.0, 20.0, 50.0]
    curves = pd.DataFrame([{**run, "seed": 0, "kind": "target", "x": x, "score": s} for x, s in zip(targets, scores)]
                          + [{**run, "seed": 0, "kind": "curve", "x": 3000, "score": 99.0}]  # not a target
                          + [{**run, "seed": 1, "kind": "target", "x": 3600.0, "score": 20.0}])  # incomplete sweep
    swept = grid.sweep_means(runs, curves)
    assert list(swept.seed) == [0] and swept.score.tolist() == [20.0]


def test_adopted_ablation_variants_train_what_their_grid_agent_trains_in_the_adopting_version(grid):
    from dataclasses import replace

    import torch

    from decision_rnn import ModelConfig
    from decision_rnn.models.agent import DecisionRNN

    spec = importlib.util.spec_from_file_location("recipe_ablation", EXPERIMENTS / "studies" / "recipe_ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    adopted_now = [(variant, base, flavour) for (variant, _), (version, base, flavour) in grid.ADOPTED.items()
                   if version == grid.CODE_VERSION]
    assert adopted_now or grid.CODE_VERSION > max(version for version, *_ in grid.ADOPTED.values())
    cpu = grid.PROTOCOLS["cpu"]
    for variant, base, flavour in adopted_now:
        backbones = [b for b in ("mingru", "minlstm", "lru") if b + flavour in grid.AGENTS
                     and ablation.applies(b + base, variant)]
        assert backbones, f"{variant}: no grid agent adopts it"
        for backbone in backbones:
            # what the ablation trains: the variant on the base agent (tokens="compact" unless it says otherwise)
            _, tokens, model_options, train_options = ablation.variant_spec(backbone + base, variant)
            as_trained = ModelConfig(obs_dim=11, act_dim=3, backbone=backbone, tokens=tokens, **model_options)
            _, tokens, options, grid_train_options = grid.agent_spec(backbone + flavour)
            in_grid = ModelConfig(obs_dim=11, act_dim=3, backbone=backbone, tokens=tokens, **options)
            weights = []
            for config in (as_trained, in_grid):  # the same initial weights: the same training from a seed
                torch.manual_seed(0)
                weights.append(DecisionRNN(config).state_dict())
            assert weights[0].keys() == weights[1].keys()
            assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
            assert replace(cpu, **train_options) == replace(cpu, **grid_train_options)


def test_adoption_takes_only_runs_of_the_variant_on_its_base_flavour(grid, monkeypatch):
    monkeypatch.setattr(grid, "load_env_id", lambda ids: "Walker2d-v5")
    runs = [("constant-lr", "minlstm-return-ln"), ("constant-lr", "minlstm"), ("return-ln", "minlstm-return-ln"),
            ("constant-lr", "mingru-return-ln")]  # no grid agent is mingru-return-ln-constant-lr
    ablation = pd.DataFrame([{"dataset": "walker2d-mixed", "agent": agent, "seed": 0, "variant": variant,
                              "version": 5, "kind": "curve", "x": 3000, "score": 50.0} for variant, agent in runs])
    rows, curves = grid.adopted_runs(ablation)
    assert [(r["agent"], r["version"]) for r in rows] == [("minlstm-return-ln-constant-lr", 6)]
    assert curves[0]["agent"] == "minlstm-return-ln-constant-lr" and "constant-lr v5" in curves[0]["source"]


def test_ablation_variants_change_their_grid_agent(grid):
    spec = importlib.util.spec_from_file_location("recipe_ablation", EXPERIMENTS / "studies" / "recipe_ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    assert ablation.variant_spec("minlstm-return-ln", "lr-3e-4") == ("minlstm", "compact", {"return_ln": True},
                                                                      {"lr": 3e-4})
    assert ablation.variant_spec("mingru", "tokens-split") == ("mingru", "split", {}, {})
    assert ablation.variant_spec("mingru-interleaved", "relu") == ("mingru", "interleaved", {"activation": "relu"}, {})
    assert ablation.variant_spec("lru", "lru-r-min-0") == ("lru", "compact", {"backbone_options": {"r_min": 0.0}}, {})
    with pytest.raises(ValueError, match="no LRU backbone"):
        ablation.variant_spec("mingru", "lru-r-min-0")
    # a flavour's own training options stay unless the variant changes them
    assert ablation.variant_spec("minlstm-return-ln-constant-lr", "lr-3e-4")[3] == {"lr_decay": "none", "lr": 3e-4}


def test_agent_names_split_into_backbone_and_flavour_and_back(grid):
    assert grid.split_agent("mingru") == ("mingru", "")
    assert grid.agent_spec("mingru") == ("mingru", "compact", {}, {})
    assert grid.agent_spec("mingru-interleaved") == ("mingru", "interleaved", {}, {})
    assert grid.agent_spec("minlstm-return-ln") == ("minlstm", "compact", {"return_ln": True}, {})
    assert grid.split_agent("minlstm-return-ln-constant-lr") == ("minlstm", "-return-ln-constant-lr")
    assert grid.agent_spec("minlstm-return-ln-constant-lr") == ("minlstm", "compact", {"return_ln": True},
                                                                {"lr_decay": "none"})
    for agent in grid.AGENTS[:-1]:  # all but d3rlpy's
        assert "".join(grid.split_agent(agent)) == agent
        assert grid.split_agent(agent)[0] in BACKBONES
    assert grid.agent_context("mingru-interleaved") == grid.agent_context("mingru") == "window"


def test_adopted_runs_become_grid_runs_of_the_adopting_version(grid, monkeypatch):
    monkeypatch.setattr(grid, "load_env_id", lambda ids: "Hopper-v5")
    (variant, version), (grid_version, _, flavour) = list(grid.ADOPTED.items())[1]  # tokens-interleaved
    run = {"dataset": "hopper-medium", "agent": "mingru", "seed": 1}
    frame = pd.DataFrame([{**run, "variant": variant, "version": version, "kind": "curve", "x": x, "score": s}
                          for x, s in [(1000.0, 10.0), (3000.0, 30.0), (2000.0, 20.0)]]
                         + [{**run, "variant": variant, "version": version, "kind": "target", "x": 3600.0,
                             "score": 30.0},
                            {**run, "variant": variant, "version": version + 1, "kind": "curve", "x": 3000.0,
                             "score": 99.0},  # another version: not adopted
                            {**run, "variant": "relu", "version": version, "kind": "curve", "x": 3000.0,
                             "score": 98.0}])
    rows, curves = grid.adopted_runs(frame)
    assert len(rows) == 1 and rows[0]["score"] == 30.0 and rows[0]["updates"] == 3000.0
    assert rows[0]["version"] == grid_version and rows[0]["context"] == "window"
    assert rows[0]["tokens"] == "interleaved" and rows[0]["agent"] == "mingru-interleaved"
    assert sorted(c["score"] for c in curves) == [10.0, 20.0, 30.0, 30.0]
    assert {c["version"] for c in curves} == {grid_version}


@pytest.mark.parametrize("tokens", ["compact", "split", "interleaved"])
def test_window_actor_acts_as_a_training_window_and_as_the_policy_within_k_steps(grid, tokens):
    """experiments/studies/window_acting.py: within the first K steps the window is the whole episode, so it acts as
    the deployed policy; after K steps it forgets what fell out of the window and the two part."""
    import numpy as np
    import torch

    from decision_rnn import DecisionRNN, ModelConfig, Policy

    spec = importlib.util.spec_from_file_location("window_acting", EXPERIMENTS / "studies" / "window_acting.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = DecisionRNN(ModelConfig(obs_dim=4, act_dim=2, backbone="mingru", tokens=tokens, embed_dim=16,
                                    n_layers=2, context_len=5, dropout=0.0, block_init_std=None)).eval()
    policy, window = Policy(model), module.WindowActor(model)
    policy.reset(300.0, batch_size=3)
    window.reset(300.0, batch_size=3)
    rng = np.random.default_rng(0)
    gaps, reward = [], None
    for _ in range(12):
        obs = rng.standard_normal((3, 4)).astype(np.float32)
        a, b = policy.act(obs, reward), window.act(obs, reward)
        gaps.append(np.abs(a - b).max())
        reward = rng.uniform(0, 5, 3).astype(np.float32)
    assert max(gaps[:5]) < 1e-6, gaps
    # the transformer acts over DT's window anyway: the two agree past K too, the window's slide included
    transformer = DecisionRNN(ModelConfig(obs_dim=4, act_dim=2, backbone="transformer", tokens=tokens,
                                          embed_dim=16, n_layers=2, context_len=5, dropout=0.0)).eval()
    policy, window = Policy(transformer), module.WindowActor(transformer)
    policy.reset(300.0, batch_size=3)
    window.reset(300.0, batch_size=3)
    reward = None
    for _ in range(12):
        obs = rng.standard_normal((3, 4)).astype(np.float32)
        np.testing.assert_allclose(policy.act(obs, reward), window.act(obs, reward), atol=1e-5)
        reward = rng.uniform(0, 5, 3).astype(np.float32)
    assert min(gaps[5:]) > 1e-4, gaps  # >= 2.4e-4 here, against <= 2e-7 within K


@pytest.fixture(scope="module")
def fall_anatomy(grid):
    spec = importlib.util.spec_from_file_location("fall_anatomy", EXPERIMENTS / "studies" / "fall_anatomy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fall_anatomy_first_actions_average_each_return_group_as_a_plain_loop(fall_anatomy, embedded):
    import numpy as np

    returns = np.asarray(embedded.episode_returns)
    good, failed = np.quantile(returns, 0.75), np.quantile(returns, 0.25)
    got = fall_anatomy.first_actions(embedded, good=good, failed=failed)
    want = {"good": [], "failed": []}
    for i in range(embedded.num_episodes):
        first = embedded.actions[embedded.offsets[i]]
        if returns[i] > good:
            want["good"].append(first)
        if returns[i] < failed:
            want["failed"].append(first)
    for name in want:
        np.testing.assert_allclose(got[name], np.mean(want[name], axis=0), rtol=1e-6)
    with pytest.raises(ValueError, match="no good episode"):
        fall_anatomy.first_actions(embedded, good=returns.max() + 1)


def test_fall_anatomy_trace_records_height_and_actions_until_each_episode_ends(fall_anatomy, monkeypatch):
    """An untrained policy falls well inside the traced steps: its rows turn NaN once its episode ends."""
    import numpy as np
    import torch

    from decision_rnn import DecisionRNN, ModelConfig, Policy

    monkeypatch.setattr(fall_anatomy, "EPISODES", 3)
    torch.manual_seed(0)
    model = DecisionRNN(ModelConfig(obs_dim=17, act_dim=6, backbone="mingru", embed_dim=16, n_layers=1))
    heights, actions = fall_anatomy.trace(Policy(model), "Walker2d-v5", 5000.0)
    assert heights.shape == (fall_anatomy.TRACE_STEPS, 3) and actions.shape == (fall_anatomy.TRACE_STEPS, 3, 6)
    np.testing.assert_allclose(heights[0], 1.25, atol=0.01)  # Walker2d's torso starts at 1.25
    ended = np.isnan(heights).any(axis=0)
    assert ended.all(), "an untrained walker should fall within the traced steps"
    for e in range(3):
        alive = ~np.isnan(heights[:, e])
        assert alive[: alive.sum()].all()  # recorded from step 0 until the episode ended, then NaN
        assert np.isnan(actions[~alive, e]).all() and np.isfinite(actions[alive, e]).all()


def test_paper_protocol_is_dts_config_and_runs_a_grid_cell_end_to_end_on_cpu(grid, tmp_path):
    """The GPU protocol has not been lent a GPU yet: its config is DT's, and its code path runs here, shortened."""
    import numpy as np

    from decision_rnn.data import EMBEDDED_DATASET

    cfg = grid.protocol_config("paper")
    assert (cfg.steps, cfg.lr, cfg.warmup_steps, cfg.lr_decay, cfg.grad_clip) == (100_000, 1e-4, 10_000, "none", 0.25)
    assert grid.protocol_config("paper", steps=20).warmup_steps == 10_000  # only the CPU protocol rescales it
    row = grid.train_and_evaluate([str(EMBEDDED_DATASET)], "mingru", tmp_path / "run", protocol="paper", steps=20,
                                  episodes=2, tokens="compact")
    assert (row["protocol"], row["updates"], row["episodes"], row["device"]) == ("paper", 20, 2, "cpu")
    assert np.isfinite(row["score"]) and row["env_id"] == "Hopper-v5"


def test_later_seeds_lists_only_cells_run_beyond_the_first_three(grid):
    frame = pd.DataFrame({"dataset": ["a"] * 5 + ["b"] * 3, "agent": ["x"] * 5 + ["y"] * 3,
                          "seed": [4, 0, 1, 2, 3, 0, 1, 2], "score": [5.0, 1.0, 2.0, 3.0, 7.0, 9.0, 9.0, 9.0]})
    lines = grid.later_seeds(frame)
    assert lines[-1] == "- a, x: seeds < 3 2.0 (1.0, 2.0, 3.0); seeds ≥ 3 6.0 (7.0, 5.0)"
    assert not any(line.startswith("- b") for line in lines)
    assert grid.later_seeds(frame[frame.dataset == "b"]) == []


def test_selection_check_scores_the_pick_on_the_dataset_it_did_not_see(grid):
    spec = importlib.util.spec_from_file_location("selection_check", EXPERIMENTS / "studies" / "selection_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    datasets = list(grid.DATASETS)
    # "a" leads on five datasets and collapses on the last; "b" is steady
    table = pd.DataFrame({d: {"a": 90.0, "b": 80.0, "c": 50.0} for d in datasets})
    table.loc["a", datasets[-1]] = 10.0
    folds = check.replay(table, {d: [d] for d in datasets}).set_index("held out")
    last = folds.loc[datasets[-1]]  # picked on the five it leads: scored where it collapses
    assert (last["picked on the rest"], last["its held-out score"], last["rank held out"]) == ("a", 10.0, 3)
    first = folds.loc[datasets[0]]  # without one of its good datasets, a's mean (74) falls below b's (80)
    assert (first["picked on the rest"], first["its held-out score"], first["best held out"]) == ("b", 80.0, "a")
    two = check.replay(table, {"first three": datasets[:3], "last three": datasets[3:]}).set_index("held out")
    assert two.loc["last three", "picked on the rest"] == "a" and two.loc["first three", "picked on the rest"] == "b"


def test_candidates_are_judged_on_the_runs_both_agents_have(grid):
    rows = [("walker2d-medium", "mingru", seed, 80.0) for seed in range(6)]  # seeds 3-5 have no candidate run
    rows += [("walker2d-medium", "mingru-clip-per-dim", seed, 90.0) for seed in range(3)]
    (line,) = grid.candidates(pd.DataFrame(rows, columns=["dataset", "agent", "seed", "score"]))
    assert "on the 3 runs both have: P(mingru-clip-per-dim > mingru) = 1.00 [1.00, 1.00]" in line
