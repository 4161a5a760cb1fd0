"""The command line end to end on the embedded data: train, resume, evaluate, export."""

import json

import pytest

from decision_rnn.cli import main


def test_train_resume_evaluate_export(tmp_path, capsys):
    run = tmp_path / "run"
    small = ["--embed-dim", "16", "--n-layers", "1", "--batch-size", "4", "--log-every", "1", "--tokens", "compact"]
    assert main(["train", "--out", str(run), "--steps", "4", "--context", "window", *small]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["steps"] == 4
    with pytest.raises(FileExistsError, match="--resume"):
        main(["train", "--out", str(run), "--steps", "6", *small])
    assert main(["train", "--out", str(run), "--steps", "6", "--resume"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 6
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["embed_dim"] == 16 and saved["train"]["steps"] == 6

    assert main(["evaluate", str(run), "--episodes", "2", "--target-return", "3600", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["checkpoint_step"] == 6 and summary["checkpoint_kind"] == "last"
    assert summary["results"][0]["episodes"] == 2
    assert (run / "eval" / "summary.json").exists() and (run / "eval" / "episodes.csv").exists()
    first_ckpt = sorted((run / "checkpoints").glob("step_*"))[0]  # a given checkpoint: said so, evaluated there
    assert main(["evaluate", str(first_ckpt), "--episodes", "1", "--target-return", "3600", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["checkpoint_step"] == 4 and summary["checkpoint_kind"] == "given"
    assert (first_ckpt / "eval" / "summary.json").exists()
    for runtime in ("onnxruntime", "fused"):
        assert main(["evaluate", str(run), "--episodes", "2", "--runtime", runtime, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["runtime"] == runtime
    assert main(["evaluate", str(run), "--episodes", "2", "--runtime", "fused", "--weights", "float16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == "float16"
    assert main(["evaluate", str(run), "--episodes", "1", "--runtime", "fused", "--weights", "float16"]) == 0
    assert "runtime fused with float16 weights" in capsys.readouterr().out  # the table says what was evaluated
    with pytest.raises(ValueError, match="option of runtime='fused'"):
        main(["evaluate", str(run), "--episodes", "1", "--weights", "float16"])

    assert main(["export", str(run), "--out", str(tmp_path / "policy")]) == 0
    assert (tmp_path / "policy.onnx").exists() and (tmp_path / "policy.pt").exists()


def test_unknown_config_field_is_reported(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": {"embed_size": 8}}))
    with pytest.raises(ValueError, match="unknown ModelConfig field.*embed_size"):
        main(["train", "--out", str(tmp_path / "run"), "--steps", "1", "--config", str(cfg)])


def test_none_turns_an_optional_init_off_and_a_number_sets_it(tmp_path, capsys):
    small = ["--embed-dim", "8", "--n-layers", "1", "--batch-size", "2", "--steps", "1", "--tokens", "compact"]
    assert main(["train", "--out", str(tmp_path / "a"), "--block-init-std", "none", "--timestep-init-std", "None",
                 "--activation", "gelu", *small]) == 0
    model = json.loads((tmp_path / "a" / "config.json").read_text())["model"]
    assert model["block_init_std"] is None and model["timestep_init_std"] is None and model["activation"] == "gelu"
    assert main(["train", "--out", str(tmp_path / "b"), "--block-init-std", "0.05", *small]) == 0
    model = json.loads((tmp_path / "b" / "config.json").read_text())["model"]
    assert model["block_init_std"] == 0.05 and model["timestep_init_std"] == 0.02 and model["activation"] == "relu"


def test_token_switches_turn_on_and_off(tmp_path):
    small = ["--embed-dim", "8", "--n-layers", "1", "--batch-size", "2", "--steps", "1", "--tokens", "compact"]
    assert main(["train", "--out", str(tmp_path / "a"), "--return-ln", "--no-prev-action", *small]) == 0
    model = json.loads((tmp_path / "a" / "config.json").read_text())["model"]
    assert model["return_ln"] is True and model["prev_action"] is False
    assert main(["train", "--out", str(tmp_path / "b"), *small]) == 0  # unset: the defaults
    model = json.loads((tmp_path / "b" / "config.json").read_text())["model"]
    assert model["return_ln"] is False and model["prev_action"] is True


def test_none_is_kept_as_a_choice_where_it_is_one(tmp_path):
    small = ["--embed-dim", "8", "--n-layers", "1", "--batch-size", "2", "--steps", "1", "--tokens", "compact"]
    assert main(["train", "--out", str(tmp_path / "a"), "--lr-decay", "none", *small]) == 0
    assert json.loads((tmp_path / "a" / "config.json").read_text())["train"]["lr_decay"] == "none"


def test_resume_of_a_run_saved_before_the_v4_defaults_keeps_its_model(tmp_path, capsys):
    from decision_rnn.config import LEGACY_MODEL_DEFAULTS

    run = tmp_path / "old"
    small = ["--embed-dim", "8", "--n-layers", "1", "--batch-size", "2", "--tokens", "compact", "--log-every", "1"]
    assert main(["train", "--out", str(run), "--steps", "2", "--activation", "gelu", "--block-init-std", "none",
                 "--timestep-init-std", "none", *small]) == 0
    for path in [run / "config.json", *(run / "checkpoints").glob("step_*/meta.json")]:  # as an older version wrote
        saved = json.loads(path.read_text())
        for field in LEGACY_MODEL_DEFAULTS:
            del saved["model" if path.name == "config.json" else "model_config"][field]
        path.write_text(json.dumps(saved))
    assert main(["train", "--out", str(run), "--steps", "3", "--resume"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 3
    assert json.loads((run / "config.json").read_text())["model"]["activation"] == "gelu"


def test_quickstart_trains_then_evaluates_and_names_the_fix_for_a_stale_folder(tmp_path, capsys):
    from decision_rnn.config import LEGACY_MODEL_DEFAULTS
    from decision_rnn.training import CheckpointError

    out = tmp_path / "quickstart"
    args = ["evaluate", "--quickstart-out", str(out), "--quickstart-steps", "2", "--episodes", "1", "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint_step"] == 2
    for meta in (out / "checkpoints").glob("step_*/meta.json"):  # as a quickstart of an older version
        saved = json.loads(meta.read_text())
        for field in LEGACY_MODEL_DEFAULTS:
            del saved["model_config"][field]
        meta.write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match=f"rm -r {out}"):
        main(args)


def test_resume_keeps_the_runs_data_and_takes_only_resumable_flags(tmp_path, capsys):
    from decision_rnn.data import EMBEDDED_DATASET

    run = tmp_path / "combined"
    small = ["--embed-dim", "8", "--n-layers", "1", "--batch-size", "2", "--tokens", "compact", "--log-every", "1"]
    data = ["--dataset", str(EMBEDDED_DATASET)] * 2  # two ids: a resume on the embedded default would differ
    assert main(["train", "--out", str(run), "--steps", "2", *data, *small]) == 0
    # no --dataset: the run's own two ids; --log-every may change, --lr (not resumable) is ignored
    assert main(["train", "--out", str(run), "--steps", "3", "--resume", "--log-every", "3", "--lr", "0.5"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 3
    saved = json.loads((run / "config.json").read_text())
    assert saved["sources"] == [str(EMBEDDED_DATASET)] * 2 and len(saved["datasets"]) == 2
    assert saved["train"]["log_every"] == 3 and saved["train"]["lr"] != 0.5


def test_default_run_directories_differ_per_env_backbone_and_data(tmp_path):
    import argparse

    from decision_rnn.cli import default_out
    from decision_rnn.data import EMBEDDED_DATASET

    def out(ids, backbone=None, config=None):
        return str(default_out(argparse.Namespace(backbone=backbone, config=config), ids))

    assert out(["zoo/hopper/medium-v0"]) == "runs/mingru-hopper-medium-v0"
    assert out(["zoo/walker2d/medium-v0"], "lru") == "runs/lru-walker2d-medium-v0"
    assert out(["zoo/hopper/medium-v0", "zoo/hopper/expert-v0"]) == "runs/mingru-hopper-medium-v0-hopper-expert-v0"
    assert out([str(EMBEDDED_DATASET)]) == "runs/mingru-hopper-medium-small-v0"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": {"backbone": "minlstm"}}))
    assert out(["zoo/hopper/medium-v0"], config=str(cfg)) == "runs/minlstm-hopper-medium-v0"
