"""The command line end to end on the embedded data: train, resume, evaluate, export; flags from the dataclasses."""

import json
import typing
from dataclasses import fields

import pytest

from decision_rnn.cli import build_parser, default_out, field_docs, main
from decision_rnn.config import ModelConfig, TrainConfig
from decision_rnn.presets import get_preset

SMALL = ["--embed-dim", "8", "--n-layers", "1", "--batch-size", "2", "--tokens", "compact"]


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_train_resume_evaluate_export(tmp_path, capsys):
    run = tmp_path / "run"
    small = ["--embed-dim", "16", "--n-layers", "1", "--batch-size", "4", "--log-every", "1", "--tokens", "compact"]
    assert main(["train", "--out", str(run), "--steps", "4", "--context", "window", *small]) == 0
    assert last_json(capsys)["steps"] == 4
    assert main(["train", "--out", str(run), "--steps", "6", *small]) == 2
    assert "already holds a run: pass --resume" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--steps", "6", "--resume"]) == 0
    assert last_json(capsys)["steps"] == 6
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["embed_dim"] == 16 and saved["train"]["steps"] == 6

    assert main(["evaluate", str(run), "--episodes", "2", "--target-return", "3600", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["checkpoint_step"] == 6 and summary["checkpoint_kind"] == "last"
    assert summary["results"][0]["episodes"] == 2
    assert summary["runtime"] in ("torch", "onnxruntime", "fused")  # the one `auto` picked, named
    folder = run / "eval" / f"step_00000006-target_3600-seeds_0-episodes_2-{summary['runtime']}"
    assert summary["files"]["summary"] == str(folder / "summary.json") and (folder / "episodes.csv").exists()
    first_ckpt = sorted((run / "checkpoints").glob("step_*"))[0]  # a given checkpoint: said so, evaluated there
    assert main(["evaluate", str(first_ckpt), "--episodes", "1", "--target-return", "3600", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["checkpoint_step"] == 4 and summary["checkpoint_kind"] == "given"
    assert summary["files"]["summary"].startswith(str(first_ckpt / "eval"))
    for runtime in ("onnxruntime", "fused"):
        assert main(["evaluate", str(run), "--episodes", "2", "--runtime", runtime, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["runtime"] == runtime
    assert main(["evaluate", str(run), "--episodes", "2", "--runtime", "fused", "--weights", "float16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == "float16"
    assert main(["evaluate", str(run), "--episodes", "1", "--runtime", "fused", "--weights", "float16"]) == 0
    assert "runtime fused with float16 weights" in capsys.readouterr().out  # the table says what was evaluated
    assert main(["evaluate", str(run), "--episodes", "1", "--runtime", "torch", "--weights", "float16"]) == 2
    assert "option of runtime='fused'" in capsys.readouterr().err

    assert main(["export", str(run), "--out", str(tmp_path / "policy")]) == 0
    assert (tmp_path / "policy.onnx").exists() and (tmp_path / "policy.pt").exists()
    (tmp_path / "mine.pt").write_bytes(b"the user's file")
    assert main(["export", str(run), "--out", str(tmp_path / "mine")]) == 2  # refused before anything is written
    assert "mine.pt exist(s)" in capsys.readouterr().err
    assert (tmp_path / "mine.pt").read_bytes() == b"the user's file" and not (tmp_path / "mine.onnx").exists()
    assert main(["export", str(run), "--out", str(tmp_path / "mine"), "--force"]) == 0
    assert (tmp_path / "mine.pt").read_bytes() != b"the user's file"
    assert sorted(f.name for f in tmp_path.iterdir() if f.name.startswith(".")) == []  # no temp file left


def test_unknown_config_field_is_reported(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": {"embed_size": 8}}))
    assert main(["train", "--out", str(tmp_path / "run"), "--steps", "1", "--config", str(cfg)]) == 2
    assert f"--config {cfg}: unknown ModelConfig field(s) ['embed_size']" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_traceback_instead(tmp_path, monkeypatch):
    cfg = tmp_path / "cfg.json"
    cfg.write_text("{")
    with pytest.raises(Exception, match="not valid JSON"):
        main(["--debug", "train", "--config", str(cfg)])
    with pytest.raises(Exception, match="not valid JSON"):
        main(["train", "--config", str(cfg), "--debug"])
    assert main(["train", "--config", str(cfg)]) == 2  # without: the message alone
    monkeypatch.setenv("DECISION_RNN_DEBUG", "1")
    with pytest.raises(Exception, match="not valid JSON"):
        main(["train", "--config", str(cfg)])


def test_none_turns_an_optional_init_off_and_a_number_sets_it(tmp_path):
    assert main(["train", "--out", str(tmp_path / "a"), "--block-init-std", "none", "--timestep-init-std", "None",
                 "--activation", "gelu", "--steps", "1", *SMALL]) == 0
    model = json.loads((tmp_path / "a" / "config.json").read_text())["model"]
    assert model["block_init_std"] is None and model["timestep_init_std"] is None and model["activation"] == "gelu"
    assert main(["train", "--out", str(tmp_path / "b"), "--block-init-std", "0.05", "--steps", "1", *SMALL]) == 0
    model = json.loads((tmp_path / "b" / "config.json").read_text())["model"]
    assert model["block_init_std"] == 0.05 and model["timestep_init_std"] == 0.02 and model["activation"] == "relu"


def test_token_switches_turn_on_and_off(tmp_path):
    assert main(["train", "--out", str(tmp_path / "a"), "--return-ln", "--no-prev-action", "--steps", "1",
                 *SMALL]) == 0
    model = json.loads((tmp_path / "a" / "config.json").read_text())["model"]
    assert model["return_ln"] is True and model["prev_action"] is False
    assert main(["train", "--out", str(tmp_path / "b"), "--steps", "1", *SMALL]) == 0  # unset: the defaults
    model = json.loads((tmp_path / "b" / "config.json").read_text())["model"]
    assert model["return_ln"] is False and model["prev_action"] is True


def test_none_is_kept_as_a_choice_where_it_is_one(tmp_path):
    assert main(["train", "--out", str(tmp_path / "a"), "--lr-decay", "none", "--steps", "1", *SMALL]) == 0
    assert json.loads((tmp_path / "a" / "config.json").read_text())["train"]["lr_decay"] == "none"


def _train_options():
    return {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions}


def test_every_config_field_is_a_flag_with_its_docstring_and_choices():
    options = _train_options()
    for section, cls in (("model", ModelConfig), ("train", TrainConfig)):
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        for f in fields(cls):
            if f.name in ("obs_dim", "act_dim"):  # the dataset's
                assert f"{section}.{f.name}" not in options
                continue
            action = options[f"{section}.{f.name}"]
            assert action.option_strings[0] == "--" + f.name.replace("_", "-")
            assert docs[f.name] and action.help.startswith(docs[f.name].replace("%", "%%")), f.name
            literal = [a for a in (hints[f.name], *typing.get_args(hints[f.name]))
                       if typing.get_origin(a) is typing.Literal]
            if literal:
                assert [c for c in action.choices if c is not None] == list(typing.get_args(literal[0])), f.name
    from decision_rnn.backbones import BACKBONES

    assert sorted(options["model.backbone"].choices) == sorted(BACKBONES)
    assert "GPT-2's init" in options["model.block_init_std"].help  # a docstring, not a hand-written line


def test_flags_parse_to_the_field_types(tmp_path):
    args = build_parser().parse_args(["train", "--steps", "7", "--lr", "0.5", "--ema-decay", "none", "--compile",
                                      "--backbone-options", '{"expansion": 2}', "--episode-max-len", "100"])
    from decision_rnn.cli import requested

    asked = requested(args)
    assert asked["train"] == {"steps": 7, "lr": 0.5, "ema_decay": None, "compile": True, "episode_max_len": 100}
    assert asked["model"] == {"backbone_options": {"expansion": 2}}
    for bad in (["--steps", "40.5"], ["--tokens", "words"], ["--backbone-options", "[1]"]):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(["train", *bad])
        assert exit_info.value.code == 2


def test_preset_config_file_and_flags_layer_in_that_order(tmp_path):

    fast = get_preset("fast")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": {"embed_dim": 8}, "train": {"lr": 0.002, "warmup_steps": 1}}))
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--preset", "fast", "--config", str(cfg), "--lr", "0.003", "--steps",
                 "2", "--n-layers", "1", "--batch-size", "2"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["tokens"] == fast.model["tokens"] == "compact" != ModelConfig.tokens  # the preset
    assert saved["train"]["lr_decay"] == fast.train["lr_decay"] == "cosine"  # preset over the default "none"
    assert saved["model"]["embed_dim"] == 8 and saved["train"]["warmup_steps"] == 1  # the file over the preset
    assert saved["train"]["lr"] == 0.003 and saved["train"]["steps"] == 2  # flags over the file and the preset
    assert saved["model"]["dropout"] == ModelConfig.dropout  # untouched: the dataclass default


def test_presets_command_lists_every_preset(capsys):
    from decision_rnn.presets import PRESETS

    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n{name}\n" in f"\n{out}" for name in PRESETS)
    assert "return_ln=True" in out  # a field a grid preset sets


def test_quickstart_trains_then_evaluates_and_names_the_fix_for_a_stale_folder(tmp_path, capsys):
    out = tmp_path / "quickstart"
    args = ["evaluate", "--quickstart-out", str(out), "--quickstart-steps", "2", "--episodes", "1", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["checkpoint_step"] == 2
    saved = json.loads((out / "config.json").read_text())  # the `fast` preset's fields, not the defaults
    fast = get_preset("fast")
    assert {k: saved["model"][k] for k in fast.model} == fast.model and saved["model"]["tokens"] != ModelConfig.tokens
    assert saved["train"]["lr"] == fast.train["lr"] != TrainConfig.lr
    assert main(args) == 0  # a complete quickstart is reused
    assert json.loads(capsys.readouterr().out)["checkpoint_step"] == 2
    # another length: its cosine schedule differs, the folder is another quickstart's
    assert main([*args[:4], "3", *args[5:]]) == 2
    assert f"rm -r {out}" in capsys.readouterr().err


def test_resume_keeps_the_runs_data_and_takes_only_resumable_flags(tmp_path, capsys):
    from decision_rnn.data import EMBEDDED_DATASET

    run = tmp_path / "combined"
    data = ["--dataset", str(EMBEDDED_DATASET)] * 2  # two ids: a resume on the embedded default would differ
    assert main(["train", "--out", str(run), "--steps", "2", "--log-every", "1", *data, *SMALL]) == 0
    # a value the run has, given again, is fine; another one is refused, naming it
    assert main(["train", "--out", str(run), "--steps", "3", "--resume", "--lr", "0.5"]) == 2
    assert "lr=0.5 (the run has 0.0001)" in capsys.readouterr().err
    # no --dataset: the run's own two ids; --log-every may change
    assert main(["train", "--out", str(run), "--steps", "3", "--resume", "--log-every", "3", *SMALL]) == 0
    assert last_json(capsys)["steps"] == 3
    saved = json.loads((run / "config.json").read_text())
    assert saved["sources"] == [str(EMBEDDED_DATASET)] * 2 and len(saved["datasets"]) == 2
    assert saved["train"]["log_every"] == 3 and saved["train"]["lr"] == 1e-4


def test_default_run_directories_differ_per_env_backbone_and_data():
    from decision_rnn.data import EMBEDDED_DATASET

    def out(ids, backbone=None):
        return str(default_out(backbone, ids))

    assert out(["zoo/hopper/medium-v0"]) == "runs/mingru-hopper-medium-v0"
    assert out(["zoo/walker2d/medium-v0"], "lru") == "runs/lru-walker2d-medium-v0"
    assert out(["zoo/hopper/medium-v0", "zoo/hopper/expert-v0"]) == "runs/mingru-hopper-medium-v0-hopper-expert-v0"
    assert out([str(EMBEDDED_DATASET)]) == "runs/mingru-hopper-medium-small-v0"


def test_default_run_directory_names_the_backbone_of_the_preset_or_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": {"backbone": "minlstm"}}))
    assert main(["train", "--config", str(cfg), "--steps", "1", *SMALL]) == 0
    assert last_json(capsys)["run"] == "runs/minlstm-hopper-medium-small-v0"
    assert main(["train", "--preset", "transformer", "--steps", "1", "--warmup-steps", "0", *SMALL]) == 0
    assert last_json(capsys)["run"] == "runs/transformer-hopper-medium-small-v0"
