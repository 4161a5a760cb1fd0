"""Presets (decision_rnn.presets): valid configs, overrides, and the results grid's agents built from them exactly as
the grid built them before its agents were presets (so recorded grid cells stay reproducible)."""

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from decision_rnn import ModelConfig, TrainConfig
from decision_rnn.config import validate
from decision_rnn.presets import CPU_PROTOCOL, PRESETS, get_preset, model_config, train_config
from decision_rnn.training.optim import grad_clip_norm

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

# How the grid built its agents' configs before they were presets (experiments/protocol.py's PROTOCOLS["cpu"], the
# `window` context every backbone got, results_grid.py's FLAVOURS): a fixed copy, the reference for the record.
OLD_CPU = TrainConfig(steps=3000, lr=1e-3, warmup_steps=300, lr_decay="cosine", window_align="end",
                      grad_clip=0.25 / 3, episode_batch_size=4, checkpoint_every=1000, context="window")
OLD_FLAVOURS = {"": ("compact", {}, {}), "-interleaved": ("interleaved", {}, {}),
                "-return-ln": ("compact", {"return_ln": True}, {}),
                "-return-ln-constant-lr": ("compact", {"return_ln": True}, {"lr_decay": "none"}),
                "-constant-lr": ("compact", {}, {"lr_decay": "none"})}
OLD_AGENTS = {"mingru": "", "minlstm": "", "lru": "", "transformer": "", "mingru-interleaved": "-interleaved",
              "mingru-return-ln": "-return-ln", "minlstm-return-ln": "-return-ln",
              "minlstm-return-ln-constant-lr": "-return-ln-constant-lr", "lru-constant-lr": "-constant-lr"}


def old_configs(agent: str, obs_dim: int, act_dim: int, seed: int) -> tuple[ModelConfig, TrainConfig]:
    flavour = OLD_AGENTS[agent]
    tokens, model_options, train_options = OLD_FLAVOURS[flavour]
    backbone = agent.removesuffix(flavour)
    return (ModelConfig(obs_dim=obs_dim, act_dim=act_dim, backbone=backbone, tokens=tokens, **model_options),
            replace(OLD_CPU, seed=seed, **train_options))


@pytest.fixture(scope="module")
def grid():
    sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location("results_grid", EXPERIMENTS / "results_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import protocol

    yield module, protocol
    sys.path.remove(str(EXPERIMENTS))


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_valid_configs_for_hopper_and_walker(name):
    preset = get_preset(name)
    assert preset.name == name and ("docs/results.md" in preset.doc or name == "dt")
    for obs_dim, act_dim in ((11, 3), (17, 6)):
        model = model_config(name, obs_dim, act_dim)
        validate(model, train_config(name))
        assert (model.obs_dim, model.act_dim) == (obs_dim, act_dim)


def test_dt_is_the_dataclass_defaults_and_fast_is_mingru_under_the_cpu_protocol():
    assert model_config("dt", 11, 3) == ModelConfig(obs_dim=11, act_dim=3) and train_config("dt") == TrainConfig()
    assert model_config("fast", 11, 3) == model_config("mingru", 11, 3)
    assert train_config("fast") == train_config("mingru")
    m, t = model_config("fast", 11, 3), train_config("fast")
    assert (m.backbone, m.tokens, m.return_ln) == ("mingru", "compact", False)
    assert (t.steps, t.lr, t.warmup_steps, t.lr_decay, t.window_align, t.context, t.grad_clip) == (
        3000, 1e-3, 300, "cosine", "end", "window", 0.25 / 3)


def test_overrides_win_and_bad_names_are_refused():
    assert train_config("fast", lr=3e-4, seed=2).lr == 3e-4
    assert model_config("fast", 11, 3, embed_dim=64).embed_dim == 64
    assert get_preset("fast").train["lr"] == 1e-3  # the preset itself is unchanged
    with pytest.raises(ValueError, match="unknown preset 'fats'.*fast"):
        get_preset("fats")
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        train_config("fast", learning_rate=1e-3)


def test_grid_agents_are_presets_and_build_the_configs_the_grid_trained(grid):
    results_grid, protocol = grid
    ours = [a for a in results_grid.AGENTS if a != "d3rlpy-dt"]
    assert set(ours) <= set(PRESETS) and set(OLD_AGENTS) <= set(ours)
    for agent in ours:
        backbone, tokens, model_options, train_options = results_grid.agent_spec(agent)
        for obs_dim, act_dim in ((11, 3), (17, 6)):
            built = protocol.run_configs(obs_dim, act_dim, backbone, protocol="cpu", tokens=tokens, seed=1,
                                         model_options=model_options, train_options=train_options)
            assert built == (model_config(agent, obs_dim, act_dim), train_config(agent, seed=1))
            if agent in OLD_AGENTS:
                assert built == old_configs(agent, obs_dim, act_dim, seed=1)


def test_candidates_change_one_thing_of_the_fast_preset():
    base = train_config("fast")
    assert train_config("mingru-no-decay-groups") == replace(base, decay_all=False)
    per_dim = train_config("mingru-clip-per-dim")
    assert per_dim == replace(base, grad_clip=0.25, grad_clip_per="action_dim")
    assert grad_clip_norm(per_dim, 3) == grad_clip_norm(base, 3) == 0.25 / 3  # Hopper: the same clip
    assert grad_clip_norm(per_dim, 6) == 0.25 / 6 and grad_clip_norm(base, 6) == 0.25 / 3  # Walker2d: half
    assert CPU_PROTOCOL["grad_clip"] == 0.25 / 3


def test_a_saved_model_config_missing_a_field_is_refused_not_filled_with_todays_default():
    from dataclasses import asdict

    from decision_rnn.config import model_config_from_saved

    saved = asdict(model_config("fast", 11, 3))
    assert model_config_from_saved(saved) == model_config("fast", 11, 3)
    del saved["activation"]  # as a decision-rnn before the field existed wrote it (its default then: gelu)
    with pytest.raises(ValueError, match=r"lacks \['activation'\].*older than.*retrain"):
        model_config_from_saved(saved)
