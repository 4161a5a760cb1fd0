"""Trainer, checkpoints and resume on the embedded Hopper data."""

import csv
import json
from dataclasses import replace

import pytest
import torch

from decision_rnn import ModelConfig, TrainConfig
from decision_rnn.config import validate
from decision_rnn.training import CheckpointError, Trainer, build_model, load_model, save_checkpoint, train
from decision_rnn.training import checkpoint as ckpt_mod


def small_configs(dataset, steps, **train_kw):
    model = ModelConfig(obs_dim=dataset.obs_dim, act_dim=dataset.act_dim, backbone="mingru", tokens="compact",
                        embed_dim=32, n_layers=2, context_len=10)
    kw = dict(steps=steps, batch_size=8, lr=1e-3, warmup_steps=10, log_every=1, checkpoint_every=10,
              episode_batch_size=4, episode_max_len=100)
    kw.update(train_kw)
    return model, TrainConfig(**kw)


def read_losses(run_dir):
    with open(run_dir / "log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("context", ["window", "episode", "stream"])
def test_short_training_lowers_the_loss(embedded, tmp_path, context):
    model_cfg, train_cfg = small_configs(embedded, 60, context=context)
    train(embedded, model_cfg, train_cfg, tmp_path, progress=False)
    losses = read_losses(tmp_path)
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10, losses


def test_checkpoint_round_trip_is_exact(embedded, tmp_path):
    model_cfg, _ = small_configs(embedded, 1)
    model = build_model(embedded, model_cfg)
    path = save_checkpoint(tmp_path, model, 7, meta={"env_id": embedded.env_id})
    loaded, meta = load_model(tmp_path)
    assert meta["step"] == 7 and meta["path"] == str(path) and meta["env_id"] == embedded.env_id
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert loaded.config == model.config


@pytest.mark.parametrize("context", ["episode", "stream"])  # stream: the carried state is restored too
def test_resume_reproduces_uninterrupted_run(embedded, tmp_path, context):
    model_cfg, full_cfg = small_configs(embedded, 30, checkpoint_every=10, context=context)
    train(embedded, model_cfg, full_cfg, tmp_path / "full", progress=False)
    _, half_cfg = small_configs(embedded, 20, checkpoint_every=10, context=context)
    train(embedded, model_cfg, half_cfg, tmp_path / "split", progress=False)
    train(embedded, model_cfg, full_cfg, tmp_path / "split", resume=True, progress=False)
    a, _ = load_model(tmp_path / "full")
    b, _ = load_model(tmp_path / "split")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), f"{k} differs after resume"
    assert read_losses(tmp_path / "full") == read_losses(tmp_path / "split")


def test_resume_after_an_interruption_keeps_the_cosine_schedule(embedded, tmp_path, monkeypatch):
    model_cfg, cfg = small_configs(embedded, 30, checkpoint_every=10, lr_decay="cosine")
    train(embedded, model_cfg, cfg, tmp_path / "full", progress=False)
    real_update = Trainer.update

    def crash_after_20(self):
        if self.step == 20:
            raise KeyboardInterrupt
        return real_update(self)

    monkeypatch.setattr(Trainer, "update", crash_after_20)
    with pytest.raises(KeyboardInterrupt):
        train(embedded, model_cfg, cfg, tmp_path / "split", progress=False)
    monkeypatch.undo()
    train(embedded, model_cfg, cfg, tmp_path / "split", resume=True, progress=False)
    a, _ = load_model(tmp_path / "full")
    b, _ = load_model(tmp_path / "split")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), f"{k} differs after resume"
    with open(tmp_path / "split" / "log.csv") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    assert lrs[-1] == pytest.approx(1e-4) and lrs[15] > lrs[25]  # decayed to lr / 10 at the last update


def test_the_logged_learning_rate_is_the_one_the_update_used(embedded, tmp_path, monkeypatch):
    model_cfg, cfg = small_configs(embedded, 3, warmup_steps=10)
    used = []
    real_step = torch.optim.AdamW.step

    def recording(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    train(embedded, model_cfg, cfg, tmp_path / "run", progress=False)
    with open(tmp_path / "run" / "log.csv") as f:
        logged = [float(r["lr"]) for r in csv.DictReader(f)]
    assert logged == pytest.approx(used) == [1e-4, 2e-4, 3e-4]  # warm-up: update s at lr * (s + 1) / 10


def test_ema_checkpoints_hold_the_average_of_the_weights_and_resume_exactly(embedded, tmp_path, monkeypatch):
    model_cfg, plain = small_configs(embedded, 30, checkpoint_every=10, context="window")
    _, ema_cfg = small_configs(embedded, 30, checkpoint_every=10, context="window", ema_decay=0.9)
    seen = []  # the raw weights after every update
    real_update = Trainer.update

    def recording(self):
        out = real_update(self)
        seen.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return out

    monkeypatch.setattr(Trainer, "update", recording)
    train(embedded, model_cfg, ema_cfg, tmp_path / "ema", progress=False)
    monkeypatch.undo()
    train(embedded, model_cfg, plain, tmp_path / "plain", progress=False)
    average = dict(seen[0])
    for weights in seen[1:]:
        average = {k: 0.9 * average[k] + 0.1 * w for k, w in weights.items()}
    acting, meta = load_model(tmp_path / "ema")
    raw, _ = load_model(tmp_path / "plain")
    assert meta["train_config"]["ema_decay"] == 0.9  # the checkpoint says what its weights are
    for k, v in acting.state_dict().items():
        torch.testing.assert_close(v, average[k], msg=k)
        assert torch.equal(seen[-1][k], raw.state_dict()[k]), f"{k}: the average must not change training"
    assert not torch.equal(acting.state_dict()["action_head.0.weight"], raw.state_dict()["action_head.0.weight"])
    _, half = small_configs(embedded, 20, checkpoint_every=10, context="window", ema_decay=0.9)
    train(embedded, model_cfg, half, tmp_path / "split", progress=False)
    train(embedded, model_cfg, ema_cfg, tmp_path / "split", resume=True, progress=False)
    resumed, _ = load_model(tmp_path / "split")
    for k, v in acting.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), f"{k} differs after resume"
    assert read_losses(tmp_path / "ema") == read_losses(tmp_path / "split")


def test_resume_before_the_first_checkpoint_starts_clean_logs(embedded, tmp_path):
    """A start that died before its first checkpoint leaves log rows; resuming drops them."""
    model_cfg, cfg = small_configs(embedded, 12, checkpoint_every=100)
    train(embedded, model_cfg, cfg, tmp_path / "full", progress=False)
    interrupted = tmp_path / "split"
    interrupted.mkdir()
    for name in ("run.json", "log.csv"):  # a run with log rows but no checkpoint
        (interrupted / name).write_text((tmp_path / "full" / name).read_text())
    train(embedded, model_cfg, cfg, interrupted, resume=True, progress=False)
    assert read_losses(interrupted) == read_losses(tmp_path / "full")  # 12 rows, not 24


def test_resume_with_another_config_is_refused_and_names_the_differences(embedded, tmp_path):
    model_cfg, cfg = small_configs(embedded, 10)
    train(embedded, model_cfg, cfg, tmp_path, progress=False)
    _, other = small_configs(embedded, 20, lr=3e-4)
    with pytest.raises(CheckpointError, match=r"train\.lr: checkpoint 0\.001, now 0\.0003"):
        train(embedded, model_cfg, other, tmp_path, resume=True, progress=False)
    wider, _ = small_configs(embedded, 20)
    wider.embed_dim = 64
    with pytest.raises(CheckpointError, match=r"model\.embed_dim: checkpoint 32, now 64"):
        train(embedded, wider, cfg, tmp_path, resume=True, progress=False)
    _, longer = small_configs(embedded, 20)  # more steps (and logging/checkpoint settings) may change
    assert train(embedded, model_cfg, longer, tmp_path, resume=True, progress=False)["steps"] == 20


def test_refuses_to_overwrite_a_run_without_resume(embedded, tmp_path):
    model_cfg, train_cfg = small_configs(embedded, 10)
    train(embedded, model_cfg, train_cfg, tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(embedded, model_cfg, train_cfg, tmp_path, progress=False)


def test_corrupt_checkpoints_give_clear_errors(embedded, tmp_path):
    model = build_model(embedded, small_configs(embedded, 1)[0])
    path = save_checkpoint(tmp_path, model, 1)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    with pytest.raises(CheckpointError, match="corrupt.*model.safetensors"):
        load_model(tmp_path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(path)
    with pytest.raises(CheckpointError, match="no such run"):
        load_model(tmp_path / "nowhere")


class Payload:
    """Stands for anything a pickle could smuggle in (its `__reduce__` could call os.system)."""


def test_trainer_state_with_arbitrary_objects_is_refused(embedded, tmp_path):
    model = build_model(embedded, small_configs(embedded, 1)[0])
    path = save_checkpoint(tmp_path, model, 1, trainer_state={"step": 1})
    torch.save({"step": 1, "payload": Payload()}, path / "trainer.pt")
    sums = (path / ckpt_mod.SUMS).read_text().splitlines()
    sums = [f"{ckpt_mod._sha256(path / 'trainer.pt')}  trainer.pt" if line.endswith(" trainer.pt") else line
            for line in sums]
    (path / ckpt_mod.SUMS).write_text("\n".join(sums) + "\n")  # a consistent, hostile checkpoint
    with pytest.raises(CheckpointError, match="trainer.pt holds objects other than tensors"):
        ckpt_mod.load_trainer_state(path)


def test_interrupted_save_leaves_previous_checkpoint_in_place(embedded, tmp_path, monkeypatch):
    model = build_model(embedded, small_configs(embedded, 1)[0])
    first = save_checkpoint(tmp_path, model, 1)

    real_write = ckpt_mod._write_file

    def crash(path, data):
        if path.name == "model.safetensors":
            raise KeyboardInterrupt("power cut while writing weights")
        real_write(path, data)

    monkeypatch.setattr(ckpt_mod, "_write_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, model, 2)
    monkeypatch.undo()
    assert not (tmp_path / "checkpoints" / "step_00000002").exists()
    _, meta = load_model(tmp_path)
    assert meta["path"] == str(first)
    save_checkpoint(tmp_path, model, 3)  # the next save cleans the leftover temp dir
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_trainer_rejects_bad_context(embedded, tmp_path):
    model_cfg, train_cfg = small_configs(embedded, 1, context="chunks")
    with pytest.raises(ValueError, match="context must be one of"):
        Trainer(build_model(embedded, model_cfg), embedded, train_cfg, tmp_path)
    model_cfg, train_cfg = small_configs(embedded, 1, context="stream")
    model_cfg.backbone = "transformer"
    with pytest.raises(ValueError, match="transformer has a window, not a state"):
        Trainer(build_model(embedded, model_cfg), embedded, train_cfg, tmp_path)


def test_lr_schedule_warms_up_then_holds_or_decays_to_a_tenth():
    from decision_rnn.training.trainer import lr_factor

    hold = TrainConfig(steps=100, warmup_steps=10)
    cosine = TrainConfig(steps=100, warmup_steps=10, lr_decay="cosine")
    for cfg in (hold, cosine):
        assert lr_factor(cfg, 0) == pytest.approx(0.1) and lr_factor(cfg, 9) == pytest.approx(1.0)
    assert [lr_factor(hold, s) for s in (10, 50, 99)] == [1.0, 1.0, 1.0]
    decayed = [lr_factor(cosine, s) for s in range(10, 100)]
    assert decayed[0] == pytest.approx(1.0) and decayed[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(decayed, decayed[1:]))  # monotone down
    assert lr_factor(cosine, 54) == pytest.approx(0.55, abs=0.01)  # half-way: the cosine's midpoint
    with pytest.raises(ValueError, match="lr_decay must be"):
        validate(ModelConfig(obs_dim=1, act_dim=1), TrainConfig(lr_decay="linear"))


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5])
def test_ema_decay_outside_zero_one_is_refused(decay):
    with pytest.raises(ValueError, match=r"ema_decay must lie in \(0, 1\)"):
        validate(ModelConfig(obs_dim=1, act_dim=1), TrainConfig(ema_decay=decay))


@pytest.mark.parametrize("field", ["steps", "batch_size", "log_every", "checkpoint_every"])
def test_nonpositive_training_settings_are_refused_by_name(field):
    with pytest.raises(ValueError, match=f"must be >= 1: {{'{field}': 0}}"):
        validate(ModelConfig(obs_dim=1, act_dim=1), TrainConfig(**{field: 0}))
    with pytest.raises(ValueError, match=r"grad_clip > 0 \(inf: off\)"):
        validate(ModelConfig(obs_dim=1, act_dim=1), TrainConfig(grad_clip=0.0))


def test_a_cosine_run_resumes_only_with_its_own_length(embedded, tmp_path):
    model_cfg, cfg = small_configs(embedded, 10, lr_decay="cosine")
    train(embedded, model_cfg, cfg, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="cosine over 10 updates.*--steps 10"):
        train(embedded, model_cfg, replace(cfg, steps=20), tmp_path, resume=True, progress=False)


def test_unknown_window_alignment_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"window_align must be one of \('start', 'end', 'uniform'\), got 'middle'"):
        validate(ModelConfig(obs_dim=1, act_dim=1), TrainConfig(window_align="middle"))


def test_run_config_is_self_describing(embedded, tmp_path):
    model_cfg, train_cfg = small_configs(embedded, 10)
    train(embedded, model_cfg, train_cfg, tmp_path, progress=False)
    meta = json.loads((tmp_path / "checkpoints" / "step_00000010" / "meta.json").read_text())
    assert meta["model_config"]["backbone"] == "mingru"
    assert meta["train_config"]["steps"] == 10
    assert meta["env_id"] == "Hopper-v5" and meta["datasets"]


def nan_loss_at(monkeypatch, calls: set[int]):
    """Make `DecisionRNN.loss` return NaN (with a gradient) at the given 1-based calls."""
    from decision_rnn.models import DecisionRNN

    real_loss, count = DecisionRNN.loss, [0]

    def loss(self, batch, return_state=False):
        out = real_loss(self, batch, return_state=return_state)
        count[0] += 1
        if count[0] not in calls:
            return out
        value = out[0] if return_state else out
        value = value * float("nan")
        return (value, out[1]) if return_state else value

    monkeypatch.setattr(DecisionRNN, "loss", loss)


def test_a_nan_loss_stops_training_naming_the_step_and_keeps_the_last_checkpoint(embedded, tmp_path, monkeypatch):
    from decision_rnn.training import NonFiniteError

    model_cfg, cfg = small_configs(embedded, 30, checkpoint_every=10)
    nan_loss_at(monkeypatch, {13})
    with pytest.raises(NonFiniteError, match=r"at step 13 .*step_00000010, is intact.*--resume"):
        train(embedded, model_cfg, cfg, tmp_path, progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_00000010"]
    model, meta = load_model(tmp_path)
    assert meta["step"] == 10 and all(torch.isfinite(p).all() for p in model.parameters())
    assert len(read_losses(tmp_path)) == 12  # nothing logged from the bad update on
    assert train(embedded, model_cfg, cfg, tmp_path, resume=True, progress=False)["steps"] == 30


def test_without_a_sync_per_update_a_nan_is_caught_at_the_next_log_and_never_saved(embedded, tmp_path, monkeypatch):
    """The CUDA path (the flag stays on the device, read at log rows and checkpoints), run on the CPU."""
    from decision_rnn.training import NonFiniteError

    model_cfg, cfg = small_configs(embedded, 30, checkpoint_every=10, log_every=5)
    trainer = Trainer(build_model(embedded, model_cfg), embedded, cfg, tmp_path)
    trainer._check_each_update = False
    nan_loss_at(monkeypatch, {13})
    with pytest.raises(NonFiniteError, match=r"at step 13: .*step_00000010, is intact"):
        trainer.fit(progress=False)
    assert trainer.step == 15  # caught at the log row of step 15; weights past step 13 are not saved
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_00000010"]
    assert [int(float(r)) for r in read_column(tmp_path, "step")] == [5, 10]


def read_column(run_dir, name):
    with open(run_dir / "log.csv") as f:
        return [r[name] for r in csv.DictReader(f)]


def test_skip_nonfinite_skips_the_batch_without_a_step_and_counts_it(embedded, tmp_path, monkeypatch):
    model_cfg, cfg = small_configs(embedded, 20, skip_nonfinite=True)
    trainer = Trainer(build_model(embedded, model_cfg), embedded, cfg, tmp_path)
    for _ in range(4):
        trainer.update()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    adam_steps = [s["step"].clone() for s in trainer.optimizer.state.values()]
    nan_loss_at(monkeypatch, {1})
    trainer.update()  # the fifth batch: NaN, skipped
    assert trainer.step == 5 and trainer.skipped == 1
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed on a skipped batch"
    assert [s["step"] for s in trainer.optimizer.state.values()] == adam_steps
    monkeypatch.undo()
    nan_loss_at(monkeypatch, {3, 8})
    summary = train(embedded, model_cfg, cfg, tmp_path / "run", progress=False)
    assert summary["steps"] == 20 and summary["skipped"] == 2
    assert [int(s) for s in read_column(tmp_path / "run", "skipped")][-1] == 2
    model, _ = load_model(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_weights_are_never_saved(embedded, tmp_path):
    from decision_rnn.training import NonFiniteError

    model_cfg, cfg = small_configs(embedded, 10)
    trainer = Trainer(build_model(embedded, model_cfg), embedded, cfg, tmp_path)
    trainer.update()
    trainer.save()
    with torch.no_grad():
        next(trainer.model.parameters())[0] = float("inf")
    trainer.update()
    with pytest.raises(NonFiniteError, match="weights are not finite at step 2; they were not saved"):
        trainer.save()
    _, meta = load_model(tmp_path)
    assert meta["step"] == 1


def test_the_checkpoint_is_saved_before_the_periodic_evaluation(embedded, tmp_path):
    def failing_evaluation(model, step):
        raise RuntimeError("the environment crashed")

    model_cfg, cfg = small_configs(embedded, 20, checkpoint_every=10, eval_every=10)
    with pytest.raises(RuntimeError, match="the environment crashed"):
        train(embedded, model_cfg, cfg, tmp_path, eval_hook=failing_evaluation, progress=False)
    _, meta = load_model(tmp_path)
    assert meta["step"] == 10
