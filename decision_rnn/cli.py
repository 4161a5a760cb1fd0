"""`decision-rnn` command line: train, evaluate, export.

Every `ModelConfig` and `TrainConfig` field is a `train` flag (`--embed-dim`, `--lr-decay`, ...) generated from the
dataclasses: its help is the field's docstring, its choices the field's `Literal` type. A field's value comes from,
lowest first: the dataclass default, `--preset NAME`, `--config FILE` (JSON: {"model": {...}, "train": {...}}),
the flag. `--resume` continues a run with its saved config and data: only what may change on resume
(`Trainer.RESUMABLE`: how long it runs and how it logs, checkpoints and evaluates) is taken from the arguments,
and another value given that differs from the run's is an error.

A mistake in what was given (a flag, a file, a dataset, a run directory) prints `decision-rnn: error: <message>`
and exits with status 2; `--debug` (or DECISION_RNN_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import ast
import errno
import inspect
import json
import logging
import os
import sys
import textwrap
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from .config import ModelConfig, TrainConfig, config_from_dict, model_config_from_saved
from .errors import UserError
from .training import distributed

log = logging.getLogger("decision_rnn")

SECTIONS = {"model": ModelConfig, "train": TrainConfig}
FROM_DATASET = ("obs_dim", "act_dim")  # ModelConfig fields the data fixes: not flags


# ---- flags from the config dataclasses -------------------------------------------------------------------
def field_docs(cls) -> dict[str, str]:
    """The docstring under each field of a config dataclass (the attribute docstrings of config.py)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {a.target.id: " ".join(b.value.value.split()) for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)
            and isinstance(b.value.value, str)}


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"expansion\": 2}}', got {text!r}")
    return value


def _or_none(parse):
    """`parse`, or None for the text "none" (a field whose None means 'off' or 'the default')."""
    def parse_or_none(text: str):
        return None if text.strip().lower() == "none" else parse(text)

    parse_or_none.__name__ = getattr(parse, "__name__", "value")  # argparse names it in "invalid float value"
    return parse_or_none


def _flag_options(name: str, tp) -> dict:
    """argparse options for a field of annotation `tp`: its parser, choices and metavar."""
    args = typing.get_args(tp)
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else tp
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    choices = None
    if typing.get_origin(base) is typing.Literal:
        choices, parse = list(typing.get_args(base)), str
    elif name == "backbone":  # a registry, not a Literal: backbones can be added
        from .backbones import BACKBONES

        choices, parse = sorted(BACKBONES), str
    elif typing.get_origin(base) is dict or base is dict:
        parse = _json_object
    else:
        parse = base
    options = {"type": _or_none(parse) if optional else parse}
    if choices is not None:
        options["choices"] = choices + [None] * optional
        options["metavar"] = "{" + ",".join(choices + ["none"] * optional) + "}"
    else:
        options["metavar"] = ("JSON" if parse is _json_object else parse.__name__.upper()) + "|none" * optional
    return options


def _default(f) -> str:
    value = f.default if f.default is not MISSING else f.default_factory()
    return "none" if value is None else json.dumps(value) if isinstance(value, dict) else str(value)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """A flag per ModelConfig/TrainConfig field, dest `model.NAME` / `train.NAME`; absent flags stay unset."""
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} (decision_rnn.config.{cls.__name__})",
                                          "each flag overrides --preset and --config")
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        for f in fields(cls):
            if f.name in FROM_DATASET:
                continue
            help_text = f"{docs.get(f.name, '')} (default: {_default(f)})".strip().replace("%", "%%")
            group.add_argument("--" + f.name.replace("_", "-"), dest=f"{section}.{f.name}", default=argparse.SUPPRESS,
                               help=help_text, **_flag_options(f.name, hints[f.name]))


def _given_flags(args) -> dict[str, dict]:
    return {section: {key.split(".", 1)[1]: value for key, value in vars(args).items()
                      if key.startswith(section + ".")} for section in SECTIONS}


# ---- train ------------------------------------------------------------------------------------------------
def read_config_file(path: str) -> dict[str, dict]:
    """The sections of a `--config` JSON file, type-checked field by field."""
    from .training.run import check_types

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except json.JSONDecodeError as e:
        raise UserError(f"--config {path}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    if not isinstance(data, dict) or set(data) - set(SECTIONS):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise UserError(f"--config {path}: expected a JSON object with the keys 'model' and/or 'train', got {keys}")
    for section, values in data.items():
        if not isinstance(values, dict):
            raise UserError(f"--config {path}: '{section}' must be an object of {SECTIONS[section].__name__} fields")
        try:
            check_types(SECTIONS[section], values)
        except ValueError as e:
            raise UserError(f"--config {path}: {e}") from None
    return data


def requested(args) -> dict[str, dict]:
    """The config fields asked for, layered: --preset < --config < flags (each type-checked)."""
    layers = []
    if args.preset:
        from .presets import get_preset

        preset = get_preset(args.preset)
        layers.append({"model": preset.model, "train": preset.train})
    if args.config:
        layers.append(read_config_file(args.config))
    layers.append(_given_flags(args))
    return {section: {k: v for layer in layers for k, v in layer.get(section, {}).items()} for section in SECTIONS}


def default_out(backbone: str | None, ids) -> Path:
    """runs/BACKBONE-ENV-DATASET, e.g. runs/mingru-hopper-medium-v0 (every id's name, when combined)."""
    def name(i):  # a Minari id keeps its env (zoo/hopper/medium-v0 -> hopper-medium-v0); a path, its file name
        i = Path(i)
        return i.stem if i.exists() or not i.parent.name else f"{i.parent.name}-{i.name}"

    return Path("runs") / "-".join([backbone or ModelConfig.backbone, *(name(i) for i in ids)])


def _resumed_configs(out: Path, saved: dict, asked: dict[str, dict]):
    """The run's saved configs with the resumable fields asked for; any other field asked with another value
    than the run's is refused."""
    from .training import Trainer

    differ = [f"{name}={value!r} (the run has {saved[section].get(name)!r})"
              for section, values in asked.items() for name, value in values.items()
              if not (section == "train" and name in Trainer.RESUMABLE) and saved[section].get(name) != value]
    if differ:
        raise UserError(f"{out} is resumed with its own config, which differs in: {', '.join(differ)}. Only "
                        f"{', '.join(sorted(Trainer.RESUMABLE))} may change on --resume; drop the others, or train "
                        "a new run into another --out")
    train = {**saved["train"], **{k: v for k, v in asked["train"].items() if k in Trainer.RESUMABLE}}
    return model_config_from_saved(saved["model"]), config_from_dict(TrainConfig, train)


def _saved_config(out: Path) -> dict | None:
    """The config.json of the run `out` resumes; None for a run stopped before it wrote one (before its first
    update: it then starts from the arguments, as a new run)."""
    path = out / "config.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); it was edited or damaged: pick a new --out") from None


def cmd_train(args) -> int:
    from .data import EMBEDDED_DATASET, load_dataset
    from .evaluation import default_target_return, make_eval_hook
    from .training import train
    from .training.run import check_run_dir, is_run

    asked = requested(args)
    out = Path(args.out) if args.out else default_out(asked["model"].get("backbone"),
                                                      args.dataset or [str(EMBEDDED_DATASET)])
    if distributed.is_main_process():  # under torchrun, rank 0 alone checks and writes the run directory
        if args.resume and not is_run(out):
            raise UserError(f"no run at {out}; drop --resume to start one")
        check_run_dir(out, resume=args.resume)  # before loading any data; `train` checks again under the run's lock
    saved = _saved_config(out) if args.resume else None
    ids = args.dataset or (saved["sources"] if saved else [str(EMBEDDED_DATASET)])  # a resume keeps its data
    env_id = args.env_id or (saved["env_id"] if saved and not args.dataset else None)
    dataset = load_dataset(ids if len(ids) > 1 else ids[0], download=args.download, env_id=env_id)
    if saved is not None:
        model_cfg, train_cfg = _resumed_configs(out, saved, asked)
    else:
        model_cfg = config_from_dict(ModelConfig, {"obs_dim": dataset.obs_dim, "act_dim": dataset.act_dim,
                                                   **asked["model"]})
        train_cfg = config_from_dict(TrainConfig, asked["train"])
    hook = None
    if train_cfg.eval_every:
        target = train_cfg.target_return
        target = default_target_return(dataset.env_id) if target is None else target
        hook = make_eval_hook(dataset.env_id, train_cfg.eval_episodes, target,
                              ref=(dataset.ref_min_score, dataset.ref_max_score))
    log.info("training %s (%s tokens, %s context) on %s -> %s",
             model_cfg.backbone, model_cfg.tokens, train_cfg.context, ", ".join(dataset.ids), out)
    summary = train(dataset, model_cfg, train_cfg, out, resume=args.resume, eval_hook=hook)
    if distributed.is_main_process():
        print(json.dumps({"run": str(out), **summary}))
    distributed.shutdown()
    return 0


# ---- evaluate, export -----------------------------------------------------------------------------------------
def quickstart(args) -> str:
    """No run given: train the `fast` preset briefly on the embedded dataset, then evaluate it (the README's
    first command). A quickstart folder already there is continued, or reused when complete."""
    from .data import EMBEDDED_DATASET, load_dataset
    from .presets import model_config, train_config
    from .training import CheckpointError, train
    from .training.run import is_run

    dataset = load_dataset(str(EMBEDDED_DATASET))
    out = Path(args.quickstart_out)
    steps = args.quickstart_steps
    model_cfg = model_config("fast", dataset.obs_dim, dataset.act_dim)
    train_cfg = train_config("fast", steps=steps, warmup_steps=steps // 10, checkpoint_every=steps, log_every=50,
                             device=args.device)
    log.info("quickstart: %d updates of the `fast` preset on %s (%d episodes)", steps, dataset.ids[0],
             dataset.num_episodes)
    try:
        train(dataset, model_cfg, train_cfg, out, resume=is_run(out))
    except CheckpointError as e:
        raise UserError(f"{out} holds a quickstart trained with other settings; remove it (rm -r {out}) to train "
                        f"a new one.\n{e}") from e
    return str(out)


def cmd_evaluate(args) -> int:
    from .config import resolve_device
    from .evaluation import evaluate_run, format_summary

    resolve_device(args.device)  # before a quickstart trains on a device that cannot evaluate
    run = args.run or quickstart(args)
    summary = evaluate_run(run, episodes=args.episodes, target_returns=args.target_return,
                           seeds=args.seed or [0], device=args.device, runtime=args.runtime,
                           weights=args.weights, workers=args.workers, out_dir=args.out_dir)
    if summary is not None:  # under torchrun, rank 0's
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    distributed.shutdown()
    return 0


def cmd_export(args) -> int:
    from .export import export_onnx, export_torchscript
    from .policy import Policy

    policy = Policy.load(args.run, runtime="torch")  # the torch module is what is exported
    out = Path(args.out or Path(policy.meta["path"]) / "policy")
    writers = {".onnx": export_onnx, ".pt": export_torchscript}
    suffixes = {"onnx": [".onnx"], "torchscript": [".pt"], "all": [".onnx", ".pt"]}[args.format]
    taken = [str(out.with_suffix(s)) for s in suffixes if out.with_suffix(s).exists()]
    if taken and not args.force:  # checked for every format before anything is written
        raise UserError(f"{', '.join(taken)} exist(s); pass --out elsewhere, or --force to replace")
    paths = [writers[s](policy.model, out.with_suffix(s), overwrite=args.force) for s in suffixes]
    print("\n".join(str(p) for p in paths))
    return 0


def cmd_presets(args) -> int:
    from .presets import PRESETS

    for p in PRESETS.values():
        print(f"{p.name}\n{textwrap.indent(textwrap.fill(p.doc, 100), '    ')}")
        for section, values in (("model", p.model), ("train", p.train)):
            if values:
                print(f"    {section}: " + ", ".join(f"{k}={v!r}" for k, v in values.items()))
    return 0


def _at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def add_evaluate_args(p: argparse.ArgumentParser) -> None:
    from .policy import RUNTIMES, WEIGHTS

    p.add_argument("run", nargs="?", help="run directory or checkpoint (none: quickstart on the embedded data)")
    p.add_argument("--episodes", type=_at_least(1), default=10, help="episodes per target return and seed")
    p.add_argument("--target-return", type=float, action="append", help="repeatable; default: DT's per env")
    p.add_argument("--seed", type=_at_least(0), action="append",
                   help="repeatable: several seeds give a std over seeds (default: 0)")
    p.add_argument("--device", default="cpu", help="where the policy network runs (MuJoCo always on CPU)")
    p.add_argument("--runtime", choices=list(RUNTIMES), default="auto",
                   help="what runs the policy network (onnxruntime, fused: CPU only; fused: recurrent backbones, "
                        "fastest at small batch; auto: the fastest available, the summary names it)")
    p.add_argument("--weights", choices=list(WEIGHTS), default="float32",
                   help="fused runtime only: float16 rounds the weight matrices (half the bytes: faster at batch 1 for "
                        "models beyond the CPU cache, slower at larger batches; actions change by the rounding)")
    p.add_argument("--workers", type=_at_least(1), default=1,
                   help="processes to split the episodes over, each with its own envs and policy: the same "
                        "episodes and scores as one process (to rounding with the fused runtime at its BLAS batch "
                        "sizes); under torchrun the ranks split them instead")
    p.add_argument("--out-dir", help="where the evaluation's files go (default: eval/ in the run, or in the "
                                     "checkpoint when one is given); a run that cannot be written needs one")
    p.add_argument("--json", action="store_true", help="print the JSON summary instead of a table")
    p.add_argument("--quickstart-steps", type=_at_least(1), default=1500, help=argparse.SUPPRESS)
    p.add_argument("--quickstart-out", default="runs/quickstart", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    from .presets import PRESETS

    parser = argparse.ArgumentParser(prog="decision-rnn", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    debug_help = "show the traceback of an error (or DECISION_RNN_DEBUG=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    common = argparse.ArgumentParser(add_help=False)  # --debug after the command too; unset, the one before holds
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", parents=[common], help="train an agent on offline data",
                       description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--dataset", action="append", help="Minari id, Minari dataset dir or D4RL .hdf5; repeat to combine")
    t.add_argument("--env-id", help="the gymnasium env of the data where it does not say (a D4RL file whose name "
                                    "does not tell it), e.g. Hopper-v5")
    t.add_argument("--download", action="store_true", help="let Minari download missing ids (needs internet)")
    t.add_argument("--out", help="run directory (default runs/BACKBONE-ENV-DATASET)")
    t.add_argument("--preset", choices=list(PRESETS), metavar="NAME",
                   help=f"a named recipe: {', '.join(PRESETS)} (`decision-rnn presets` says what each sets)")
    t.add_argument("--config", help="JSON file with 'model' and 'train' sections (over the preset, under the flags)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_config_flags(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", parents=[common], help="evaluate a run in MuJoCo (normalized score)")
    add_evaluate_args(e)
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("presets", parents=[common], help="list the recipes --preset takes and the fields each sets")
    r.set_defaults(func=cmd_presets)

    x = sub.add_parser("export", parents=[common], help="export the single-step policy to ONNX / TorchScript")
    x.add_argument("run")
    x.add_argument("--format", choices=["onnx", "torchscript", "all"], default="all")
    x.add_argument("--out", help="output path without suffix (default: CHECKPOINT/policy)")
    x.add_argument("--force", action="store_true", help="replace existing export files")
    x.set_defaults(func=cmd_export)
    return parser


# a full disk, a place the user may not write to, a path that cannot be: the message names the path
USER_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EROFS, errno.ENAMETOOLONG, errno.ENOTDIR}


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is a mistake in what was given (printed as a message) rather than a bug (a traceback)."""
    from .training.checkpoint import CheckpointError
    from .training.trainer import NonFiniteError

    return isinstance(error, (UserError, ValueError, CheckpointError, FileNotFoundError, FileExistsError,
                              NonFiniteError)) or (isinstance(error, OSError) and error.errno in USER_ERRNOS)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("DECISION_RNN_DEBUG", "0") not in ("", "0")
    level = logging.DEBUG if args.verbose else logging.INFO
    if not distributed.is_main_process():  # under torchrun, rank 0 reports; the others only warnings and errors
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if debug or not is_user_error(error):
            raise
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
