"""`e2etal` command line: each sub-command is a thin layer over the Python API.

Every module in `COMMANDS` defines `register(subparsers)`, which adds its parser and sets
`func` to a function taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys

from e2etal import __version__
from e2etal.cli import bench_cmd, demo_cmd, detect_cmd, eval_cmd, extract_cmd, synth_cmd, train_cmd

COMMANDS = [demo_cmd, synth_cmd, train_cmd, eval_cmd, detect_cmd, extract_cmd, bench_cmd]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="e2etal",
        description="End-to-end temporal action localization: train, evaluate and run TAL models.",
    )
    parser.add_argument("--version", action="version", version=f"e2etal {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:
        if args.verbose:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"e2etal {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"e2etal {args.command}: interrupted", file=sys.stderr)
        return 130
