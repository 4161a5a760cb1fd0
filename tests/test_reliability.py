"""Faults and bad inputs, as a hostile user would try them: each gets a clear error, and nothing that was there
before is changed (every file's bytes and mode are compared before and after). docs/reliability.md lists them."""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

from decision_rnn.cli import main
from decision_rnn.data import EMBEDDED_DATASET
from decision_rnn.training import CheckpointError, load_model
from decision_rnn.training import checkpoint as ckpt_mod

SMALL = ["--embed-dim", "16", "--n-layers", "1", "--batch-size", "4", "--tokens", "compact", "--context-len", "5",
         "--log-every", "1", "--warmup-steps", "2"]


def snapshot(root) -> dict:
    """Every file and folder under `root` (hidden ones too): its bytes' sha256 and its mode."""
    if not os.path.exists(root):
        return {}
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            content = "dir" if name in dirs else hashlib.sha256(open(path, "rb").read()).hexdigest()
            found[os.path.relpath(path, root)] = (content, stat.S_IMODE(os.stat(path).st_mode))
    return found


def train_cli(out, *extra, steps=4):
    return main(["train", "--out", str(out), "--steps", str(steps), "--checkpoint-every", "2", *SMALL, *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small run with checkpoints at steps 2 and 4; copy it (`run`) before changing it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert train_cli(out) == 0
    return out


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def refused(capsys, argv, *messages) -> str:
    """`decision-rnn ARGV` exits 2 printing `decision-rnn: error: ...` with each of `messages` in it."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "decision-rnn: error: " in err and "Traceback" not in err, err
    for message in messages:
        assert message in err, err
    return err


def write_d4rl(path, dataset, episodes=5, obs_columns=None, reward_scale=1.0):
    """The first `episodes` of `dataset` as a D4RL-format HDF5 file."""
    end = dataset.offsets[episodes]
    with h5py.File(path, "w") as f:
        obs = dataset.observations[:end]
        f["observations"] = obs if obs_columns is None else obs[:, :obs_columns]
        f["actions"] = dataset.actions[:end]
        f["rewards"] = dataset.rewards[:end] * reward_scale
        f["terminals"] = dataset.terminations[:end]
        f["timeouts"] = dataset.truncations[:end]
    return path


# ---- 1-3: run directories --------------------------------------------------------------------------------
def test_train_refuses_a_directory_that_is_not_a_run_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"mine": true}')
    (out / "log.csv").write_text("epoch,accuracy\n1,0.5\n")
    (out / "eval.csv").write_text("epoch,score\n1,3\n")
    before = snapshot(out)
    refused(capsys, ["train", "--out", str(out), "--steps", "2", *SMALL], f"{out} is not empty and holds no "
            "decision-rnn run (no run.json); nothing in it was changed")
    refused(capsys, ["train", "--out", str(out), "--steps", "2", "--resume"], f"no run at {out}; drop --resume")
    assert snapshot(out) == before


def test_train_refuses_an_existing_run_without_resume(run, capsys):
    before = snapshot(run)
    refused(capsys, ["train", "--out", str(run), "--steps", "6", *SMALL], "already holds a run: pass --resume")
    assert snapshot(run) == before


def test_a_second_trainer_on_a_run_stops_at_once_naming_the_first_ones_pid(run, capsys):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import fcntl, os, sys, time
        fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a training holds (decision_rnn.training.run.run_lock)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        print("locked", flush=True)
        time.sleep(60)
    """), str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run)
        refused(capsys, ["train", "--out", str(run), "--steps", "6", "--resume"],
                f"{run} is being trained by another process (pid {holder.pid})")
        assert snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()
    assert train_cli(run, "--resume", steps=6) == 0  # the lock died with its holder


def test_the_lock_is_held_for_the_whole_training(tmp_path, monkeypatch):
    from decision_rnn.errors import RunDirError
    from decision_rnn.training import Trainer
    from decision_rnn.training.run import run_lock

    seen = []
    real_update = Trainer.update

    def update_and_try_the_lock(self):
        with pytest.raises(RunDirError, match=f"pid {os.getpid()}"), run_lock(self.run_dir):
            pass
        seen.append(self.step)
        return real_update(self)

    monkeypatch.setattr(Trainer, "update", update_and_try_the_lock)
    assert train_cli(tmp_path / "run", steps=3) == 0
    assert seen == [0, 1, 2]
    with run_lock(tmp_path / "run"):  # released at the end
        pass


def test_a_save_removes_only_the_temp_dirs_of_dead_processes(tmp_path, embedded):
    from decision_rnn import ModelConfig
    from decision_rnn.training import build_model, save_checkpoint

    model = build_model(embedded, ModelConfig(obs_dim=11, act_dim=3, embed_dim=8, n_layers=1, tokens="compact"))
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    try:
        root = tmp_path / "checkpoints"
        root.mkdir()
        (root / f".tmp-step_00000009-{live.pid}").mkdir()  # another trainer's save in progress
        (root / f".tmp-step_00000008-{dead.pid}").mkdir()  # what a killed save left
        save_checkpoint(tmp_path, model, 1)
        assert sorted(p.name for p in root.glob(".tmp-*")) == [f".tmp-step_00000009-{live.pid}"]
    finally:
        live.kill()
        live.wait()


def test_a_save_killed_while_replacing_a_step_leaves_the_earlier_copy(tmp_path, embedded):
    """Saving a step that exists moves the old copy aside, then renames the new one in; killed between the two,
    the next save (or resume) puts the old copy back instead of deleting it."""
    from decision_rnn import ModelConfig
    from decision_rnn.training import build_model, save_checkpoint

    model = build_model(embedded, ModelConfig(obs_dim=11, act_dim=3, embed_dim=8, n_layers=1, tokens="compact"))
    root = tmp_path / "checkpoints"
    save_checkpoint(tmp_path, model, 4)
    before = snapshot(root / "step_00000004")
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    os.rename(root / "step_00000004", root / f".old-step_00000004-{dead.pid}")  # killed after the first rename
    (root / f".tmp-step_00000004-{dead.pid}").mkdir()  # and the new copy never renamed in
    save_checkpoint(tmp_path, model, 2)
    assert snapshot(root / "step_00000004") == before
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002", "step_00000004"]
    assert load_model(root / "step_00000004")[1]["step"] == 4


def test_the_newest_checkpoint_is_found_by_its_number_past_ten_to_the_eight(tmp_path, embedded):
    from decision_rnn import ModelConfig
    from decision_rnn.training import build_model, find_checkpoint, save_checkpoint

    model = build_model(embedded, ModelConfig(obs_dim=11, act_dim=3, embed_dim=8, n_layers=1, tokens="compact"))
    for step in (99_999_999, 100_000_000):
        save_checkpoint(tmp_path, model, step)
    (tmp_path / "checkpoints" / "latest").unlink()  # found by listing, as after a crash before `latest` was written
    assert find_checkpoint(tmp_path).name == "step_100000000"


@pytest.mark.parametrize("empty", [False, True])
def test_resume_of_a_missing_or_empty_directory_is_an_error(tmp_path, capsys, empty):
    out = tmp_path / "typo"
    if empty:
        out.mkdir()
    refused(capsys, ["train", "--out", str(out), "--steps", "2", "--resume"],
            f"no run at {out}; drop --resume to start one")
    assert out.exists() == empty and (not empty or not any(out.iterdir()))


def test_resume_of_a_run_with_a_damaged_config_names_the_file(run, capsys):
    (run / "config.json").write_text("{not json")
    before = snapshot(run)
    refused(capsys, ["train", "--out", str(run), "--resume"], f"{run / 'config.json'} is not valid JSON")
    assert snapshot(run) == before


# ---- 4: numbers that overflow or are not finite -------------------------------------------------------------
def test_a_nan_loss_stops_training_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    from decision_rnn.models import DecisionRNN

    real_loss, calls = DecisionRNN.loss, []

    def nan_from_the_third(self, batch, **kw):
        calls.append(1)
        loss = real_loss(self, batch, **kw)
        return loss * float("nan") if len(calls) >= 3 else loss

    monkeypatch.setattr(DecisionRNN, "loss", nan_from_the_third)
    refused(capsys, ["train", "--out", str(tmp_path / "run"), "--steps", "6", "--checkpoint-every", "2", *SMALL],
            "non-finite loss or gradient norm at step 3")
    monkeypatch.undo()
    model, meta = load_model(tmp_path / "run")
    assert meta["step"] == 2 and all(torch.isfinite(p).all() for p in model.parameters())
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*")) == ["step_00000002"]


def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path, embedded):
    from decision_rnn import ModelConfig, Policy
    from decision_rnn.training import build_model, save_checkpoint

    model = build_model(embedded, ModelConfig(obs_dim=11, act_dim=3, embed_dim=8, n_layers=1, tokens="compact"))
    save_checkpoint(tmp_path, model, 1)
    with torch.no_grad():
        model.action_head[0].weight[0, 0] = float("nan")
    save_checkpoint(tmp_path, model, 2)  # below the trainer, which never saves such weights
    with pytest.raises(CheckpointError, match=r"step_00000002 holds non-finite weights \(NaN or inf in "
                                              r"action_head.0.weight\).*intact checkpoints beside it, newest first: "
                                              "step_00000001"):
        Policy.load(tmp_path)


def test_rewards_whose_returns_to_go_overflow_float32_are_refused(tmp_path, embedded, capsys):
    data = write_d4rl(tmp_path / "hopper-huge-v2.hdf5", embedded, reward_scale=1e37)
    refused(capsys, ["train", "--dataset", str(data), "--out", str(tmp_path / "run"), *SMALL],
            "returns-to-go of episode 0", "overflow float32", "rescale the rewards")
    assert not (tmp_path / "run").exists()


# ---- 5: integrity ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [("model_config.activation", "gelu"), ("model_config.return_scale", 1.0),
                                          ("ref_max_score", 1.0)])
def test_an_edited_meta_value_is_refused_like_an_edited_weight_naming_the_intact_checkpoints(run, capsys, field,
                                                                                          value):
    meta_path = run / "checkpoints" / "step_00000004" / "meta.json"
    meta = json.loads(meta_path.read_text())
    *parents, key = field.split(".")
    target = meta
    for p in parents:
        target = target[p]
    target[key] = value
    meta_path.write_text(json.dumps(meta, indent=2))
    before = snapshot(run)
    message = "meta.json does not match the sha256 recorded in SHA256SUMS (truncated or modified file)"
    fallback = f"intact checkpoints beside it, newest first: step_00000002 (load one by its path, e.g. {run}"
    with pytest.raises(CheckpointError, match="is corrupt") as error:
        load_model(run)
    assert message in str(error.value) and fallback in str(error.value)
    refused(capsys, ["evaluate", str(run), "--episodes", "1"], message, fallback)
    assert snapshot(run) == before

    weights = run / "checkpoints" / "step_00000002" / "model.safetensors"  # an edited weight: the same message
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors does not match the sha256 recorded in SHA256SUMS "
                                              r"\(truncated or modified file\); no intact checkpoint"):
        load_model(weights.parent)


def test_a_checkpoint_of_another_format_is_refused_naming_its_version(run):
    ckpt = run / "checkpoints" / "step_00000004"
    meta = json.loads((ckpt / "meta.json").read_text())
    (ckpt / "meta.json").write_text(json.dumps({**meta, "format_version": 1}))
    (ckpt / "SHA256SUMS").unlink()  # format 1 kept its hashes inside meta.json
    with pytest.raises(CheckpointError, match=r"has checkpoint format 1; decision-rnn .* reads format 2 only"):
        load_model(ckpt)


def test_every_file_of_a_run_has_the_mode_the_umask_gives(tmp_path):
    old = os.umask(0o022)
    try:
        assert train_cli(tmp_path / "run", steps=2) == 0
    finally:
        os.umask(old)
    modes = {path: mode for path, (content, mode) in snapshot(tmp_path / "run").items() if content != "dir"}
    assert "checkpoints/step_00000002/model.safetensors" in modes
    assert set(modes.values()) == {0o644}, modes


# ---- 6: huge observations ------------------------------------------------------------------------------------
def test_runtimes_agree_on_huge_observations(trained):
    from decision_rnn import Policy
    from decision_rnn.policy import RUNTIMES

    obs = np.array([[1e20] * 11, [-1e30] * 11, [3e38, -3e38, *[0.5] * 9]], np.float32)
    actions = {}
    for runtime in [r for r in RUNTIMES if r != "auto"]:
        try:
            policy = Policy.load(trained, runtime=runtime)
        except ImportError:  # onnxruntime / numba not installed
            continue
        policy.reset(3600.0, batch_size=3)
        actions[runtime] = [policy.act(obs, 0.0) for _ in range(3)]
    assert "torch" in actions and len(actions) >= 2
    for runtime, acts in actions.items():
        assert all(np.isfinite(a).all() for a in acts), runtime
        np.testing.assert_allclose(np.stack(acts), np.stack(actions["torch"]), atol=1e-5, err_msg=runtime)


# ---- 7: evaluations are append-only ------------------------------------------------------------------------
def test_evaluations_never_replace_earlier_ones(run, capsys):
    base = ["evaluate", str(run), "--episodes", "1", "--runtime", "torch", "--json"]
    assert main([*base, "--target-return", "3600"]) == 0
    first = json.loads(capsys.readouterr().out)["files"]["summary"]
    eval_dir = run / "eval"
    before = snapshot(eval_dir)
    assert main([*base, "--target-return", "1800", "--seed", "1"]) == 0
    second = json.loads(capsys.readouterr().out)["files"]["summary"]
    assert main([*base, "--target-return", "3600"]) == 0  # the same again: a folder of its own
    third = json.loads(capsys.readouterr().out)["files"]["summary"]
    after = snapshot(eval_dir)
    assert all(after[path] == value for path, value in before.items() if path != "index.csv")
    names = [os.path.basename(os.path.dirname(p)) for p in (first, second, third)]
    assert names == ["step_00000004-target_3600-seeds_0-episodes_1-torch",
                     "step_00000004-target_1800-seeds_1-episodes_1-torch",
                     "step_00000004-target_3600-seeds_0-episodes_1-torch-2"]
    with open(eval_dir / "index.csv", newline="") as f:
        index = list(csv.DictReader(f))
    assert [(r["evaluation"], float(r["target_return"]), r["seeds"], r["episodes"]) for r in index] == [
        (names[0], 3600.0, "0", "1"), (names[1], 1800.0, "1", "1"), (names[2], 3600.0, "0", "1")]
    assert sorted(os.listdir(eval_dir)) == sorted([*names, "index.csv"])


def test_an_evaluation_keeps_to_the_checkpoint_it_loaded(run, monkeypatch, capsys):
    """Training may save a newer checkpoint while an evaluation runs: its workers load the one the summary names."""
    from decision_rnn.evaluation import report

    real = report.rollouts
    loaded = []

    def newer_saved_meanwhile(*args, load, **kwargs):
        shutil.copytree(run / "checkpoints" / "step_00000004", run / "checkpoints" / "step_00000006")
        (run / "checkpoints" / "latest").write_text("step_00000006")
        loaded.append(load().meta["path"])
        return real(*args, load=load, **kwargs)

    monkeypatch.setattr(report, "rollouts", newer_saved_meanwhile)
    assert main(["evaluate", str(run), "--episodes", "1", "--runtime", "torch", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["checkpoint_step"] == 4
    assert loaded == [summary["checkpoint"]] and summary["checkpoint"].endswith("step_00000004")


def test_an_evaluation_that_cannot_write_its_files_fails_before_its_episodes(run, tmp_path, monkeypatch, capsys):
    from decision_rnn.evaluation import report

    def no_episodes(*args, **kwargs):
        raise AssertionError("episodes ran before the output folder was known to be writable")

    monkeypatch.setattr(report, "rollouts", no_episodes)
    (tmp_path / "a-file").write_text("")
    refused(capsys, ["evaluate", str(run), "--out-dir", str(tmp_path / "a-file" / "eval")], "Not a directory",
            str(tmp_path / "a-file" / "eval"))


def test_an_evaluation_that_fails_leaves_no_folder_and_out_dir_takes_the_files(run, tmp_path, monkeypatch, capsys):
    from decision_rnn.evaluation import report

    def crashed(*args, **kwargs):
        raise RuntimeError("the env crashed")

    real = report.rollouts
    monkeypatch.setattr(report, "rollouts", crashed)
    before = snapshot(run)
    with pytest.raises(RuntimeError, match="the env crashed"):
        report.evaluate_run(run, episodes=1, runtime="torch")
    after = snapshot(run)
    assert {k: v for k, v in after.items() if not k.startswith("eval")} == before
    assert [k for k in after if k.startswith("eval" + os.sep)] == []  # eval/ itself may be new, but empty
    monkeypatch.setattr(report, "rollouts", real)
    assert main(["evaluate", str(run), "--episodes", "1", "--runtime", "torch", "--out-dir", str(tmp_path / "out"),
                 "--json"]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert files["summary"].startswith(str(tmp_path / "out")) and os.path.exists(files["episodes"])


def test_evaluation_names_stay_short_with_many_seeds():
    from decision_rnn.evaluation.report import evaluation_name

    few = evaluation_name(4, [3600.0], [0, 1], 10, "fused", "float32")
    many = [evaluation_name(4, [3600.0, 1800.0], list(range(n, n + 100)), 10, "fused", "float32") for n in (0, 1)]
    assert few == "step_00000004-target_3600-seeds_0_1-episodes_10-fused"
    assert many[0] != many[1] and all(len(name) < 100 for name in many), many
    assert many[0].startswith("step_00000004-target_3600_1800-seeds_100-")


# ---- 8: validation before work --------------------------------------------------------------------------------
def test_a_dataset_whose_shapes_are_not_its_envs_is_refused_before_training(tmp_path, embedded, capsys):
    data = write_d4rl(tmp_path / "hopper-cut-v2.hdf5", embedded, obs_columns=5)
    refused(capsys, ["train", "--dataset", str(data), "--out", str(tmp_path / "run"), *SMALL],
            "has observations of size 5", "Hopper-v5 has observation shape (11,)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("train, message", [({"steps": 40.5}, "steps=40.5 (needs int)"),
                                            ({"compile": "yes"}, "compile='yes' (needs bool)"),
                                            ({"lr": "1e-3"}, "lr='1e-3' (needs float)")])
def test_config_values_of_the_wrong_type_are_refused_before_training(tmp_path, capsys, train, message):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"train": train}))
    refused(capsys, ["train", "--config", str(cfg), "--out", str(tmp_path / "run"), *SMALL],
            f"--config {cfg}: TrainConfig: wrong type for {message}")
    assert not (tmp_path / "run").exists()


def test_python_configs_of_the_wrong_type_are_refused_before_training(tmp_path, embedded):
    from decision_rnn import ModelConfig, TrainConfig
    from decision_rnn.training import train

    model = ModelConfig(obs_dim=11, act_dim=3, embed_dim=8, n_layers=1, tokens="compact")
    with pytest.raises(ValueError, match=r"TrainConfig: wrong type for steps=40\.5 \(needs int\)"):
        train(embedded, model, TrainConfig(steps=40.5), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_the_checkpoint_is_saved_before_a_periodic_evaluation_runs(tmp_path, embedded):
    from decision_rnn import ModelConfig, TrainConfig
    from decision_rnn.training import train

    def broken_env(model, step):
        raise RuntimeError("the env crashed")

    model = ModelConfig(obs_dim=11, act_dim=3, embed_dim=8, n_layers=1, tokens="compact")
    config = TrainConfig(steps=4, batch_size=2, warmup_steps=1, checkpoint_every=2, eval_every=2)
    with pytest.raises(RuntimeError, match="the env crashed"):
        train(embedded, model, config, tmp_path / "run", eval_hook=broken_env, progress=False)
    assert load_model(tmp_path / "run")[1]["step"] == 2  # the updates before the crash are kept


# ---- 9: clean command-line errors -----------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--episodes", "0"], "argument --episodes: must be >= 1, got 0"),
    (["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
])
def test_bad_evaluate_arguments_are_usage_errors(trained, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(trained), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(trained, capsys):
    from decision_rnn import Policy

    before = snapshot(trained)
    refused(capsys, ["evaluate", str(trained), "--device", "cuda"],
            "CUDA is not available; use device 'cpu' (--device cpu)")
    with pytest.raises(ValueError, match="CUDA is not available"):
        Policy.load(trained, device="cuda")
    assert snapshot(trained) == before


def test_an_unknown_device_is_a_clear_error(trained, tmp_path, capsys):
    refused(capsys, ["evaluate", str(trained), "--device", "gpu0"], "unknown device 'gpu0'")
    refused(capsys, ["train", "--out", str(tmp_path / "run"), "--device", "gpu0", *SMALL], "unknown device 'gpu0'")
    assert not (tmp_path / "run").exists()
    from decision_rnn import Policy

    model = Policy.load(trained).model
    for make in (lambda: Policy.load(trained, device="gpu0"), lambda: Policy(model, device="gpu0")):
        with pytest.raises(ValueError, match="unknown device 'gpu0': use cpu, cuda"):
            make()


def test_a_negative_training_seed_is_a_clear_error(tmp_path, capsys):
    refused(capsys, ["train", "--out", str(tmp_path / "run"), "--seed", "-1", *SMALL], "seed must be >= 0, got -1")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["minari", "d4rl"])
def test_a_truncated_hdf5_file_is_named(tmp_path, embedded, capsys, kind):
    if kind == "minari":
        source = tmp_path / "data"
        shutil.copytree(EMBEDDED_DATASET, source)
        file = source / "data" / "main_data.hdf5"
    else:
        source = file = write_d4rl(tmp_path / "hopper-medium-v2.hdf5", embedded)
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # an interrupted download
    refused(capsys, ["train", "--dataset", str(source), "--out", str(tmp_path / "run"), *SMALL],
            f"{file} is not a readable HDF5 file", "truncated")
    assert not (tmp_path / "run").exists()


def test_invalid_config_json_names_the_file_and_line(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"train": {\n  "steps": 4,\n}}')
    refused(capsys, ["train", "--config", str(cfg), "--out", str(tmp_path / "run")],
            f"--config {cfg}: not valid JSON", "line 3, column 1")


def test_a_full_disk_names_the_path_and_the_space_needed_and_keeps_the_earlier_checkpoints(run, capsys,
                                                                                          monkeypatch):
    real_write = ckpt_mod._write_file

    def full_at_trainer_state(path, data):
        if path.name == "trainer.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, data)

    before = snapshot(run / "checkpoints")
    monkeypatch.setattr(ckpt_mod, "_write_file", full_at_trainer_state)
    err = refused(capsys, ["train", "--out", str(run), "--steps", "6", "--resume"],
                  f"no space left on the device of {run / 'checkpoints'} while saving "
                  f"{run / 'checkpoints' / 'step_00000006'}: the checkpoint needs", "MB are free")
    assert "unexpected pos" not in err
    assert snapshot(run / "checkpoints") == before  # no temp dir left, earlier checkpoints as they were
    monkeypatch.undo()
    assert main(["train", "--out", str(run), "--steps", "6", "--resume"]) == 0  # space again: it goes on


def test_a_d4rl_file_whose_name_does_not_tell_the_env_takes_env_id(tmp_path, embedded, capsys):
    data = write_d4rl(tmp_path / "data.hdf5", embedded)
    refused(capsys, ["train", "--dataset", str(data), "--out", str(tmp_path / "a"), *SMALL],
            "cannot tell the environment from 'data'", "--env-id Hopper-v5")
    assert main(["train", "--dataset", str(data), "--env-id", "Hopper-v5", "--out", str(tmp_path / "b"),
                 "--steps", "2", *SMALL]) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["env_id"] == "Hopper-v5"


# ---- faults: killed at random points, mid-save included --------------------------------------------------------
def train_until_killed(kill_at: int, argv: list[str]) -> int:
    """`decision-rnn ARGV` in a forked process that SIGKILLs itself at its `kill_at`-th event: an update, or a step
    of a save (a file written, a directory synced, a rename). Returns its exit code, or -signal."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            from decision_rnn.training import trainer

            events = [0]

            def counted(fn):
                def wrapped(*args, **kwargs):
                    events[0] += 1
                    if events[0] == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return fn(*args, **kwargs)
                return wrapped

            trainer.Trainer.update = counted(trainer.Trainer.update)
            ckpt_mod._write_file = counted(ckpt_mod._write_file)
            ckpt_mod._fsync_dir = counted(ckpt_mod._fsync_dir)
            os.rename, os.replace = counted(os.rename), counted(os.replace)
            code = main(argv)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


@pytest.mark.slow
def test_killed_at_random_points_a_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    args = ["--steps", "8", "--checkpoint-every", "2", *SMALL]
    assert main(["train", "--out", str(tmp_path / "whole"), *args]) == 0
    out = tmp_path / "killed"
    # an uninterrupted run has ~50 events: 8 updates, 4 saves of 9 (4 files, 2 syncs, a rename, `latest` written
    # and renamed), run.json and config.json (each written and renamed); a resumed run has fewer
    kills = random.Random(28).sample(range(1, 30), 5)
    codes = []
    for kill_at in [*kills, 0]:  # 0: never killed, runs to the end
        resume = ["--resume"] if (out / "run.json").exists() else []
        codes.append(train_until_killed(kill_at, ["train", "--out", str(out), *args, *resume]))
    assert codes.count(-signal.SIGKILL) >= 4 and set(codes) <= {0, -signal.SIGKILL} and codes[-1] == 0, codes
    whole, _ = load_model(tmp_path / "whole")
    resumed, meta = load_model(out)
    assert meta["step"] == 8
    for name, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert not list((out / "checkpoints").glob(".tmp-*"))
