"""Data-parallel training and evaluation over processes on the CPU (gloo), launched as a user would: torchrun.

The torchrun jobs run a wrapper of the `decision-rnn` command line (written by the test) that can make a rank raise,
die or hang on purpose, and that records every file a rank other than 0 opens for writing, creates, renames or
removes in the run directory (Python's audit hooks: writes from C code are not seen, but the checkpoint files, logs
and run files are all written through Python).
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import torch

from decision_rnn import ModelConfig, TrainConfig
from decision_rnn.data import EpisodeSampler, StreamSampler, WindowSampler
from decision_rnn.evaluation import evaluate_run, shards
from decision_rnn.evaluation.rollout import MIN_SHARD
from decision_rnn.training import load_model, train

MODEL = {"backbone": "mingru", "tokens": "compact", "embed_dim": 32, "n_layers": 2, "context_len": 10, "dropout": 0.0}
TRAIN = {"steps": 20, "batch_size": 64, "lr": 1e-3, "warmup_steps": 5, "log_every": 1, "checkpoint_every": 10}

WRAPPER = '''
import json, os, sys
rank = int(os.environ["RANK"])
run_dir = os.path.realpath(os.environ["TEST_RUN_DIR"])
report = os.open(os.path.join(os.environ["TEST_REPORT_DIR"], f"rank{rank}_writes.jsonl"),
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND)

def inside(path):
    try:
        return os.path.realpath(os.fsdecode(path)).startswith(run_dir)
    except TypeError:  # a file descriptor
        return False

def audit(event, args):  # rank > 0 must not write into the run directory
    if event == "open" and inside(args[0]):
        mode, flags = args[1], args[2]
        writes = any(c in mode for c in "wax+") if mode else flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
    else:
        writes = event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree") and inside(args[0])
    if writes:
        os.write(report, (json.dumps([event, os.fsdecode(args[0])]) + "\\n").encode())

if rank > 0:
    sys.addaudithook(audit)

if rank == 1 and os.environ.get("TEST_OTHER_OUT"):  # a node that does not see rank 0's run directory
    sys.argv[sys.argv.index("--out") + 1] = os.environ["TEST_OTHER_OUT"]

from decision_rnn.training.trainer import Trainer

fail_rank, fail_step = int(os.environ.get("TEST_FAIL_RANK", -1)), int(os.environ.get("TEST_FAIL_STEP", -1))
real_update = Trainer.update

def update(self):
    if self.rank == fail_rank and self.step == fail_step:
        if os.environ["TEST_FAIL_HOW"] == "exit":
            os._exit(9)  # killed, no clean-up
        if os.environ["TEST_FAIL_HOW"] == "hang":
            import time
            time.sleep(3600)  # stuck, alive: torchrun sees nothing wrong
        raise RuntimeError(f"injected failure in rank {self.rank} at step {self.step}")
    return real_update(self)

Trainer.update = update

from torch.distributed.elastic.multiprocessing.errors import record
from decision_rnn.cli import main
sys.exit(record(main)())
'''


def torchrun(tmp_path, run_dir, *args, nproc=2, timeout=180, group_timeout=60, **env):
    """Run the wrapped command line on `nproc` ranks (`group_timeout`: DECISION_RNN_DIST_TIMEOUT, seconds);
    returns (completed process, seconds)."""
    wrapper = tmp_path / "wrapped_cli.py"
    wrapper.write_text(textwrap.dedent(WRAPPER))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DECISION_RNN_DIST_TIMEOUT": str(group_timeout),
           "TEST_RUN_DIR": str(run_dir),
           "TEST_REPORT_DIR": str(tmp_path), **{f"TEST_{k.upper()}": str(v) for k, v in env.items()}}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), str(wrapper), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout)
    return done, time.perf_counter() - t0


def writes_of_other_ranks(tmp_path):
    return [line for f in tmp_path.glob("rank*_writes.jsonl") if f.name != "rank0_writes.jsonl"
            for line in f.read_text().splitlines()]


def configs(embedded, **train):
    model = ModelConfig(obs_dim=embedded.obs_dim, act_dim=embedded.act_dim, **MODEL)
    return model, TrainConfig(**{**TRAIN, **train})


def assert_close_weights(a, b, atol=1e-5):
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], atol=atol, rtol=0, msg=k)


# ---- samplers: a rank's share of the global batch ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["window", "uniform", "episode", "stream"])
def test_the_ranks_batches_stacked_are_the_one_process_batch(embedded, kind):
    def sampler(rank, world):
        shard = {"seed": 3, "rank": rank, "world_size": world}
        if kind == "episode":
            return EpisodeSampler(embedded, 8, max_len=50, **shard)
        if kind == "stream":
            return StreamSampler(embedded, 10, 8, **shard)
        return WindowSampler(embedded, 10, 8, align="start" if kind == "window" else kind, **shard)

    one, ranks = sampler(0, 1), [sampler(r, 4) for r in range(4)]
    for _ in range(3):
        full, parts = one.sample(), [s.sample() for s in ranks]
        assert full.global_real is None and {p.global_real for p in parts} == {int(full.mask.sum())}
        for name in ("states", "actions", "returns_to_go", "timesteps", "mask", "prev_actions"):
            T = max(getattr(p, name).shape[1] for p in parts)  # episodes: each rank pads to its own longest
            pad = [torch.nn.functional.pad(getattr(p, name), (0, 0) * (getattr(p, name).dim() - 2) +
                                           (0, T - getattr(p, name).shape[1])) for p in parts]
            assert torch.equal(torch.cat(pad)[:, :getattr(full, name).shape[1]], getattr(full, name)), name
        if kind == "stream":  # carried states: each rank keeps its own streams' rows
            state = (torch.randn(8, 5),)
            one.advance(state)
            for r, s in enumerate(ranks):
                s.advance((state[0][2 * r:2 * r + 2],))
            assert torch.equal(torch.cat([s.state[0] for s in ranks]), one.state[0])
    with pytest.raises(ValueError, match="batch of 8 .* does not split evenly over 3 ranks"):
        sampler(0, 3)


def test_evaluation_shards_partition_the_episodes():
    for episodes in range(1, 40):
        for parts in (1, 2, 3, 8):
            split = shards(episodes, parts)
            assert [i for s in split for i in s] == list(range(episodes))
            assert len(split) == 1 or min(map(len, split)) >= MIN_SHARD
            assert max(map(len, split)) - min(map(len, split)) <= 1 or len(split) == 1


# ---- training under torchrun -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_ranks_train_as_one_write_only_on_rank_0_and_resume_after_a_kill(embedded, tmp_path, caplog):
    """2 ranks x 32 = 1 rank x 64 on the same samples; rank 1 writes nothing; a kill at step 12 loses only the
    updates since the checkpoint at 10, and resuming (on 2 ranks, or on 1) gives the uninterrupted weights."""
    import shutil

    stream = {"context": "stream"}  # chunks cut at episode ends (shards with unequal real steps), carried states
    evaluation = {"eval_every": 10, "eval_episodes": 2}  # on rank 0, the others waiting at a barrier
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": MODEL, "train": {**TRAIN, **stream, **evaluation}}))
    run = tmp_path / "run"
    args = ["train", "--config", config, "--out", run]
    killed, _ = torchrun(tmp_path, run, *args, fail_rank=0, fail_step=12, fail_how="exit")
    assert killed.returncode != 0, killed.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000010"]
    shutil.copytree(run, tmp_path / "run_on_one_rank")

    model_cfg, cfg = configs(embedded, **stream, **evaluation)
    one = tmp_path / "one_rank"
    train(embedded, model_cfg, cfg, one, progress=False)
    assert_close_weights(load_model(run / "checkpoints" / "step_00000010")[0],
                         load_model(one / "checkpoints" / "step_00000010")[0])

    resumed, _ = torchrun(tmp_path, run, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    weights, meta = load_model(run)
    assert meta["step"] == 20
    assert_close_weights(weights, load_model(one)[0])
    assert writes_of_other_ranks(tmp_path) == []
    log_steps = [int(line.split(",")[0]) for line in (run / "log.csv").read_text().splitlines()[1:]]
    assert log_steps == list(range(1, 21))  # one row per update: rank 0's, without the rows after the checkpoint
    assert [line.split(",")[0] for line in (run / "eval.csv").read_text().splitlines()[1:]] == ["10", "20"]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["steps"] == 20  # printed once, by rank 0

    with caplog.at_level("WARNING"):
        train(embedded, model_cfg, cfg, tmp_path / "run_on_one_rank", resume=True, progress=False)
    assert "trained on 2 rank(s) and resumes on 1" in caplog.text
    assert_close_weights(load_model(tmp_path / "run_on_one_rank")[0], load_model(one)[0])


@pytest.mark.slow
def test_a_hanging_rank_fails_the_job_after_the_group_timeout(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": MODEL, "train": {**TRAIN, "steps": 1000}}))
    run = tmp_path / "run"
    done, seconds = torchrun(tmp_path, run, "train", "--config", config, "--out", run, fail_rank=1, fail_step=3,
                             fail_how="hang", group_timeout=5)
    assert done.returncode != 0
    assert "Timed out waiting 5000ms" in done.stderr  # rank 0's collective, waiting on rank 1
    assert seconds < 120, seconds


@pytest.mark.slow
def test_a_failing_rank_fails_the_job_with_its_error(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": MODEL, "train": {**TRAIN, "steps": 1000}}))
    run = tmp_path / "run"
    done, seconds = torchrun(tmp_path, run, "train", "--config", config, "--out", run, fail_rank=1, fail_step=3,
                             fail_how="raise", group_timeout=600)
    assert done.returncode != 0
    assert "RuntimeError: injected failure in rank 1 at step 3" in done.stderr
    assert seconds < 150  # torchrun stops rank 0, which waits on rank 1's gradients, long before the group timeout


@pytest.mark.slow
def test_a_rank_that_reads_another_run_directory_stops_the_job(tmp_path):
    """Resuming on several nodes needs one run directory they all see: a rank that resumes at another step than
    rank 0 (its node has another copy, or none) ends the job saying so, rather than training out of step."""
    import shutil

    from decision_rnn.cli import main

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": MODEL, "train": TRAIN}))
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    assert main(["train", "--config", str(config), "--out", str(run), "--steps", "10"]) == 0
    shutil.copytree(run, elsewhere)
    shutil.rmtree(elsewhere / "checkpoints")  # a stale copy: the run's files, none of its checkpoints
    done, _ = torchrun(tmp_path, run, "train", "--config", config, "--out", run, "--resume", other_out=elsewhere)
    assert done.returncode != 0
    assert f"rank 1 resumes {elsewhere} at step 0, rank 0 at step 10" in done.stderr, done.stderr[-3000:]
    assert load_model(run)[1]["step"] == 10  # nothing trained out of step was saved


# ---- evaluation over processes -------------------------------------------------------------------------------
@pytest.mark.slow
def test_workers_and_ranks_evaluate_the_one_process_episodes(embedded, tmp_path):
    model_cfg, cfg = configs(embedded, steps=2, batch_size=8)
    run = tmp_path / "run"
    train(embedded, model_cfg, cfg, run, progress=False)

    def episodes(summary):  # the summary's results (as JSON would give them) and the episodes but their timing
        return json.loads(json.dumps(summary["results"])), pd.read_csv(summary["files"]["episodes"]).drop(
            columns="wall_s")

    # the torch runtime: its rows do not depend on the batch at any size (and nothing to compile in each process)
    kw = {"episodes": 2 * MIN_SHARD, "seeds": [0, 1], "target_returns": [1000.0, 3600.0], "runtime": "torch"}
    results, one = episodes(evaluate_run(run, **kw))
    results2, two = episodes(evaluate_run(run, workers=2, **kw))
    assert two.equals(one) and results2 == results
    assert sorted(one.seed.unique()) == sorted({s * 1_000_003 + i for s in (0, 1) for i in range(2 * MIN_SHARD)})

    done, _ = torchrun(tmp_path, run, "evaluate", run, "--episodes", 2 * MIN_SHARD, "--seed", 0, "--seed", 1,
                       "--target-return", 1000, "--target-return", 3600, "--runtime", "torch", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = json.loads(done.stdout)  # one summary: rank 0's
    results_ranks, on_ranks = episodes(ranks)
    assert results_ranks == results and on_ranks.equals(one)
    assert writes_of_other_ranks(tmp_path) == []
    assert np.isfinite(one["return"]).all()
