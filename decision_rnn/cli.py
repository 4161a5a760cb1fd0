"""`decision-rnn` command line: train, evaluate, export.

Config precedence: dataclass defaults (DT's, with d3rlpy's noted in config.py) < `--config FILE` (JSON: {"model": {...},
"train": {...}}) < flags given on the command line. `--resume` reuses the run's saved config and data;
only how long it runs and how it logs, checkpoints and evaluates (`Trainer.RESUMABLE`) follow the flags.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import ModelConfig, TrainConfig, config_from_dict, default_context, model_config_from_saved
from .policy import RUNTIMES, WEIGHTS

log = logging.getLogger("decision_rnn")

NONE = "none"


def float_or_none(text: str) -> float | str:
    """A float, or "none" for a field whose None means 'off' (--block-init-std none: PyTorch's init)."""
    return NONE if text.strip().lower() == NONE else float(text)


# Config fields exposed as `train` flags (--embed-dim ...), with their argparse types.
MODEL_FLAGS = {"backbone": str, "tokens": str, "embed_dim": int, "n_layers": int, "dropout": float,
               "context_len": int, "activation": str, "timestep_init_std": float_or_none,
               "block_init_std": float_or_none, "prev_action": bool, "return_ln": bool}
TRAIN_FLAGS = {"steps": int, "batch_size": int, "context": str, "window_align": str, "episode_batch_size": int,
               "episode_max_len": int, "lr": float, "weight_decay": float, "warmup_steps": int, "lr_decay": str,
               "ema_decay": float_or_none, "grad_clip": float, "seed": int, "device": str, "compile": bool,
               "log_every": int, "checkpoint_every": int, "eval_every": int, "eval_episodes": int,
               "target_return": float}


def _configs(args, dataset) -> tuple[ModelConfig, TrainConfig]:
    file_cfg = json.loads(Path(args.config).read_text()) if args.config else {}
    unknown = set(file_cfg) - {"model", "train"}
    if unknown:
        raise ValueError(f"--config {args.config}: unknown top-level keys {sorted(unknown)}; use 'model' and 'train'")
    model = {"obs_dim": dataset.obs_dim, "act_dim": dataset.act_dim, **file_cfg.get("model", {})}
    train = dict(file_cfg.get("train", {}))
    for section, flags in ((model, MODEL_FLAGS), (train, TRAIN_FLAGS)):
        given = {name: getattr(args, name) for name in flags if getattr(args, name) is not None}
        section.update({name: None if flags[name] is float_or_none and value == NONE else value
                        for name, value in given.items()})
    model_cfg = config_from_dict(ModelConfig, model)
    train.setdefault("context", default_context(model_cfg.backbone))
    return model_cfg, config_from_dict(TrainConfig, train)


def default_out(args, ids) -> Path:
    """runs/BACKBONE-ENV-DATASET, e.g. runs/mingru-hopper-medium-v0 (every id's name, when combined)."""
    file_model = json.loads(Path(args.config).read_text()).get("model", {}) if args.config else {}
    backbone = args.backbone or file_model.get("backbone", "mingru")
    def name(i):  # a Minari id keeps its env (zoo/hopper/medium-v0 -> hopper-medium-v0); a path, its file name
        i = Path(i)
        return i.stem if i.exists() or not i.parent.name else f"{i.parent.name}-{i.name}"

    return Path("runs") / "-".join([backbone, *(name(i) for i in ids)])


def cmd_train(args) -> int:
    from .data import EMBEDDED_DATASET, load_dataset
    from .evaluation import default_target_return, make_eval_hook
    from .training import Trainer, train

    out = Path(args.out) if args.out else default_out(args, args.dataset or [str(EMBEDDED_DATASET)])
    saved = json.loads((out / "config.json").read_text()) if args.resume and (out / "config.json").exists() else None
    # resuming without --dataset continues on the run's own data
    ids = args.dataset or (saved.get("sources", saved["datasets"]) if saved else [str(EMBEDDED_DATASET)])
    dataset = load_dataset(ids if len(ids) > 1 else ids[0], download=args.download)
    if saved is not None:  # the run's own config; only what may change on resume is taken from the flags
        model_cfg = model_config_from_saved(saved["model"])
        train_dict = dict(saved["train"])
        train_dict.update({name: getattr(args, name) for name in Trainer.RESUMABLE if getattr(args, name) is not None})
        train_cfg = config_from_dict(TrainConfig, train_dict)
    else:
        model_cfg, train_cfg = _configs(args, dataset)
    hook = None
    if train_cfg.eval_every:
        target = train_cfg.target_return
        target = default_target_return(dataset.env_id) if target is None else target
        hook = make_eval_hook(dataset.env_id, train_cfg.eval_episodes, target,
                              ref=(dataset.ref_min_score, dataset.ref_max_score))
    log.info("training %s (%s tokens, %s context) on %s -> %s",
             model_cfg.backbone, model_cfg.tokens, train_cfg.context, ", ".join(dataset.ids), out)
    summary = train(dataset, model_cfg, train_cfg, out, resume=args.resume, eval_hook=hook)
    print(json.dumps({"run": str(out), **summary}))
    return 0


def quickstart(args) -> str:
    """No run given: train a small agent on the embedded dataset, then evaluate it (README main job)."""
    from .data import EMBEDDED_DATASET, load_dataset
    from .training import CheckpointError, train

    dataset = load_dataset(str(EMBEDDED_DATASET))
    out = Path(args.quickstart_out)
    model_cfg = ModelConfig(obs_dim=dataset.obs_dim, act_dim=dataset.act_dim, backbone="mingru", tokens="compact")
    # the CPU protocol (experiments/protocol.py): few updates, so a 10x learning rate and a short warm-up,
    # a cosine decay, end-aligned windows and d3rlpy's effective clip
    train_cfg = TrainConfig(steps=args.quickstart_steps, context="window", lr=1e-3,
                            warmup_steps=args.quickstart_steps // 10, lr_decay="cosine", window_align="end",
                            grad_clip=0.25 / 3, checkpoint_every=args.quickstart_steps, log_every=50,
                            device=args.device)
    log.info("quickstart: %d updates of %s on %s (%d episodes)", train_cfg.steps, model_cfg.backbone,
             dataset.ids[0], dataset.num_episodes)
    try:
        train(dataset, model_cfg, train_cfg, out, resume=True)
    except CheckpointError as e:  # a quickstart of an older decision-rnn, whose defaults differ
        raise CheckpointError(f"{out} holds a quickstart trained with other settings (an older decision-rnn?); "
                              f"remove it (rm -r {out}) to train a new one.\n{e}") from e
    return str(out)


def cmd_evaluate(args) -> int:
    run = args.run or quickstart(args)
    from .evaluation import evaluate_run, format_summary

    summary = evaluate_run(run, episodes=args.episodes, target_returns=args.target_return,
                           seeds=args.seed or [0], device=args.device, runtime=args.runtime,
                           weights=args.weights)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def cmd_export(args) -> int:
    from .export import export_onnx, export_torchscript
    from .policy import Policy

    policy = Policy.load(args.run)
    out = Path(args.out or Path(policy.meta["path"]) / "policy")
    paths = []
    if args.format in ("onnx", "all"):
        paths.append(export_onnx(policy.model, out.with_suffix(".onnx")))
    if args.format in ("torchscript", "all"):
        paths.append(export_torchscript(policy.model, out.with_suffix(".pt")))
    print("\n".join(str(p) for p in paths))
    return 0


def add_evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", help="run directory or checkpoint (none: quickstart on the embedded data)")
    p.add_argument("--episodes", type=int, default=10, help="episodes per target return and seed")
    p.add_argument("--target-return", type=float, action="append", help="repeatable; default: DT's per env")
    p.add_argument("--seed", type=int, action="append", help="repeatable: several seeds give a std over seeds")
    p.add_argument("--device", default="cpu", help="where the policy network runs (MuJoCo always on CPU)")
    p.add_argument("--runtime", choices=list(RUNTIMES), default="torch",
                   help="what runs the policy network (onnxruntime, fused: CPU only; fused: recurrent backbones, "
                        "fastest at small batch)")
    p.add_argument("--weights", choices=list(WEIGHTS), default="float32",
                   help="fused runtime only: float16 rounds the weight matrices (half the bytes: faster at batch 1 for "
                        "models beyond the CPU cache, slower at larger batches; actions change by the rounding)")
    p.add_argument("--json", action="store_true", help="print the JSON summary instead of a table")
    p.add_argument("--quickstart-steps", type=int, default=1500, help=argparse.SUPPRESS)
    p.add_argument("--quickstart-out", default="runs/quickstart", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="decision-rnn", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an agent on offline data")
    t.add_argument("--dataset", action="append", help="Minari id, Minari dataset dir or D4RL .hdf5; repeat to combine")
    t.add_argument("--download", action="store_true", help="let Minari download missing ids (needs internet)")
    t.add_argument("--out", help="run directory (default runs/BACKBONE-ENV-DATASET)")
    t.add_argument("--config", help="JSON file with 'model' and 'train' sections")
    t.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    for name, kind in {**MODEL_FLAGS, **TRAIN_FLAGS}.items():
        flag = "--" + name.replace("_", "-")
        if kind is bool:  # --return-ln / --no-return-ln; unset: the config's value
            t.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            t.add_argument(flag, type=kind, default=None)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a run in MuJoCo (normalized score)")
    add_evaluate_args(e)
    e.set_defaults(func=cmd_evaluate)

    x = sub.add_parser("export", help="export the single-step policy to ONNX / TorchScript")
    x.add_argument("run")
    x.add_argument("--format", choices=["onnx", "torchscript", "all"], default="all")
    x.add_argument("--out", help="output path without suffix (default: CHECKPOINT/policy)")
    x.set_defaults(func=cmd_export)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
