"""`e2etal` command line: each sub-command is a thin layer over the Python API.

Every module in `COMMANDS` defines `register(subparsers)`, which adds its parser (with the
one-line help of `COMMANDS`) and sets `func` to a function taking the parsed arguments and
returning an exit code. Only the module of the command being run is imported, so that
`e2etal eval` on files never imports PyTorch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from e2etal import __version__

# name -> (module in e2etal.cli, one-line help shown by `e2etal --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo_cmd", "run the whole pipeline on synthetic video (6-10 minutes on 2 CPU cores)"),
    "synth": ("synth_cmd", "write a synthetic world: untrimmed .mp4 videos with exact ground truth"),
    "train": ("train_cmd", "train a detector from a config (pre-extracted features, or raw video: LoSA, head-only, LoFi)"),
    "eval": ("eval_cmd", "evaluate detections (mAP per tIoU) against ground truth"),
    "detect": ("detect_cmd", "detect actions in one video (a video file, or its feature file)"),
    "lofi": ("lofi_cmd", "LoFi: train the encoder at low fidelity, extract at full fidelity, compare heads"),
    "extract": ("extract_cmd", "extract backbone features of videos (one [T, C] .npy and .json sidecar per video)"),
    "bench": ("bench_cmd", "measure memory and speed"),
}


def command_help(name: str) -> str:
    return COMMANDS[name][1]


def add_config_options(p: argparse.ArgumentParser) -> None:
    """`--set`, `--out-dir` and `--device`, for the commands that run a config."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=10 (repeatable)")
    p.add_argument("--out-dir", help="shorthand for --set out_dir=...")
    p.add_argument("--device", help="shorthand for --set train.device=... (auto, cpu, cuda, cuda:N)")


def config_overrides(args) -> list[str]:
    """The `key=value` overrides `add_config_options` collected, the shorthands last."""
    return (list(args.overrides) + ([f"out_dir={args.out_dir}"] if args.out_dir else [])
            + ([f"train.device={args.device}"] if args.device else []))


def _command_in(argv: list[str]) -> str | None:
    """The sub-command named in `argv`: its first word that is not a global option."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the full parser of the command `argv` names (every command's when
    `argv` is None) and one-line entries for the others."""
    parser = argparse.ArgumentParser(
        prog="e2etal",
        description="End-to-end temporal action localization: train, evaluate and run TAL models.",
    )
    parser.add_argument("--version", action="version", version=f"e2etal {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = None if argv is None else _command_in(argv)
    for name, (module, help_text) in COMMANDS.items():
        if argv is None or name == chosen:
            importlib.import_module(f"e2etal.cli.{module}").register(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, KeyError) as e:
        if args.verbose:
            raise
        if isinstance(e, KeyError) and e.args:
            msg = e.args[0]
        elif isinstance(e, OSError) and e.filename and e.strerror:
            msg = f"{e.filename}: {e.strerror}"
        else:
            msg = e
        print(f"e2etal {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"e2etal {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        # Leave the process group a torchrun-launched command joined; a command that never
        # imported it (evaluation of files) must not import torch here either.
        distributed = sys.modules.get("e2etal.distributed")
        if distributed is not None:
            distributed.shutdown()
