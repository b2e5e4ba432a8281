"""The ``gopd`` command: LightningCLI (fit, validate, test) plus a few tools.

    gopd fit -c configs/toy.yaml -c configs/toy/exopd.yaml    # train (configs compose left to right)
    gopd validate -c configs/toy.yaml -c configs/toy/exopd.yaml --ckpt_path <ckpt>
    gopd toy prepare [--all] [--force]                        # build the offline toy world ahead of time
    gopd export CKPT --output DIR                             # the trained student in Hugging Face format
    gopd expo INITIAL TRAINED --alpha A --output DIR          # ExPO weight extrapolation

Configs are read in omegaconf mode, so ``${...}`` interpolation works, and ``${now:%Y%m%d-%H%M%S}``
stamps a run directory once per launch.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import OmegaConf

from gopd_lightning import export
from gopd_lightning.data import PromptDataModule
from gopd_lightning.models import DTYPES
from gopd_lightning.policy import PolicyModule
from gopd_lightning.weight_extrapolation import expo

DEFAULTS = Path(__file__).with_name("defaults.yaml")
"""What every run starts from (seed, loggers, checkpoints, result tables); experiment configs state the rest."""
RUNS = ("fit", "validate", "test")
DEFAULT_METHOD = "gopd_lightning.GOPDModule"
TOOLS_HELP = """other commands (each with --help):
  gopd toy prepare [--all] [--force]              build the offline toy world ahead of time
  gopd export CKPT --output DIR                   a trained student in Hugging Face format
  gopd expo INITIAL TRAINED --alpha A --output DIR  ExPO weight extrapolation"""


def _now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("now"):  # cached: one stamp per launch
        OmegaConf.register_resolver("now", _now, use_cache=True)


class GOPDCLI(LightningCLI):
    """LightningCLI that measures the starting student before ``fit`` and reports where results went."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test: a policy is scored by benchmarks, there is nothing to ``predict``."""
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name in RUNS}

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 - jsonargparse parser
        # the DataModule drops prompts that the student's tokenizer makes longer than the limit
        parser.link_arguments("model.init_args.student", "data.tokenizer")
        parser.link_arguments("model.init_args.max_prompt_length", "data.max_prompt_length")
        parser.link_arguments("model.init_args.chat_template_kwargs", "data.chat_template_kwargs")
        parser.add_argument(
            "--validate_before_fit",
            type=bool,
            default=True,
            help="Run validation once before training, so the metrics start at the initial student.",
        )

    def parse_arguments(self, parser, args) -> None:  # noqa: ANN001 - LightningCLI's signature
        """Parse; with ``--ckpt_path``, the checkpoint's model hyperparameters become the defaults.

        Lightning 2.6 applies them *over* the parsed config (Lightning-AI/pytorch-lightning#20801),
        silently undoing the command line and later configs. Here they are parser defaults: what
        the configs and the command line say wins, and every value that differs from the
        checkpoint is printed.
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        hparams = checkpoint_hparams(self.config[subcommand].get("ckpt_path")) if subcommand else None
        if not hparams:
            return
        class_path = hparams.pop("_class_path", None)
        hparams.pop("_instantiator", None)
        model = self.config[subcommand].model
        if class_path is not None and model is not None and not same_class(model.class_path, class_path):
            raise ValueError(
                f"--ckpt_path holds a {class_path} but the config builds a {model.class_path}; "
                "use the experiment config the checkpoint was trained with"
            )
        subparser = parser._subcommands_action._name_parser_map[subcommand]
        subparser.set_defaults({"model": {"class_path": model.class_path, "init_args": hparams}})
        super().parse_arguments(parser, args)
        given = self.config[subcommand].model.init_args.as_dict()
        changed = [key for key in sorted(hparams) if key in given and _plain(given[key]) != _plain(hparams[key])]
        for key in changed:
            rank_zero_info(f"model.{key}: {_plain(hparams[key])!r} in the checkpoint -> {_plain(given[key])!r} now")

    def _parse_ckpt_path(self) -> None:
        """Done in :meth:`parse_arguments` (checkpoint hyperparameters as defaults, not overrides)."""

    def before_instantiate_classes(self) -> None:
        """Make ``trainer.default_root_dir`` the run directory: every logger writes into it."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.default_root_dir
        loggers = config.trainer.logger
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = getattr(logger, "init_args", None)
            if root and init_args is not None and "save_dir" in init_args:
                init_args.save_dir = root

    def before_fit(self) -> None:
        """Validate the student training starts from: the initial one, or the checkpoint a resume continues."""
        self.initial_metrics = {}
        if self.config.fit.validate_before_fit and self.datamodule.sources["val"]:
            ckpt_path = self.config.fit.ckpt_path
            rank_zero_info(f"Validating {'the checkpoint ' + ckpt_path if ckpt_path else 'the initial student'}")
            results = self.trainer.validate(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path, verbose=False)
            self.initial_metrics = results[0] if results else {}

    def after_fit(self) -> None:
        trainer = self.trainer
        final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        lines = [f"Run directory: {trainer.log_dir}"]
        for logger in trainer.loggers:
            lines.append(f"  {type(logger).__name__}: {logger.log_dir}")
        if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.last_model_path:
            lines.append(f"  last checkpoint: {trainer.checkpoint_callback.last_model_path}")
        for key in sorted(final):
            before = self.initial_metrics.get(key)
            start = f"{before:.4f} -> " if before is not None else ""
            lines.append(f"  {key}: {start}{final[key]:.4f}")
        rank_zero_info("\n".join(lines))


def checkpoint_hparams(ckpt_path: str | None) -> dict | None:
    """The model hyperparameters a checkpoint file (or a distributed checkpoint folder's ``meta.pt``) holds."""
    if not ckpt_path:
        return None
    path = Path(ckpt_path)
    if path.is_dir():
        path = path / "meta.pt"
    if not path.is_file():
        return None
    return dict(torch.load(path, weights_only=True, map_location="cpu").get("hyper_parameters") or {})


def same_class(path: str, other: str) -> bool:
    """Whether two class paths name one class (``gopd_lightning.GOPDModule`` is ``...distillation.GOPDModule``).

    A path that no longer imports (a checkpoint from before a module was renamed) matches by class name.
    """
    try:
        return _import_class(path) is _import_class(other)
    except (ImportError, AttributeError, ValueError):
        return path.rpartition(".")[2] == other.rpartition(".")[2]


def _import_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _plain(value: object) -> object:
    """A config value without its dataclass or Namespace wrapper, for comparing and printing."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return value


def _toy_command(argv: Sequence[str]) -> None:
    from gopd_lightning.toy.world import DEFAULT_MODELS, TOY_MODELS, prepare_toy_world, toy_home

    parser = argparse.ArgumentParser(prog="gopd toy", description="The offline toy world.")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="build toy models (and what they are trained from)")
    prepare.add_argument("models", nargs="*", help=f"models to build (default: {' '.join(DEFAULT_MODELS)})")
    prepare.add_argument("--all", action="store_true", help=f"build every toy model: {', '.join(TOY_MODELS)}")
    prepare.add_argument("--force", action="store_true", help="rebuild even if a cached copy exists")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        names = list(TOY_MODELS) if args.all else args.models or list(DEFAULT_MODELS)
        paths = prepare_toy_world(names=names, force=args.force)
        print(f"toy world ready (cache root {toy_home()}; set GOPD_HOME to move it)")
        for name, path in paths.items():
            print(f"  toy:{name}  {path}")


def _export_command(argv: Sequence[str]) -> None:
    """``gopd export CKPT --output DIR``: a trained student in Hugging Face format (:mod:`gopd_lightning.export`)."""
    parser = argparse.ArgumentParser(prog="gopd export", description=export.__doc__.splitlines()[0])
    parser.add_argument("ckpt", type=Path, help="checkpoint file, or distributed checkpoint folder")
    parser.add_argument("--output", type=Path, required=True, help="folder to write the model and tokenizer to")
    parser.add_argument("--config", nargs="+", default=[], help="experiment YAMLs (default: the checkpoint's own)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="dtype of the written weights (default: as trained)")
    args = parser.parse_args(argv)
    hparams = config_hparams(args.config) if args.config else None
    out = export.export_student(args.ckpt, args.output, hparams, args.dtype)
    print(f"student written to {out}: AutoModelForCausalLM.from_pretrained({str(out)!r})")


def config_hparams(configs: Sequence[str]) -> dict:
    """The model hyperparameters of experiment configs, parsed as ``gopd fit`` parses them."""
    args = [arg for path in configs for arg in ("-c", str(path))]
    return dict(build_cli([*args, "--trainer.logger=false"], run=False).model.hparams)


def _expo_command(argv: Sequence[str]) -> None:
    """``gopd expo INITIAL TRAINED --alpha A --output DIR`` (see :mod:`gopd_lightning.weight_extrapolation`)."""
    parser = argparse.ArgumentParser(
        prog="gopd expo", description="ExPO weight extrapolation: theta_1 + alpha * (theta_1 - theta_0)."
    )
    parser.add_argument("initial", help="theta_0: model before training (path, hub id, toy:<name> or .ckpt)")
    parser.add_argument("trained", help="theta_1: model after training (path, hub id, toy:<name> or .ckpt)")
    parser.add_argument("--alpha", type=float, required=True, help="extrapolation strength (0 gives theta_1)")
    parser.add_argument("--output", required=True, help="directory of the Hugging Face checkpoint to write")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="dtype of the saved weights")
    args = parser.parse_args(argv)
    path = expo(args.initial, args.trained, args.alpha, args.output, args.dtype)
    print(f"ExPO model (alpha={args.alpha}) written to {path}")


TOOLS: dict[str, Callable[[Sequence[str]], None]] = {
    "toy": _toy_command,
    "expo": _expo_command,
    "export": _export_command,
}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``gopd`` console script (``argv``: instead of the command line, for tests)."""
    words = list(sys.argv[1:] if argv is None else argv)
    # expected here: frozen teachers/reference sit in eval mode on purpose; with manual optimisation a
    # checkpoint holds the state after the step's update, as it should; and PromptDataModule restores
    # its place in the training order from its own checkpoint state, which Lightning does not see
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if words and words[0] in TOOLS:
        TOOLS[words[0]](words[1:])
        return
    if _asks_for_run_help(words):
        _print_run_help(words)
        return
    build_cli(None if argv is None else words)  # None: LightningCLI reads sys.argv itself
    close_process_group()


def _asks_for_run_help(words: Sequence[str]) -> bool:
    return bool(words) and words[0] in RUNS and bool({"-h", "--help"} & set(words))


def _print_run_help(words: Sequence[str]) -> None:
    """``gopd fit --help``: the run's options, then the method's (``model.init_args.*``), GOPDModule's by default.

    LightningCLI shows a model given by class path as one ``--model`` option; a user sets the
    method's options, so they are listed too (another method: ``--model.help SFTModule``).
    """
    for args in (list(words), [words[0], "--model.help", _method_of(words)]):
        try:
            build_cli(args)
        except SystemExit as done:  # argparse prints the help and exits
            if done.code:
                raise
        print()


def _method_of(words: Sequence[str]) -> str:
    """The class path after ``--model`` on the command line, else the default method."""
    for i, word in enumerate(words):
        if word.startswith("--model="):
            return word.split("=", 1)[1]
        if word == "--model" and i + 1 < len(words):
            return words[i + 1]
    return DEFAULT_METHOD


def close_process_group() -> None:
    """After a successful run, tear the process group down on every rank together.

    Exiting with a live gloo group can abort the process (``terminate called without an active
    exception``) while another rank still talks to it, turning a finished run into exit code -6.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def build_cli(args: Sequence[str] | None, run: bool = True) -> GOPDCLI:
    """The LightningCLI behind ``gopd`` (``args`` None: the command line); ``run=False`` only parses and builds."""
    _register_resolvers()
    with warnings.catch_warnings():  # given args stand in for the command line on purpose (tests, tools, --help)
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return GOPDCLI(
            PolicyModule,
            PromptDataModule,
            subclass_mode_model=True,
            args=None if args is None else list(args),
            run=run,
            parser_kwargs=_parser_kwargs(run),
            save_config_kwargs={"overwrite": True},
        )


def _parser_kwargs(subcommands: bool) -> dict:
    """omegaconf interpolation, and ``DEFAULTS`` under every config: per subcommand, or for the one parser."""
    run = {"parser_mode": "omegaconf", "default_config_files": [str(DEFAULTS)]}
    if not subcommands:
        return run
    main_parser = {
        "parser_mode": "omegaconf",
        "epilog": TOOLS_HELP,
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }
    return {**main_parser, **dict.fromkeys(RUNS, run)}


if __name__ == "__main__":
    main()
